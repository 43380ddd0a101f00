"""LoRA file I/O: diffusers-format LoRA state dicts (keys 'unet.…', or 'transformer.…' for a flow transformer) to
and from safetensors bytes, folders, files.

What `pipe.load_lora_weights` reads is what these functions write. The module knows no pipeline and no storage.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DENOISER_PREFIXES = ("unet.", "transformer.")  # the network a LoRA adapts, as diffusers names it in the keys


class AdapterLoadError(RuntimeError):
    """An adapter could not be loaded into the pipeline; the previous one stays live."""


def lora_rank(state: dict[str, torch.Tensor]) -> int:
    """The largest rank among a diffusers-format LoRA state dict's denoiser (UNet or transformer) down-projections."""
    return max((v.shape[0] for k, v in state.items()
                if k.startswith(DENOISER_PREFIXES) and ("lora_A" in k or "lora.down" in k)), default=0)


@contextmanager
def materialized(lora: str | Path | bytes | dict | None):
    """(state dict, what `load_lora_weights` reads) for a path, bytes or a state dict; (None, None) for None.
    Bytes go through a temporary file so that diffusers reads the adapter metadata (alpha) from its header."""
    with tempfile.TemporaryDirectory() as tmp:
        source = lora
        if isinstance(lora, bytes):
            source = Path(tmp)
            (source / LORA_WEIGHT_NAME).write_bytes(lora)
        state = None if lora is None else read_lora(source)
        if state is not None and not any(k.startswith(DENOISER_PREFIXES) for k in state):
            raise AdapterLoadError("the LoRA state dict has no 'unet.'- or 'transformer.'-prefixed keys: it would "
                                   "load nothing")
        yield state, (source if isinstance(source, (str, Path)) else state)


def read_lora(lora: str | Path | bytes | dict) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state dict (keys 'unet.…') from a folder, a .safetensors file, bytes or a dict."""
    if isinstance(lora, dict):
        return lora
    data = lora
    if not isinstance(lora, bytes):
        path = Path(lora)
        if path.is_dir():
            path = path / LORA_WEIGHT_NAME
        if not path.is_file():
            raise AdapterLoadError(f"no LoRA weights at {path}")
        data = path.read_bytes()
    try:
        return load_safetensors(data)
    except Exception as e:  # safetensors raises its own error type for any malformed header
        raise AdapterLoadError(f"the adapter is not a readable safetensors file: {e}") from e


def save_lora_bytes(state: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    """Serialise a diffusers-format LoRA state dict as one safetensors file (what `read_lora` reads back)."""
    with tempfile.TemporaryDirectory() as d:
        from diffusers import StableDiffusionPipeline
        StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=state, unet_lora_adapter_metadata=metadata)
        return (Path(d) / LORA_WEIGHT_NAME).read_bytes()
