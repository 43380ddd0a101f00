"""LoRA training on labeled pairs with the dense-reward objectives of `alignment.core.objective`.

The trainer owns its own copy of the pipeline (never the live sampler's), adds a fresh peft LoRA to its UNet for
every run and trains it on all pairs given:

- `discounted` / `trajectory`: for each pair, M step indices k ~ gamma^k (shared by the preferred trajectory w and
  the other l; steps without a density, such as `linspace` spacing's final identity step, are never drawn); the
  UNet is run on the stored x_k exactly as the pipeline ran it (the family's conditioning, with SDXL's stored
  pooled embeddings and time ids; classifier-free guidance and `guidance_rescale` at the sampling-time settings),
  and the output is read by the scheduler's prediction type, giving log pi_theta(x_{k+1} | x_k, c); the reference
  log pi_ref is the same UNet with the adapter disabled under no_grad (no second UNet). `trajectory` is the same
  with gamma = 1 (the bandit / D3PO-style baseline).
Flow-matching families (SD3) go through the same code: the step log-probability is the SDE step's of
`alignment.core.flow` at the sampling noise level (`eta`), over the chain's sigmas, and Diffusion-DPO regresses the
velocity on `(1 - sigma) z + sigma eps`; the LoRA adapts the transformer.
- `diffusion-dpo`: Wallace et al.'s loss on forward-noised final latents (or VAE-encoded images for imported pairs
  without trajectories, fitted to the model's size; SDXL is told each image's original size and crop), the
  regression target of the prediction type, optionally weighted by gamma^k of the timestep's reverse-step index.

Memory: on a GPU the frozen base (UNet, text encoders, VAE) stays in the sampler's half-precision dtype and only
the LoRA parameters, so the optimizer state, are float32 (as diffusers' LoRA training scripts do); a VAE that asks
for it (`force_upcast`) encodes in float32. On a CPU everything is float32.

accelerate owns device placement, mixed precision and gradient clipping; under `accelerate launch` with several
processes each trains on its slice of every batch and the LoRA gradients are all-reduced
(`alignment.training.distributed`). Pairs this model cannot score faithfully (another family or schedule, an
unscorable chain, an imported image without a usable size) are refused before the first step. A run whose loss
goes non-finite raises `TrainingDivergedError` and produces no adapter. The result is a diffusers-format LoRA file
(bytes) that the family's plain pipeline reads with `load_lora_weights`. The trainer knows nothing about storage,
threads or the UI; the pairs it takes are `alignment.training.pairs`'.
"""

from __future__ import annotations

import logging
import math
import random
import time
import torch
from accelerate import Accelerator
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from alignment.core import objective as obj
from alignment.core.trajectory import Trajectory
from alignment.families import flow
from alignment.families.base import Conditioning
from alignment.families.images import fit_image, image_size
from alignment.families.loader import LoadedModel, load_pipeline
from alignment.families.replay import Replay
from alignment.training.distributed import Ranks
from alignment.training.pairs import PairError, TrainingDivergedError, TrainingPair, TrainResult
from settings import DEFAULT_BETA, TrainerConfig

__all__ = ["ADAPTER", "PairError", "Trainer", "TrainingDivergedError", "TrainingPair", "TrainResult"]

log = logging.getLogger(__name__)
ADAPTER = "preference"  # not "train": ModuleDict keys must not shadow nn.Module attributes


def _whole(items):
    return items  # the single-process "shard" of a batch


