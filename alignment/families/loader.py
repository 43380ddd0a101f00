"""The one model loader: the embedded tiny-shapes model, a hub id, or a local diffusers folder, by family.

Every command goes through `load_pipeline`. It reads `model_index.json`'s `_class_name`, picks the family that
loads that class (`sd`: `StableDiffusionPipeline`, SD 1.x/2.x; `sdxl`: `StableDiffusionXLPipeline`; `sd3`:
`StableDiffusion3Pipeline`, flow matching) and refuses any other with a message listing what is supported. The
pipeline gets a stochastic DDIM scheduler over the checkpoint's own noise schedule (`alignment.families.schedules`,
which refuses what the step log-probability cannot represent), or for a flow family the SDE form of its flow
schedule (`alignment.families.flow`), a device and dtype (fp16/bf16 on a GPU, fp32 on a CPU), and sampler settings that suit the
checkpoint: its family's, a few-step (turbo-style) model's, or a local folder's `studio.json`. It knows nothing
about LoRA, storage or the UI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from alignment.families import flow, sd, sd3, sdxl
from alignment.families.base import ConditioningError, Family, ModelLoadError
from alignment.families.schedules import ddim_scheduler, few_step, zero_terminal_snr

__all__ = ["EMBEDDED_FLOW_ID", "EMBEDDED_ID", "EMBEDDED_PATH", "FAMILIES", "LoadedModel", "ModelLoadError", "family_of",
           "load_pipeline", "pick_device", "pick_dtype", "read_model_index", "resolve", "sampler_defaults"]

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_ID = "embedded"
EMBEDDED_PATH = REPO_ROOT / "models" / "tiny-shapes"
EMBEDDED_FLOW_ID = "embedded-flow"  # the embedded flow-matching (SD3-class) model
EMBEDDED_FLOW_PATH = REPO_ROOT / "models" / "tiny-flow"
FAMILIES: tuple[Family, ...] = (sd.FAMILY, sdxl.FAMILY, sd3.FAMILY)
# Pipelines refused with their own reason (the rest get the list of supported classes)
REFUSED = {
    "FluxPipeline": "FLUX is guidance-distilled and packs its latents into 2x2 patches with positional ids; the "
                    "studio's flow sampler and trainer serve StableDiffusion3Pipeline only",
}


@dataclass
class LoadedModel:
    pipe: DiffusionPipeline
    model_id: str  # "embedded", a hub id or a resolved local path
    sampler_defaults: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    family: Family = sd.FAMILY
    folder: Path | None = None  # the local folder it was loaded from (None: from the hub)

    @property
    def is_embedded(self) -> bool:
        """One of the embedded models (trained on the shapes data: its image analysis and prompts apply)."""
        return self.model_id in (EMBEDDED_ID, EMBEDDED_FLOW_ID)

    @property
    def settings(self) -> dict:
        """What a trajectory of this model records besides the sampler settings: the family and the schedule."""
        return {"family": self.family.name, **self.family.schedule_settings(self.pipe.scheduler)}

    def check_trajectory_settings(self, recorded: dict) -> None:
        """ConditioningError when a trajectory's recorded family or schedule differs from this model's: its steps
        would be scored under another chain. Keys a trajectory does not record (older ones) are not compared."""
        differ = [f"{k}: recorded {recorded[k]!r}, this model {v!r}" for k, v in self.settings.items()
                  if k in recorded and recorded[k] != v]
        if differ:
            raise ConditioningError("the trajectory was sampled with another model or schedule (" +
                                    "; ".join(differ) + ")")


def use_threads(threads: int | None) -> None:
    """Torch's threads per task for this process (`ServerConfig.torch_threads`; None leaves torch's own). Call it
    before any thread does torch work."""
    if threads is not None:
        torch.set_num_threads(threads)


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


def resolve(model: str) -> tuple[str | Path, str, bool]:
    """(what from_pretrained gets, the id we record, whether it is a local folder)."""
    if model in (None, "", EMBEDDED_ID):
        return EMBEDDED_PATH, EMBEDDED_ID, True
    if model == EMBEDDED_FLOW_ID:
        return EMBEDDED_FLOW_PATH, EMBEDDED_FLOW_ID, True
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{model!r} is not a diffusers pipeline folder (no model_index.json there)")
        return path, str(path.resolve()), True
    if model.count("/") != 1:
        raise ModelLoadError(f"{model!r} is neither a local diffusers folder nor a hub id like 'org/name'")
    return model, model, False


def read_model_index(source: str | Path, local: bool) -> dict:
    """The pipeline's `model_index.json` (from the folder, or the hub / its cache)."""
    if local:
        try:
            return json.loads((Path(source) / "model_index.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"cannot read {Path(source) / 'model_index.json'}: {e}") from e
    return DiffusionPipeline.load_config(source, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")


def family_of(index: dict) -> Family:
    """The family that loads `model_index.json`'s `_class_name`, or ModelLoadError naming the supported ones."""
    name = index.get("_class_name")
    if name in REFUSED:
        raise ModelLoadError(f"pipelines of class {name!r} are not supported: {REFUSED[name]}")
    for family in FAMILIES:
        if name in family.class_names:
            return family
    supported = ", ".join(f"{n} ({f.name})" for f in FAMILIES for n in f.class_names)
    raise ModelLoadError(f"pipelines of class {name!r} are not supported; the studio loads {supported}")


def load_pipeline(model: str = EMBEDDED_ID, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a supported pipeline ready for stochastic DDIM sampling, with its family and sampler settings."""
    source, model_id, local = resolve(model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if model_id == EMBEDDED_ID and not (EMBEDDED_PATH / "model_index.json").is_file():
        raise ModelLoadError(f"the embedded model is missing at {EMBEDDED_PATH}; rebuild it with "
                             "`python -m alignment.embedded.train --out models/tiny-shapes`")
    if model_id == EMBEDDED_FLOW_ID and not (EMBEDDED_FLOW_PATH / "model_index.json").is_file():
        raise ModelLoadError(f"the embedded flow model is missing at {EMBEDDED_FLOW_PATH}; build it with "
                             "`python -m alignment.embedded.flow_train --out models/tiny-flow`")
    diffusers_logging.disable_progress_bar()  # component loading is quick; keep CLIs' output readable
    hint = "" if local else (" The hub may be unreachable from this machine: use --model embedded (the offline "
                             "model shipped with the studio) or a local diffusers folder.")
    try:
        index = read_model_index(source, local)
        family = family_of(index)
        # components saved as [null, null] (an SD3 folder without T5) stay None, as from_pretrained is told
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}
        pipe = family.pipeline_class.from_pretrained(
            source, dtype=dt, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1",
            **{**absent, **family.load_kwargs})
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load {model!r}: {e}.{hint}") from e
    pipe.scheduler = flow.flow_scheduler(pipe.scheduler) if family.flow else ddim_scheduler(pipe.scheduler)
    family.check(pipe)
    family.configure(pipe, model_meta(source, local).get("pipeline", {}))
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    defaults = sampler_defaults(source, pipe, local, family)
    try:
        family.check_sampling(pipe.scheduler, int(defaults["steps"]), float(defaults["eta"]))
    except ValueError as e:
        raise ModelLoadError(f"the default sampler settings of {model!r} cannot be scored: {e}") from e
    return LoadedModel(pipe, model_id, defaults, dev, dt, family, Path(source) if local else None)


def sampler_defaults(source, pipe, local: bool, family: Family = sd.FAMILY) -> dict:
    """Steps, guidance, eta, guidance_rescale and image size that go with the model: the family's, a few-step
    model's (trailing spacing: 4 steps, no guidance), then a local folder's `studio.json` on top."""
    out = family.sampler_defaults(pipe, not family.flow and few_step(pipe.scheduler))
    out.setdefault("guidance_rescale", 0.0)
    if not family.flow and zero_terminal_snr(pipe.scheduler):
        # Lin et al. 2023 pair zero terminal SNR with guidance_rescale 0.7; eta = 1 can make diffusers' first step
        # NaN on such schedules (see schedules.check_sampling)
        out.update(guidance_rescale=0.7, eta=min(float(out["eta"]), 0.9))
    out.update(model_meta(source, local).get("sampler", {}))
    return out


def model_meta(source, local: bool) -> dict:
    """A local model folder's `studio.json` (sampler settings, pipeline settings), or {}."""
    meta = Path(source) / "studio.json" if local else None
    if meta is None or not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read {meta}: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k, {}), dict) for k in ("sampler", "pipeline")):
        raise ModelLoadError(f"{meta} must be a JSON object whose 'sampler' and 'pipeline' are objects")
    return data
