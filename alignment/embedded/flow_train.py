"""Train the embedded tiny flow-matching pipeline (`StableDiffusion3Pipeline`) and save it (fp16 safetensors).

    python -m alignment.embedded.flow_train --out models/tiny-flow         # the committed weights (seeded)
    python -m alignment.embedded.flow_train --out /tmp/f --steps 5 --n-images 256      # smoke run

The same procedural shapes data as the embedded DDIM model (`alignment.embedded.data`, the same held-out
combinations), its locally built tokenizer and its trained VAE (frozen, 4 x 16 x 16 latents; SD3's pipeline adds
the VAE's `shift_factor`, 0 here). Trained from scratch: two small `CLIPTextModelWithProjection` encoders (SD3's
CLIP pair; no T5, so the pipeline's T5 slots are zeros) and an `SD3Transformer2DModel`, jointly, on the
rectified-flow objective: `x_sigma = (1 - sigma) x + sigma eps`, the velocity `eps - x` regressed at logit-normal
sigmas (SD3's training density), with 10 % empty captions for classifier-free guidance and an EMA of the weights,
which is what gets saved. Every random choice is seeded.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, \
    StableDiffusion3Pipeline
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from alignment.embedded.data import held_out_combinations, make_dataset
from alignment.embedded.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, write_tokenizer_files
from alignment.embedded.train import encode_all, lr_lambda, to_tensor

REPO_ROOT = Path(__file__).resolve().parents[2]
DDIM_VAE = REPO_ROOT / "models" / "tiny-shapes" / "vae"  # the embedded DDIM model's trained VAE, reused frozen
# Sampler settings that go with the weights (the SDE noise level is the sampler's eta); studio.json carries them.
DEFAULT_SAMPLER = {"steps": 20, "guidance_scale": 4.0, "eta": 0.7, "height": 32, "width": 32}


@dataclass
class FlowTrainConfig:
    out: str = "models/tiny-flow"
    seed: int = 0
    n_images: int = 20_000
    steps: int = 4800
    batch: int = 64
    lr: float = 1e-3
    text_lr: float = 5e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    warmup: int = 100
    width: int = 128  # transformer inner width (heads x head_dim)
    heads: int = 4
    layers: int = 4
    text_width: int = 64
    shift: float = 1.0  # the schedule's sigma shift; 16 x 16 latents need none
    # zero T5 slots after the 24 CLIP tokens (the pipeline's default, 256, makes every call several times slower)
    max_sequence_length: int = 8

    def __post_init__(self):
        if self.n_images < self.batch:
            raise ValueError("n_images must be at least one batch")
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")


def build_components(cfg: FlowTrainConfig, tokenizer, vae_dir: Path = DDIM_VAE):
    """Untrained text encoders and transformer, and the frozen VAE, sized by `cfg`."""
    def text(pad_id: int) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MODEL_MAX_LENGTH,
            projection_dim=cfg.text_width, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id))

    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels, num_layers=cfg.layers, attention_head_dim=cfg.width // cfg.heads,
        num_attention_heads=cfg.heads, joint_attention_dim=2 * cfg.text_width, caption_projection_dim=cfg.width,
        pooled_projection_dim=2 * cfg.text_width, pos_embed_max_size=16)
    return text(tokenizer.pad_token_id), text(tokenizer.pad_token_id), transformer, vae.requires_grad_(False)


def make_pipeline(tokenizer, te1, te2, transformer, vae, shift: float) -> StableDiffusion3Pipeline:
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
        text_encoder=te1, tokenizer=tokenizer, text_encoder_2=te2, tokenizer_2=tokenizer, text_encoder_3=None,
        tokenizer_3=None)


def train_flow(pipe: StableDiffusion3Pipeline, latents_mean, latents_std, specs, cfg: FlowTrainConfig,
               gen: torch.Generator, rng: random.Random):
    """Train the pipeline's text encoders and transformer in place; returns their EMA copies."""
    nets = (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2)
    params = [{"params": pipe.transformer.parameters(), "lr": cfg.lr},
              {"params": [*pipe.text_encoder.parameters(), *pipe.text_encoder_2.parameters()], "lr": cfg.text_lr}]
    opt = torch.optim.AdamW(params, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.steps))
    ema = [copy.deepcopy(n).requires_grad_(False) for n in nets]
    for n in nets:
        n.train()
    bar = tqdm(range(cfg.steps), desc="transformer+text", mininterval=10)
    for step in bar:
        idx = torch.randint(0, len(latents_mean), (cfg.batch,), generator=gen)
        x = latents_mean[idx] + latents_std[idx] * torch.randn(latents_mean[idx].shape, generator=gen)
        captions = ["" if rng.random() < cfg.caption_dropout else specs[i].caption(rng) for i in idx.tolist()]
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device="cpu",
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=cfg.max_sequence_length)
        noise = torch.randn(x.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn((cfg.batch,), generator=gen))  # logit-normal(0, 1), as SD3 trains
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x + s * noise
        pred = pipe.transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=embeds,
                                pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for avg, live in zip(ema, nets):
                torch._foreach_lerp_(list(avg.parameters()), list(live.parameters()), 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def train(cfg: FlowTrainConfig) -> Path:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    tokenizer = build_tokenizer(out / "tokenizer")
    te1, te2, transformer, vae = build_components(cfg, tokenizer)
    images_np, specs = make_dataset(cfg.n_images, cfg.seed, exclude=held_out_combinations())
    mean, std = encode_all(vae, to_tensor(images_np), "cpu")
    scale = vae.config.scaling_factor
    pipe = make_pipeline(tokenizer, te1, te2, transformer, vae, cfg.shift)
    transformer_ema, te1_ema, te2_ema = train_flow(pipe, mean * scale, std * scale, specs, cfg, gen, rng)
    saved = make_pipeline(tokenizer, te1_ema, te2_ema, transformer_ema, vae, cfg.shift)
    save_flow_half_precision(saved, out)
    write_tokenizer_files(out / "tokenizer")
    write_tokenizer_files(out / "tokenizer_2")
    meta = {"sampler": DEFAULT_SAMPLER, "pipeline": {"max_sequence_length": cfg.max_sequence_length},
            "train_config": asdict(cfg), "train_seconds": round(time.time() - t0, 1)}
    (out / "studio.json").write_text(json.dumps(meta, indent=2))
    print(f"saved {out} in {meta['train_seconds']} s")
    return out


def save_flow_half_precision(pipe: StableDiffusion3Pipeline, out: str | Path) -> Path:
    """Save with fp16 weights; the text encoders' configs say float32, so that plain diffusers loads every
    component in float32 without a `torch_dtype` (see `alignment.embedded.train.save_half_precision`)."""
    out = Path(out)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        module.to("cpu", torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    for name in ("text_encoder", "text_encoder_2"):
        config = out / name / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2,
                                     sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in asdict(FlowTrainConfig()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    train(FlowTrainConfig(**vars(p.parse_args(argv))))


if __name__ == "__main__":
    main()