class Trainer:
    """Owns a private pipeline copy; `train(pairs)` returns a new LoRA and its metrics."""

    def __init__(self, model: str | LoadedModel = "embedded", config: TrainerConfig | None = None,
                 device: str | None = None, dtype: str | None = None):
        """`model`: a loaded model (used as it is) or what `load_pipeline` loads, on `device` in `dtype` (unset: the
        sampler's choice, half precision on a GPU and float32 on a CPU; the LoRA weights are float32 either way)."""
        self.model = model if isinstance(model, LoadedModel) else load_pipeline(model, device=device, dtype=dtype)
        self.config = config or TrainerConfig()
        pipe = self.model.pipe
        self.family = self.model.family
        # the network the LoRA adapts: the UNet, or a flow family's transformer (the name stays `unet`)
        self.unet, self.vae, self.scheduler = self.family.denoiser(pipe), pipe.vae, pipe.scheduler
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        if self.vae.dtype != torch.float32 and self.vae.config.get("force_upcast", False):
            self.vae.to(torch.float32)  # SD/SDXL VAEs overflow in fp16; encoding imports is rare and small
        self.flow = self.family.flow  # an SDE chain over flow sigmas, the model predicting a velocity
        if not self.flow:
            self.prediction_type = self.scheduler.config.prediction_type
            self.abar = self.scheduler.alphas_cumprod.to(torch.float32)
            self.final_abar = float(self.scheduler.final_alpha_cumprod)
        self.replay = Replay(self.model)  # the conditioning and scored steps of stored chains, cached

    def fresh_adapter(self, copies: int = 1) -> None:
        """Replace the adapter with a new LoRA from `config` (seeded; lora_B = 0, so the policy is the reference).
        Its weights are float32 whatever the base's dtype. `copies` > 1 makes room for that many adapters of the
        config's rank side by side (rank and alpha both times `copies`, so the scale alpha / rank is the
        config's): `load_mean` fills it."""
        cfg = self.config
        if self.has_adapter:
            self.unet.delete_adapters(ADAPTER)
        torch.manual_seed(cfg.seed)
        rank, alpha = cfg.lora_rank * copies, (cfg.lora_alpha or cfg.lora_rank) * copies
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                         target_modules=list(cfg.target_modules)), adapter_name=ADAPTER)
        self.unet.set_adapter(ADAPTER)
        cast_training_params(self.unet, dtype=torch.float32)  # only the trainable (LoRA) parameters

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n and ADAPTER in n]

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance: torch.Tensor,
                   rescale: float | torch.Tensor = 0.0) -> torch.Tensor:
        """The guided model output (noise, v or x0, as the scheduler's prediction type says), exactly as the
        pipeline passed it to `scheduler.step`: every step log-probability of the dense objectives (policy and
        reference) goes through this one call."""
        return self.family.guided_output(self.unet, x, t, cond, guidance, rescale)

    @torch.no_grad()
    def implied_noise(self, traj: Trajectory) -> torch.Tensor:
        """(K', C, h, w): the noise z_k that turns x_k into the stored x_{k+1} under the current weights, for the
        K' steps of the chain that have a density (all K but `linspace` spacing's last).

        For a trajectory sampled by the same weights this is standard normal: a check that the log-probabilities
        the objective uses describe the chain the sampler actually ran.
        """
        dev, s = self.model.device, traj.settings
        k = torch.arange(traj.num_steps)[self.replay.stochastic_steps(traj)]
        n, scale = len(k), float(s["guidance_scale"])
        x, x_next = traj.latents[k].float().to(dev), traj.latents[k + 1].float().to(dev)
        t = traj.timesteps[k].to(dev)
        if self.flow:
            t, sigma, sigma_next, guard = (v.to(dev) for v in flow.step_sigmas(self.scheduler, [(traj, k)]))
        cond = self.replay.of_trajectory(traj, guided=scale > 1).repeat_interleave(n)
        guidance = torch.full((n,), scale, device=dev)
        rescale = torch.full((n,), float(s.get("guidance_rescale", 0.0)), device=dev)
        step = self.config.micro_batch or n
        out = torch.cat([self.guided_eps(x[c], t[c], cond[c], guidance[c], rescale[c])
                         for c in (slice(i, i + step) for i in range(0, n, step))])
        if self.flow:
            mean, std = obj.flow_step_mean_std(x, out, sigma, sigma_next, float(s["eta"]), sigma_guard=guard)
            return obj.implied_noise(x_next, mean, std.flatten()).cpu()
        abar_t, abar_prev = obj.step_alphas(self.abar, self.final_abar, t, traj.num_steps)
        mean, std = obj.ddim_step_mean_std(x, out, abar_t, abar_prev, float(s["eta"]),
                                           prediction_type=self.prediction_type)
        return obj.implied_noise(x_next, mean, std).cpu()

    # ---- the two loss computations ----------------------------------------------------------------------------
    def batch_loss(self, batch: list[TrainingPair], generator: torch.Generator, shard=_whole):
        """The configured objective's loss on `shard(batch)` under the current adapter: `(DPOOutput, parts)`, where
        the gradients of `parts` add up to the loss's (the loss itself, or one term per micro-batch). The random
        draws (step indices, timesteps, noise) come from `generator` for the whole batch, so every process of a
        run draws the same ones."""
        if self.config.objective == "diffusion-dpo":
            return self._diffusion_dpo_batch(batch, generator, shard)
        # A dense objective needs trajectories; imported pairs (images only) train with Diffusion-DPO beside them,
        # each part weighted by its share of the batch.
        dense = [p for p in batch if p.w is not None]
        images = [p for p in batch if p.w is None]
        if not images:
            return self._dense_batch(batch, generator, shard)
        beta = DEFAULT_BETA["diffusion-dpo"]
        if not dense:
            return self._diffusion_dpo_batch(images, generator, shard, beta=beta)
        (out_d, parts_d), (out_i, parts_i) = (self._dense_batch(dense, generator, shard),
                                              self._diffusion_dpo_batch(images, generator, shard, beta=beta))
        wd, wi = len(dense) / len(batch), len(images) / len(batch)
        accuracy = torch.stack([out_d.accuracy, out_i.accuracy])
        weights = torch.tensor([wd, wi], device=accuracy.device)[~accuracy.isnan()]
        out = obj.DPOOutput(loss=wd * out_d.loss + wi * out_i.loss, margin=torch.cat([out_d.margin, out_i.margin]),
                            accuracy=(accuracy[~accuracy.isnan()] * weights).sum() / weights.sum()
                            if len(weights) else accuracy[0],
                            clipped_fraction=wd * out_d.clipped_fraction)
        return out, [wd * part for part in parts_d] + [wi * part for part in parts_i]

    def _dense_batch(self, batch: list[TrainingPair], gen: torch.Generator, shard=_whole):
        """The loss on `shard(batch)`; the random draws are made for the whole batch (the same on every process)."""
        cfg, dev = self.config, self.model.device
        # M step indices per pair, drawn once and shared by its w and l trajectories.
        ks = [obj.sample_step_indices(p.w.num_steps, cfg.effective_gamma, cfg.steps_per_pair, generator=gen,
                                      allowed=self.replay.stochastic_steps(p.w)) for p in batch]
        batch, ks = shard(batch), shard(ks)
        m, b = cfg.steps_per_pair, len(batch)
        items = [(getattr(p, side), k) for side in ("w", "l") for p, k in zip(batch, ks)]
        x = torch.cat([tr.latents[k].float() for tr, k in items]).to(dev)  # (2*B*M, C, h, w)
        x_next = torch.cat([tr.latents[k + 1].float() for tr, k in items]).to(dev)
        t = torch.cat([tr.timesteps[k] for tr, k in items])
        steps = torch.tensor([tr.num_steps for tr, _ in items]).repeat_interleave(m)
        if self.flow:  # the transformer's float timestep, sigma, sigma_next and the sigma = 1 guard of each step
            t, sigma, sigma_next, guard = (v.to(dev) for v in flow.step_sigmas(self.scheduler, items))
        else:
            abar_t, abar_prev = (a.to(dev) for a in obj.step_alphas(self.abar, self.final_abar, t, steps))

        def per_step(key: str, default=None) -> torch.Tensor:  # (2*B*M,) one sampling setting of each item
            values = [float(tr.settings.get(key, default)) for tr, _ in items]
            return torch.tensor(values, device=dev).repeat_interleave(m)

        guidance, rescale, etas = per_step("guidance_scale"), per_step("guidance_rescale", 0.0), per_step("eta")
        guided = bool((guidance > 1).any())  # one negative half for the whole batch when any item is guided
        cond = Conditioning.cat([self.replay.of_trajectory(tr, guided) for tr, _ in items]).repeat_interleave(m)
        t = t.to(dev)

        n = len(x)
        chunks = [slice(i, i + cfg.micro_batch) for i in range(0, n, cfg.micro_batch)] if cfg.micro_batch else []

        def logp(c: slice = slice(None)) -> torch.Tensor:
            out = self.guided_eps(x[c], t[c], cond[c], guidance[c], rescale[c])
            logps = torch.empty(len(out), device=dev)
            e = etas[c]
            for eta in e.unique().tolist():  # usually one value; the objective takes a scalar eta
                sel = e == eta
                if self.flow:
                    logps[sel] = obj.flow_step_log_prob(x_next[c][sel], x[c][sel], out[sel], sigma[c][sel],
                                                        sigma_next[c][sel], eta, sigma_guard=guard[c][sel])
                    continue
                logps[sel] = obj.ddim_step_log_prob(x_next[c][sel], x[c][sel], out[sel], abar_t[c][sel],
                                                    abar_prev[c][sel], eta, prediction_type=self.prediction_type)
            return logps

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

    def latent_size(self, pair: TrainingPair) -> tuple[int, int, int]:
        """(C, h, w) of the clean latents Diffusion-DPO trains `pair` on."""
        if pair.w is not None:
            return tuple(pair.w.latents.shape[-3:])
        h, w = self.import_size()
        scale = self.model.pipe.vae_scale_factor
        return self.unet.config.in_channels, h // scale, w // scale

    def import_size(self) -> tuple[int, int]:
        """The (height, width) imported images are trained at: the model's sampler default."""
        d = self.model.sampler_defaults
        return int(d["height"]), int(d["width"])

    @torch.no_grad()
    def clean_sample(self, prompt: str, traj: Trajectory | None, image: Image.Image | None
                     ) -> tuple[torch.Tensor, Conditioning]:
        """A Diffusion-DPO sample: (clean latent (C, h, w) float32 on the CPU, its unguided conditioning). A
        trajectory gives its final latent and stored conditioning; an image is fitted to `import_size`, encoded
        with the VAE, and conditioned on its original size and crop (SDXL's micro-conditioning)."""
        if traj is not None:
            return traj.latents[-1].float(), self.replay.of_trajectory(traj, guided=False)
        size = self.import_size()
        pixels, original, crop = fit_image(image, size)
        lat = self.vae.encode(pixels[None].to(self.model.device, self.vae.dtype)).latent_dist.mean
        cond = self.replay.conditioning(prompt, guided=False, size=size, original_size=original, crop_top_left=crop)
        return (lat * self.vae.config.scaling_factor)[0].float().cpu(), cond

    def _diffusion_dpo_batch(self, batch: list[TrainingPair], gen: torch.Generator, shard=_whole,
                             beta: float | None = None):
        cfg, dev = self.config, self.model.device
        full = len(batch)
        batch = shard(batch)
        samples = [self.clean_sample(p.prompt, getattr(p, side), getattr(p, side + "_image"))
                   for side in ("w", "l") for p in batch]
        z = torch.stack([lat for lat, _ in samples])  # (2B, C, h, w): the w samples, then the l samples
        cond = Conditioning.cat([c for _, c in samples]).to(dev)
        n_train = self.scheduler.config.num_train_timesteps
        t = shard(torch.randint(0, n_train, (full,), generator=gen))
        # the same noise and t for w and l, as in Diffusion-DPO
        noise = shard(torch.randn((full, *z.shape[1:]), generator=gen))
        tt, noise2 = torch.cat([t, t]), torch.cat([noise, noise])
        if self.flow:  # x_sigma = (1 - sigma) z + sigma eps at sigma = (t + 1) / T, regressing the velocity
            s = ((tt + 1).float() / n_train).view(-1, 1, 1, 1)
            noisy = ((1 - s) * z + s * noise2).to(dev)
            target = obj.flow_target(z, noise2).to(dev)
            tt = (s.flatten() * n_train).to(dev)
        else:
            a = self.abar[tt].view(-1, 1, 1, 1)
            noisy = (a.sqrt() * z + (1 - a).sqrt() * noise2).to(dev)
            target = obj.training_target(z, noise2, self.abar[tt], self.prediction_type).to(dev)
            tt = tt.to(dev)

        def err():
            pred = self.family.guided_output(self.unet, noisy, tt, cond, 1.0)
            return (pred - target).pow(2).flatten(1).mean(1)

        with torch.no_grad():
            self.unet.disable_adapters()
            ref = err()
            self.unet.enable_adapters()
        pol = err()
        b = len(batch)
        k = batch[0].w.num_steps if batch[0].w is not None else int(self.model.sampler_defaults["steps"])
        weight = obj.timestep_discount(t, n_train, k, cfg.effective_gamma).to(dev)
        target = torch.tensor([p.target for p in batch], device=dev)
        out = obj.diffusion_dpo_loss(pol[:b], ref[:b], pol[b:], ref[b:], beta=beta or cfg.effective_beta, weight=weight,
                                     target=target)
        return out, [out.loss]

    # ---- the run ----------------------------------------------------------------------------------------------
    def prepare_pairs(self, pairs: list[TrainingPair]) -> list[TrainingPair]:
        dense = self.config.objective != "diffusion-dpo"
        kept = [p for p in pairs if not (p.target == 0.5 and self.config.tie_policy == "drop")]
        for p in kept:  # with a dense objective, image-only (imported) pairs train with Diffusion-DPO beside
            p.validate(needs_trajectory=False)
        for p in kept:  # a pair this model cannot score faithfully fails the run before anything is trained
            for traj in (p.w, p.l):
                if traj is not None:
                    self.model.check_trajectory_settings(traj.settings)
                    if dense:
                        self.replay.stochastic_steps(traj)
            for image in (p.w_image, p.l_image) if p.w is None else ():
                image_size(image)
        # w and l of a Diffusion-DPO batch share one noise tensor: every sample needs the same latent size
        forward_noised = kept if not dense else [p for p in kept if p.w is None]
        if forward_noised:
            sizes = {self.latent_size(p) for p in forward_noised}
            if len(sizes) > 1:
                raise PairError(f"the pairs have latents of different sizes {sorted(sizes)}; Diffusion-DPO trains "
                                "on one image size (sample at one size, or train on the imported pairs alone)")
        finite = [p for p in kept if all(t is None or bool(torch.isfinite(t.latents).all()) for t in (p.w, p.l))]
        if len(finite) < len(kept):  # an fp16 overflow in a stored chain would make every loss NaN: skip it
            log.warning("skipping %d pair(s) whose stored trajectories hold non-finite latents", len(kept) - len(finite))
        kept = finite
        if not kept:
            raise PairError("no usable pairs to train on (ties are dropped with tie_policy='drop')")
        return kept

    def mixed_precision(self) -> str:
        """accelerate's mixed precision for a run: the config's, or on a GPU the half dtype the base is kept in
        (autocast around the frozen half-precision base and the float32 LoRA; fp16 also scales the loss so that
        its gradients do not underflow)."""
        if self.config.mixed_precision != "no" or self.model.device.type != "cuda":
            return self.config.mixed_precision
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.unet.dtype, "no")

    def train(self, pairs: list[TrainingPair], progress=None) -> TrainResult:
        cfg = self.config
        pairs = self.prepare_pairs(pairs)
        self.fresh_adapter()
        params = self.lora_parameters()
        accel = Accelerator(mixed_precision=self.mixed_precision(), cpu=self.model.device.type == "cpu")
        ranks = Ranks(accel)  # one process: every call below is a no-op
        if cfg.batch_pairs < ranks.count:
            raise ValueError(f"batch_pairs ({cfg.batch_pairs}) must be at least the number of training processes "
                             f"({ranks.count})")
        ranks.broadcast_parameters(params)
        share = ranks.share(cfg.batch_pairs)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt = accel.prepare(opt)
        draws = pair_draws(len(pairs), cfg.batch_pairs, cfg.pair_order, random.Random(cfg.seed))
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict] = []
        checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = []
        t0 = time.perf_counter()
        total = cfg.steps_for(len(pairs))
        self.unet.train()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        try:
            for step in range(total):
                batch = [pairs[i] for i in next(draws)]
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
                if done == total or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                    checkpoints.append((done, self.lora_state()))
                ranks.guarded(progress, step + 1, total)  # e.g. a lost lease stops every process
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
                   "steps": total, "processes": ranks.count,
                   "train_seconds": round(time.perf_counter() - t0, 3)}
        return TrainResult(lora, metrics, history, checkpoints)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the current LoRA weights (for `restore`)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.unet.named_parameters()
                if "lora_" in n and ADAPTER in n}

    @property
    def has_adapter(self) -> bool:
        """A LoRA was trained (or restored) into the pipeline; before the first run it is the base alone."""
        return ADAPTER in getattr(self.unet, "peft_config", {})

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

    @torch.no_grad()
    def load_mean(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Make the adapter the mean of several runs' adapters (`lora_state`s of this config, e.g. trained with
        other seeds): each module's weight change becomes (1/K) sum_i B_i A_i exactly, as one LoRA of rank K x r
        (the A's stacked, the B's side by side and divided by K), which plain diffusers loads like any other."""
        if not states or any(set(s) != set(states[0]) for s in states):
            raise ValueError("load_mean needs one or more adapter states with the same modules")
        k = len(states)
        mean = {}
        for name in states[0]:
            parts = [s[name].float() for s in states]
            if ".lora_A." in name:
                mean[name] = torch.cat(parts, dim=0)
            elif ".lora_B." in name:
                mean[name] = torch.cat(parts, dim=1) / k
            else:
                raise ValueError(f"load_mean averages LoRA A and B weights only, not {name!r}")
        self.fresh_adapter(copies=k)
        self.restore(mean)

    def export_lora(self) -> bytes:
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name=ADAPTER))
        meta = self.unet.peft_config[ADAPTER].to_dict()
        meta["target_modules"] = sorted(meta["target_modules"])
        return self.family.lora_bytes(state, meta)  # the family's plain pipeline reads it (SD3: 'transformer.')


def pair_draws(n: int, batch: int, order: str, rng: random.Random):
    """Endless batches of `batch` indices into `n` pairs. `uniform`: each index drawn independently (a pair can be
    missed for a whole run, or drawn twice in a batch); `epochs`: the indices of a shuffled pass, then of the next
    pass (reshuffled), so after any number of steps no pair has been drawn more than once more than another."""
    if order == "uniform":
        while True:
            yield [rng.randrange(n) for _ in range(batch)]
    queue: list[int] = []
    while True:
        while len(queue) < batch:
            block = list(range(n))
            rng.shuffle(block)
            queue += block
        yield queue[:batch]
        del queue[:batch]


def _finite(x: torch.Tensor) -> float:
    v = float(x)
    return v if math.isfinite(v) else 0.0


def _mean(values) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0
