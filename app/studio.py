"""The Studio service: the live sampler, the repository and the training worker behind the few methods the UI calls.

Every Gradio handler (and so every API endpoint) goes through one `Studio`. It turns a prompt into a stored pair,
a click into a committed vote, two adapter versions into a side-by-side comparison, and a blind A/B choice into a
trial stored apart from the training votes. Generation always runs under the sampler's lock, and the sampler is
synchronised with the repository's live adapter (`alignment.serving.live.sync_live_adapter`) right before it generates,
so a pair never mixes two adapters and a freshly trained adapter is used from the next pair on. Showing another
version (compare, blind A/B) swaps it in, generates and swaps the live one back, all inside the same lock.

Bad input from a person or an API client raises `StudioError` (or the storage/sampler error that says what is
wrong) before anything is written. The annotator is a parameter of every method that records or generates
something, and the acting `Actor` of every admin action (settings, train now, make live, roll back, import,
export); the UI and the API take both from the server side of the request (`app.session`), never from what a
client sends. Admin actions (in `app.admin`, part of `Studio`) check `AccessPolicy`, so the UI and the API
cannot differ; generation and votes count against the annotator's `RateLimits`. This module knows no Gradio, no
SQL and no tensor math.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from alignment.serving.live import LiveFollower, load_version, sync_live_adapter
from alignment.families.loader import load_pipeline
from alignment.core.objective import paired_win_rate
from alignment.serving.sampler import Sampler
from alignment.core.limits import validate_prompt
from settings import TrainerConfig
from alignment.training.worker import Worker
from settings import WorkerConfig
from app.access import AccessPolicy, RateLimits
from app.admin import AdminMixin
from app.config import StudioConfig
from app.inputs import BLIND_CHOICES, VOTE_CHOICES, StudioError, parse_pair_id, parse_seeds
from storage import NewGeneration, Repository

RANDOM_SEED_LIMIT = 2**31  # random seeds stay short enough to read and retype
BUILTIN_PROMPTS = [
    "a watercolor painting of a lighthouse at dusk",
    "a photo of a red fox in fresh snow",
    "a bowl of ramen, studio lighting, top view",
    "an isometric illustration of a tiny cozy library",
    "a portrait of an old sailor, oil painting",
    "a futuristic city skyline at night, neon reflections",
    "a cat wearing a knitted scarf, soft light",
    "a mountain lake at sunrise, mist over the water",
    "a minimalist poster of a hot air balloon",
    "a macro photo of a dew drop on a leaf",
]


@dataclass(frozen=True)
class PairView:
    """A stored pair as the Label tab shows it."""

    id: int
    prompt: str
    left: Image.Image
    right: Image.Image
    seeds: tuple[int, int]
    adapter_version: int | None


@dataclass(frozen=True)
class BlindTrial:
    """Base vs. an adapter from one seed, in random order; the order stays on the server until the choice."""

    prompt: str
    seed: int
    adapter_version: int
    adapter_side: str  # "left" | "right"
    left: Image.Image
    right: Image.Image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def json_safe(value):
    """A deep copy of `value` that json.dumps accepts (datetimes and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


class Studio(AdminMixin):
    """Sampler + repository + worker, and the operations of the four tabs (Train and Data: `AdminMixin`)."""

    def __init__(self, sampler: Sampler, repo: Repository, worker=None, trainer_config: TrainerConfig | None = None,
                 suggestions: list[str] | None = None, access: AccessPolicy | None = None,
                 limits: RateLimits | None = None):
        """`access` defaults to a local studio's (everyone is an admin), `limits` to none."""
        self.sampler = sampler
        self.repo = repo
        self.worker = worker
        self.follower = LiveFollower(sampler, repo)  # started with the server: new adapters go live beside requests
        self.access = access or AccessPolicy()
        self.limits = limits or RateLimits.off()
        self.trainer_config = trainer_config or (worker.trainer_config if worker is not None else TrainerConfig())
        self.suggestions = suggestions or self.default_suggestions(sampler.model)
        self.export_dir = Path(tempfile.mkdtemp(prefix="studio-export-"))
        self._status_cache: tuple[float, dict] | None = None

    @classmethod
    def open(cls, config: StudioConfig) -> Studio:
        """Load the model, open (and migrate) the repository, and prepare the worker (not started yet)."""
        try:
            trainer_config = TrainerConfig(**config.objective_settings())
        except ValueError as e:
            raise StudioError(f"invalid objective settings: {e}") from e
        model = load_pipeline(config.model, device=config.device)
        repo = Repository(config.data_dir, config.database_url)
        worker = None
        if config.worker:
            worker = Worker(repo, model.model_id, trainer_config,
                            WorkerConfig(train_every=config.train_every, interval_s=config.train_interval_s,
                                         min_votes=config.min_votes, annotators=config.train_annotators),
                            device=config.device)
        return cls(Sampler(model), repo, worker, trainer_config, access=config.access_policy(),
                   limits=config.rate_limits())

    @staticmethod
    def default_suggestions(model) -> list[str]:
        if model.is_embedded:
            from alignment.embedded.data import grammar_prompts
            return grammar_prompts(seed=0, n=24)
        return list(BUILTIN_PROMPTS)

    def start(self) -> None:
        """Start the background threads: the follower of the live adapter, and the worker when there is one."""
        self.follower.start()
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        self.follower.stop()
        if self.worker is not None:
            self.worker.stop()
        shutil.rmtree(self.export_dir, ignore_errors=True)
        self.repo.close()

    # ---- Label tab --------------------------------------------------------------------------------------------
    def new_pair(self, prompt: str, seeds=None, *, annotator: str) -> PairView:
        """Generate two images of `prompt` with the live adapter and store them as a pair served to `annotator`."""
        prompt = self._prompt(prompt)
        chosen = parse_seeds(seeds, 2) or self._random_seeds(2)
        if chosen[0] == chosen[1]:
            raise StudioError(f"the two seeds are equal ({chosen[0]}): a pair needs two different images")
        self.limits.pairs.check(annotator)
        with self.sampler.lock:
            sync_live_adapter(self.sampler, self.repo)  # usually the follower has swapped already: a no-op
            left, right = self.sampler.generate_pair(prompt, chosen)
        gens = [NewGeneration(seed=g.seed, model_id=g.trajectory.model_id, adapter_version=g.trajectory.adapter_version,
                              sampler_settings=g.trajectory.settings, image_png=png_bytes(g.image),
                              trajectory=g.trajectory.to_bytes()) for g in (left, right)]
        pair = self.repo.create_pair(prompt, gens[0], gens[1], served_to=annotator)
        return PairView(pair.id, prompt, left.image, right.image, (left.seed, right.seed),
                        left.trajectory.adapter_version)

    def vote(self, pair_id, choice: str, *, annotator: str) -> dict:
        """Record and commit one vote; returns the acknowledgement. A second vote on the same pair is refused."""
        pid = parse_pair_id(pair_id)
        if choice not in VOTE_CHOICES:
            raise StudioError(f"choice must be one of {', '.join(VOTE_CHOICES)}; got {choice!r:.40}")
        self.limits.votes.check(annotator)
        record, created = self.repo.record_vote(pid, annotator, choice)
        if not created:
            raise StudioError(f"pair {pid} already has your vote {record.choice!r}; it stands and nothing changed")
        return {"recorded": True, "vote_id": record.id, "pair_id": record.pair_id, "choice": record.choice,
                "annotator": record.annotator, "created_at": record.created_at.isoformat()}

    # ---- Compare tab ------------------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Every registered adapter version, oldest first (rejected ones too: they can still be looked at)."""
        return [a.version for a in self.repo.list_adapters()]

    def compare(self, prompt: str, seed, version_a: int | None, version_b: int | None, *, annotator: str
                ) -> tuple[Image.Image, Image.Image]:
        """The images of two versions (None = base) from the same prompt and seed."""
        prompt = self._prompt(prompt)
        chosen = self._one_seed(seed)
        for v in (version_a, version_b):
            if v is not None:
                self.repo.get_adapter(v)  # UnknownAdapterError before any swap
        self.limits.pairs.check(annotator)
        with self.sampler.lock:
            try:
                a = self._render(prompt, chosen, version_a)
                b = a if version_b == version_a else self._render(prompt, chosen, version_b)
            finally:
                sync_live_adapter(self.sampler, self.repo)
        return a, b

    def blind_trial(self, prompt: str, seed=None, *, annotator: str) -> BlindTrial:
        """Base vs. the live adapter from one seed, sides shuffled."""
        prompt = self._prompt(prompt)
        live = self.repo.live_adapter()
        if live is None:
            raise StudioError("no adapter is live yet: vote on a few pairs until the first training run finishes")
        chosen = self._one_seed(seed)
        self.limits.pairs.check(annotator)
        with self.sampler.lock:
            try:
                base = self._render(prompt, chosen, None)
                adapted = self._render(prompt, chosen, live.version)
            finally:
                sync_live_adapter(self.sampler, self.repo)
        side = random.choice(("left", "right"))
        left, right = (adapted, base) if side == "left" else (base, adapted)
        return BlindTrial(prompt, chosen, live.version, side, left, right)

    def record_blind(self, trial: BlindTrial | None, choice: str, *, annotator: str) -> dict:
        """Store the person's choice in a blind trial (not a training vote); returns their running win rate."""
        if trial is None:
            raise StudioError("no blind trial is open: start one first")
        if choice not in BLIND_CHOICES:
            raise StudioError(f"blind choice must be one of {', '.join(BLIND_CHOICES)}; got {choice!r:.40}")
        self.limits.votes.check(annotator)
        outcome = "tie" if choice == "tie" else ("adapter" if choice == trial.adapter_side else "base")
        self.repo.record_ab_trial(prompt=trial.prompt, seed=trial.seed, adapter_version=trial.adapter_version,
                                  adapter_side=trial.adapter_side, annotator=annotator, choice=outcome)
        return {"outcome": outcome, **self.win_rate(trial.adapter_version, annotator)}

    def win_rate(self, version: int, annotator: str | None = None) -> dict:
        """Win rate of `version` over the base in blind trials (ties count half), with its Wilson 95 % interval."""
        counts = self.repo.ab_results(adapter_version=version, annotator=annotator)
        n = sum(counts.values())
        rate, lo, hi = paired_win_rate(counts["adapter"], counts["tie"], n)
        return {"version": version, "n": n, **counts, "rate": None if n == 0 else rate, "lo": lo, "hi": hi}

    # ---- status -----------------------------------------------------------------------------------------------
    def status(self, max_age_s: float = 0.0) -> dict:
        """What the status bar and `/status` show: votes, live adapter, worker state.

        `max_age_s` > 0 may answer from a status computed that recently: every open tab polls it, and counting
        reads every vote."""
        cached = self._status_cache
        if max_age_s > 0 and cached is not None and time.monotonic() - cached[0] <= max_age_s:
            return cached[1]
        fresh = self._status()
        self._status_cache = (time.monotonic(), fresh)
        return fresh

    def _status(self) -> dict:
        counts = self.repo.counts()
        live = self.repo.live_adapter()
        worker = json_safe(self.worker.state()) if self.worker is not None else {"state": "off"}
        return {"votes": counts["votes"], "pairs": counts["pairs"], "annotators": counts["annotators"],
                "live_adapter_version": None if live is None else live.version,
                "serving_adapter_version": self.sampler.adapter_version,
                "worker_state": worker.get("state"), "worker_error": worker.get("last_error"),
                "training_progress": worker.get("progress"),
                "votes_pending": worker.get("votes_pending"), "last_run": worker.get("last_run")}

    # ---- helpers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _prompt(prompt) -> str:
        try:
            prompt = validate_prompt(prompt)
        except ValueError as e:
            raise StudioError(str(e)) from e
        if "\x00" in prompt:
            raise StudioError("the prompt contains a NUL character")
        return prompt

    @classmethod
    def _one_seed(cls, seed) -> int:
        given = parse_seeds([seed] if isinstance(seed, (int, float)) else seed, 1)
        return (given or cls._random_seeds(1))[0]

    @staticmethod
    def _random_seeds(n: int) -> list[int]:
        return random.sample(range(RANDOM_SEED_LIMIT), n)

    def _render(self, prompt: str, seed: int, version: int | None) -> Image.Image:
        """One image from `version` (None = base); the caller holds the sampler lock and restores the live one."""
        if self.sampler.adapter_version != version:
            load_version(self.sampler, self.repo, version)
        return self.sampler.generate(prompt, [seed])[0].image
