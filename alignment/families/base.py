"""What every model family shares: the conditioning of one UNet call, the guided prediction, the family interface.

A `Conditioning` holds, per sample, what the UNet is conditioned on: the prompt embeddings, the negative ones for
classifier-free guidance, and the family's added conditions (SDXL: `text_embeds`, the pooled embedding, and
`time_ids`, the size and crop micro-conditioning), named as the UNet's `added_cond_kwargs` names them.
`guided_output` runs the UNet on it exactly as the Stable Diffusion pipelines do before `scheduler.step`. `Family`
is the interface each family module (`sd`, `sdxl`) implements. This module knows diffusers' UNet call and nothing
about schedulers' configs, storage or training.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from alignment.core.ddim import classifier_free_guidance
from alignment.core.lora_files import AdapterLoadError


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do instead."""


class ConditioningError(ValueError):
    """Stored or given conditioning does not fit the model (another family, another size, a missing image size)."""


@dataclass
class Conditioning:
    """Per-sample UNet conditioning of a batch of B samples.

    embeds:          (B, L, D) prompt embeddings (the pipeline's `prompt_embeds`).
    negative_embeds: (B, L, D) the negative prompt's, or None when no sample of the batch uses guidance.
    added:           the family's added conditions, each (B, ...): {} for SD 1.x/2.x; SDXL `text_embeds` (B, P)
                     and `time_ids` (B, 6).
    negative_added:  the same for the negative half (SDXL's `negative_pooled_prompt_embeds` and its time ids).
    """

    embeds: torch.Tensor
    negative_embeds: torch.Tensor | None = None
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    negative_added: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        b = len(self.embeds)
        halves = [("added", self.added)]
        if self.negative_embeds is not None:
            if self.negative_embeds.shape != self.embeds.shape:
                raise ConditioningError(f"negative_embeds {tuple(self.negative_embeds.shape)} and embeds "
                                        f"{tuple(self.embeds.shape)} must have the same shape")
            if set(self.negative_added) != set(self.added):
                raise ConditioningError(f"the negative half has added conditions {sorted(self.negative_added)}, "
                                        f"the positive half {sorted(self.added)}")
            halves.append(("negative_added", self.negative_added))
        for name, tensors in halves:
            for key, value in tensors.items():
                if len(value) != b:
                    raise ConditioningError(f"{name}[{key!r}] has {len(value)} rows for a batch of {b}")

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, index) -> "Conditioning":
        """The rows `index` (a slice, a bool mask or an index tensor) of every tensor."""
        return self._map(lambda v: v[index])

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Conditioning":
        return self._map(lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))

    def repeat_interleave(self, repeats: int) -> "Conditioning":
        """Each sample `repeats` times in a row (e.g. once per sampled step of its trajectory)."""
        return self._map(lambda v: v.repeat_interleave(repeats, dim=0))

    @classmethod
    def cat(cls, parts: list["Conditioning"]) -> "Conditioning":
        """One batch from several; the negative half survives only when every part has one."""
        if not parts:
            raise ConditioningError("nothing to concatenate")
        with_negative = all(p.negative_embeds is not None for p in parts)
        keys = set(parts[0].added)
        if any(set(p.added) != keys for p in parts):
            raise ConditioningError("the parts carry different added conditions (different model families?)")
        return cls(
            embeds=torch.cat([p.embeds for p in parts]),
            negative_embeds=torch.cat([p.negative_embeds for p in parts]) if with_negative else None,
            added={k: torch.cat([p.added[k] for p in parts]) for k in keys},
            negative_added={k: torch.cat([p.negative_added[k] for p in parts]) for k in keys} if with_negative
            else {})

    def _map(self, fn) -> "Conditioning":
        neg = self.negative_embeds is not None
        return Conditioning(fn(self.embeds), fn(self.negative_embeds) if neg else None,
                            {k: fn(v) for k, v in self.added.items()},
                            {k: fn(v) for k, v in self.negative_added.items()} if neg else {})


