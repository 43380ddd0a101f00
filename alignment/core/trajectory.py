"""The trajectory format: one captured reverse chain, to and from safetensors bytes.

A trajectory holds every latent x_0 .. x_K of one image (x_0 the start noise, k = 0 the noisiest step), the
timesteps, the settings needed to re-evaluate each reverse step under other weights, and the conditioning tensors
that the prompt alone does not give back (SDXL's pooled embeddings and size micro-conditioning, see
`alignment.families`), stored as `cond.<name>` tensors; a trajectory without them reads back with none. It knows
nothing about pipelines or storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

_COND = "cond."  # prefix of the conditioning tensors in the file


@dataclass
class Trajectory:
    """One reverse chain. latents: (K+1, C, h, w) fp16, x_0 (start noise) .. x_K; timesteps: (K,) of step k;
    conditioning: per-image tensors by name (e.g. `text_embeds` (P,), `time_ids` (6,) and their `negative_`
    halves), empty for families whose conditioning is the prompt's embeddings alone."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    prompt: str
    seed: int
    settings: dict
    model_id: str
    adapter_version: int | None
    conditioning: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def to_bytes(self) -> bytes:
        meta = {"prompt": self.prompt, "seed": str(self.seed), "settings": json.dumps(self.settings),
                "model_id": self.model_id, "adapter_version": json.dumps(self.adapter_version)}
        tensors = {"latents": self.latents.contiguous(), "timesteps": self.timesteps.contiguous()}
        tensors.update({_COND + k: v.contiguous() for k, v in self.conditioning.items()})
        return save_safetensors(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Trajectory":
        tensors = load_safetensors(data)
        meta = _safetensors_metadata(data)
        conditioning = {k[len(_COND):]: v for k, v in tensors.items() if k.startswith(_COND)}
        return cls(tensors["latents"], tensors["timesteps"], meta["prompt"], int(meta["seed"]),
                   json.loads(meta["settings"]), meta["model_id"], json.loads(meta["adapter_version"]), conditioning)


def _safetensors_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__", {})
