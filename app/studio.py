"""The Studio facade: the few methods the UI and the API call, over the live model, the repository and the worker.

Every Gradio handler (and so every API endpoint) goes through one `Studio`. It turns a prompt into a stored pair,
a click into a committed vote, two adapter versions into a side-by-side comparison, and a blind A/B choice into a
trial stored apart from the training votes. Images come from the studio's `LiveModel`
(`alignment.serving.live`), which alone decides which adapter version the pipeline serves: a pair comes from the
version storage says is live when it is asked for, and compare / blind A/B ask it for images at a given version
without changing what is live. The Studio takes no lock.

The Train and Data tabs' work is done by the services of `app.admin` (`TrainingControls`, `Releases`,
`DataExchange`), each built here with what it needs. Every admin action (settings, train now, make live, roll
back, import, export) takes the acting `Actor` and is checked here, against `self.access`, before its service is
called, so the UI and the API cannot differ; generation and votes count against the annotator's `RateLimits`.
Bad input from a person or an API client raises `StudioError` (or the storage/sampler error that says what is
wrong) before anything is written. The annotator and the actor come from the server side of the request
(`app.session`), never from what a client sends; a vote counts only from the annotator its pair was served to.
Rate limits apply per annotator and per client address; a wrong admin token is logged and throttled per address.
What only admins may read (annotator names and their statistics, who made a version live, a failed run's error)
is given to others without it. This module knows no Gradio, no SQL and no tensor math.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from alignment.core.limits import validate_prompt
from alignment.core.objective import paired_win_rate
from alignment.families.loader import load_pipeline
from alignment.serving.live import LiveModel
from alignment.serving.sampler import Sampler
from alignment.training.worker import Worker
from app.access import AccessPolicy, Actor, RateLimits
from app.admin import DataExchange, Releases, TrainingControls
from settings import TrainerConfig
from app.config import StudioConfig
from app.errors import RateLimitedError
from app.campaign import Campaign
from app.ready import ReadyQueue
from app.inputs import BLIND_CHOICES, VOTE_CHOICES, StudioError, parse_pair_id, parse_seeds
from storage import NewGeneration, Repository
from storage.export import ImportLimits

log = logging.getLogger(__name__)

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


class Studio:
    """The operations of the four tabs over a live model, a repository and (optionally) a training worker."""

    def __init__(self, sampler: Sampler, repo: Repository, worker=None, trainer_config: TrainerConfig | None = None,
                 suggestions: list[str] | None = None, access: AccessPolicy | None = None,
                 limits: RateLimits | None = None, import_limits: ImportLimits | None = None,
                 ready_depth: int = 0, ready_cap: int = 64, ready_batch: int = 1):
        """`sampler` is served through a `LiveModel` that follows `repo` (it owns the sampler's pipeline from now
        on). `access` defaults to one person's in-process studio (`local_admin`: everyone is an admin; a served
        studio gets its policy from `StudioConfig`), `limits` to none. `ready_depth` pairs per annotator and
        prompt are made ahead for the Label tab (`app.ready`; 0 = none, the default here), up to `ready_batch` in one
        generation."""
        self.repo = repo
        self.worker = worker
        self.live = LiveModel(sampler, repo)  # its follower starts with the server: new adapters go live promptly
        if worker is not None and getattr(worker, "priority", False) is None:
            worker.priority = self.live.priority  # sampling first: the worker in this process yields to generation
        self.access = access or AccessPolicy(local_admin=True)
        self.limits = limits or RateLimits.off()
        self.import_limits = import_limits or ImportLimits()
        self.suggestions = suggestions or default_suggestions(sampler.model)
        self.export_dir = Path(tempfile.mkdtemp(prefix="studio-export-"))
        self.training = TrainingControls(repo, worker, trainer_config)
        self.releases = Releases(repo, self.live)
        self.data = DataExchange(repo, self.export_dir, self.import_limits)
        self._status_cache: tuple[float, dict] | None = None
        self.ready = ReadyQueue(self, ready_depth, ready_cap, batch=ready_batch)  # its thread starts with start()
        self.live.on_swap.append(self.ready.refresh)  # a new version's pairs go first
        self.campaign = Campaign(repo)
        from app.gallery import Gallery  # imported here: app.gallery uses this module's input checks
        self.gallery = Gallery(self)  # the Compare tab's before/after grid and version strip, with their cache

    @classmethod
    def open(cls, config: StudioConfig) -> Studio:
        """Load the model, open (and migrate) the repository, and prepare the worker (not started yet)."""
        trainer_config = config.trainer_config()  # checked with the rest of the config at start-up
        model = load_pipeline(config.model, device=config.device, dtype=config.dtype)
        repo = Repository(config.data_dir, config.database_url)
        worker = None
        if config.worker:
            worker_config = dataclasses.replace(config.worker_config(), train_voters=config.effective_train_voters())
            worker = Worker(repo, model.model_id, trainer_config, worker_config, device=config.device,
                            dtype=config.dtype)
        return cls(Sampler(model), repo, worker, trainer_config, access=config.access_policy(),
                   limits=config.rate_limits(), import_limits=config.import_limits(), ready_depth=config.ready_depth,
                   ready_cap=config.ready_cap, ready_batch=config.ready_batch_for(model.is_embedded))

    def start(self) -> None:
        """Start the background threads: the live model's follower of storage, and the worker when there is one."""
        self.live.start()
        self.ready.start()
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        self.ready.stop()
        self.live.stop()
        if self.worker is not None:
            self.worker.stop()
        shutil.rmtree(self.export_dir, ignore_errors=True)
        self.repo.close()

    # ---- Label tab --------------------------------------------------------------------------------------------
    def new_pair(self, prompt: str, seeds=None, *, annotator: str, address: str | None = None) -> PairView:
        """Generate two images of `prompt` with the live adapter and store them as a pair served to `annotator`."""
        return self.new_pairs(prompt, 1, seeds, annotator=annotator, address=address)[0]

    def new_pairs(self, prompt: str, count: int = 1, seeds=None, *, annotator: str,
                  address: str | None = None) -> list[PairView]:
        """Up to `count` pairs of `prompt` from one generation of 2 x `count` images (on a CPU a batch of two pairs
        takes little longer than one pair), each stored and served to `annotator` and counted against the pair
        rate limits: a refusal of the first reaches the caller, pairs beyond the limit are not made. `seeds`
        ("a, b") choose one pair's images."""
        prompt = checked_prompt(prompt)
        given = parse_seeds(seeds, 2)
        if count < 1 or (given and count != 1):
            raise ValueError(f"count must be >= 1, and 1 with seeds; got {count}")
        chosen = given or random_seeds(2 * count)
        if chosen[0] == chosen[1]:
            raise StudioError(f"the two seeds are equal ({chosen[0]}): a pair needs two different images")
        self.limits.check_pair(annotator, address)
        allowed = 1
        while allowed < count:
            try:
                self.limits.check_pair(annotator, address)
            except RateLimitedError:
                break
            allowed += 1
        images = self.live.generate(prompt, chosen[:2 * allowed])  # at the version storage says is live now
        return [self._stored_pair(prompt, images[i], images[i + 1], annotator) for i in range(0, 2 * allowed, 2)]

    def _stored_pair(self, prompt: str, left, right, annotator: str) -> PairView:
        gens = [NewGeneration(seed=g.seed, model_id=g.trajectory.model_id, adapter_version=g.trajectory.adapter_version,
                              sampler_settings=g.trajectory.settings, image_png=png_bytes(g.image),
                              trajectory=g.trajectory.to_bytes()) for g in (left, right)]
        pair = self.repo.create_pair(prompt, gens[0], gens[1], served_to=annotator)
        return PairView(pair.id, prompt, left.image, right.image, (left.seed, right.seed),
                        left.trajectory.adapter_version)

    def vote(self, pair_id, choice: str, *, annotator: str, address: str | None = None) -> dict:
        """Record and commit one vote on a pair served to `annotator`; returns the acknowledgement. A second vote on
        the same pair is refused, and so is a vote on a pair served to someone else."""
        pid = parse_pair_id(pair_id)
        if choice not in VOTE_CHOICES:
            raise StudioError(f"choice must be one of {', '.join(VOTE_CHOICES)}; got {choice!r:.40}")
        self.limits.check_vote(annotator, address)
        record, created = self.repo.record_vote(pid, annotator, choice, served_only=True)
        if not created:
            raise StudioError(f"pair {pid} already has your vote {record.choice!r}; it stands and nothing changed")
        return {"recorded": True, "vote_id": record.id, "pair_id": record.pair_id, "choice": record.choice,
                "annotator": record.annotator, "created_at": record.created_at.isoformat()}

    # ---- labeling campaigns (app.campaign) ---------------------------------------------------------------------
    def set_campaign(self, prompts, *, actor: Actor) -> list[str]:
        """Make `prompts` (a list, or text with one prompt a line; empty ends it) the labeling campaign (admins
        only); each is checked like a pair's prompt, and a bad one changes nothing."""
        self.require_admin(actor, "setting a labeling campaign")
        lines = prompts.splitlines() if isinstance(prompts, str) else list(prompts or [])
        try:
            return self.campaign.set([checked_prompt(line) for line in lines if str(line).strip()])
        except ValueError as e:
            raise StudioError(str(e)) from e

    def next_prompt(self, current: str | None, order: list[str] | None = None) -> str | None:
        """What an annotator is offered after a vote: the campaign prompt with the fewest votes, else `current`
        (`order`: the campaign's `order()` when the caller has it already)."""
        order = self.campaign.order() if order is None else order
        return order[0] if order else current

    def prompt_rows(self, actor: Actor | None = None) -> list[dict]:
        """Votes per prompt: the campaign's for everyone, every prompt for admins (prompts typed by annotators)."""
        return self.campaign.rows(every_prompt=self.is_admin(actor))

    # ---- Compare tab ------------------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Every registered adapter version, oldest first (rejected ones too: they can still be looked at)."""
        return [a.version for a in self.repo.list_adapters()]

    def compare(self, prompt: str, seed, version_a: int | None, version_b: int | None, *, annotator: str,
                address: str | None = None) -> tuple[Image.Image, Image.Image]:
        """The images of two versions (None = base) from the same prompt and seed; what is live stays live (and a
        swap the live model has prepared stays prepared)."""
        prompt = checked_prompt(prompt)
        chosen = one_seed(seed)
        view_a = self.live.at(version_a)  # UnknownAdapterError before anything is rendered
        view_b = view_a if version_b == version_a else self.live.at(version_b)
        self.limits.check_pair(annotator, address)
        a = view_a.generate(prompt, [chosen])[0].image
        b = a if view_b is view_a else view_b.generate(prompt, [chosen])[0].image
        return a, b

    def blind_trial(self, prompt: str, seed=None, *, annotator: str, address: str | None = None) -> BlindTrial:
        """Base vs. the live adapter from one seed, sides shuffled."""
        prompt = checked_prompt(prompt)
        live = self.repo.live_adapter()
        if live is None:
            raise StudioError("no adapter is live yet: vote on a few pairs until the first training run finishes")
        chosen = one_seed(seed)
        views = self.live.at(None), self.live.at(live.version)
        self.limits.check_pair(annotator, address)
        base, adapted = (view.generate(prompt, [chosen])[0].image for view in views)
        side = random.choice(("left", "right"))
        left, right = (adapted, base) if side == "left" else (base, adapted)
        return BlindTrial(prompt, chosen, live.version, side, left, right)

    def record_blind(self, trial: BlindTrial | None, choice: str, *, annotator: str,
                     address: str | None = None) -> dict:
        """Store the person's choice in a blind trial (not a training vote); returns their running win rate."""
        if trial is None:
            raise StudioError("no blind trial is open: start one first")
        if choice not in BLIND_CHOICES:
            raise StudioError(f"blind choice must be one of {', '.join(BLIND_CHOICES)}; got {choice!r:.40}")
        self.limits.check_vote(annotator, address)
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

    def win_rate_points(self) -> list[dict]:
        """Blind A/B win rate over the base per version (all annotators) with its 95 % interval."""
        points = []
        for version in self.versions():
            w = self.win_rate(version)
            if w["n"]:
                for series in ("rate", "lo", "hi"):
                    points.append({"version": f"v{version}", "win rate": w[series],
                                   "series": {"rate": "win rate", "lo": "95% low", "hi": "95% high"}[series]})
        return points

    # ---- status -----------------------------------------------------------------------------------------------
    def status(self, max_age_s: float = 0.0, *, admin: bool = False) -> dict:
        """What the status bar and `/status` show: votes, live adapter, worker state. Only an `admin` gets a failed
        run's error text (it may hold paths and names); others learn that it failed.

        `max_age_s` > 0 may answer from a status computed that recently: every open tab polls it, and counting
        reads every vote."""
        cached = self._status_cache
        if max_age_s > 0 and cached is not None and time.monotonic() - cached[0] <= max_age_s:
            fresh = cached[1]
        else:
            fresh = self._status()
            self._status_cache = (time.monotonic(), fresh)
        return fresh if admin else public_status(fresh)

    def _status(self) -> dict:
        counts = self.repo.counts()
        live = self.repo.live_adapter()
        worker = json_safe(self.worker.state()) if self.worker is not None else {"state": "off"}
        return {"votes": counts["votes"], "pairs": counts["pairs"], "annotators": counts["annotators"],
                "live_adapter_version": None if live is None else live.version,
                "serving_adapter_version": self.live.adapter_version,
                "worker_state": worker.get("state"), "worker_error": worker.get("last_error"),
                "training_progress": worker.get("progress"),
                "votes_pending": worker.get("votes_pending"), "last_run": worker.get("last_run"),
                "training_phase": worker.get("phase"), "time_left_s": worker.get("time_left_s"),
                "last_release": self.last_release()}

    def last_release(self) -> dict | None:
        """What the newest adapter changed, for everyone: its version and status, the votes it used (and how many
        more than its parent), and the guard's verdict with its figures; None before the first."""
        adapters = self.repo.list_adapters()
        if not adapters:
            return None
        newest = adapters[-1]
        parent = next((a for a in adapters if a.version == newest.parent_version), None)
        m = newest.metrics
        return {"version": newest.version, "status": newest.status, "votes_used": newest.votes_used,
                "new_votes": newest.votes_used - (parent.votes_used if parent else 0),
                "guard_passed": m.get("fidelity_passed"), "fidelity_base": m.get("fidelity_base"),
                "fidelity_candidate": m.get("fidelity_candidate"), "fidelity_units": m.get("fidelity_units")}

    # ---- Train and Data tabs: admins only for what changes something (checked here, done by app.admin) --------
    def is_admin(self, actor: Actor | None) -> bool:
        """Whether `actor` may use admin controls; a wrong admin token is logged and counted against the actor's
        address, and once an address has tried too many, every token from it is refused for a while."""
        return self.access.is_admin(self.checked_token(actor))

    def checked_token(self, actor: Actor | None) -> Actor | None:
        """`actor` as it may act: its admin token kept only when it is the right one (RateLimitedError while its
        address is throttled for wrong tokens)."""
        if actor is None or not actor.token:
            return actor
        key = actor.address or "unknown"
        if self.limits.token_failures.blocked(key):
            log.warning("admin token from %s refused: too many wrong tokens from this address", key)
            self.limits.token_failures.check(key)  # raises RateLimitedError, naming the wait
        if self.access.token_matches(actor.token):
            return actor
        log.warning("wrong admin token from %s (annotator %r)", key, actor.name)
        self.limits.token_failures.check(key)
        return dataclasses.replace(actor, token=None)

    def require_admin(self, actor: Actor | None, action: str) -> None:
        """AdminRequiredError (logged) unless `actor` is an admin (see `is_admin` for the token)."""
        self.access.require_admin(self.checked_token(actor), action)

    def settings(self) -> dict:
        """The settings the Train tab edits (beta None = the objective's default; train_annotators None = all)."""
        return self.training.settings()

    def update_settings(self, *, actor: Actor, **changes) -> dict:
        """New settings for the next runs (admins only); a bad value raises StudioError and changes nothing."""
        self.require_admin(actor, "changing the training settings")
        return self.training.update_settings(changes, by=actor.name)

    def train_now(self, *, actor: Actor) -> bool:
        """Ask the worker for a run now (admins only); False when one is already going."""
        self.require_admin(actor, "train now")
        return self.training.train_now(by=actor.name)

    def adapters(self, actor: Actor | None = None) -> list[dict]:
        """The adapter history; its notes (who made a version live, why it was rejected) for admins only."""
        rows = self.training.adapters()
        if self.is_admin(actor):
            return rows
        return [{**row, "note": ""} for row in rows]

    def loss_points(self) -> list[dict]:
        return self.training.loss_points()

    def make_live(self, version: int | None, *, actor: Actor) -> int | None:
        """Make `version` (None = the base model) live (admins only); a file that does not match its recorded
        SHA-256 is refused and nothing changes."""
        self.require_admin(actor, "make live")
        return self.releases.make_live(version, by=actor.name)

    def rollback(self, *, actor: Actor) -> int | None:
        """Retire the live adapter and make the newest earlier version that had been live (or the base) live."""
        self.require_admin(actor, "roll back")
        return self.releases.rollback(by=actor.name)

    def export(self, *, actor: Actor) -> tuple[Path, int]:
        """All preference votes with their images as Pick-a-Pic Parquet (admins only); returns (file, rows)."""
        self.require_admin(actor, "export")
        return self.data.export(by=actor.name)

    def import_file(self, path, *, actor: Actor) -> int:
        """Import a Pick-a-Pic Parquet file the server chose (admins only; all rows or none); returns pairs added."""
        self.require_admin(actor, "import")
        return self.data.import_file(path, by=actor.name)

    def counts(self) -> dict:
        return self.data.counts()

    def annotator_rows(self, actor: Actor | None = None) -> tuple[list[dict], list[dict]]:
        """Votes per annotator and agreement (admins); anyone else gets their own row only, and no couples."""
        rows, couples = self.data.annotator_rows()
        if self.is_admin(actor):
            return rows, couples
        mine = actor.name if actor is not None else None
        return [row for row in rows if mine and row["annotator"] == mine], []

    def settings_for(self, actor: Actor | None) -> dict:
        """`settings()`, with the names of `train_annotators` for admins only."""
        shown = self.settings()
        if not self.is_admin(actor) and shown["train_annotators"]:
            shown["train_annotators"] = [f"{len(shown['train_annotators'])} chosen annotators"]
        return shown


def public_status(status: dict) -> dict:
    """`status` without what only admins read: a failed run's error text and its details."""
    shown = dict(status)
    if shown.get("worker_error"):
        shown["worker_error"] = "the last training run did not go live (admins see why)"
    run = shown.get("last_run")
    if isinstance(run, dict):
        shown["last_run"] = {k: run[k] for k in ("run_id", "status", "version") if k in run}
    return shown


def default_suggestions(model) -> list[str]:
    """Prompts to start from: the embedded model's grammar, or a few general ones."""
    if model.is_embedded:
        from alignment.embedded.data import grammar_prompts
        return grammar_prompts(seed=0, n=24)
    return list(BUILTIN_PROMPTS)


def checked_prompt(prompt) -> str:
    try:
        prompt = validate_prompt(prompt)
    except ValueError as e:
        raise StudioError(str(e)) from e
    if "\x00" in prompt:
        raise StudioError("the prompt contains a NUL character")
    return prompt


def one_seed(seed) -> int:
    given = parse_seeds([seed] if isinstance(seed, (int, float)) else seed, 1)
    return (given or random_seeds(1))[0]


def random_seeds(n: int) -> list[int]:
    return random.sample(range(RANDOM_SEED_LIMIT), n)
