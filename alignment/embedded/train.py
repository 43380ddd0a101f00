"""Train the embedded tiny-shapes pipeline from scratch and save it as a diffusers folder (fp16 safetensors).

    python -m alignment.embedded.train --out models/tiny-shapes            # the committed weights (~30 min, 2 CPUs)
    python -m alignment.embedded.train --out /tmp/t --vae-steps 5 --unet-steps 5 --n-images 256   # smoke run

Stage 1 trains the VAE on reconstruction (+ a tiny KL term) and sets `scaling_factor` = 1 / std of the latents.
Stage 2 trains the text encoder and UNet jointly on epsilon prediction with 10 % empty captions (so classifier-free
guidance works) and keeps an exponential moving average of their weights, which is what gets saved. Every random
choice is seeded: the same command on the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from tqdm import tqdm

from alignment.embedded.build import (TinyShapesArch, build_text_encoder, build_unet, build_vae, sample_scheduler,
                                      train_scheduler)
from alignment.embedded.data import held_out_combinations, make_dataset
from alignment.embedded.tokenizer import build_tokenizer, write_tokenizer_files

# Sampler settings that go with the committed weights; the model loader reads them from studio.json.
DEFAULT_SAMPLER = {"steps": 20, "guidance_scale": 4.0, "eta": 1.0, "height": 32, "width": 32}


@dataclass
class TrainConfig:
    out: str = "models/tiny-shapes"
    seed: int = 0
    n_images: int = 40_000
    vae_steps: int = 900
    vae_batch: int = 32
    vae_lr: float = 2e-3
    unet_steps: int = 3600
    unet_batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    offset_noise: float = 0.0
    warmup: int = 200
    device: str = "cpu"

    def __post_init__(self):
        if self.n_images < max(self.vae_batch, self.unet_batch):
            raise ValueError("n_images must be at least one batch")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (N, 3, 32, 32) in [-1, 1]


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(50, cfg.vae_steps))
    vae.train()
    bar = tqdm(range(cfg.vae_steps), desc="vae", mininterval=2)
    for _ in bar:
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)
        x = images[idx].to(cfg.device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for chunk in images.split(512):
        d = vae.encode(chunk.to(device)).latent_dist
        means.append(d.mean.cpu())
        stds.append(d.std.cpu())
    return torch.cat(means), torch.cat(stds)


def train_denoiser(unet, text_encoder, tokenizer, latents_mean, latents_std, specs, cfg: TrainConfig,
                   gen: torch.Generator, rng: random.Random):
    noise_sched = train_scheduler()
    abar = noise_sched.alphas_cumprod.to(cfg.device)
    params = [{"params": unet.parameters(), "lr": cfg.unet_lr}, {"params": text_encoder.parameters(), "lr": cfg.text_lr}]
    opt = torch.optim.AdamW(params, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.unet_steps))
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)]
    unet.train()
    text_encoder.train()
    bar = tqdm(range(cfg.unet_steps), desc="unet+text", mininterval=2)
    for step in bar:
        idx = torch.randint(0, len(latents_mean), (cfg.unet_batch,), generator=gen)
        z = latents_mean[idx] + latents_std[idx] * torch.randn(latents_mean[idx].shape, generator=gen)
        z = z.to(cfg.device)
        captions = ["" if rng.random() < cfg.caption_dropout else specs[i].caption(rng) for i in idx.tolist()]
        ids = tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids.to(cfg.device)
        noise = torch.randn(z.shape, generator=gen)
        if cfg.offset_noise:  # a per-channel constant in the noise teaches the model to set flat colours freely
            noise = noise + cfg.offset_noise * torch.randn(z.shape[:2] + (1, 1), generator=gen)
        noise = noise.to(cfg.device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen).to(cfg.device)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        pred = unet(noisy, t, text_encoder(ids).last_hidden_state).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for avg, live in zip(ema, (unet, text_encoder)):
                ap, lp = list(avg.parameters()), list(live.parameters())
                torch._foreach_lerp_(ap, lp, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def train(cfg: TrainConfig) -> Path:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    tok_dir = out / "tokenizer"
    tokenizer = build_tokenizer(tok_dir)
    arch = TinyShapesArch(vocab_size=len(tokenizer))

    images_np, specs = make_dataset(cfg.n_images, cfg.seed, exclude=held_out_combinations())
    images = to_tensor(images_np)
    vae = build_vae(arch).to(cfg.device)
    train_vae(vae, images, cfg, gen)
    mean, std = encode_all(vae, images, cfg.device)
    scale = 1.0 / mean.std().item()
    vae.register_to_config(scaling_factor=scale)

    text_encoder = build_text_encoder(arch).to(cfg.device)
    unet = build_unet(arch).to(cfg.device)
    unet_ema, text_ema = train_denoiser(unet, text_encoder, tokenizer, mean * scale, std * scale, specs, cfg, gen, rng)

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_ema, tokenizer=tokenizer, unet=unet_ema,
                                   scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    save_half_precision(pipe, out)
    write_tokenizer_files(tok_dir)  # keep vocab.json/merges.txt beside tokenizer.json for older transformers
    meta = {"sampler": DEFAULT_SAMPLER, "train_config": asdict(cfg), "arch": asdict(arch),
            "train_seconds": round(time.time() - t0, 1)}
    (out / "studio.json").write_text(json.dumps(meta, indent=2))
    print(f"saved {out} in {meta['train_seconds']} s")
    return out


def save_half_precision(pipe: StableDiffusionPipeline, out: str | Path) -> Path:
    """Save `pipe` with fp16 weights that plain diffusers loads without a `torch_dtype`, as fp32 on a CPU.

    transformers writes the weights' dtype into the text encoder's config.json, and then loads the encoder in it
    even when no dtype is asked for (diffusers' UNet and VAE load in fp32 then: a CPU call fails with "mat1 and
    mat2 must have the same dtype"). The config is written back with float32, the default of every component."""
    out = Path(out)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.to("cpu", torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    config = out / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2, sort_keys=True)
                      + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in asdict(TrainConfig()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train(TrainConfig(**vars(args)))


if __name__ == "__main__":
    main()
