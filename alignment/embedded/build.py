"""Architecture of the embedded tiny-shapes pipeline: standard diffusers/transformers classes, small sizes.

32x32 RGB images; a VAE that downsamples 2x to a 4x16x16 latent (enough detail to tell a circle from a square);
a 2-layer, 64-wide CLIP text encoder over the local tokenizer; a three-level UNet with cross-attention on its two lower levels; DDIM with
`set_alpha_to_one=False` so every reverse step keeps a non-zero variance (the objective needs finite log-densities).
This module builds untrained components; `train.py` trains them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from alignment.embedded.data import IMAGE_SIZE
from alignment.embedded.tokenizer import MODEL_MAX_LENGTH

# Noise schedule shared by training (DDPM) and sampling (DDIM). The linear 1e-4..0.02 schedule ends at
# abar_T ~ 4e-5; SD's scaled_linear schedule ends at ~5e-3, which on a 16x16 latent lets the start noise's mean
# leak through as signal and decide the background colour regardless of the prompt.
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                prediction_type="epsilon", clip_sample=False)


@dataclass
class TinyShapesArch:
    """Sizes of the tiny pipeline's parts."""

    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    norm_groups: int = 16
    vocab_size: int = field(default=574)

    def __post_init__(self):
        if any(c % self.norm_groups for c in (*self.unet_channels, *self.vae_channels)):
            raise ValueError(f"every channel count must be a multiple of norm_groups={self.norm_groups}")


def build_vae(arch: TinyShapesArch) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=arch.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels, layers_per_block=1, norm_num_groups=arch.norm_groups,
        sample_size=IMAGE_SIZE,
    )


def build_text_encoder(arch: TinyShapesArch) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.text_width, intermediate_size=arch.text_width * 4,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        max_position_embeddings=MODEL_MAX_LENGTH, bos_token_id=arch.vocab_size - 2, eos_token_id=arch.vocab_size - 1,
        pad_token_id=arch.vocab_size - 1, projection_dim=arch.text_width,
    )
    return CLIPTextModel(cfg)


def build_unet(arch: TinyShapesArch) -> UNet2DConditionModel:
    n = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2 ** (len(arch.vae_channels) - 1),
        in_channels=arch.latent_channels, out_channels=arch.latent_channels,
        # Cross-attention below the top level only: full-resolution attention costs 2x the time on a CPU.
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=arch.unet_channels, layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_width, attention_head_dim=arch.unet_heads, norm_num_groups=arch.norm_groups,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)
