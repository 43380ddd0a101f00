"""Every setting of the studio, defined once: typed dataclasses with defaults, help and validation.

The command lines of the app, the worker, the simulation and the generate command, and the `STUDIO_*`
environment variables, are derived from these classes; nothing else defines a default. This module imports no
torch, no gradio and no SQL, so every layer can read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OBJECTIVES = ("discounted", "trajectory", "diffusion-dpo")
DEFAULT_BETA = {"discounted": 10.0, "trajectory": 10.0, "diffusion-dpo": 2500.0}
FIDELITY_SCORERS = ("auto", "drift", "embedded", "clip")  # or "module:function"
# The fidelity guard's drift limit: a candidate's image at a (prompt, seed) may differ from the base's image there by
# at most half the mean distance between two different base images. On the embedded model, adapters trained on
# 48 'larger' labels drift 0.02-0.21 of it at the default lr (what the studio serves) and at most 0.43 at ten times
# that lr, a random LoRA that turns every image into noise or mush 1.1: above 0.5 a candidate's image is nearer to
# "some other picture" than to "the base's picture, changed".
MAX_DRIFT = 0.5


@dataclass
class SamplerConfig:
    """Settings of the stochastic DDIM sampler (the trainer re-uses them for the log-probabilities)."""

    steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    height: int = 32
    width: int = 32
    negative_prompt: str = ""

    def __post_init__(self):
        if not 1 <= int(self.steps) <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no classifier-free guidance), got {self.guidance_scale}")
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"eta must be in (0, 1]: the objective needs a stochastic chain, got {self.eta}")
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
    """Objective and optimiser settings. Defaults are tuned for the embedded model (see README, 'Tuning')."""

    objective: str = field(default="discounted", metadata={"help": "discounted | trajectory | diffusion-dpo"})
    gamma: float = field(default=0.9, metadata={"help": "temporal discount in (0, 1]; trajectory forces 1"})
    beta: float | None = field(default=None, metadata={"help": "DPO inverse temperature; None = per objective"})
    log_ratio_clip: float = field(default=1e-2, metadata={"help": "eps: per-step log-ratio clamp"})
    steps_per_pair: int = field(default=3, metadata={"help": "M: step indices sampled per pair and update"})
    train_steps: int = field(default=120, metadata={"help": "optimiser steps per training run"})
    batch_pairs: int = field(default=8, metadata={"help": "pairs per optimiser step"})
    lr: float = 3e-4  # with 120 steps and checkpoints every 10: see README, "What the studio serves"
    weight_decay: float = 2e-3
    grad_clip: float = 1.0
    lora_rank: int = 4
    lora_alpha: float | None = None  # None = rank (scale 1)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    tie_policy: str = field(default="drop", metadata={"help": "drop ties, or 'half': target 0.5"})
    mixed_precision: str = "no"
    checkpoint_every: int = field(default=10, metadata={
        "help": "keep the LoRA weights every N steps too (0 = only the final ones), so that the fidelity guard can "
                "fall back to the latest earlier state that passes when the final one drifts too far"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute UNet activations in the backward pass: less memory, more time (large models)"})
    micro_batch: int = field(default=0, metadata={
        "help": "trajectory steps per UNet call in training (0 = the whole batch at once). With a size, the policy "
                "is evaluated once without gradients, the loss's derivative by each log-prob is taken, and the "
                "gradient is accumulated chunk by chunk: activation memory is one chunk's, for one more forward"})
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not self.log_ratio_clip > 0:
            raise ValueError(f"log_ratio_clip must be positive, got {self.log_ratio_clip}")
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
        if self.tie_policy not in ("drop", "half"):
            raise ValueError(f"tie_policy must be 'drop' or 'half', got {self.tie_policy!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        self.target_modules = tuple(self.target_modules)

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
    train_every: int = 8  # new preference votes that trigger a run
    interval_s: float | None = None  # also train this often when there are any new votes
    min_votes: int = 4  # never train on fewer preference votes than this
    poll_s: float = 1.0
    annotators: tuple[str, ...] | None = None  # train only on these annotators' votes
    fidelity_max_drop: float = 0.05
    fidelity_seeds: tuple[int, ...] = (1000, 1001, 1002, 1003)  # 16 held-out prompts x 4 = 64 images
    fidelity_prompts: int | None = None  # how many held-out prompts the guard renders (None = all)
    fidelity_scorer: str = field(default="auto", metadata={
        "help": "prompt-fidelity scorer of the guard: auto (the embedded model's image analysis; CLIP when "
                "clip_model is set; else drift alone), drift, embedded, clip, or module:function "
                "((images, prompts) -> float in [0, 1])"})
    clip_model: str | None = field(default=None, metadata={
        "help": "CLIP model for the clip scorer: a hub id (e.g. openai/clip-vit-base-patch32) or a local folder"})
    fidelity_max_drift: float | None = field(default=MAX_DRIFT, metadata={
        "help": "reject a candidate whose images moved from the base's at equal seeds by more than this fraction "
                "of the distance between two different base images (None = no drift check)"})
    lease_ttl_s: float = 600.0  # a dead worker blocks others this long at most; renewed every third of it

    def __post_init__(self):
        if self.train_every < 1 or self.min_votes < 1:
            raise ValueError("train_every and min_votes must be at least 1")
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if self.poll_s <= 0:
            raise ValueError("poll_s must be positive")
        if not 0 < self.lease_ttl_s <= 7 * 24 * 3600:
            raise ValueError("lease_ttl_s must be positive and at most a week")
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
