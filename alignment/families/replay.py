"""What a stored chain was sampled under, rebuilt for re-scoring it: its conditioning, its size, its scored steps.

A `Replay` serves one loaded model. `conditioning(...)` is the family's `conditioning` (the prompt embeddings the
pipeline's `encode_prompt` gives, with the tensors stored with a trajectory in place of recomputed ones), cached so
that the text encoders run once per prompt and not once per re-scored step; `of_trajectory(traj, guided)` is what
the pipeline conditioned a captured trajectory on; `stochastic_steps(traj)` says which of its steps have a
log-density (`alignment.families.schedules.check_sampling`). This module knows trajectories and the family
interface; nothing about LoRA, losses or storage.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from alignment.core.trajectory import Trajectory
from alignment.families.base import Conditioning

CACHE_ENTRIES = 1024  # conditionings kept (an SDXL one is ~1 MB in fp16, an SD 1.x one ~0.1 MB)


class Replay:
    """Conditioning and chain facts of `model` (an `alignment.families.loader.LoadedModel`) for stored chains."""

    def __init__(self, model, cache_entries: int = CACHE_ENTRIES):
        if cache_entries < 1:
            raise ValueError(f"cache_entries must be at least 1, got {cache_entries}")
        self.model = model
        self.cache_entries = cache_entries
        self._cache: OrderedDict[tuple, Conditioning] = OrderedDict()
        self._stochastic: dict[tuple[int, float], torch.Tensor] = {}

    def conditioning(self, prompt: str, negative_prompt: str = "", *, guided: bool, size: tuple[int, int],
                     stored: dict[str, torch.Tensor] | None = None, original_size: tuple[int, int] | None = None,
                     crop_top_left: tuple[int, int] = (0, 0)) -> Conditioning:
        """The family's conditioning of one sample (`alignment.families.base.Family.conditioning`), cached by all
        of its arguments (the stored tensors by their contents)."""
        stored = stored or {}
        key = (prompt, negative_prompt, bool(guided), tuple(size), None if original_size is None else
               tuple(original_size), tuple(crop_top_left), tuple((k, _digest(v)) for k, v in sorted(stored.items())))
        cond = self._cache.get(key)
        if cond is not None:
            self._cache.move_to_end(key)
            return cond
        cond = self.model.family.conditioning(self.model.pipe, prompt, negative_prompt, guided=guided, size=size,
                                              original_size=original_size, crop_top_left=crop_top_left,
                                              stored=stored)
        self._cache[key] = cond
        if len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)
        return cond

    def of_trajectory(self, traj: Trajectory, guided: bool) -> Conditioning:
        """What the pipeline conditioned `traj` on: its prompt, its negative prompt (with `guided`) and the
        conditioning stored with it (SDXL's pooled embeddings and time ids)."""
        return self.conditioning(traj.prompt, traj.settings.get("negative_prompt", ""), guided=guided,
                                 size=self.image_size(traj), stored=traj.conditioning)

    def image_size(self, traj: Trajectory) -> tuple[int, int]:
        """The (height, width) `traj` was generated at (recorded, else its latents' size times the VAE's)."""
        scale = self.model.pipe.vae_scale_factor
        h, w = traj.latents.shape[-2:]
        return int(traj.settings.get("height", h * scale)), int(traj.settings.get("width", w * scale))

    def stochastic_steps(self, traj: Trajectory) -> torch.Tensor:
        """(K,) bool on the CPU: which steps of `traj`'s chain have a log-density; ValueError when the chain
        cannot be scored at all (the family's `check_sampling`)."""
        key = (traj.num_steps, float(traj.settings["eta"]))
        if key not in self._stochastic:
            self._stochastic[key] = self.model.family.check_sampling(self.model.pipe.scheduler, *key).cpu()
        return self._stochastic[key]


def _digest(t: torch.Tensor) -> str:
    """A fingerprint of a small tensor's dtype, shape and contents, for cache keys."""
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return f"{t.dtype}{tuple(t.shape)}:" + hashlib.blake2b(data, digest_size=12).hexdigest()
