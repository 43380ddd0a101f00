"""Stable Diffusion 1.x / 2.x (`StableDiffusionPipeline`): one CLIP text encoder, no added conditions.

SD 1.x predicts epsilon on 512 px, SD 2.x epsilon (512 px) or v (768 px); the prediction type lives in the
scheduler config and is handled by `alignment.families.schedules` and `alignment.core.ddim`, so one family covers
both. The conditioning is the prompt's (and, with guidance, the negative prompt's) text-encoder embeddings,
recomputed with the pipeline's own `encode_prompt`, which the sampler's pipeline call also runs. This module knows
nothing about storage or training.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from alignment.families.base import Conditioning, Family, ModelLoadError, stored_rows


class StableDiffusion(Family):
    name = "sd"
    pipeline_class = StableDiffusionPipeline
    class_names = ("StableDiffusionPipeline",)
    callback_tensor_inputs = ("latents",)  # the embeddings come back from the prompt
    stored_names = {"prompt_embeds": "prompt_embeds"}  # kept only when a sampler asks the callback for them
    load_kwargs = {"safety_checker": None, "requires_safety_checker": False}
    defaults = {"steps": 30, "guidance_scale": 7.5, "eta": 1.0}

    def check(self, pipe) -> None:
        super().check(pipe)
        if pipe.unet.config.addition_embed_type is not None:
            raise ModelLoadError(f"this StableDiffusionPipeline's UNet expects added conditions "
                                 f"({pipe.unet.config.addition_embed_type!r}), which the studio does not provide")

    @torch.no_grad()
    def conditioning(self, pipe, prompt: str, negative_prompt: str = "", *, guided: bool,
                     size: tuple[int, int] | None = None, original_size: tuple[int, int] | None = None,
                     crop_top_left: tuple[int, int] = (0, 0), stored: dict[str, torch.Tensor] | None = None
                     ) -> Conditioning:
        device, dtype = pipe.unet.device, pipe.text_encoder.dtype
        embeds = stored_rows(stored, "prompt_embeds", device, dtype)
        negative = stored_rows(stored, "negative_prompt_embeds", device, dtype)
        if embeds is None or (guided and negative is None):
            embeds, negative = pipe.encode_prompt(prompt, device, 1, guided, negative_prompt)
        return Conditioning(embeds, negative if guided else None)


FAMILY = StableDiffusion()
