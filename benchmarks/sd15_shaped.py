"""A pipeline with Stable Diffusion 1.5's architecture and random weights, for speed and memory figures at real size.

    python -m benchmarks.sd15_shaped --out runs/sd15-shaped [--size 512 --steps 30]
    python -m benchmarks.speed --model runs/sd15-shaped --batch-pairs 1 --gradient-checkpointing ...

The hub is unreachable here, so the real checkpoint cannot be used; speed and memory depend on the architecture,
not on the weights' values. UNet (860 M parameters: 320/640/1280/1280 channels, two layers per block, 8 heads,
768-wide cross-attention, 64x64 latents) and VAE (128/256/512/512 channels, 8x down-sampling, 512 px images) use
SD 1.5's published configurations; the text encoder is CLIP ViT-L/14's text tower (12 layers, 768 wide) over the
embedded model's tokenizer, so its embedding table has 574 rows instead of 49,408 (29 M fewer parameters, 2 % of
the pipeline). Weights are saved in fp16 safetensors, as SD 1.5's are usually distributed. Images from it are
noise; nothing here measures quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from alignment.embedded.tokenizer import MODEL_MAX_LENGTH, build_tokenizer

# Stable Diffusion 1.x's scheduler configuration (scaled-linear betas).
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                     prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build(out: Path, seed: int = 0, size: int = 512, steps: int = 30) -> Path:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(out / "tokenizer")
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=max(77, MODEL_MAX_LENGTH), hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    # the sampler settings `load_pipeline` reads for a local folder (a smaller size keeps CPU runs short)
    (out / "studio.json").write_text(json.dumps({"sampler": {"height": size, "width": size, "steps": steps}}))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sd15-shaped"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="image size the sampler uses (SD 1.5: 512)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps the sampler uses")
    a = p.parse_args(argv)
    if a.size % 64 or not 64 <= a.size <= 1024:
        p.error("--size must be a multiple of 64 between 64 and 1024")
    path = build(a.out, a.seed, a.size, a.steps)
    n = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(path / "unet").parameters())
    print(f"wrote {path} (UNet {n / 1e6:.0f} M parameters)")


if __name__ == "__main__":
    main()
