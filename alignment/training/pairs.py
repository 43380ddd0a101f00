"""What a training run takes and gives: judged pairs, their consistency checks, the run's result and its errors.

A `TrainingPair` is one judged pair of one prompt: the preferred side w and the other l, as captured trajectories
(the dense objectives) or images (Diffusion-DPO on imported pairs); `validate` checks the pair on its own. Checks
against a model (its family, schedule and image size) are the trainer's. This module knows no UNet and no storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from alignment.core.trajectory import Trajectory


class TrainingDivergedError(RuntimeError):
    """The loss or the weights went non-finite; no adapter was produced."""


class PairError(ValueError):
    """A training pair is inconsistent (different prompts, mismatched trajectories, no data)."""


@dataclass
class TrainingPair:
    """One judged pair: w preferred over l (target 1), or a tie (target 0.5). Trajectories or images."""

    prompt: str
    w: Trajectory | None
    l: Trajectory | None
    target: float = 1.0
    w_image: Image.Image | None = None
    l_image: Image.Image | None = None

    def validate(self, needs_trajectory: bool) -> None:
        if needs_trajectory and (self.w is None or self.l is None):
            raise PairError(f"pair for {self.prompt!r} has no trajectories; use the diffusion-dpo objective")
        if self.w is not None and self.l is not None:
            if self.w.prompt != self.l.prompt:
                raise PairError(f"pair mixes prompts {self.w.prompt!r} and {self.l.prompt!r}")
            if self.w.latents.shape != self.l.latents.shape or not torch.equal(self.w.timesteps, self.l.timesteps):
                raise PairError(f"pair for {self.prompt!r} has trajectories of different shapes or timesteps")
            if self.w.settings != self.l.settings:
                raise PairError(f"pair for {self.prompt!r} was sampled with different settings")
        elif not (isinstance(self.w_image, Image.Image) and isinstance(self.l_image, Image.Image)):
            raise PairError(f"pair for {self.prompt!r} has neither trajectories nor images")
        if self.target not in (0.5, 1.0):
            raise PairError(f"target must be 1 (w preferred) or 0.5 (tie), got {self.target}")


@dataclass
class TrainResult:
    lora: bytes
    metrics: dict
    history: list[dict]
    # (step, LoRA weights on the CPU) every `checkpoint_every` steps, ascending; the last one is the final state
    checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)
