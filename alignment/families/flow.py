"""The flow-matching schedule a pipeline ships with, turned into the stochastic SDE sampler the objective scores.

`FlowSDEScheduler` is diffusers' `FlowMatchEulerDiscreteScheduler` (same config, same sigmas and timesteps) whose
`step` takes the SDE step of `alignment.core.flow` instead of the Euler ODE step: mean and std from the velocity,
then one draw from each image's own seeded generator. The stock pipeline calls `scheduler.step` without a
generator, so the sampler lends the generators and the noise level (`lend_noise`) for one pipeline call. The first
sigma of such a schedule is 1, where the SDE's noise scale is infinite; the guard is the schedule's second sigma.

`flow_scheduler` refuses what the step log-probability cannot represent, with the reason: other schedulers,
dynamic (resolution-dependent) shifting, inverted sigmas and diffusers' own `stochastic_sampling`.
`check_flow_sampling` refuses step counts whose schedule cannot be guarded and noise levels out of range, and says
which steps have a density (all of them: the last lands on sigma = 0 with a finite std). `chain(scheduler, steps)`
gives the timesteps and sigmas the pipeline steps through, for re-scoring a stored chain. This module knows
scheduler configs; it knows nothing about transformers, text encoders or storage.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

from alignment.core.flow import MAX_NOISE_LEVEL, flow_step_mean_std
from alignment.core.trajectory import Trajectory
from alignment.families.base import ModelLoadError

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowSDEScheduler")
SCHEDULE_KEYS = ("num_train_timesteps", "shift", "shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
                 "use_beta_sigmas")


class FlowSDEScheduler(FlowMatchEulerDiscreteScheduler):
    """The Euler flow scheduler with the SDE step of `alignment.core.flow` at `noise_level` (0: the plain ODE)."""

    noise_level: float = 0.0
    noise_generators: list[torch.Generator] | None = None
    init_noise_sigma = 1.0  # the chain starts at sigma = 1: pure noise (the pipeline draws it unscaled)

    def step(self, model_output, timestep, sample, *args, generator=None, return_dict: bool = True, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        k = self.step_index
        sigma, sigma_next = self.sigmas[k], self.sigmas[k + 1]
        mean, std = flow_step_mean_std(sample.float(), model_output.float(), sigma, sigma_next, self.noise_level,
                                       sigma_guard=self.sigma_guard())
        prev = mean
        if self.noise_level > 0:
            prev = mean + std * _noise(mean, self.noise_generators or generator)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def sigma_guard(self) -> float | None:
        """The sigma used for sigma = 1 in the noise scale's denominator: the schedule's second sigma."""
        return float(self.sigmas[1]) if len(self.sigmas) > 2 and float(self.sigmas[0]) >= 1 else None


def _noise(like: torch.Tensor, generators) -> torch.Tensor:
    """Standard normal noise shaped like `like`; one draw per image from its own generator when given a list."""
    if isinstance(generators, (list, tuple)):
        if len(generators) != len(like):
            raise ValueError(f"{len(generators)} generators for a batch of {len(like)}")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in generators])
    return torch.randn(like.shape, generator=generators, device=like.device, dtype=like.dtype)


@contextmanager
def lend_noise(scheduler: FlowSDEScheduler, generators: list[torch.Generator], noise_level: float):
    """For one pipeline call: the SDE steps draw from `generators` (one per image) at `noise_level`."""
    if not isinstance(scheduler, FlowSDEScheduler):
        raise TypeError("the pipeline's scheduler is not the studio's FlowSDEScheduler; load it with load_pipeline")
    scheduler.noise_generators, scheduler.noise_level = list(generators), float(noise_level)
    try:
        yield
    finally:
        scheduler.noise_generators, scheduler.noise_level = None, 0.0


def flow_scheduler(scheduler) -> FlowSDEScheduler:
    """A FlowSDEScheduler with `scheduler`'s flow schedule, or ModelLoadError saying why there is none."""
    name = type(scheduler).__name__
    if name not in FLOW_SCHEDULERS:
        raise ModelLoadError(f"the pipeline's scheduler is {name}; the studio samples flow-matching models with "
                             "the SDE form of FlowMatchEulerDiscreteScheduler and supports only that scheduler")
    cfg = dict(scheduler.config)
    for key, what in (("use_dynamic_shifting", "resolution-dependent (dynamic) shifting of the sigmas"),
                      ("invert_sigmas", "inverted sigmas"),
                      ("stochastic_sampling", "diffusers' own re-noising, which has no Gaussian step density")):
        if cfg.get(key):
            raise ModelLoadError(f"the scheduler config sets {key}=true ({what}), which the flow step "
                                 f"log-probability does not model; set \"{key}\": false in "
                                 "scheduler/scheduler_config.json if the model allows it")
    return FlowSDEScheduler.from_config(cfg)


