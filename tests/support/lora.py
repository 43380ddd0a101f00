"""Stand-in adapters: diffusers-format LoRA files with random weights, so tests of swap, make-live, roll-back and
compare need no training run.

`random_lora` is the one factory: it wraps a copy of a UNet (the embedded model's by default) with peft's LoRA,
fills A and B from a seeded generator and exports the way the trainer does (`unet.`-prefixed keys, safetensors).
The UNet it is given is not touched.
"""

from __future__ import annotations

import copy
import functools

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from alignment.core.lora_files import save_lora_bytes

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


@functools.lru_cache(maxsize=1)
def _embedded_unet():
    from alignment.families.loader import load_pipeline
    return load_pipeline("embedded").pipe.unet


def random_lora(seed: int = 0, *, scale: float = 0.3, rank: int = 4, targets=ATTENTION, unet=None) -> bytes:
    """LoRA bytes with A and B ~ N(0, scale^2) from `seed`, of `rank` on `targets` of `unet` (default: the
    embedded model's UNet)."""
    unet = copy.deepcopy(unet if unet is not None else _embedded_unet())
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return save_lora_bytes(convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))


def latents(sampler, prompt: str = "a blue square on a yellow background", seed: int = 4) -> torch.Tensor:
    """The trajectory of one image from `sampler` (a `Sampler`, a `LiveModel` or one of its `at(version)` views):
    what tests compare to tell which weights generated it."""
    return sampler.generate(prompt, [seed])[0].trajectory.latents
