"""Every setting of the studio, defined once: name, type, default, help and validation, in typed dataclasses.

The command lines of the app, the worker, the simulation and the generate command, and the `STUDIO_*`
environment variables, are derived from these classes (`settings_cli`); nothing else defines a default, a flag
or a variable. The limits that several layers check (prompt length, annotator names, vote choices) live here too.
Each class checks its own values in `__post_init__` and raises ValueError with a message a user can act on.
This module imports no torch, no gradio and no SQL, so every layer can read it; it knows neither how a setting
is used nor how a command line is parsed.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

# Limits checked by storage, the sampler and the UI alike.
MAX_PROMPT_CHARS = 500  # prompts longer than this are refused; CLIP reads ~300 characters anyway
MAX_ANNOTATOR_CHARS = 100  # annotator names, as storage keeps them
VOTE_CHOICES = ("left", "right", "tie", "both_bad", "skip")

OBJECTIVES = ("discounted", "trajectory", "diffusion-dpo")
PAIR_ORDERS = ("uniform", "epochs")
DEFAULT_BETA = {"discounted": 10.0, "trajectory": 10.0, "diffusion-dpo": 2500.0}
FIDELITY_SCORERS = ("auto", "drift", "embedded", "clip")  # or "module:function"
# The fidelity guard's drift limit: a candidate's image at a (prompt, seed) may differ from the base's image there by
# at most half the mean distance between two different base images. On the embedded model, adapters trained on
# 48 'larger' labels drift 0.02-0.21 of it at the default lr (what the studio serves) and at most 0.43 at ten times
# that lr, a random LoRA that turns every image into noise or mush 1.1: above 0.5 a candidate's image is nearer to
# "some other picture" than to "the base's picture, changed".
MAX_DRIFT = 0.5
# The fidelity guard's two seed sets (docs/guard.md), one image per seed by default: a seed whose shape goes wrong
# fails every attribute at once, so the effective sample of a fidelity figure is its seeds, not its images. Both
# ranges sit far from the evaluation seeds (10^6 + 1000 * run seed + j) and from every training pair's seed that the
# simulation and the benchmarks draw (run seed * 10^5 + i); tests/alignment/test_guard_seeds.py checks it.
GUARD_SELECTION_SEED_BASE = 1_500_000_000
GUARD_CONFIRM_SEED_BASE = 1_600_000_000
GUARD_SEEDS = 64


def confirmation_seeds(selection, confirm=None) -> tuple[int, ...]:
    """The guard's confirmation seeds: `confirm`, or as many seeds as `selection` from GUARD_CONFIRM_SEED_BASE;
    never empty and never sharing a seed with `selection` (the confirmation is a second, independent test)."""
    chosen = tuple(int(s) for s in (range(GUARD_CONFIRM_SEED_BASE, GUARD_CONFIRM_SEED_BASE + max(1, len(selection)))
                                    if confirm is None else confirm))
    if not chosen or set(chosen) & {int(s) for s in selection}:
        raise ValueError("fidelity_confirm_seeds must hold at least one seed and none of fidelity_seeds: the "
                         "confirmation is a second, independent test")
    return chosen

# Guards of a public studio (bound to another address than loopback, or on a Space); off on localhost.
PUBLIC_PAIRS_PER_MINUTE = 30  # generated pairs per annotator (compare and blind A/B renders count too)
PUBLIC_VOTES_PER_MINUTE = 120  # votes per annotator (blind A/B choices count too)
PUBLIC_MODELS = ("embedded",)  # the models a public studio may load unless allow_models says otherwise
PUBLIC_ADDRESS_FACTOR = 4  # per client address: this many annotators' worth of pairs and votes (a household, a lab)
# Anonymous annotator ids (signed by the server) start with one of these; signed-in names never do.
ANONYMOUS_PREFIXES = ("anon-", "client-")
TRAIN_VOTERS = ("everyone", "signed-in")


def is_anonymous(annotator: str) -> bool:
    """True for an anonymous annotator id (not a password login or a Hugging Face sign-in)."""
    return annotator.startswith(ANONYMOUS_PREFIXES)


def setting(default=MISSING, help: str = "", *, choices: tuple | None = None, aliases: tuple[str, ...] = (),
            secret: bool = False, metavar: str | None = None):
    """A dataclass field with the metadata the command lines are derived from. `secret` keeps the value out of
    repr (and so out of logs); `aliases` are extra flags kept for documented command lines."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if aliases:
        metadata["aliases"] = tuple(aliases)
    if metavar is not None:
        metadata["metavar"] = metavar
    if secret:
        metadata["secret"] = True
    return field(default=default, repr=not secret, metadata=metadata)


