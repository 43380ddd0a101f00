"""Stable Diffusion XL (`StableDiffusionXLPipeline`): two text encoders, pooled embeddings, size micro-conditioning.

The UNet takes, besides the concatenated penultimate hidden states of both encoders, `added_cond_kwargs`:
`text_embeds`, the second encoder's pooled projection, and `time_ids`, six numbers
`(original_h, original_w, crop_top, crop_left, target_h, target_w)`. With guidance each has a negative half. The
sampler stores both (they are what the UNet saw, and an imported image's size is not the generated size); the
prompt embeddings are recomputed with the pipeline's `encode_prompt`. An empty negative prompt is passed as None, so
the pipeline uses zero negative embeddings when the model asks for it (`force_zeros_for_empty_prompt`), as plain
diffusers does by default. This module knows nothing about storage or training.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from alignment.families.base import Conditioning, ConditioningError, Family, ModelLoadError, stored_rows


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int],
             target_size: tuple[int, int]) -> torch.Tensor:
    """(6,) float32 SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w), as the pipeline
    builds it. ConditioningError for a missing or unusable size (an imported row without its image's size)."""
    for name, pair, low in (("original_size", original_size, 1), ("crop_top_left", crop_top_left, 0),
                            ("target_size", target_size, 1)):
        ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in pair))
        if not ok:
            raise ConditioningError(f"SDXL needs {name} as two integers >= {low} (height, width or top, left), "
                                    f"got {pair!r}")
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


class StableDiffusionXL(Family):
    name = "sdxl"
    pipeline_class = StableDiffusionXLPipeline
    class_names = ("StableDiffusionXLPipeline",)
    callback_tensor_inputs = ("latents", "add_text_embeds", "add_time_ids")
    stored_names = {"add_text_embeds": "text_embeds", "add_time_ids": "time_ids", "prompt_embeds": "prompt_embeds"}
    load_kwargs = {}
    defaults = {"steps": 30, "guidance_scale": 5.0, "eta": 1.0}

    def check(self, pipe) -> None:
        super().check(pipe)
        unet = pipe.unet
        if unet.config.addition_embed_type != "text_time":
            raise ModelLoadError(f"an SDXL UNet takes addition_embed_type 'text_time', this one "
                                 f"{unet.config.addition_embed_type!r}")
        if pipe.text_encoder_2 is None or pipe.tokenizer_2 is None:
            raise ModelLoadError("this SDXL pipeline has no second text encoder (text_encoder_2, tokenizer_2), "
                                 "which gives the pooled embedding its UNet needs")
        expected = unet.add_embedding.linear_1.in_features
        have = 6 * unet.config.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
        if have != expected:
            raise ModelLoadError(f"this UNet's added embedding takes {expected} inputs, but six time ids and the "
                                 f"pooled embedding give {have} (a refiner with an aesthetic score is not supported)")

    def prompt_kwargs(self, prompts: list[str], negative_prompts: list[str]) -> dict:
        negatives = None if all(n == "" for n in negative_prompts) else list(negative_prompts)
        return {"prompt": list(prompts), "negative_prompt": negatives}

    @torch.no_grad()
    def conditioning(self, pipe, prompt: str, negative_prompt: str = "", *, guided: bool,
                     size: tuple[int, int] | None = None, original_size: tuple[int, int] | None = None,
                     crop_top_left: tuple[int, int] = (0, 0), stored: dict[str, torch.Tensor] | None = None
                     ) -> Conditioning:
        device, dtype = pipe.unet.device, pipe.text_encoder_2.dtype
        text = ["prompt_embeds", "text_embeds"] + (["negative_prompt_embeds", "negative_text_embeds"] if guided else [])
        got = {k: stored_rows(stored, k, device, dtype) for k in (*text, "time_ids", "negative_time_ids")}
        if any(got[k] is None for k in text):
            encoded = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=guided, negative_prompt=negative_prompt or None)
            for k, v in zip(("prompt_embeds", "negative_prompt_embeds", "text_embeds", "negative_text_embeds"),
                            encoded):
                if k in text and got[k] is None:
                    got[k] = v
        if got["time_ids"] is None or (guided and got["negative_time_ids"] is None):
            if size is None:
                raise ConditioningError("SDXL conditioning needs the image size (height, width) for its time ids")
            ids = time_ids(tuple(original_size or size), tuple(crop_top_left), tuple(size))[None].to(device, dtype)
            for k in ("time_ids", "negative_time_ids"):
                got[k] = ids if got[k] is None else got[k]
        added = {"text_embeds": got["text_embeds"], "time_ids": got["time_ids"]}
        self._check_fits(pipe.unet, added)
        if not guided:
            return Conditioning(got["prompt_embeds"], None, added)
        return Conditioning(got["prompt_embeds"], got["negative_prompt_embeds"], added,
                            {"text_embeds": got["negative_text_embeds"], "time_ids": got["negative_time_ids"]})

    @staticmethod
    def _check_fits(unet, added: dict[str, torch.Tensor]) -> None:
        n_in = unet.add_embedding.linear_1.in_features
        have = added["time_ids"].shape[-1] * unet.config.addition_time_embed_dim + added["text_embeds"].shape[-1]
        if have != n_in:
            raise ConditioningError(f"the stored SDXL conditioning gives {have} added-embedding inputs, this UNet "
                                    f"takes {n_in}: it belongs to another model")


FAMILY = StableDiffusionXL()
