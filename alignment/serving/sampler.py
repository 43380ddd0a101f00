"""Generation with trajectory capture over one loaded pipeline, whatever weights it holds.

A `Sampler` wraps a loaded pipeline of any family (`alignment.families`: SD 1.x/2.x, SDXL, their few-step
variants). `generate(prompt, seeds)` runs all seeds as one batch with stochastic DDIM (eta > 0) and returns, for
every image, its full trajectory x_0 .. x_K (x_0 = the start noise, k = 0 the noisiest step), the timesteps, the
settings needed to re-evaluate each reverse step's Gaussian under another set of weights (the sampler's, plus the
family and noise schedule) and the conditioning the prompt alone does not give back (the family decides: SDXL's
pooled embeddings and size micro-conditioning). Capture is one `clone()` per step in the pipeline's step-end
callback; the prompt arguments, the callback's tensors and what is kept of them come from the family, so the
pipeline call is the one plain diffusers makes. Settings whose chain has no step log-probability are refused
before anything is generated (the family's `check_sampling`). Flow-matching families (SD3) run the same call with
the SDE form of their scheduler; the sampler's `eta` is then the SDE's noise level.

Each image gets its own seeded generator: it draws that image's start noise and the noise of every DDIM step.
The same call (prompt, seeds in the same order, settings, weights) gives bit-identical images and trajectories on
the same machine. The same seed in a batch of another size is equal only within float rounding: the CPU and GPU
kernels pick their reduction order by batch size (on an AMD EPYC a batch of 1 and a batch of 2 differ by one fp16
rounding step in about one latent element in 10^3, and not at all in the 8-bit image). The tests hold it to 0.02
(a few fp16 rounding steps of the largest latent values) across batch compositions, and to exact equality within
one.

The sampler knows nothing about adapters, storage or threads: the weights it samples from are its caller's
business (`alignment.serving.swap.SwapSlot` changes them; `alignment.serving.live.LiveModel` serves one sampler
to many threads under its lock), and `adapter_version` is only the label written into each trajectory. Like
diffusers itself it is not thread-safe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image

from alignment.core.limits import validate_prompt, validate_seeds
from alignment.core.trajectory import Trajectory
from alignment.families.loader import LoadedModel
from settings import SamplerConfig


@dataclass
class Generation:
    image: Image.Image
    trajectory: Trajectory

    @property
    def seed(self) -> int:
        return self.trajectory.seed


class Sampler:
    """Generation with trajectory capture over `model`'s pipeline."""

    def __init__(self, model: LoadedModel, config: SamplerConfig | None = None, *, fuse: bool = False):
        """`fuse` is accepted for callers that asked for an unfused sampler; a sampler never fuses (only
        `alignment.serving.swap.SwapSlot` writes adapters into the weights), so only False is allowed."""
        if fuse:
            raise TypeError("a Sampler only generates: serve fused adapters with alignment.serving.live.LiveModel "
                            "(or alignment.serving.swap.SwapSlot on the pipeline)")
        self.model = model
        self.pipe = model.pipe
        self.config = config or SamplerConfig.from_defaults(model.sampler_defaults)

    def generate(self, prompt: str, seeds, config: SamplerConfig | None = None, *,
                 adapter_version: int | None = None) -> list[Generation]:
        """Images and trajectories for `prompt`, one per seed, sampled as one batch; `adapter_version` labels the
        trajectories (the version the pipeline's weights hold, None = the base)."""
        prompt = validate_prompt(prompt)
        seeds = validate_seeds(seeds)
        return self._generate(prompt, seeds, config or self.config, adapter_version)

    def generate_pair(self, prompt: str, seeds=(0, 1), config: SamplerConfig | None = None, *,
                      adapter_version: int | None = None) -> tuple[Generation, Generation]:
        seeds = list(seeds)
        if len(seeds) != 2:
            raise ValueError(f"a pair needs two seeds, got {len(seeds)}")
        a, b = self.generate(prompt, seeds, config, adapter_version=adapter_version)
        return a, b

    def _generate(self, prompt: str, seeds: list[int], cfg: SamplerConfig,
                  adapter_version: int | None) -> list[Generation]:
        pipe, dev, fam = self.pipe, self.model.device, self.model.family
        fam.check_sampling(pipe.scheduler, cfg.steps, cfg.eta)  # a chain the trainer could not score is refused here
        guided = cfg.guidance_scale > 1  # the pipelines skip classifier-free guidance at w <= 1
        n = len(seeds)
        net = fam.denoiser(pipe)
        shape = (net.config.in_channels, cfg.height // pipe.vae_scale_factor, cfg.width // pipe.vae_scale_factor)
        gens = [torch.Generator(dev).manual_seed(s) for s in seeds]
        x0 = torch.stack([torch.randn(shape, generator=g, device=dev, dtype=torch.float32) for g in gens])
        x0 = x0 * pipe.scheduler.init_noise_sigma
        steps: list[torch.Tensor] = [x0]
        extras: list[dict[str, torch.Tensor]] = [{} for _ in seeds]

        def capture(_pipe, i, _t, kwargs):
            nonlocal extras
            steps.append(kwargs["latents"].detach().clone())
            if i == 0:  # the conditioning is the same at every step: keep the first step's
                extras = fam.captured(kwargs, n, guided)
            return kwargs

        with fam.sampling(pipe, gens, cfg):  # a flow family's SDE steps draw from the same generators
            out = pipe(**fam.prompt_kwargs([prompt] * n, [cfg.negative_prompt] * n), **fam.call_kwargs(cfg, pipe),
                       height=cfg.height, width=cfg.width, num_inference_steps=cfg.steps,
                       guidance_scale=cfg.guidance_scale, generator=gens, latents=x0.to(net.dtype),
                       callback_on_step_end=capture,
                       callback_on_step_end_tensor_inputs=list(fam.callback_tensor_inputs), output_type="pil")
        latents = torch.stack(steps, dim=1).to("cpu", torch.float16)  # (B, K+1, C, h, w)
        timesteps = pipe.scheduler.timesteps.detach().to("cpu", torch.long).clone()
        settings = {**asdict(cfg), **self.model.settings}  # the family and schedule the chain was sampled under
        return [Generation(img, Trajectory(latents[i].clone(), timesteps.clone(), prompt, seed, settings,
                                           self.model.model_id, adapter_version, extras[i]))
                for i, (img, seed) in enumerate(zip(out.images, seeds))]