def guided_output(unet, x_t: torch.Tensor, t: torch.Tensor, conditioning: Conditioning,
                  guidance_scale: float | torch.Tensor, guidance_rescale: float | torch.Tensor = 0.0, *,
                  call=None) -> torch.Tensor:
    """(B, C, h, w) float32: the tensor the pipeline passes to `scheduler.step` for latents `x_t` at timesteps `t`.

    Samples with `guidance_scale > 1` get classifier-free guidance (one UNet call on [negative, positive], then
    `m_u + w (m_c - m_u)` and `guidance_rescale`, as the pipelines do); the others the conditional output alone, as
    the pipelines skip guidance at `w <= 1`. `guidance_scale` and `guidance_rescale` are floats or (B,) tensors;
    `t` is a 0-d or (B,) tensor. The UNet runs in its own dtype; guidance is applied in float32 (the pipelines use
    the UNet's dtype: the same numbers in fp32, a rounding apart in half precision). `call(model, x, t, embeds,
    added)` runs the network once (default: a UNet's call; the flow families pass their transformer's).
    """
    call = call or _unet
    b = len(x_t)
    if len(conditioning) != b:
        raise ConditioningError(f"{len(conditioning)} conditioning rows for {b} latents")
    t = torch.as_tensor(t, device=x_t.device).expand(b) if torch.as_tensor(t).ndim == 0 else t.to(x_t.device)
    scale = _rows(guidance_scale, b, x_t.device, "guidance_scale")
    rescale = _rows(guidance_rescale, b, x_t.device, "guidance_rescale")
    guided = scale > 1
    if bool(guided.any()) and conditioning.negative_embeds is None:
        raise ConditioningError("guidance_scale > 1 needs the negative prompt's embeddings (Conditioning."
                                "negative_embeds)")
    if bool(guided.all()):
        return _cfg(call, unet, x_t, t, conditioning, scale, rescale)
    if not bool(guided.any()):
        return call(unet, x_t, t, conditioning.embeds, conditioning.added)
    out = x_t.new_empty(x_t.shape, dtype=torch.float32)
    plain = ~guided
    out[guided] = _cfg(call, unet, x_t[guided], t[guided], conditioning[guided], scale[guided], rescale[guided])
    out[plain] = call(unet, x_t[plain], t[plain], conditioning.embeds[plain],
                       {k: v[plain] for k, v in conditioning.added.items()})
    return out


def _rows(value, b: int, device, name: str) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    if v.numel() not in (1, b):
        raise ConditioningError(f"{name} has {v.numel()} values for a batch of {b}")
    return v.expand(b)


def _unet(unet, x, t, embeds, added) -> torch.Tensor:
    dt = unet.dtype
    added = {k: v.to(dt) for k, v in added.items()} or None  # SD 1.x/2.x UNets take no added conditions
    return unet(x.to(dt), t, encoder_hidden_states=embeds.to(dt), added_cond_kwargs=added).sample.float()


def _cfg(call, unet, x, t, c: Conditioning, scale, rescale) -> torch.Tensor:
    added = {k: torch.cat([c.negative_added[k], c.added[k]]) for k in c.added}
    out = call(unet, torch.cat([x, x]), torch.cat([t, t]), torch.cat([c.negative_embeds, c.embeds]), added)
    uncond, cond = out.chunk(2)
    return classifier_free_guidance(uncond, cond, scale, rescale)


# ----------------------------------------------------------------------------------------------------------
# LoRA files against a UNet

def check_lora_fits(unet, state: dict[str, torch.Tensor], prefix: str = "unet") -> None:
    """Raise AdapterLoadError unless every UNet LoRA weight of a diffusers-format state dict names a layer of
    `unet` with matching input and output sizes: a LoRA for another family or another UNet shape is refused before
    anything is loaded (diffusers would skip unknown layers with a warning, or fail half-way). `prefix`: the
    network's name in the file's keys (`transformer` for a flow family)."""
    modules = dict(unet.named_modules())
    pattern = re.compile(rf"^{re.escape(prefix)}\.(.+)\.(lora\.down|lora\.up|lora_A|lora_B)(?:\.[^.]+)?\.weight$")
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            continue  # alphas, DoRA magnitudes and text-encoder parts carry no UNet shape
        path, part = match.groups()
        module = modules.get(path)
        base = getattr(module, "base_layer", module)  # the layer itself when peft has wrapped it
        if isinstance(base, torch.nn.Linear):
            sizes = base.in_features, base.out_features
        elif isinstance(base, torch.nn.Conv2d):
            sizes = base.in_channels, base.out_channels
        else:
            raise AdapterLoadError(f"the LoRA adapts {path!r}, which this model's UNet does not have as a linear or "
                                   "convolution layer: it was trained for another model family or architecture")
        down = part in ("lora.down", "lora_A")
        have, want = (value.shape[1], sizes[0]) if down else (value.shape[0], sizes[1])
        if have != want:
            side = "input" if down else "output"
            raise AdapterLoadError(f"the LoRA's {path!r} has {side} size {have}, this model's UNet {want}: it was "
                                   "trained for another model family or size")


# ----------------------------------------------------------------------------------------------------------
# The family interface