def schedule_settings(scheduler) -> dict:
    """The schedule facts a trajectory records so that its steps are re-scored under the same chain."""
    return {"schedule": "flow", **{key: scheduler.config.get(key) for key in SCHEDULE_KEYS}}


def chain(scheduler, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((K,) float32 timesteps, (K+1,) float32 sigmas) the pipeline steps through with `steps` steps (cached by
    the schedule's config and the step count; do not modify the tensors)."""
    key = (json.dumps(dict(scheduler.config), sort_keys=True, default=str), int(steps))
    if key not in _CHAINS:
        probe = FlowSDEScheduler.from_config(scheduler.config)
        probe.set_timesteps(int(steps))
        if len(_CHAINS) >= 64:
            _CHAINS.pop(next(iter(_CHAINS)))
        _CHAINS[key] = (probe.timesteps.float().cpu(), probe.sigmas.float().cpu())
    return _CHAINS[key]


_CHAINS: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def step_sigmas(scheduler, items: list[tuple[Trajectory, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each (trajectory, step indices) item, each index in order: the transformer's timestep, sigma,
    sigma_next and the sigma = 1 guard of that step of its chain; four flat float32 tensors on the CPU."""
    rows = []
    for traj, ks in items:
        timesteps, sigmas = chain(scheduler, traj.num_steps)
        guard = float(sigmas[1]) if float(sigmas[0]) >= 1 else 0.5  # 0.5: unused, sigma < 1 everywhere
        ks = torch.as_tensor(ks).flatten()
        rows.append(torch.stack([timesteps[ks], sigmas[ks], sigmas[ks + 1], torch.full((len(ks),), guard)]))
    t, sigma, sigma_next, guard = torch.cat(rows, dim=1)
    return t, sigma, sigma_next, guard


def check_flow_sampling(scheduler, steps: int, noise_level: float) -> torch.Tensor:
    """(K,) bool, all True: every SDE step has a density. ValueError when the chain cannot be scored: a noise
    level outside (0, MAX_NOISE_LEVEL], or a schedule that reaches sigma = 1 with no second sigma below 1 to guard
    the noise scale with (one step, or sigmas that stay at 1)."""
    if not 0 < float(noise_level) <= MAX_NOISE_LEVEL:
        raise ValueError(f"the flow SDE noise level (eta) must be in (0, {MAX_NOISE_LEVEL}] for a scorable chain, "
                         f"got {noise_level}")
    if int(steps) < 2:
        raise ValueError(f"{steps} flow step(s): the first sigma is 1 and there is no second sigma to guard the "
                         "SDE's noise scale with; use at least 2 steps")
    _, sigmas = chain(scheduler, steps)
    if float(sigmas[0]) >= 1 and not 0 < float(sigmas[1]) < 1:
        raise ValueError(f"the {steps}-step sigma schedule reaches sigma = 1 and its second sigma "
                         f"({float(sigmas[1])}) cannot guard the SDE's noise scale")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"the {steps}-step sigma schedule does not decrease strictly")
    return torch.ones(int(steps), dtype=torch.bool)
