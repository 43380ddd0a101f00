"""The one model loader: the embedded tiny-shapes model, a hub id, or a local diffusers folder.

Every command goes through `load_pipeline`. It returns the pipeline with a DDIM scheduler that keeps a non-zero
variance on every reverse step (`set_alpha_to_one=False`; the objective needs finite log-densities), on a sensible
device and dtype (fp16/bf16 on a GPU, fp32 on a CPU), together with the sampler settings that suit the model.
It knows nothing about LoRA, storage or the UI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_ID = "embedded"
EMBEDDED_PATH = REPO_ROOT / "models" / "tiny-shapes"
# Settings for Stable Diffusion 1.x/2.x checkpoints; the embedded model carries its own in studio.json.
HUB_SAMPLER_DEFAULTS = {"steps": 30, "guidance_scale": 7.5, "eta": 1.0}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do instead."""


@dataclass
class LoadedModel:
    pipe: StableDiffusionPipeline
    model_id: str  # "embedded", a hub id or a resolved local path
    sampler_defaults: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    def is_embedded(self) -> bool:
        return self.model_id == EMBEDDED_ID


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but no CUDA GPU is visible; use --device cpu")
    return dev


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    if dtype not in (None, "", "auto"):
        table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
        if dtype not in table:
            raise ModelLoadError(f"unknown dtype {dtype!r}: use fp32, fp16, bf16 or auto")
        return table[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # half precision on a CPU is slow and partly unsupported


def stochastic_ddim(scheduler_config) -> DDIMScheduler:
    """A DDIM scheduler from any SD scheduler config, with a non-zero variance on the last step."""
    return DDIMScheduler.from_config(scheduler_config, set_alpha_to_one=False, clip_sample=False,
                                     thresholding=False)


def resolve(model: str) -> tuple[str | Path, str, bool]:
    """(what from_pretrained gets, the id we record, whether it is a local folder)."""
    if model in (None, "", EMBEDDED_ID):
        return EMBEDDED_PATH, EMBEDDED_ID, True
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{model!r} is not a diffusers pipeline folder (no model_index.json there)")
        return path, str(path.resolve()), True
    if model.count("/") != 1:
        raise ModelLoadError(f"{model!r} is neither a local diffusers folder nor a hub id like 'org/name'")
    return model, model, False


def load_pipeline(model: str = EMBEDDED_ID, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a Stable Diffusion 1.x/2.x pipeline ready for stochastic DDIM sampling."""
    source, model_id, local = resolve(model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if model_id == EMBEDDED_ID and not (EMBEDDED_PATH / "model_index.json").is_file():
        raise ModelLoadError(f"the embedded model is missing at {EMBEDDED_PATH}; rebuild it with "
                             "`python -m alignment.embedded.train --out models/tiny-shapes`")
    diffusers_logging.disable_progress_bar()  # component loading is quick; keep CLIs' output readable
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dt, safety_checker=None, requires_safety_checker=False,
            local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as e:
        hint = "" if local else (" The hub may be unreachable from this machine: use --model embedded (the "
                                 "offline model shipped with the studio) or a local diffusers folder.")
        raise ModelLoadError(f"could not load {model!r}: {e}.{hint}") from e
    pipe.scheduler = stochastic_ddim(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    return LoadedModel(pipe, model_id, sampler_defaults(source, pipe, local), dev, dt)


def sampler_defaults(source, pipe: StableDiffusionPipeline, local: bool) -> dict:
    """Steps, guidance, eta and image size that go with the model."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = {**HUB_SAMPLER_DEFAULTS, "height": size, "width": size}
    meta = Path(source) / "studio.json" if local else None
    if meta is not None and meta.is_file():
        out.update(json.loads(meta.read_text()).get("sampler", {}))
    return out
