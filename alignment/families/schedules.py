"""The noise schedule a pipeline ships with, turned into the stochastic DDIM sampler the objective can score.

The studio samples every DDPM-family checkpoint with `DDIMScheduler` at eta > 0, whatever scheduler its folder
names: `ddim_scheduler` keeps the checkpoint's noise schedule (betas, `num_train_timesteps`, `prediction_type`,
`timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr`) and sets `set_alpha_to_one=False`, so the last step
keeps a non-zero variance. What the step log-probability of `alignment.core.ddim` cannot represent is refused
with a `ModelLoadError` that says why: schedulers that are not a discrete DDPM schedule (flow matching, EDM,
continuous time), x0 clipping or thresholding, unknown prediction types or spacings, and zero terminal SNR with
an epsilon model. (`StableDiffusionPipeline` itself resets `clip_sample` to false and `steps_offset` to 1 when
it is built, with a deprecation warning; the checks here see what it left.) `check_sampling` refuses step counts and etas for which diffusers' step itself would produce
NaN, and tells which steps have a density. This module knows scheduler configs; it knows nothing about UNets,
pipelines' text encoders or storage.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from alignment.core.ddim import PREDICTION_TYPES, step_alphas
from alignment.families.base import ModelLoadError

# Schedulers whose config is a discrete-time DDPM noise schedule (betas over num_train_timesteps): the model was
# trained on that schedule, so DDIM over the same betas samples the same model.
DDPM_SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
)
SPACINGS = ("leading", "trailing", "linspace")
SCHEDULE_KEYS = ("prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
                 "num_train_timesteps")


def ddim_scheduler(scheduler) -> DDIMScheduler:
    """A stochastic-DDIM scheduler with `scheduler`'s noise schedule, or ModelLoadError saying why there is none."""
    name = type(scheduler).__name__
    cfg = dict(scheduler.config)
    if name not in DDPM_SCHEDULERS:
        raise ModelLoadError(
            f"the pipeline's scheduler is {name}, which is not a discrete-time DDPM noise schedule; the studio "
            f"samples with stochastic DDIM over such a schedule and supports {', '.join(DDPM_SCHEDULERS)}")
    for key, what in (("thresholding", "dynamic thresholding of the predicted x0"),
                      ("clip_sample", "clipping of the predicted x0")):
        if cfg.get(key):
            raise ModelLoadError(
                f"the scheduler config sets {key}=true ({what}), which the step log-probability does not model; "
                f"if the model was trained without it (latent diffusion models are), set \"{key}\": false in "
                "scheduler/scheduler_config.json")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelLoadError(f"prediction_type {prediction!r} is not one of {', '.join(PREDICTION_TYPES)}, the "
                             "model outputs a DDIM step can be computed from")
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ModelLoadError(f"timestep_spacing {spacing!r} is not one of {', '.join(SPACINGS)}")
    if cfg.get("timestep_type", "discrete") != "discrete" or cfg.get("use_flow_sigmas"):
        raise ModelLoadError("the scheduler uses continuous timesteps or flow sigmas, not a discrete DDPM schedule")
    if cfg.get("rescale_betas_zero_snr") and prediction == "epsilon":
        raise ModelLoadError("rescale_betas_zero_snr with prediction_type epsilon: at zero terminal SNR an epsilon "
                             "prediction determines no x0 (abar = 0); zero-SNR models predict v_prediction")
    try:
        return DDIMScheduler.from_config(cfg, set_alpha_to_one=False, clip_sample=False, thresholding=False)
    except (NotImplementedError, ValueError) as e:  # e.g. a beta_schedule DDIM does not implement
        raise ModelLoadError(f"DDIM cannot use this noise schedule: {e}") from e


def schedule_settings(scheduler) -> dict:
    """The schedule facts a trajectory records so that its steps are re-scored under the same chain."""
    return {key: scheduler.config[key] for key in SCHEDULE_KEYS}


def zero_terminal_snr(scheduler) -> bool:
    return bool(scheduler.config.get("rescale_betas_zero_snr", False))


def few_step(scheduler) -> bool:
    """Whether the schedule is a few-step (turbo / lightning style) distilled model's: trailing spacing without
    zero terminal SNR. (Zero-SNR v-prediction models use trailing spacing for many steps.)"""
    return scheduler.config.timestep_spacing == "trailing" and not zero_terminal_snr(scheduler)


# A stochastic step's `1 - abar_prev - std^2` below this share of `1 - abar_prev` is 0 up to float32 rounding; the
# share is abar_t (1 - abar_prev) / (abar_prev (1 - abar_t)), so only abar_t ~ 0 gets there
ROUNDING_EDGE = 1e-6


def check_sampling(scheduler: DDIMScheduler, steps: int, eta: float) -> torch.Tensor:
    """(K,) bool, which of the `steps` reverse steps have a log-density; ValueError when the chain cannot be scored.

    Refused: eta outside (0, 1], a step count the scheduler refuses, and a step where diffusers' own
    `1 - abar_prev - std^2` is zero up to float32 rounding. That happens at eta = 1 on a zero-SNR schedule's first
    step, t = T-1 (abar_t = 0 makes std^2 = 1 - abar_prev exactly); whether the rounding lands below zero, where
    diffusers' step returns NaN, depends on the CPU's vector maths, so the step is refused on every machine: use
    eta < 1 there. A step with std = 0 is the identity:
    `linspace` spacing ends at t = 0 and lands on `abar_0` again; it has no density and no parameters to train, so
    the trainer leaves it out (the mask). A chain with no stochastic step at all is refused.
    """
    if not 0 < eta <= 1:
        raise ValueError(f"eta must be in (0, 1] for a stochastic DDIM chain, got {eta}")
    probe = DDIMScheduler.from_config(scheduler.config)
    try:
        probe.set_timesteps(steps)
    except ValueError as e:
        raise ValueError(f"{steps} steps: {e}") from e
    t = probe.timesteps
    abar_t, abar_prev = step_alphas(probe.alphas_cumprod, probe.final_alpha_cumprod, t, steps)
    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)  # diffusers' float32 arithmetic
    std = eta * variance**0.5
    residue = 1 - abar_prev - std**2
    bad = ((residue < 0) | ((std > 0) & (residue < ROUNDING_EDGE * (1 - abar_prev)))).nonzero().flatten()
    if len(bad):
        raise ValueError(f"eta = {eta} with {steps} steps makes diffusers' DDIM step NaN at t = {int(t[bad[0]])} "
                         "on some CPUs (zero terminal SNR leaves 1 - abar_prev - std^2 at 0 up to rounding); "
                         "use eta < 1")
    stochastic = std > 0
    if not bool(stochastic.any()):
        raise ValueError(f"no step of this {steps}-step chain is stochastic ({scheduler.config.timestep_spacing} "
                         "spacing); use more steps")
    return stochastic
