"""A pipeline with SDXL's architecture and random weights, for memory figures at real size without the hub.

    python -m benchmarks.sdxl_shaped --out runs/sdxl-shaped --size 256 --steps 4     # ~7 GB on disk
    python -m benchmarks.trainer_memory --model runs/sdxl-shaped
    python -m benchmarks.sdxl_shaped --out /tmp/sdxl-tiny --scale tiny             # seconds, for tests

Memory and speed depend on the architecture, not on the weights' values. `--scale full` is SDXL 1.0 base's
published configuration:

- UNet, 2.57 B parameters: block_out_channels (320, 640, 1280), two layers per block, no attention in the first
  level, transformer_layers_per_block (1, 2, 10), attention_head_dim (5, 10, 20) (diffusers' name for the head
  counts; 64 channels each), linear projections, cross_attention_dim 2048, addition_embed_type "text_time" with
  addition_time_embed_dim 256 and projection_class_embeddings_input_dim 2816 (six size and crop ids x 256 + the
  1280-wide pooled embedding), 128x128 latents (1024 px).
- Text encoders: CLIP ViT-L/14's text tower (12 layers, 768 wide, quick_gelu) and OpenCLIP ViT-bigG/14's with its
  projection (32 layers, 1280 wide, 20 heads, gelu, projection 1280), whose penultimate states concatenate to
  the UNet's 2048. Both read the embedded model's locally learned BPE at CLIP's 77 tokens (the second pads with
  "!", as SDXL's does), so their embedding tables have a few hundred rows instead of 49,408: 101 M fewer
  parameters, 3 % of the pipeline.
- VAE: SDXL's (128/256/512/512 channels, two layers per block, scaling factor 0.13025, force_upcast) and its
  Euler scheduler config (scaled-linear betas, leading spacing, steps_offset 1), which the studio's loader turns
  into stochastic DDIM.

`--transformer-layers A,B,C` replaces (1, 2, 10) (e.g. 1,2,2 for a machine where the full UNet does not fit), and
`--scale tiny` keeps the topology at toy widths. The UNet and text encoders are built directly in fp16 (no fp32
copy ever exists) and saved as fp16 safetensors in 1 GB shards, so building needs about the model's fp16 size in
memory. `studio.json` records the image size and step count the sampler uses. Images from it are noise; nothing
here measures quality.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from alignment.embedded.tokenizer import write_tokenizer_files
from alignment.families.tiny import SD_BETAS

TOKENS = 77  # CLIP's context length


@dataclass(frozen=True)
class Shape:
    """The sizes that make an SDXL-topology pipeline; `FULL` is SDXL 1.0 base's."""

    block_out_channels: tuple[int, int, int]
    transformer_layers: tuple[int, int, int]
    heads: tuple[int, int, int]  # the UNet config's `attention_head_dim`
    text_widths: tuple[int, int]  # CLIP ViT-L/14, OpenCLIP bigG/14
    text_layers: tuple[int, int]
    text_heads: tuple[int, int]
    time_embed: int  # addition_time_embed_dim
    vae_channels: tuple[int, int, int, int]
    vae_layers: int
    norm_groups: int
    latent: int  # UNet sample_size (the VAE's 8x down-sampling gives the image size)

    @property
    def cross_attention_dim(self) -> int:
        return sum(self.text_widths)  # both encoders' penultimate hidden states, concatenated

    @property
    def added_inputs(self) -> int:
        return 6 * self.time_embed + self.text_widths[1]  # six size/crop ids + the pooled projection


FULL = Shape(block_out_channels=(320, 640, 1280), transformer_layers=(1, 2, 10), heads=(5, 10, 20),
             text_widths=(768, 1280), text_layers=(12, 32), text_heads=(12, 20), time_embed=256,
             vae_channels=(128, 256, 512, 512), vae_layers=2, norm_groups=32, latent=128)
TINY = Shape(block_out_channels=(32, 64, 128), transformer_layers=(1, 2, 2), heads=(1, 2, 4), text_widths=(32, 64),
             text_layers=(2, 2), text_heads=(2, 2), time_embed=8, vae_channels=(8, 8, 16, 16), vae_layers=1,
             norm_groups=8, latent=8)
