"""Generation with trajectory capture, and LoRA hot-swap, behind one lock.

A `Sampler` wraps a loaded Stable Diffusion pipeline. `generate(prompt, seeds)` runs all seeds as one batch with
stochastic DDIM (eta > 0) and returns, for every image, its full trajectory x_0 .. x_K (x_0 = the start noise,
k = 0 the noisiest step, as in DESIGN.md), the timesteps and the settings needed to re-evaluate each reverse step's
Gaussian under another set of weights. Capture is one `clone()` per step in the pipeline's step-end callback.

Each image gets its own seeded generator: it draws that image's start noise and the noise of every DDIM step, so an
image is reproducible from (prompt, seed, adapter version) whatever else is in the batch.

`set_adapter` swaps the live LoRA in place (diffusers hotswap: new values copied into the same parameters) without
reloading the pipeline, and fuses it between swaps so that sampling with an adapter costs what sampling the base
costs. Fusing writes base + delta into each wrapped layer's weight in one pass from a saved copy of the base weights
(W = W_base + s * B A, only the adapter's own rank of the hotswap-padded A and B) and switches peft's LoRA path
off, so a swap never has to unfuse: it hot-swaps A and B and writes the weights once; going back to the base is a
copy, exact to the bit. Generation and swaps share one lock: diffusers is not thread-safe.

A swap need not stop generation for long. `prepare(version, lora)` does its heavy part beside generation: while the
live adapter is fused, peft's LoRA path is off, so generation never reads A and B; prepare hot-swaps the new A and B
in and writes the new fused weights into spare buffers (one extra copy of the wrapped layers' weights). The
`set_adapter` that follows only swaps each wrapped layer's weight tensor for its spare under the lock (a pointer
swap per layer). Lock order: `lock`, then `_swap_lock`; prepare takes only `_swap_lock`, so it can never deadlock
with a caller that holds `lock`. The sampler knows nothing about storage or the UI.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from peft.tuners.lora import LoraLayer

from alignment.core.limits import validate_prompt, validate_seeds
from alignment.core.lora_files import LORA_WEIGHT_NAME, AdapterLoadError, lora_rank, materialized
from alignment.core.trajectory import Trajectory
from alignment.families.loader import LoadedModel
from settings import SamplerConfig

ADAPTER_NAME = "live"
log = logging.getLogger(__name__)


@dataclass
class Generation:
    image: Image.Image
    trajectory: Trajectory

    @property
    def seed(self) -> int:
        return self.trajectory.seed


class Sampler:
    """The live pipeline: generation with trajectory capture and adapter hot-swap under one lock."""

    def __init__(self, model: LoadedModel, config: SamplerConfig | None = None, fuse: bool = True,
                 max_lora_rank: int = 64):
        self.model = model
        self.pipe = model.pipe
        self.config = config or SamplerConfig.from_defaults(model.sampler_defaults)
        self.fuse = fuse
        self.max_lora_rank = max_lora_rank
        self.lock = threading.RLock()
        self.adapter_version: int | None = None
        self._loaded = False  # an adapter named ADAPTER_NAME exists in the UNet
        self._fused = False
        self._loaded_keys: frozenset[str] = frozenset()
        self._live_lora: str | Path | bytes | dict | None = None  # what made `adapter_version` live
        self._rank = 0  # the live adapter's own rank (A and B are zero-padded beyond it for hotswap)
        self._base_weights: list[tuple[torch.nn.Module, torch.Tensor]] = []  # LoRA-wrapped layers, pristine weights
        # A and B, the spares and `_prepared` change only under _swap_lock (taken after `lock`, never before it)
        self._swap_lock = threading.Lock()
        self._spares: list[torch.Tensor] = []  # one per wrapped layer: where `prepare` writes the next fused weights
        self._prepared: _Prepared | None = None

    # ---- generation -------------------------------------------------------------------------------------------
    def generate(self, prompt: str, seeds, config: SamplerConfig | None = None) -> list[Generation]:
        """Images and trajectories for `prompt`, one per seed, sampled as one batch."""
        prompt = validate_prompt(prompt)
        seeds = validate_seeds(seeds)
        cfg = config or self.config
        with self.lock:
            return self._generate(prompt, seeds, cfg)

    def generate_pair(self, prompt: str, seeds=(0, 1), config: SamplerConfig | None = None
                      ) -> tuple[Generation, Generation]:
        seeds = list(seeds)
        if len(seeds) != 2:
            raise ValueError(f"a pair needs two seeds, got {len(seeds)}")
        a, b = self.generate(prompt, seeds, config)
        return a, b

    def _generate(self, prompt: str, seeds: list[int], cfg: SamplerConfig) -> list[Generation]:
        pipe, dev = self.pipe, self.model.device
        unet_dtype = pipe.unet.dtype
        shape = (pipe.unet.config.in_channels, cfg.height // pipe.vae_scale_factor, cfg.width // pipe.vae_scale_factor)
        gens = [torch.Generator(dev).manual_seed(s) for s in seeds]
        x0 = torch.stack([torch.randn(shape, generator=g, device=dev, dtype=torch.float32) for g in gens])
        x0 = x0 * pipe.scheduler.init_noise_sigma
        steps: list[torch.Tensor] = [x0]

        def capture(_pipe, _i, _t, kwargs):
            steps.append(kwargs["latents"].detach().clone())
            return kwargs

        out = pipe(prompt=[prompt] * len(seeds), negative_prompt=[cfg.negative_prompt] * len(seeds),
                   height=cfg.height, width=cfg.width, num_inference_steps=cfg.steps,
                   guidance_scale=cfg.guidance_scale, eta=cfg.eta, generator=gens, latents=x0.to(unet_dtype),
                   callback_on_step_end=capture, callback_on_step_end_tensor_inputs=["latents"], output_type="pil")
        latents = torch.stack(steps, dim=1).to("cpu", torch.float16)  # (B, K+1, C, h, w)
        timesteps = pipe.scheduler.timesteps.detach().to("cpu", torch.long).clone()
        settings = asdict(cfg)
        return [Generation(img, Trajectory(latents[i].clone(), timesteps.clone(), prompt, seed, settings,
                                           self.model.model_id, self.adapter_version))
                for i, (img, seed) in enumerate(zip(out.images, seeds))]

    # ---- adapters ---------------------------------------------------------------------------------------------
    def set_adapter(self, version: int | None, lora: str | Path | bytes | dict | None = None) -> float:
        """Make `version` live (None = the base model); returns the seconds the swap held the lock. If the new
        adapter cannot be loaded, AdapterLoadError is raised and the previous version stays live. After
        `prepare(version, lora)` this only commits what prepare wrote (a pointer swap per wrapped layer)."""
        if version is not None and lora is None:
            raise ValueError("an adapter version needs its LoRA weights (a path, bytes or a state dict)")
        with self.lock, self._swap_lock:
            if version is not None and self._is_prepared(version, lora):
                t0 = time.perf_counter()
                self._commit()
                return time.perf_counter() - t0
        with materialized(None if version is None else lora) as (state, source):
            with self.lock, self._swap_lock:
                t0 = time.perf_counter()
                self._prepared = None  # whatever happens below rewrites A and B
                if self._loaded and not self._adapter_present():
                    self._recover()  # an earlier prepare failed inside diffusers, which then deleted the adapter
                try:
                    if state is None:
                        self._unfuse()
                        if self._loaded:
                            self.pipe.disable_lora()
                        self.adapter_version = None
                    else:  # while fused, peft's LoRA path is off: A and B are swapped in place, then fused anew
                        try:
                            self._load(state, source)
                        except Exception:
                            self._recover()
                            raise
                        self.adapter_version, self._live_lora, self._rank = version, lora, lora_rank(state)
                finally:
                    if self.adapter_version is not None:
                        self._fuse()  # the new version, or the live one that _recover loaded back
                return time.perf_counter() - t0

    def prepare(self, version: int, lora: str | Path | bytes | dict) -> bool:
        """Do the heavy part of a swap to `version` beside generation (see the module docstring); True when the
        next `set_adapter(version, lora)` will only commit. False when this swap cannot be prepared (no adapter
        fused yet, fusing off, other target layers, a rank above `max_lora_rank`, keys outside the UNet): then
        `set_adapter` does all of it under the lock. A failure raises AdapterLoadError and changes nothing that
        generation reads. Takes only `_swap_lock`: callable with or without `lock` held."""
        if version is None:
            raise ValueError("prepare makes an adapter version ready; the base needs no preparing")
        with materialized(lora) as (state, source), self._swap_lock:
            if self._is_prepared(version, lora):
                return True
            if not self._can_prepare(state):
                return False
            self._prepared = None
            rank = lora_rank(state)
            try:
                self._load(state, source, enable=False)  # only A and B: the live fused weights do not change
                spares = self._spares or [torch.empty_like(base) for _, base in self._base_weights]
                with torch.no_grad():
                    for (module, base), spare in zip(self._base_weights, spares):
                        fuse_into(module, base, rank, out=spare)
            except AdapterLoadError:
                raise
            except Exception as e:  # e.g. out of memory for the spare buffers
                raise AdapterLoadError(f"could not prepare adapter version {version}: {e}") from e
            self._spares = spares
            self._prepared = _Prepared(version, lora, _stamp(lora), rank)
            return True

    def _is_prepared(self, version: int, lora) -> bool:
        p = self._prepared
        if p is None or p.version != version:
            return False
        if isinstance(lora, dict):  # the same dict object (edited in place, it is not told apart)
            same = lora is p.lora
        elif isinstance(lora, bytes):
            same = isinstance(p.lora, bytes) and lora == p.lora
        else:
            try:
                same = isinstance(p.lora, (str, Path)) and Path(lora) == Path(p.lora) and _stamp(lora) == p.stamp
            except OSError:  # the file went away: load_lora reports it properly
                same = False
        return same

    def _can_prepare(self, state: dict[str, torch.Tensor]) -> bool:
        """A hot-swap of A and B that generation cannot see: fusing on (so peft's LoRA path is off, also while the
        base is served), the same UNet layers as the loaded adapter and nothing outside the UNet (a text-encoder
        LoRA stays active), a rank that fits the padding, and no offloading hooks that loading would re-install."""
        unet_keys = frozenset(k for k in state if k.startswith("unet."))
        return (self.fuse and self._loaded and bool(self._base_weights) and self._adapter_present()
                and all(module.disable_adapters for module, _ in self._base_weights)
                and len(unet_keys) == len(state) and unet_keys == self._loaded_keys
                and lora_rank(state) <= self.max_lora_rank and getattr(self.pipe.unet, "_hf_hook", None) is None)

    def _commit(self) -> None:
        """Under both locks: the prepared fused weights become the live ones, the old ones the next spares."""
        p, old = self._prepared, []
        for (module, _), spare in zip(self._base_weights, self._spares, strict=True):
            weight = module.base_layer.weight
            old.append(weight.data)
            weight.data = spare
        self._spares = old
        self._fused = True
        self.adapter_version, self._live_lora, self._rank, self._prepared = p.version, p.lora, p.rank, None

    def _adapter_present(self) -> bool:
        return ADAPTER_NAME in (getattr(self.pipe.unet, "peft_config", None) or {})

    def _recover(self) -> None:
        """After a failed load, A and B may hold part of the new adapter, and diffusers deletes the adapter when
        loading fails half-way (the replace path deleted it already). Load the live version's weights back
        (hot-swapped, or anew when the adapter is gone; the caller fuses them), or fall back to the base, so that
        `adapter_version` always names what the weights hold."""
        if not self._adapter_present():
            self._unfuse()
            self._base_weights, self._spares, self._prepared = [], [], None
            self._loaded, self._loaded_keys, self._rank = False, frozenset(), 0
        if self.adapter_version is None:
            return
        try:
            with materialized(self._live_lora) as (state, source):
                self._load(state, source)
                self._rank = lora_rank(state)
        except Exception as e:  # the live version cannot come back either: serve the base rather than mislabel
            log.warning("could not restore adapter version %s after a failed swap (%s); serving the base model",
                        self.adapter_version, e)
            self._unfuse()
            if self._adapter_present():
                self.pipe.unet.disable_lora()
            self.adapter_version = None

    def _load(self, state: dict[str, torch.Tensor], source, enable: bool = True) -> None:
        """Load or hot-swap the adapter's A and B (enable: switch peft's LoRA path on; `_fuse` switches it off)."""
        keys = frozenset(k for k in state if k.startswith("unet."))  # not empty: `materialized` checked
        rank = lora_rank(state)
        # diffusers cannot hot-swap text-encoder LoRA: an adapter with parts outside the UNet is loaded anew
        can_hotswap = (self._loaded and rank <= self.max_lora_rank and keys == self._loaded_keys
                       and len(keys) == len(state))
        foreign = sorted(getattr(self.pipe.unet, "peft_config", None) or ()) if not self._loaded else []
        if foreign:  # diffusers' hotswap must be enabled before the first adapter: fail clearly, change nothing
            raise AdapterLoadError(f"the pipeline already holds LoRA adapter(s) {', '.join(foreign)} that this "
                                   "sampler did not load; give the sampler a pipeline of its own (load_pipeline)")
        try:
            if not self._loaded:
                self.pipe.enable_lora_hotswap(target_rank=max(self.max_lora_rank, rank))
            elif not can_hotswap:  # different targets or a larger rank: replace the adapter, keep the pipeline
                self._unfuse()
                self._base_weights, self._spares = [], []  # the new adapter may wrap other layers
                self.pipe.delete_adapters(ADAPTER_NAME)
            self.pipe.load_lora_weights(str(source) if isinstance(source, Path) else source,
                                        adapter_name=ADAPTER_NAME, hotswap=can_hotswap)
        except (ValueError, RuntimeError, KeyError) as e:
            raise AdapterLoadError(f"could not load the adapter: {e}") from e
        if enable:
            self.pipe.enable_lora()
        self._loaded = True
        self._loaded_keys = keys

    def _fuse(self) -> None:
        """Write base + the live adapter's delta into the wrapped layers (also over an older fused delta)."""
        if not (self.fuse and self._loaded):
            return
        if not self._base_weights:
            self._base_weights = [(m, m.base_layer.weight.detach().clone()) for m in self.pipe.unet.modules()
                                  if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A]
        with torch.no_grad():
            for module, base in self._base_weights:
                fuse_into(module, base, self._rank)
        self.pipe.unet.disable_lora()  # the delta is in the weights now; peft's own path would add it again
        self._fused = True

    def _unfuse(self) -> None:
        if self._fused:
            with torch.no_grad():
                for module, base in self._base_weights:
                    module.base_layer.weight.copy_(base)
            self._fused = False