class Family:
    """One pipeline family: how to load, check, sample and re-condition it. Subclasses set the class attributes.

    name:                   recorded in trajectory settings ("sd", "sdxl").
    pipeline_class:         the diffusers pipeline class; `class_names` the `model_index.json` names it loads.
    callback_tensor_inputs: what the sampler's step-end callback asks the pipeline for.
    stored_names:           which callback tensors `captured` keeps, under which trajectory names.
    load_kwargs:            extra `from_pretrained` arguments.
    guided_output:          `alignment.families.base.guided_output`, the same for every DDIM family.
    """

    name: str
    pipeline_class: type
    class_names: tuple[str, ...]
    callback_tensor_inputs: tuple[str, ...] = ("latents",)
    stored_names: dict[str, str] = {"prompt_embeds": "prompt_embeds"}  # callback tensor -> trajectory name
    load_kwargs: dict = {}
    defaults: dict = {}  # steps, guidance_scale, eta of many-step checkpoints of the family
    guided_output = staticmethod(guided_output)
    flow = False  # True for flow-matching families: an SDE chain over sigmas instead of DDIM over alphas

    def denoiser(self, pipe):
        """The network the LoRA adapts and the trainer runs (the UNet; a flow family's transformer)."""
        return pipe.unet

    def call_kwargs(self, config, pipe=None) -> dict:
        """The pipeline-call arguments of the sampler's settings (and of `pipe`'s own settings) besides steps,
        guidance and size."""
        return {"eta": config.eta, "guidance_rescale": config.guidance_rescale}

    @contextmanager
    def sampling(self, pipe, generators: list, config):
        """Around one pipeline call (a flow family lends the scheduler its noise); DDIM takes `generator=`."""
        yield

    def check_sampling(self, scheduler, steps: int, eta: float) -> torch.Tensor:
        """(K,) bool: which steps of the chain have a log-density; ValueError when it cannot be scored at all."""
        from alignment.families.schedules import check_sampling  # schedules imports this module
        return check_sampling(scheduler, steps, eta)

    def schedule_settings(self, scheduler) -> dict:
        """The schedule facts a trajectory records (compared before its steps are re-scored)."""
        from alignment.families.schedules import schedule_settings
        return schedule_settings(scheduler)

    def lora_bytes(self, state: dict[str, torch.Tensor], metadata: dict) -> bytes:
        """A trained LoRA (diffusers-format keys without prefix) as the file the family's pipeline loads."""
        from alignment.core.lora_files import save_lora_bytes
        return save_lora_bytes(state, metadata=metadata)

    def configure(self, pipe, settings: dict) -> None:
        """Apply a model folder's `studio.json` "pipeline" settings (ModelLoadError for any this family lacks)."""
        if settings:
            raise ModelLoadError(f"studio.json's pipeline section has settings the {self.name} family does not "
                                 f"take: {', '.join(sorted(settings))}")

    def check(self, pipe) -> None:
        """Raise ModelLoadError for a pipeline of this class that the studio cannot sample or train faithfully."""
        unet = pipe.unet
        if unet.config.time_cond_proj_dim is not None:
            raise ModelLoadError("this UNet embeds the guidance scale (time_cond_proj_dim, LCM-style distillation); "
                                 "the studio's guided prediction needs classifier-free guidance instead")

    def prompt_kwargs(self, prompts: list[str], negative_prompts: list[str]) -> dict:
        """The prompt arguments of `pipe(...)` for a batch (what `conditioning` reproduces)."""
        return {"prompt": list(prompts), "negative_prompt": list(negative_prompts)}

    def captured(self, callback_kwargs: dict, batch_size: int, guided: bool) -> list[dict[str, torch.Tensor]]:
        """Per image of a batch, the conditioning tensors of a step-end callback's kwargs worth storing with its
        trajectory (the latents excluded). With guidance the pipeline's tensors are [negative, positive] halves."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(batch_size)]
        for name, key in self.stored_names.items():
            value = callback_kwargs.get(name)
            if value is None:
                continue
            if len(value) != (2 if guided else 1) * batch_size:
                raise ConditioningError(f"the pipeline's {name} has {len(value)} rows for {batch_size} images")
            for i in range(batch_size):
                out[i][key] = value[batch_size + i if guided else i].detach().to("cpu", copy=True)
                if guided:
                    out[i]["negative_" + key] = value[i].detach().to("cpu", copy=True)
        return out

    def conditioning(self, pipe, prompt: str, negative_prompt: str = "", *, guided: bool,
                     size: tuple[int, int] | None = None, original_size: tuple[int, int] | None = None,
                     crop_top_left: tuple[int, int] = (0, 0), stored: dict[str, torch.Tensor] | None = None
                     ) -> Conditioning:
        """The conditioning (batch of 1) the pipeline builds for `prompt` (with the negative half when `guided`).

        size: the (height, width) generated or trained at; original_size and crop_top_left describe an imported
        image (SDXL's micro-conditioning; other families ignore them). Tensors in `stored` (from `captured`)
        replace what would be recomputed.
        """
        raise NotImplementedError

    def sampler_defaults(self, pipe, few_step: bool) -> dict:
        """Steps, guidance, eta and image size for this checkpoint (`few_step`: a turbo-style distilled model)."""
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        base = {"steps": 4, "guidance_scale": 1.0, "eta": 1.0} if few_step else dict(self.defaults)
        return {**base, "height": size, "width": size}


def stored_rows(stored: dict[str, torch.Tensor] | None, key: str, device, dtype) -> torch.Tensor | None:
    """A stored per-image tensor as a batch of one, or None when it was not stored."""
    if not stored or key not in stored:
        return None
    return stored[key].unsqueeze(0).to(device=device, dtype=dtype)
