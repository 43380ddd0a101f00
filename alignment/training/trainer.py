"""LoRA training on labeled pairs with the dense-reward objectives of `alignment.core.objective`.

The trainer owns its own copy of the pipeline (never the live sampler's), adds a fresh peft LoRA to its UNet for
every run and trains it on all pairs given:

- `discounted` / `trajectory`: for each pair, M step indices k ~ gamma^k (shared by the preferred trajectory w and
  the other l); the stored x_k is re-noised-predicted with classifier-free guidance at the sampling-time settings,
  giving log pi_theta(x_{k+1} | x_k, c); the reference log pi_ref is the same UNet with the adapter disabled under
  no_grad (no second UNet). `trajectory` is the same with gamma = 1 (the bandit / D3PO-style baseline).
- `diffusion-dpo`: Wallace et al.'s loss on forward-noised final latents (or VAE-encoded images for imported pairs
  without trajectories), optionally weighted by gamma^k of the timestep's reverse-step index.

accelerate owns device placement, mixed precision and gradient clipping; under `accelerate launch` with several
processes each trains on its slice of every batch and the LoRA gradients are all-reduced (`alignment.training.distributed`).
A run whose loss goes non-finite raises
`TrainingDivergedError` and produces no adapter. The result is a diffusers-format LoRA file (bytes) that
`pipe.load_lora_weights` reads. The trainer knows nothing about storage, threads or the UI.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from alignment.core import objective as obj
from alignment.core.lora_files import save_lora_bytes
from alignment.core.trajectory import Trajectory
from alignment.families.loader import LoadedModel, load_pipeline
from alignment.training.distributed import Ranks
from settings import TrainerConfig

log = logging.getLogger(__name__)
ADAPTER = "preference"  # not "train": ModuleDict keys must not shadow nn.Module attributes


def _whole(items):
    return items  # the single-process "shard" of a batch


class TrainingDivergedError(RuntimeError):
    """The loss or the weights went non-finite; no adapter was produced."""


class PairError(ValueError):
    """A training pair is inconsistent (different prompts, mismatched trajectories, no data)."""


@dataclass
class TrainingPair:
    """One judged pair: w preferred over l (target 1), or a tie (target 0.5). Trajectories or images."""

    prompt: str
    w: Trajectory | None
    l: Trajectory | None
    target: float = 1.0
    w_image: Image.Image | None = None
    l_image: Image.Image | None = None

    def validate(self, needs_trajectory: bool) -> None:
        if needs_trajectory and (self.w is None or self.l is None):
            raise PairError(f"pair for {self.prompt!r} has no trajectories; use the diffusion-dpo objective")
        if self.w is not None and self.l is not None:
            if self.w.prompt != self.l.prompt:
                raise PairError(f"pair mixes prompts {self.w.prompt!r} and {self.l.prompt!r}")
            if self.w.latents.shape != self.l.latents.shape or not torch.equal(self.w.timesteps, self.l.timesteps):
                raise PairError(f"pair for {self.prompt!r} has trajectories of different shapes or timesteps")
            if self.w.settings != self.l.settings:
                raise PairError(f"pair for {self.prompt!r} was sampled with different settings")
        elif self.w_image is None or self.l_image is None:
            raise PairError(f"pair for {self.prompt!r} has neither trajectories nor images")
        if self.target not in (0.5, 1.0):
            raise PairError(f"target must be 1 (w preferred) or 0.5 (tie), got {self.target}")


@dataclass
class TrainResult:
    lora: bytes
    metrics: dict
    history: list[dict]
    # (step, LoRA weights on the CPU) every `checkpoint_every` steps, ascending; the last one is the final state
    checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)


class Trainer:
    """Owns a private pipeline copy; `train(pairs)` returns a new LoRA and its metrics."""

    def __init__(self, model: str | LoadedModel = "embedded", config: TrainerConfig | None = None,
                 device: str | None = None):
        self.model = model if isinstance(model, LoadedModel) else load_pipeline(model, device=device, dtype="fp32")
        self.config = config or TrainerConfig()
        pipe = self.model.pipe
        self.unet, self.vae, self.scheduler = pipe.unet, pipe.vae, pipe.scheduler
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
        self.abar = self.scheduler.alphas_cumprod.to(torch.float32)
        self.final_abar = float(self.scheduler.final_alpha_cumprod)
        self._embed_cache: dict[str, torch.Tensor] = {}

    # ---- helpers ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._embed_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            out = self.text_encoder(ids.to(self.model.device))[0].float()
            self._embed_cache.update(zip(missing, out))
        return torch.stack([self._embed_cache[t] for t in texts])

    def _abar_prev(self, t: torch.Tensor, num_steps: torch.Tensor) -> torch.Tensor:
        prev = t - self.scheduler.config.num_train_timesteps // num_steps  # diffusers' DDIM rule
        out = self.abar[prev.clamp(min=0)]
        return torch.where(prev >= 0, out, torch.full_like(out, self.final_abar))

    def fresh_adapter(self) -> None:
        """Replace the adapter with a new LoRA from `config` (seeded; lora_B = 0, so the policy is the reference)."""
        cfg = self.config
        if ADAPTER in getattr(self.unet, "peft_config", {}):
            self.unet.delete_adapters(ADAPTER)
        torch.manual_seed(cfg.seed)
        self.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                         init_lora_weights="gaussian", target_modules=list(cfg.target_modules)),
                              adapter_name=ADAPTER)
        self.unet.set_adapter(ADAPTER)

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n and ADAPTER in n]

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                   guidance: torch.Tensor) -> torch.Tensor:
        """CFG noise prediction, exactly as the pipeline computes it at sampling time: every step log-probability
        of the dense objectives (policy and reference) goes through this one UNet call."""
        dt = self.unet.dtype
        eps = self.unet(torch.cat([x, x]).to(dt), torch.cat([t, t]), torch.cat([uncond, cond]).to(dt)).sample.float()
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance.view(-1, 1, 1, 1) * (eps_c - eps_u)

    @torch.no_grad()
    def implied_noise(self, traj: Trajectory) -> torch.Tensor:
        """(K, C, h, w): the noise z_k that turns x_k into the stored x_{k+1} under the current weights.

        For a trajectory sampled by the same weights this is standard normal: a check that the log-probabilities
        the objective uses describe the chain the sampler actually ran.
        """
        k = torch.arange(traj.num_steps)
        x, x_next, t = traj.latents[:-1].float(), traj.latents[1:].float(), traj.timesteps
        n = len(k)
        cond = self.embed([traj.prompt] * n)
        uncond = self.embed([traj.settings.get("negative_prompt", "")] * n)
        guidance = torch.full((n,), float(traj.settings["guidance_scale"]))
        dev = self.model.device
        eps = self.guided_eps(x.to(dev), t.to(dev), cond, uncond, guidance.to(dev))
        mean, std = obj.ddim_step_mean_std(x.to(dev), eps, self.abar[t].to(dev),
                                           self._abar_prev(t, torch.full((n,), n)).to(dev),
                                           float(traj.settings["eta"]))
        return obj.implied_noise(x_next.to(dev), mean, std).cpu()

    # ---- the two loss computations ----------------------------------------------------------------------------
    def batch_loss(self, batch: list[TrainingPair], generator: torch.Generator, shard=_whole):
        """The configured objective's loss on `shard(batch)` under the current adapter: `(DPOOutput, parts)`, where
        the gradients of `parts` add up to the loss's (the loss itself, or one term per micro-batch). The random
        draws (step indices, timesteps, noise) come from `generator` for the whole batch, so every process of a
        run draws the same ones."""
        step = self._diffusion_dpo_batch if self.config.objective == "diffusion-dpo" else self._dense_batch
        return step(batch, generator, shard)

    def _dense_batch(self, batch: list[TrainingPair], gen: torch.Generator, shard=_whole):
        """The loss on `shard(batch)`; the random draws are made for the whole batch (the same on every process)."""
        cfg, dev = self.config, self.model.device
        # M step indices per pair, drawn once and shared by its w and l trajectories.
        ks = [obj.sample_step_indices(p.w.num_steps, cfg.effective_gamma, cfg.steps_per_pair, generator=gen)
              for p in batch]
        batch, ks = shard(batch), shard(ks)
        m, b = cfg.steps_per_pair, len(batch)
        items = [(getattr(p, side), k) for side in ("w", "l") for p, k in zip(batch, ks)]
        x = torch.cat([tr.latents[k].float() for tr, k in items]).to(dev)  # (2*B*M, C, h, w)
        x_next = torch.cat([tr.latents[k + 1].float() for tr, k in items]).to(dev)
        t = torch.cat([tr.timesteps[k] for tr, k in items])
        steps = torch.tensor([tr.num_steps for tr, _ in items]).repeat_interleave(m)
        abar_t, abar_prev = self.abar[t].to(dev), self._abar_prev(t, steps).to(dev)
        cond = self.embed([tr.prompt for tr, _ in items for _ in range(m)])
        uncond = self.embed([tr.settings.get("negative_prompt", "") for tr, _ in items for _ in range(m)])
        guidance = torch.tensor([float(tr.settings["guidance_scale"]) for tr, _ in items], device=dev)
        guidance = guidance.repeat_interleave(m)
        etas = torch.tensor([float(tr.settings["eta"]) for tr, _ in items]).repeat_interleave(m)
        t = t.to(dev)

        n = len(x)
        chunks = [slice(i, i + cfg.micro_batch) for i in range(0, n, cfg.micro_batch)] if cfg.micro_batch else []

        def logp(c: slice = slice(None)) -> torch.Tensor:
            eps = self.guided_eps(x[c], t[c], cond[c], uncond[c], guidance[c])
            out = torch.empty(len(eps), device=dev)
            e = etas[c]
            for eta in e.unique().tolist():  # usually one value; the objective takes a scalar eta
                sel = (e == eta).to(dev)
                out[sel] = obj.ddim_step_log_prob(x_next[c][sel], x[c][sel], eps[sel], abar_t[c][sel],
                                                  abar_prev[c][sel], eta)
            return out

        def all_logp() -> torch.Tensor:
            return torch.cat([logp(c) for c in chunks]) if chunks else logp()

        def loss(pol: torch.Tensor) -> obj.DPOOutput:
            pol, r = pol.view(2, b, m), ref.view(2, b, m)
            target = torch.tensor([p.target for p in batch], device=dev)
            return obj.dense_dpo_loss(pol[0], r[0], pol[1], r[1], beta=cfg.effective_beta,
                                      log_ratio_clip=cfg.log_ratio_clip, target=target)

        with torch.no_grad():
            self.unet.disable_adapters()
            ref = all_logp()
            self.unet.enable_adapters()
        if not chunks:
            out = loss(logp())
            return out, [out.loss]
        # The loss depends on the weights only through the log-probs: dL/dtheta = sum_i dL/dlogp_i * dlogp_i/dtheta.
        # Take dL/dlogp at the current weights, then back-propagate one chunk's sum(dL/dlogp * logp) at a time.
        with torch.no_grad():
            pol = all_logp().requires_grad_(True)
        out = loss(pol)
        (dl_dlogp,) = torch.autograd.grad(out.loss, pol)
        return out, ((logp(c) * dl_dlogp[c]).sum() for c in chunks)

    @torch.no_grad()
    def _clean_latent(self, traj: Trajectory | None, image: Image.Image | None) -> torch.Tensor:
        if traj is not None:
            return traj.latents[-1].float()  # the latent the image was decoded from
        arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        lat = self.vae.encode(arr[None].to(self.model.device, self.vae.dtype)).latent_dist.mean
        return (lat * self.vae.config.scaling_factor)[0].float().cpu()

    def _diffusion_dpo_batch(self, batch: list[TrainingPair], gen: torch.Generator, shard=_whole):
        cfg, dev = self.config, self.model.device
        full = len(batch)
        batch = shard(batch)
        zw = torch.stack([self._clean_latent(p.w, p.w_image) for p in batch])
        zl = torch.stack([self._clean_latent(p.l, p.l_image) for p in batch])
        n_train = self.scheduler.config.num_train_timesteps
        t = shard(torch.randint(0, n_train, (full,), generator=gen))
        # the same noise and t for w and l, as in Diffusion-DPO
        noise = shard(torch.randn((full, *zw.shape[1:]), generator=gen))
        a = self.abar[t].view(-1, 1, 1, 1)
        noisy = torch.cat([a.sqrt() * zw + (1 - a).sqrt() * noise, a.sqrt() * zl + (1 - a).sqrt() * noise]).to(dev)
        tt, target_noise = torch.cat([t, t]).to(dev), torch.cat([noise, noise]).to(dev)
        cond = self.embed([p.prompt for p in batch] * 2)

        def err():
            pred = self.unet(noisy.to(self.unet.dtype), tt, cond.to(self.unet.dtype)).sample.float()
            return (pred - target_noise).pow(2).flatten(1).mean(1)

        with torch.no_grad():
            self.unet.disable_adapters()
            ref = err()
            self.unet.enable_adapters()
        pol = err()
        b = len(batch)
        k = batch[0].w.num_steps if batch[0].w is not None else 20
        weight = obj.timestep_discount(t, n_train, k, cfg.effective_gamma).to(dev)
        target = torch.tensor([p.target for p in batch], device=dev)
        out = obj.diffusion_dpo_loss(pol[:b], ref[:b], pol[b:], ref[b:], beta=cfg.effective_beta, weight=weight,
                                     target=target)
        return out, [out.loss]

    # ---- the run ----------------------------------------------------------------------------------------------
    def prepare_pairs(self, pairs: list[TrainingPair]) -> list[TrainingPair]:
        dense = self.config.objective != "diffusion-dpo"
        kept = [p for p in pairs if not (p.target == 0.5 and self.config.tie_policy == "drop")]
        for p in kept:
            p.validate(needs_trajectory=dense)
        finite = [p for p in kept if all(t is None or bool(torch.isfinite(t.latents).all()) for t in (p.w, p.l))]
        if len(finite) < len(kept):  # an fp16 overflow in a stored chain would make every loss NaN: skip it
            log.warning("skipping %d pair(s) whose stored trajectories hold non-finite latents", len(kept) - len(finite))
        kept = finite
        if not kept:
            raise PairError("no usable pairs to train on (ties are dropped with tie_policy='drop')")
        return kept

    def train(self, pairs: list[TrainingPair], progress=None) -> TrainResult:
        cfg = self.config
        pairs = self.prepare_pairs(pairs)
        self.fresh_adapter()
        params = self.lora_parameters()
        accel = Accelerator(mixed_precision=cfg.mixed_precision, cpu=self.model.device.type == "cpu")
        ranks = Ranks(accel)  # one process: every call below is a no-op
        if cfg.batch_pairs < ranks.count:
            raise ValueError(f"batch_pairs ({cfg.batch_pairs}) must be at least the number of training processes "
                             f"({ranks.count})")
        ranks.broadcast_parameters(params)
        share = ranks.share(cfg.batch_pairs)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt = accel.prepare(opt)
        rng = random.Random(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict] = []
        checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = []
        t0 = time.perf_counter()
        self.unet.train()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        try:
            for step in range(cfg.train_steps):
                batch = [pairs[rng.randrange(len(pairs))] for _ in range(cfg.batch_pairs)]
                with accel.autocast():
                    # `parts`: tensors whose gradients add up to the loss's (the loss itself, or micro-batches)
                    out, parts = self.batch_loss(batch, gen, ranks.shard)
                    # the whole batch's figures: this slice's weighted by its share, summed over the processes
                    stats = ranks.sum(share * torch.stack([out.loss.detach(), out.margin.mean(),
                                                           out.accuracy.nan_to_num(0.0),
                                                           out.clipped_fraction]).float())
                    loss = stats[0].item()
                    if not math.isfinite(loss):
                        raise TrainingDivergedError(f"loss became {loss} at step {step}; no adapter saved")
                    opt.zero_grad(set_to_none=True)
                    for part in parts:
                        accel.backward(part * share)
                ranks.sum_gradients(params)
                accel.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                history.append({"step": step, "loss": loss, "margin": stats[1].item(),
                                "accuracy": _finite(stats[2]), "clipped": _finite(stats[3])})
                done = step + 1
                if done == cfg.train_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                    checkpoints.append((done, self.lora_state()))
                ranks.guarded(progress, step + 1, cfg.train_steps)  # e.g. a lost lease stops every process
        finally:
            self.unet.eval()
            if cfg.gradient_checkpointing:
                self.unet.disable_gradient_checkpointing()
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingDivergedError("LoRA weights became non-finite; no adapter saved")
        ranks.check_in_sync(params)
        lora = self.export_lora()
        tail = history[-max(1, len(history) // 5):]
        metrics = {"loss_first": history[0]["loss"], "loss": _mean(h["loss"] for h in tail),
                   "margin": _mean(h["margin"] for h in tail), "accuracy": _mean(h["accuracy"] for h in tail),
                   "clipped_fraction": _mean(h["clipped"] for h in tail), "pairs": len(pairs),
                   "steps": cfg.train_steps, "processes": ranks.count,
                   "train_seconds": round(time.perf_counter() - t0, 3)}
        return TrainResult(lora, metrics, history, checkpoints)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the current LoRA weights (for `restore`)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.unet.named_parameters()
                if "lora_" in n and ADAPTER in n}

    def set_adapter_enabled(self, on: bool) -> None:
        """The trained LoRA on, or off (the base model), e.g. for rendering with the trainer's own pipeline."""
        (self.unet.enable_adapters if on else self.unet.disable_adapters)()

    @torch.no_grad()
    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Put LoRA weights saved by `lora_state` (e.g. a checkpoint of the last run) back into the adapter."""
        params = dict(self.unet.named_parameters())
        if set(state) - set(params):
            raise ValueError("the checkpoint does not belong to this trainer's current adapter")
        for n, w in state.items():
            params[n].copy_(w)

    def export_lora(self) -> bytes:
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name=ADAPTER))
        meta = self.unet.peft_config[ADAPTER].to_dict()
        meta["target_modules"] = sorted(meta["target_modules"])
        return save_lora_bytes(state, metadata=meta)


def _finite(x: torch.Tensor) -> float:
    v = float(x)
    return v if math.isfinite(v) else 0.0


def _mean(values) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0