def default(cls, name: str):
    """The default of field `name` of dataclass `cls`: for code that must agree with a setting's default."""
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise AttributeError(f"{cls.__name__} has no setting {name!r}")


def names(value, what: str) -> tuple[str, ...]:
    """Distinct, stripped, non-empty names from "a, b", a sequence of names, or a sequence of such strings."""
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: expected names, got {item!r:.40}")
        for name in item.split(","):
            if name.strip() and name.strip() not in out:
                out.append(name.strip())
    return tuple(out)


def _whole(value, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or int(value) != value or value < low or (high is not None and value > high):
        where = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} must be a whole number {where}, got {value}")
    return int(value)


@dataclass
class ModelConfig:
    """Which model to load, and where."""

    model: str = setting("embedded", "'embedded' (offline, CPU), a hub id like org/name or a local diffusers folder")
    device: str | None = setting(None, "cpu, cuda or cuda:N; unset = a GPU when there is one, else the CPU")
    dtype: str | None = setting(None, "weights' precision: fp32, fp16 or bf16; unset = bf16 on a GPU that has it, "
                                      "else fp16, and fp32 on a CPU. bf16 rounds the last, low-noise steps of a "
                                      "chain more coarsely than fp16 (see docs/models.md)")

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be 'embedded', a hub id like 'org/name' or a local folder")
        if self.dtype not in (None, "", "auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"dtype must be fp32, fp16, bf16 or unset (auto), got {self.dtype!r}")


@dataclass
class StoreConfig:
    """Where votes, images, trajectories and adapters are kept."""

    data_dir: Path = setting(Path("studio-data"), "the blob store (images, trajectories, adapters) and, without "
                                                  "database_url, the SQLite database")
    database_url: str | None = setting(None, "any SQLAlchemy URL (e.g. postgresql+psycopg://...) instead of SQLite "
                                             "in the data dir", secret=True)

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)


@dataclass
class SamplerConfig:
    """Settings of the stochastic DDIM sampler (the trainer re-uses them for the log-probabilities)."""

    steps: int = setting(20, "DDIM steps per image (K)")
    guidance_scale: float = setting(5.0, "classifier-free guidance scale (1 = none)")
    eta: float = setting(1.0, "DDIM eta in (0, 1]: the noise of each step (the objective needs eta > 0)")
    height: int = setting(32, "image height in pixels, a multiple of 8")
    width: int = setting(32, "image width in pixels, a multiple of 8")
    negative_prompt: str = setting("", "the prompt guidance steers away from")
    guidance_rescale: float = setting(0.0, "phi in [0, 1]: rescales the guided prediction towards the conditional "
                                           "one's std (Lin et al. 2023; 0.7 suits zero-terminal-SNR models)")

    def __post_init__(self):
        if not 1 <= int(self.steps) <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no classifier-free guidance), got "
                             f"{self.guidance_scale}")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"eta must be in (0, 1]: the objective needs a stochastic chain, got {self.eta}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1] (0 = off), got {self.guidance_rescale}")
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got {self.height}x{self.width}")

    @classmethod
    def from_defaults(cls, defaults: dict, **overrides) -> "SamplerConfig":
        names = cls.__dataclass_fields__
        merged = {k: v for k, v in defaults.items() if k in names}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**merged)


