"""The tiny family copies for tests: built once per test session, edited copies, and a recorded stock run.

The copies themselves (`KINDS`, `build_family`) are library code in `alignment.families.tiny`, re-exported here.
`tiny_family(kind)` builds a copy once per test session (a process-wide cache in a temporary folder) and returns
its folder, so tests exercise `from_pretrained`; `edited_copy(kind, directory, **changes)` writes a copy with
another scheduler config. `RecordedRun` calls a stock pipeline and records what it fed to `scheduler.step` at
every step, the chain's latents and the callback's conditioning tensors: the reference a re-evaluation of the
chain is compared with.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

from alignment.families.tiny import FLOW_KINDS, KINDS, LATENT, SD_BETAS, TOKENS, build_family

__all__ = ["FLOW_KINDS", "KINDS", "LATENT", "SD_BETAS", "TOKENS", "RecordedRun", "build_family", "edited_copy", "tiny_family"]

_cache: dict[str, Path] = {}
_root: tempfile.TemporaryDirectory | None = None


def tiny_family(kind: str) -> Path:
    """The folder of the tiny `kind` pipeline, built on first use in this process."""
    global _root
    if kind not in _cache:
        if _root is None:
            _root = tempfile.TemporaryDirectory(prefix="tiny-families-")  # removed when the process ends
        _cache[kind] = build_family(kind, Path(_root.name) / kind)
    return _cache[kind]


def edited_copy(kind: str, directory: str | Path, **scheduler_changes) -> Path:
    """A copy of the tiny `kind` pipeline in `directory` whose scheduler config has `scheduler_changes` applied
    (e.g. `timestep_spacing="linspace"`); returns the folder."""
    directory = Path(directory)
    shutil.copytree(tiny_family(kind), directory)
    config = directory / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **scheduler_changes}))
    return directory


class RecordedRun:
    """A stock pipeline call with every `scheduler.step` input and the step-end callback's tensors recorded."""

    def __init__(self, pipe, family, prompts: list[str], *, negative_prompt: str = "", guidance_scale: float,
                 guidance_rescale: float = 0.0, steps: int, size: int, seeds: list[int], eta: float = 1.0):
        self.guided = guidance_scale > 1
        shape = (pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x0 = torch.stack([torch.randn(shape, generator=g) for g in gens]) * pipe.scheduler.init_noise_sigma
        self.steps: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (model_output, t, sample) per step
        self.latents = [x0]
        self.callback: dict[str, torch.Tensor] = {}
        step = pipe.scheduler.step

        @functools.wraps(step)  # the pipeline passes eta and the generator only to a step whose signature has them
        def recording_step(model_output, timestep, sample, *args, **kwargs):
            self.steps.append((model_output.detach().clone(), int(timestep), sample.detach().clone()))
            return step(model_output, timestep, sample, *args, **kwargs)

        def capture(_pipe, i, _t, kwargs):
            self.latents.append(kwargs["latents"].detach().clone())
            if i == 0:
                self.callback = {k: v for k, v in kwargs.items() if k != "latents"}
            return kwargs

        pipe.scheduler.step = recording_step
        try:
            pipe(**family.prompt_kwargs(prompts, [negative_prompt] * len(prompts)), height=size, width=size,
                 num_inference_steps=steps, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, eta=eta,
                 generator=gens, latents=x0, callback_on_step_end=capture,
                 callback_on_step_end_tensor_inputs=list(family.callback_tensor_inputs), output_type="latent")
        finally:
            del pipe.scheduler.step  # the class's method again
        self.trajectory = torch.stack(self.latents, dim=1)  # (B, K+1, C, h, w)
        self.stored = family.captured(self.callback, len(prompts), self.guided)
