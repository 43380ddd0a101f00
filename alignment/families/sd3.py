"""Stable Diffusion 3.x (`StableDiffusion3Pipeline`): a flow-matching transformer sampled as a stochastic SDE.

The denoiser is `pipe.transformer` (an `SD3Transformer2DModel`), which predicts the velocity `v = eps - x_data`.
Its conditioning is the joint text sequence `prompt_embeds` (both CLIP encoders' penultimate hidden states,
concatenated and zero-padded to the transformer's width, followed by the T5 encoder's, or zeros when the pipeline
has no T5) and the pooled projections of both CLIP encoders (`pooled_projections`), recomputed with the
pipeline's own `encode_prompt`. Classifier-free guidance is the pipeline's `m_u + w (m_c - m_u)`, with no
guidance rescale and no skip-layer guidance. The scheduler becomes `alignment.families.flow.FlowSDEScheduler`,
and the sampler's `eta` is read as the SDE's noise level `a`. This module knows nothing about storage or training.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline

from alignment.core.lora_files import LORA_WEIGHT_NAME
from alignment.families import flow
from alignment.families.base import Conditioning, Family, ModelLoadError, guided_output, stored_rows

POOLED = "pooled_projections"
# Length of the T5 part of the joint text sequence. Without T5 the pipeline fills it with zeros; a model trained with
# a shorter one (the embedded flow model: its studio.json's "pipeline" section) sets it on the pipeline at load.
TEXT_LENGTH_ATTR = "studio_max_sequence_length"
DEFAULT_TEXT_LENGTH = 256  # the pipeline's own default


def text_length(pipe) -> int:
    return int(getattr(pipe, TEXT_LENGTH_ATTR, DEFAULT_TEXT_LENGTH))


def _transformer(transformer, x, t, embeds, added) -> torch.Tensor:
    """One transformer call as the SD3 pipeline makes it; the velocity in float32."""
    dt = transformer.dtype
    return transformer(hidden_states=x.to(dt), timestep=t.to(dt), encoder_hidden_states=embeds.to(dt),
                       pooled_projections=added[POOLED].to(dt), return_dict=False)[0].float()


class StableDiffusion3(Family):
    name = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    class_names = ("StableDiffusion3Pipeline",)
    callback_tensor_inputs = ("latents",)
    stored_names = {}  # everything is recomputed from the prompt
    load_kwargs = {}
    defaults = {"steps": 28, "guidance_scale": 7.0, "eta": 0.7}  # eta: the SDE noise level (Flow-GRPO's 0.7)
    guided_output = staticmethod(partial(guided_output, call=_transformer))
    flow = True

    def denoiser(self, pipe):
        return pipe.transformer

    def call_kwargs(self, config, pipe=None) -> dict:
        if config.guidance_rescale:
            raise ValueError("StableDiffusion3Pipeline has no guidance_rescale; set it to 0 for this model")
        return {"max_sequence_length": text_length(pipe)}

    @contextmanager
    def sampling(self, pipe, generators: list, config):
        with flow.lend_noise(pipe.scheduler, generators, config.eta):
            yield

    def check_sampling(self, scheduler, steps: int, eta: float) -> torch.Tensor:
        return flow.check_flow_sampling(scheduler, steps, eta)

    def schedule_settings(self, scheduler) -> dict:
        return flow.schedule_settings(scheduler)

    def lora_bytes(self, state: dict[str, torch.Tensor], metadata: dict) -> bytes:
        """The file `StableDiffusion3Pipeline.load_lora_weights` reads: keys prefixed 'transformer.'."""
        with tempfile.TemporaryDirectory() as d:
            StableDiffusion3Pipeline.save_lora_weights(d, transformer_lora_layers=state,
                                                       transformer_lora_adapter_metadata=metadata)
            return (Path(d) / LORA_WEIGHT_NAME).read_bytes()

    def configure(self, pipe, settings: dict) -> None:
        """Apply a model folder's `studio.json` "pipeline" settings: `max_sequence_length` (the T5 part's length,
        1 to 512)."""
        unknown = set(settings) - {"max_sequence_length"}
        if unknown:
            raise ModelLoadError(f"studio.json's pipeline section has unknown settings: {', '.join(sorted(unknown))}")
        if "max_sequence_length" in settings:
            length = settings["max_sequence_length"]
            if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 512:
                raise ModelLoadError(f"studio.json: max_sequence_length must be a whole number in 1..512, got "
                                     f"{length!r}")
            setattr(pipe, TEXT_LENGTH_ATTR, length)

    def check(self, pipe) -> None:
        if getattr(pipe, "transformer", None) is None:
            raise ModelLoadError("this StableDiffusion3Pipeline has no transformer")
        if pipe.text_encoder is None or pipe.text_encoder_2 is None:
            raise ModelLoadError("the studio needs both CLIP text encoders of an SD3 pipeline (text_encoder, "
                                 "text_encoder_2); only the T5 encoder may be left out")
        if pipe.vae.config.get("shift_factor") is None:
            raise ModelLoadError("the SD3 pipeline's VAE config has no shift_factor, which the pipeline needs")

    @torch.no_grad()
    def conditioning(self, pipe, prompt: str, negative_prompt: str = "", *, guided: bool,
                     size: tuple[int, int] | None = None, original_size: tuple[int, int] | None = None,
                     crop_top_left: tuple[int, int] = (0, 0), stored: dict[str, torch.Tensor] | None = None
                     ) -> Conditioning:
        device, dtype = pipe.transformer.device, pipe.text_encoder.dtype
        got = {k: stored_rows(stored, k, device, dtype) for k in
               ("prompt_embeds", "negative_prompt_embeds", POOLED, "negative_" + POOLED)}
        needed = ["prompt_embeds", POOLED] + (["negative_prompt_embeds", "negative_" + POOLED] if guided else [])
        if any(got[k] is None for k in needed):
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
                max_sequence_length=text_length(pipe))
            got.update({"prompt_embeds": embeds, "negative_prompt_embeds": negative, POOLED: pooled,
                        "negative_" + POOLED: negative_pooled})
        if not guided:
            return Conditioning(got["prompt_embeds"], None, {POOLED: got[POOLED]})
        return Conditioning(got["prompt_embeds"], got["negative_prompt_embeds"], {POOLED: got[POOLED]},
                            {POOLED: got["negative_" + POOLED]})

    def sampler_defaults(self, pipe, few_step: bool) -> dict:
        size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        return {**self.defaults, "height": size, "width": size}


FAMILY = StableDiffusion3()