def fuse_into(module, base: torch.Tensor, rank: int, out: torch.Tensor | None = None) -> None:
    """out (default: module.base_layer.weight) = base + scaling * B A for the adapter's A and B, in one pass (no
    delta tensor) for a plain linear LoRA; other layer types (convolutions, DoRA) go through peft's own
    `get_delta_weight`."""
    weight = module.base_layer.weight if out is None else out
    a, b = module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight
    plain_linear = (isinstance(module.base_layer, torch.nn.Linear) and not module.fan_in_fan_out
                    and not module.use_dora.get(ADAPTER_NAME, False) and a.dtype == weight.dtype)
    if plain_linear and 0 < rank <= a.shape[0]:
        torch.addmm(base, b[:, :rank], a[:rank], alpha=float(module.scaling[ADAPTER_NAME]), out=weight)
    else:
        torch.add(base, module.get_delta_weight(ADAPTER_NAME).to(weight.dtype), out=weight)


@dataclass
class _Prepared:
    """A swap that `Sampler.prepare` has done all but the commit of."""

    version: int
    lora: str | Path | bytes | dict
    stamp: tuple | None  # a file's (size, mtime) when prepared from a path: a rewritten file is not the same adapter
    rank: int


def _stamp(lora) -> tuple | None:
    if not isinstance(lora, (str, Path)):
        return None
    path = Path(lora)
    path = path / LORA_WEIGHT_NAME if path.is_dir() else path
    st = path.stat()
    return st.st_size, st.st_mtime_ns