SCALES = {"full": FULL, "tiny": TINY}
SDXL_SCHEDULE = dict(**SD_BETAS, timestep_spacing="leading", steps_offset=1, prediction_type="epsilon",
                     interpolation_type="linear", use_karras_sigmas=False)


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Modules built inside get parameters of `dtype` from the start (no float32 copy of a 2.6 B UNet)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def unet(shape: Shape) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=shape.latent, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=shape.block_out_channels, norm_num_groups=shape.norm_groups,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=shape.transformer_layers, attention_head_dim=shape.heads,
        use_linear_projection=True, cross_attention_dim=shape.cross_attention_dim,
        addition_embed_type="text_time", addition_time_embed_dim=shape.time_embed,
        projection_class_embeddings_input_dim=shape.added_inputs)


def text_config(shape: Shape, tokenizer: CLIPTokenizer, i: int) -> CLIPTextConfig:
    width = shape.text_widths[i]
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=shape.text_layers[i], num_attention_heads=shape.text_heads[i],
        max_position_embeddings=TOKENS, hidden_act=("quick_gelu", "gelu")[i], projection_dim=width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build(out: Path, shape: Shape = FULL, seed: int = 0, size: int | None = None, steps: int = 30) -> Path:
    """Write the pipeline of `shape` to `out` (fp16 safetensors) with a `studio.json` for `size` px and `steps`."""
    torch.manual_seed(seed)
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="sdxl-vocab-") as vocab:
        files = str(write_tokenizer_files(vocab))
        tokenizer = CLIPTokenizer.from_pretrained(files, model_max_length=TOKENS)
        tokenizer_2 = CLIPTokenizer.from_pretrained(files, model_max_length=TOKENS, pad_token="!")
    with default_dtype(torch.float16):
        text_encoder = CLIPTextModel(text_config(shape, tokenizer, 0))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(shape, tokenizer_2, 1))
        denoiser = unet(shape)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=shape.vae_layers,
            norm_num_groups=shape.norm_groups, block_out_channels=shape.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=8 * shape.latent, scaling_factor=0.13025, force_upcast=True)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=denoiser, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULE),
        force_zeros_for_empty_prompt=True)
    # 1 GB shards: safetensors serialises a whole shard in memory, and one 5 GB shard would double the peak
    pipe.save_pretrained(out, safe_serialization=True, max_shard_size="1GB")
    size = size or 8 * shape.latent
    (out / "studio.json").write_text(json.dumps({"sampler": {"height": size, "width": size, "steps": steps}}))
    return out


def reduced_copy(folder: Path, transformer_layers: tuple[int, int, int], out: Path, seed: int = 0) -> Path:
    """`folder`'s pipeline with a new random UNet of `transformer_layers` per level, its config otherwise the same;
    the other components are links to `folder`'s (no second copy on disk)."""
    out.mkdir(parents=True)
    for entry in folder.iterdir():
        if entry.name != "unet":
            (out / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    config = dict(UNet2DConditionModel.load_config(folder / "unet"), transformer_layers_per_block=transformer_layers)
    torch.manual_seed(seed)
    with default_dtype(torch.float16):
        denoiser = UNet2DConditionModel.from_config(config)
    denoiser.save_pretrained(out / "unet", safe_serialization=True, max_shard_size="1GB")
    return out


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per component of a built folder, counted from the configs (nothing is loaded into memory)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                  "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                  "text_encoder_2": CLIPTextModelWithProjection(
                      CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
                  "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))}
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


def layers(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not three integers like 1,2,10") from e
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give three positive layer counts like 1,2,10, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sdxl-shaped"))
    p.add_argument("--scale", choices=list(SCALES), default="full", help="full: SDXL's sizes; tiny: toy widths")
    p.add_argument("--transformer-layers", type=layers, help="transformer layers per level, e.g. 1,2,2 "
                                                             "(default: the scale's; SDXL 1,2,10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, help="image size the sampler uses (default: the UNet's, 1024 at full scale)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps the sampler uses")
    a = p.parse_args(argv)
    if a.size is not None and (a.size % 64 or not 64 <= a.size <= 2048):
        p.error("--size must be a multiple of 64 between 64 and 2048")
    if a.out.exists() and any(a.out.iterdir()):
        p.error(f"{a.out} exists and is not empty; choose another --out or remove it")
    shape = SCALES[a.scale]
    if a.transformer_layers:
        shape = replace(shape, transformer_layers=a.transformer_layers)
    path = build(a.out, shape, a.seed, a.size, a.steps)
    counts = parameter_counts(path)
    print(f"wrote {path}: " + ", ".join(f"{k} {v / 1e6:,.2f} M" for k, v in counts.items()) +
          f" parameters; transformer layers {shape.transformer_layers}")


if __name__ == "__main__":
    main()
