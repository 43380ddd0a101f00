"""Faithful tiny copies of the model families: small random-weight pipelines, built offline, saved as folders.

Each copy uses its family's real component classes and config topology at a size a CPU runs in milliseconds:

    sd1         StableDiffusionPipeline, PNDM-configured scaled-linear betas, epsilon, leading spacing, steps_offset 1;
                UNet with conv-projection attention, CLIPTextModel (quick_gelu)
    sd2         StableDiffusionPipeline, DDIM config, v_prediction; UNet with linear projections, per-block head
                counts and upcast attention; a wider CLIPTextModel (gelu)
    sdxl        StableDiffusionXLPipeline, Euler config (leading, steps_offset 1); CLIPTextModel + a second,
                wider CLIPTextModelWithProjection (pooled embeddings), UNet with addition_embed_type="text_time"
    sd-turbo    sd2's topology with epsilon outputs and an Euler config with trailing spacing
    sdxl-turbo  sdxl's topology with an Euler-ancestral config with trailing spacing
    sd3         StableDiffusion3Pipeline (flow matching, `FLOW_KINDS`): SD3Transformer2DModel, a 16-channel VAE with
                SD3's scaling and shift factors, two CLIPTextModelWithProjection encoders, no T5 (as the pipeline
                allows), FlowMatchEulerDiscreteScheduler with shift 3

`build_family(kind, directory)` writes one with `save_pretrained`, so whoever uses it goes through
`from_pretrained` and the studio's loader as with a real checkpoint. The tokenizers are the embedded model's
locally learned CLIP BPE (`alignment.embedded.tokenizer`), at CLIP's 77 tokens. Weights are random: images are
noise, and nothing built here measures quality. The tests and `benchmarks.gpu_check` use these copies; this module
knows nothing about sampling, training or storage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from alignment.embedded.tokenizer import write_tokenizer_files

__all__ = ["FLOW_KINDS", "KINDS", "LATENT", "SD_BETAS", "TOKENS", "build_family"]

KINDS = ("sd1", "sd2", "sdxl", "sd-turbo", "sdxl-turbo")  # the DDIM families
FLOW_KINDS = ("sd3",)  # flow-matching families
TOKENS = 77  # CLIP's context length, as every real checkpoint of these families has
LATENT = 8  # UNet sample_size: 64 px images by default (8x VAE), the real families' 64 / 96 / 128 scaled down
SD_BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def build_family(kind: str, directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny `kind` pipeline (one of KINDS or FLOW_KINDS) to `directory` with `save_pretrained`; returns
    the folder."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown family copy {kind!r}; choose one of {', '.join(KINDS + FLOW_KINDS)}")
    directory = Path(directory)
    transformers_logging.disable_progress_bar()  # "Writing model shards" for each text encoder
    torch.manual_seed(seed)
    pipe = _BUILDERS[kind](directory)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def _tokenizer(directory: Path, **kwargs) -> CLIPTokenizer:
    files = write_tokenizer_files(directory / "vocab")
    return CLIPTokenizer.from_pretrained(str(files), model_max_length=TOKENS, **kwargs)


def _text_config(tokenizer: CLIPTokenizer, width: int, act: str, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=TOKENS, hidden_act=act, projection_dim=projection or width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def _vae(scaling_factor: float, force_upcast: bool = True, **sd3) -> AutoencoderKL:
    # four levels like the real VAE (8x down-sampling, so vae_scale_factor is the families' 8), few channels
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=sd3.pop("latent_channels", 4), **sd3, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=LATENT * 8, scaling_factor=scaling_factor,
        force_upcast=force_upcast)


def _sd_unet(cross_attention_dim: int, v2: bool) -> UNet2DConditionModel:
    extra = dict(use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True) if v2 else \
        dict(attention_head_dim=8)
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, **extra)


def _sd(directory: Path, *, v2: bool, scheduler) -> StableDiffusionPipeline:
    tokenizer = _tokenizer(directory)
    width, act = (48, "gelu") if v2 else (32, "quick_gelu")  # SD 2.x: OpenCLIP's wider encoder, plain gelu
    text_encoder = CLIPTextModel(_text_config(tokenizer, width, act))
    return StableDiffusionPipeline(
        vae=_vae(0.18215, force_upcast=True), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=_sd_unet(width, v2), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def _sdxl(directory: Path, *, scheduler) -> StableDiffusionXLPipeline:
    tokenizer = _tokenizer(directory)
    tokenizer_2 = _tokenizer(directory, pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder = CLIPTextModel(_text_config(tokenizer, 32, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, 64, "gelu", projection=32))
    time_embed = 8
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=32 + 64,  # both encoders' penultimate hidden states, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_embed,
        projection_class_embeddings_input_dim=6 * time_embed + 32)  # six size/crop ids + the pooled embedding
    return StableDiffusionXLPipeline(
        vae=_vae(0.13025, force_upcast=True), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True)


def _sd3(directory: Path) -> StableDiffusion3Pipeline:
    tokenizer = _tokenizer(directory)
    tokenizer_2 = _tokenizer(directory, pad_token="!")  # SD3's second CLIP tokenizer pads with "!" too
    # CLIP-L's and OpenCLIP-bigG's roles: hidden 32 and 64, projections 32 and 64 (pooled: 96)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, 32, "quick_gelu", projection=32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, 64, "gelu", projection=64))
    transformer = SD3Transformer2DModel(
        sample_size=LATENT, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=128,  # the CLIP states (32 + 64) are zero-padded to T5's width
        caption_projection_dim=32, pooled_projection_dim=32 + 64, pos_embed_max_size=16)
    vae = _vae(1.5305, force_upcast=True, latent_channels=16, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=None, tokenizer_3=None)


_BUILDERS = {
    "sd3": _sd3,
    "sd1": lambda d: _sd(d, v2=False, scheduler=PNDMScheduler(
        **SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)),
    "sd2": lambda d: _sd(d, v2=True, scheduler=DDIMScheduler(
        **SD_BETAS, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
    "sdxl": lambda d: _sdxl(d, scheduler=EulerDiscreteScheduler(
        **SD_BETAS, timestep_spacing="leading", steps_offset=1)),
    "sd-turbo": lambda d: _sd(d, v2=True, scheduler=EulerDiscreteScheduler(
        **SD_BETAS, timestep_spacing="trailing", steps_offset=1)),
    "sdxl-turbo": lambda d: _sdxl(d, scheduler=EulerAncestralDiscreteScheduler(
        **SD_BETAS, timestep_spacing="trailing", steps_offset=1)),
}