@dataclass
class TrainerConfig:
    """Objective and optimiser settings. Defaults are tuned for the embedded model (docs/objective.md, "Defaults
    against the authors'")."""

    objective: str = setting("discounted", "discounted: the paper's gamma-weighted dense DPO; trajectory: gamma = 1; "
                                           "diffusion-dpo: forward-noised images (imported pairs)", choices=OBJECTIVES)
    gamma: float = setting(0.9, "temporal discount in (0, 1]: step k (0 = noisiest) weighs gamma^k; trajectory "
                                "forces 1")
    beta: float | None = setting(None, "DPO inverse temperature; unset = the objective's default "
                                       f"({', '.join(f'{k} {v:g}' for k, v in DEFAULT_BETA.items())})")
    log_ratio_clip: float = setting(1e-2, "eps: each step's log-ratio is clamped to [-eps, eps]")
    steps_per_pair: int = setting(3, "M: step indices sampled per pair and update")
    train_steps: int = setting(120, "optimiser steps per training run (at most; see pair_epochs)")
    pair_epochs: float | None = setting(24.0, "a run on few votes is shorter: it takes min(train_steps, "
                                              "ceil(pair_epochs x pairs / batch_pairs)) steps, so each pair is "
                                              "drawn about this many times (24: 24 steps on 8 votes, train_steps "
                                              "from 40 pairs on); unset = always train_steps")
    batch_pairs: int = setting(8, "pairs per optimiser step (at least the number of training processes)")
    pair_order: str = setting("uniform", "how a step's pairs are drawn: uniform (each independently, with "
                                         "replacement) or epochs (every pair once per pass, in a new shuffled order "
                                         "each pass)", choices=PAIR_ORDERS)
    lr: float = setting(3e-4, "AdamW learning rate (with 120 steps and checkpoints every 10: docs/benchmarks.md, "
                              "'What the studio serves')")
    weight_decay: float = setting(2e-3, "AdamW weight decay")
    grad_clip: float = setting(1.0, "gradient norm clip")
    lora_rank: int = setting(4, "rank of the LoRA matrices", aliases=("--rank",))
    lora_alpha: float | None = setting(None, "LoRA alpha; unset = the rank (scale 1)")
    target_modules: tuple[str, ...] = setting(("to_q", "to_k", "to_v", "to_out.0"),
                                              "modules the LoRA wraps, e.g. to_q,to_k,to_v,to_out.0,conv1,conv2")
    tie_policy: str = setting("drop", "ties: drop them, or 'half': train towards 0.5", choices=("drop", "half"))
    mixed_precision: str = setting("no", "autocast for training on a GPU: bf16 (Ampere or newer), fp16 (e.g. a T4)",
                                   choices=("no", "fp16", "bf16"))
    checkpoint_every: int = setting(10, "keep the LoRA weights every N steps too (0 = only the final ones), so that "
                                        "the fidelity guard can fall back to the latest earlier state that passes "
                                        "when the final one drifts too far")
    gradient_checkpointing: bool = setting(False, "recompute UNet activations in the backward pass: less memory, "
                                                  "more time (large models)")
    micro_batch: int = setting(0, "trajectory steps per UNet call in training (0 = the whole batch at once). With a "
                                  "size, the policy is evaluated once without gradients, the loss's derivative by "
                                  "each log-prob is taken, and the gradient is accumulated chunk by chunk: "
                                  "activation memory is one chunk's, for one more forward")
    seed: int = setting(0, "seed of a training run (LoRA initialisation, pair order, step indices)")

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        for name in ("gamma", "beta", "log_ratio_clip", "lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not self.log_ratio_clip > 0:
            raise ValueError(f"log_ratio_clip must be positive, got {self.log_ratio_clip}")
        if self.pair_epochs is not None and (isinstance(self.pair_epochs, bool)
                                             or not 0 < self.pair_epochs < 1e6):
            raise ValueError(f"pair_epochs must be a positive number (or unset), got {self.pair_epochs}")
        for name in ("steps_per_pair", "train_steps", "batch_pairs", "lora_rank"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0 or self.micro_batch < 0:
            raise ValueError(f"checkpoint_every and micro_batch must be >= 0, got {self.checkpoint_every} and "
                             f"{self.micro_batch}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("weight_decay must be >= 0 and grad_clip > 0")
        if self.pair_order not in PAIR_ORDERS:
            raise ValueError(f"pair_order must be one of {', '.join(PAIR_ORDERS)}, got {self.pair_order!r}")
        if self.tie_policy not in ("drop", "half"):
            raise ValueError(f"tie_policy must be 'drop' or 'half', got {self.tie_policy!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        self.target_modules = names(self.target_modules, "target_modules")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module, e.g. to_q,to_k,to_v,to_out.0")

    def steps_for(self, pairs: int) -> int:
        """Optimiser steps of a run on `pairs` training pairs."""
        if self.pair_epochs is None:
            return self.train_steps
        return max(1, min(self.train_steps, math.ceil(self.pair_epochs * pairs / self.batch_pairs)))

    @property
    def effective_gamma(self) -> float:
        return 1.0 if self.objective == "trajectory" else self.gamma

    @property
    def effective_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.objective]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


@dataclass
class WorkerConfig:
    """When the worker trains, on whose votes, and what a candidate must pass to go live."""

    train_every: int = setting(8, "new preference votes that start a training run")
    train_interval_s: float | None = setting(None, "also train every this many seconds when there are new votes "
                                                   "(unset = on votes only)")
    min_votes: int = setting(4, "never train on fewer preference votes than this")
    poll_s: float = setting(1.0, "seconds between the worker's looks at the vote count")
    train_annotators: tuple[str, ...] | None = setting(None, "train only on these annotators' votes (names "
                                                             "separated by commas; unset = everyone's)")
    train_voters: str | None = setting(None, "whose votes train: everyone, or signed-in (password logins and "
                                             "Hugging Face sign-ins, no anonymous ids); unset = signed-in on a "
                                             "public studio where people can sign in, else everyone",
                                       choices=TRAIN_VOTERS)
    fidelity_max_drop: float = setting(0.05, "the margin of the fidelity guard: a candidate passes when the lower "
                                             "confidence bound of its prompt fidelity minus the base's, paired by "
                                             "seed, stays above minus this")
    fidelity_seeds: tuple[int, ...] = setting(tuple(range(GUARD_SELECTION_SEED_BASE,
                                                            GUARD_SELECTION_SEED_BASE + GUARD_SEEDS)),
                                              "seeds of the guard's selection set: each is one paired unit of the "
                                              "test against the base (default 64 seeds from 1.5e9)")
    fidelity_prompts: int | None = setting(1, "held-out prompts the guard renders at each of its seeds, taken in "
                                              "turn from the prompt list (unset = all prompts at every seed)")
    fidelity_confirm_seeds: tuple[int, ...] | None = setting(None, "seeds of the confirmation set, disjoint from "
                                                                   "fidelity_seeds: the chosen checkpoint must pass "
                                                                   "again there before it goes live (unset = as "
                                                                   "many seeds as fidelity_seeds, from 1.6e9)")
    fidelity_alpha: float = setting(0.1, "one-sided error rate of the guard's test: the (1 - alpha) lower "
                                         "confidence bound of the mean per-seed fidelity difference (candidate - "
                                         "base) must stay above -fidelity_max_drop")
    fidelity_scorer: str = setting("auto", "prompt-fidelity scorer of the guard: auto (the embedded model's image "
                                           "analysis; CLIP when clip_model is set; else drift alone), drift, "
                                           "embedded, clip, or module:function ((images, prompts) -> float in [0, 1])")
    clip_model: str | None = setting(None, "CLIP model for the clip scorer: a hub id (e.g. "
                                           "openai/clip-vit-base-patch32) or a local folder")
    fidelity_max_drift: float | None = setting(MAX_DRIFT, "reject a candidate whose images moved from the base's at "
                                                          "equal seeds by more than this fraction of the distance "
                                                          "between two different base images (unset = no drift "
                                                          "check)")
    warm_guard: bool = setting(True, "render the fidelity guard's base images once a quarter of train_every votes "
                                     "are in, while waiting for the rest (the run's guard then renders only "
                                     "candidates)")
    shipped_guard_base: bool = setting(True, "use the fidelity guard's base images that came with the model (its "
                                             "guard-base folder; the embedded models ship theirs) when the data "
                                             "directory has none, after one image of each seed set renders the "
                                             "same again")
    sampling_wait_s: float = setting(2.0, "sampling first: when the worker runs in the app's process, each training "
                                           "step and guard render waits up to this many seconds while images are "
                                           "being made for someone (0 = never wait)")
    sampling_wait_run_s: float = setting(20.0, "sampling first's bound per run: a training run (its steps and its "
                                               "guard) waits for image making at most this many seconds in all, "
                                               "then goes on without waiting, so that a person who votes without "
                                               "pause still sees their votes take effect")
    lease_ttl_s: float = setting(600.0, "seconds a dead worker can block others; the training lease is renewed from "
                                        "the training steps, so this must exceed the time to load the model and to "
                                        "run the fidelity guard", aliases=("--lease-ttl",))

    @property
    def confirm_seeds(self) -> tuple[int, ...]:
        """The guard's confirmation seeds: `fidelity_confirm_seeds`, or (unset) as many as `fidelity_seeds` from
        1.6e9, so that `dataclasses.replace(cfg, fidelity_seeds=...)` moves an unset confirmation set with it."""
        return confirmation_seeds(self.fidelity_seeds, self.fidelity_confirm_seeds)

    def __post_init__(self):
        if int(self.train_every) < 1:
            raise ValueError(f"train_every must be at least 1 vote, got {self.train_every}")
        if int(self.min_votes) < 1:
            raise ValueError(f"min_votes must be at least 1, got {self.min_votes}")
        if self.train_interval_s is not None and not self.train_interval_s > 0:
            raise ValueError(f"train_interval_s must be positive seconds or unset, got {self.train_interval_s}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be positive, got {self.poll_s}")
        if not 0 <= self.sampling_wait_s <= 3600:
            raise ValueError(f"sampling_wait_s must be in [0, 3600] seconds, got {self.sampling_wait_s}")
        if not 0 <= self.sampling_wait_run_s <= 24 * 3600:
            raise ValueError(f"sampling_wait_run_s must be in [0, 86400] seconds, got {self.sampling_wait_run_s}")
        if not 0 < self.lease_ttl_s <= 7 * 24 * 3600:
            raise ValueError(f"lease_ttl_s must be positive and at most a week, got {self.lease_ttl_s}")
        if not 0 <= self.fidelity_max_drop < 1:
            raise ValueError(f"fidelity_max_drop must be in [0, 1), got {self.fidelity_max_drop}")
        self.fidelity_seeds = tuple(int(s) for s in self.fidelity_seeds)
        if not self.fidelity_seeds:
            raise ValueError("fidelity_seeds must hold at least one seed")
        if self.fidelity_prompts is not None:
            self.fidelity_prompts = _whole(self.fidelity_prompts, "fidelity_prompts", 1)
        if self.fidelity_confirm_seeds is not None:  # unset stays unset: `confirm_seeds` follows fidelity_seeds
            self.fidelity_confirm_seeds = tuple(int(s) for s in self.fidelity_confirm_seeds)
        confirmation_seeds(self.fidelity_seeds, self.fidelity_confirm_seeds)  # checked now
        if not 0 < self.fidelity_alpha <= 0.5:
            raise ValueError(f"fidelity_alpha must be in (0, 0.5], got {self.fidelity_alpha}")
        self.train_annotators = (None if self.train_annotators is None
                                 else names(self.train_annotators, "train_annotators") or None)
        if self.train_voters is not None and self.train_voters not in TRAIN_VOTERS:
            raise ValueError(f"train_voters must be one of {', '.join(TRAIN_VOTERS)}, got {self.train_voters!r}")
        module, colon, function = self.fidelity_scorer.partition(":")
        if self.fidelity_scorer not in FIDELITY_SCORERS and not (colon and module and function):
            raise ValueError(f"fidelity_scorer must be one of {', '.join(FIDELITY_SCORERS)} or module:function, "
                             f"got {self.fidelity_scorer!r}")
        if self.clip_model is not None and not str(self.clip_model).strip():
            raise ValueError("clip_model must name a CLIP hub id or folder (or be None)")
        if self.fidelity_scorer == "clip" and self.clip_model is None:
            raise ValueError("fidelity_scorer 'clip' needs clip_model (a CLIP hub id or a local folder)")
        if self.fidelity_max_drift is not None and not self.fidelity_max_drift > 0:
            raise ValueError(f"fidelity_max_drift must be positive (or None: no drift check), got "
                             f"{self.fidelity_max_drift}")
        self.train_every, self.min_votes = int(self.train_every), int(self.min_votes)


@dataclass
class ServerConfig:
    """How the browser studio is served."""

    host: str = setting("127.0.0.1", "address to listen on; any but loopback makes the studio public "
                                     "(docs/security.md)")
    port: int = setting(7860, "port to listen on")
    concurrency: int = setting(8, "events served at once; generation always queues on one slot")
    worker: bool = setting(True, "train in a thread of the app; --no-worker leaves it to `python -m "
                                 "alignment.worker` against the same data")
    ready_depth: int = setting(3, "pairs made ahead per annotator and prompt by the live version, so the next "
                                  "pair shows as soon as a vote is committed; each counts against the pair rate "
                                  "limit; 0 = off (every pair is made after the vote)")
    ready_cap: int = setting(64, "pairs made ahead in all, across annotators (an idle annotator's are dropped "
                                 "after 10 minutes)")
    ready_batch: int = setting(0, "pairs the ready queue makes in one generation when a queue lacks that many; "
                                  "0 = 2 for the embedded models (on a CPU two pairs in one batch take little "
                                  "longer than one), 1 for other models (two pairs of a large model at once "
                                  "need twice the memory)")
    cpu_threads: int = setting(0, "torch threads per task (a generation, a training step) in the studio's process; "
                                  "0 = half the CPU cores, at least 1, unless OMP_NUM_THREADS is set: the "
                                  "in-process worker, the ready queue and a browser on the same machine then do "
                                  "not slow each other down by sharing every core")

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError("host must be an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
        self.port = _whole(self.port, "port", 1, 65535)
        self.concurrency = _whole(self.concurrency, "concurrency", 1)
        self.ready_depth = _whole(self.ready_depth, "ready_depth", 0, 8)
        self.ready_cap = _whole(self.ready_cap, "ready_cap", 0)
        self.ready_batch = _whole(self.ready_batch, "ready_batch", 0, 8)
        self.cpu_threads = _whole(self.cpu_threads, "cpu_threads", 0, 1024)

    def ready_batch_for(self, embedded: bool) -> int:
        """The ready queue's pairs per generation for an embedded model or another one."""
        return self.ready_batch or (2 if embedded else 1)

    def torch_threads(self, environ, cores: int | None) -> int | None:
        """The torch thread count to set for this process; None leaves torch's own (OMP_NUM_THREADS is set)."""
        if self.cpu_threads:
            return self.cpu_threads
        if environ.get("OMP_NUM_THREADS"):
            return None
        return max(1, (cores or 1) // 2)


@dataclass
class SharingConfig:
    """Who may vote and administer a shared studio, and how often (docs/security.md)."""

    auth: tuple[str, ...] = setting((), "a password login, repeatable; votes are recorded under USER (STUDIO_AUTH: "
                                        "entries separated by commas)", secret=True, metavar="USER:PASSWORD")
    auth_file: Path | None = setting(None, "one USER:PASSWORD per line; blank lines and # comments are skipped")
    admins: tuple[str, ...] = setting((), "signed-in names that may train, change settings, make live, roll back, "
                                          "import and export", metavar="NAME,NAME")
    admin_token: str | None = setting(None, "a secret (16+ characters) that unlocks admin controls in the UI and the "
                                            "API; prefer STUDIO_ADMIN_TOKEN, a flag shows in the process list",
                                      secret=True, metavar="TOKEN")
    secret: str | None = setting(None, "the key that signs browser-kept annotator ids; studios sharing a database "
                                       "need the same one; unset = one kept in the data dir (app-secret)",
                                 secret=True, metavar="KEY")
    local_admin: bool = setting(False, "everyone who reaches this studio is an admin, for one person on their own "
                                       "machine; refused unless the host is a loopback address, and never on a "
                                       "Space (behind a proxy or tunnel every visitor would be an admin)")
    pairs_per_minute: int | None = setting(None, "generated pairs per annotator per minute; 0 = no limit; unset = "
                                                 f"{PUBLIC_PAIRS_PER_MINUTE} when public, no limit on localhost")
    votes_per_minute: int | None = setting(None, "votes per annotator per minute; 0 = no limit; unset = "
                                                 f"{PUBLIC_VOTES_PER_MINUTE} when public, no limit on localhost")
    address_pairs_per_minute: int | None = setting(None, "generated pairs per client address per minute, whoever "
                                                         "signs them; 0 = no limit; unset = "
                                                         f"{PUBLIC_ADDRESS_FACTOR}x pairs_per_minute")
    address_votes_per_minute: int | None = setting(None, "votes per client address per minute; 0 = no limit; "
                                                         f"unset = {PUBLIC_ADDRESS_FACTOR}x votes_per_minute")
    identities_per_minute: int | None = setting(None, "new anonymous identities one client address may get per "
                                                      "minute; 0 = no limit; unset = 10 when public")
    token_failures_per_minute: int = setting(5, "wrong admin tokens one client address may try per minute; each "
                                                "is logged")
    queue_size: int = setting(64, "events that may wait in the queue; beyond it a client is told the studio is busy")
    pending_per_address: int | None = setting(None, "events one client address may have waiting in the queue; 0 = "
                                                    "no limit; unset = 8 when public, no limit on localhost; beyond "
                                                    "it, it is told the studio is busy (honest clients keep their "
                                                    "turn)")
    max_upload_mb: float = setting(64.0, "largest upload (an import file), in MB; larger ones are refused before "
                                         "they are read")
    uploads_per_minute: int = setting(10, "uploads per client address per minute")
    upload_cache_mb: float = setting(1024.0, "uploads kept on disk at most, in MB; uploads older than an hour are "
                                             "deleted, and new ones are refused while the cache is full")
    max_import_rows: int = setting(100_000, "rows an import file may hold")
    max_import_value_mb: float = setting(16.0, "largest single value (an image) in an import file, in MB")
    allowed_origins: tuple[str, ...] = setting((), "other web origins (scheme://host[:port]) whose pages may call "
                                                   "this studio; its own origin always may", metavar="ORIGIN,ORIGIN")
    forwarded_hops: int | None = setting(None, "reverse proxies in front of the studio whose X-Forwarded-For is "
                                               "trusted for the client address; unset = 1 on a Space, else 0")
    allow_models: tuple[str, ...] | None = setting(None, "models a public studio may load; unset = only "
                                                         f"{', '.join(PUBLIC_MODELS)} when public, any on localhost",
                                                   metavar="ID,ID")

    def __post_init__(self):
        self.auth = tuple(self.auth)
        self.auth_file = None if self.auth_file is None else Path(self.auth_file)
        self.admins = names(self.admins, "admins")
        self.allow_models = None if self.allow_models is None else names(self.allow_models, "allow_models")
        self.allowed_origins = names(self.allowed_origins, "allowed_origins")
        for origin in self.allowed_origins:
            scheme, sep, host = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not host or "/" in host:
                raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://example.org")
        if self.admin_token is not None and not self.admin_token.strip():
            self.admin_token = None
        if self.secret is not None and not self.secret.strip():
            self.secret = None
        for name in ("pairs_per_minute", "votes_per_minute", "address_pairs_per_minute", "address_votes_per_minute",
                     "identities_per_minute", "forwarded_hops", "pending_per_address"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _whole(value, name, 0))
        for name in ("token_failures_per_minute", "queue_size", "uploads_per_minute",
                     "max_import_rows"):
            setattr(self, name, _whole(getattr(self, name), name, 1))
        for name in ("max_upload_mb", "upload_cache_mb", "max_import_value_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e7:
                raise ValueError(f"{name} must be a positive number of MB, got {value}")


@dataclass
class GenerateConfig:
    """What `python -m alignment.generate` renders and writes."""

    seed: int = setting(0, "seed of the first image; the others use seed+1, seed+2, ...")
    n: int = setting(1, "number of images (1 to 64), saved side by side")
    out: Path = setting(Path("out.png"), "the PNG file to write")
    adapter: str | None = setting(None, "a LoRA folder or .safetensors file to apply")
    scale: int = setting(1, "enlarge the saved image by this factor (1 to 32, nearest neighbour)")

    def __post_init__(self):
        self.n = _whole(self.n, "n", 1, 64)
        self.scale = _whole(self.scale, "scale", 1, 32)
        self.out = Path(self.out)


@dataclass
class SimulationConfig:
    """The headless loop of `python -m alignment.simulate`: who labels, how many pairs, how it is judged."""

    labeler: str = setting("alignment.eval.labelers:larger", "the labeler, as module:function")
    pairs: int = setting(64, "pairs generated and labeled in all")
    rounds: int = setting(1, "on-policy rounds: each samples pairs / rounds pairs from the live model, then trains")
    eval_prompts: int = setting(32, "held-out prompts of the final evaluation")
    eval_seeds: int = setting(4, "seeds per held-out prompt")
    seed: int = setting(0, "seed of the prompts, the pairs, the evaluation seeds and the training runs")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self):
        if self.pairs < 2 or self.rounds < 1 or self.rounds > self.pairs:
            raise ValueError(f"need pairs >= 2 and 1 <= rounds <= pairs, got pairs {self.pairs} and rounds "
                             f"{self.rounds}")
        if self.eval_prompts < 1 or self.eval_seeds < 1:
            raise ValueError("eval_prompts and eval_seeds must be at least 1")
