"""The stochastic flow-matching step as a Gaussian policy: velocity -> SDE step mean, std, log-density.

Pure functions, tensors in and tensors out, beside the DDIM ones of ``alignment.core.ddim``. Flow-matching models
(Stable Diffusion 3, FLUX) are sampled with the Euler ODE ``x <- x + (sigma_next - sigma) v``, which has no
per-step density. Replacing the ODE by an SDE with the same marginals (as Flow-GRPO and DanceGRPO do) gives every
step a Gaussian policy, and the dense discounted DPO loss of ``alignment.core.objective`` is used on its
log-probabilities unchanged. It knows nothing about transformers, scheduler objects, pipelines or devices: the
caller runs the model and reads the sigmas from the scheduler.

Notation (symbol -> name here)
------------------------------
- ``x_k``, ``k = 0 .. K``   latents in sampling order, ``x_0`` the start noise (as for DDIM).
- ``sigma``, ``sigma_next``  the flow time of step ``k`` and the one it lands on; time runs from 1 (noise) to 0
                             (data): ``x_sigma = (1 - sigma) x_data + sigma eps``.
- ``dt``                     ``sigma_next - sigma`` (< 0).
- ``v``                      ``velocity``: the (guided) model output, trained to be ``eps - x_data``.
- ``a``                      ``noise_level``: the SDE's noise scale (0: the ODE; the studio's ``eta`` setting).
- ``sigma_t``                the diffusion coefficient ``g`` of the SDE at ``sigma``.
- ``mu``, ``std``            the step's mean and standard deviation: ``pi(x_{k+1} | x_k, c) = N(mu, std^2 I)``.

Derivation (checked here, not taken on trust). With ``x_data_hat = x - sigma v`` and ``eps_hat = x + (1 - sigma)
v`` the score is ``grad log p_sigma(x) = -eps_hat / sigma``. In the forward time ``tau = 1 - sigma`` the ODE is
``dx = -v dtau``; the SDE ``dx = (-v + g^2 / 2 * score) dtau + g dW`` has the same marginals for any ``g``
(Fokker-Planck: the diffusion term ``g^2 / 2 lap p`` cancels the added drift ``-div(p g^2 / 2 score)``). With
``dtau = -dt`` one Euler-Maruyama step is

1. ``sigma_t = a * sqrt(sigma / (1 - sigma))``; at ``sigma = 1`` (where it is infinite) the denominator uses
   ``sigma_guard`` (the schedule's second sigma) instead, as Flow-GRPO does
2. ``mu  = x + (v + sigma_t^2 / (2 sigma) * (x + (1 - sigma) v)) * dt``
3. ``std = sigma_t * sqrt(-dt)``
4. ``x_{k+1} = mu + std * z``, ``z ~ N(0, I)``                                  (the sampler draws this)
5. ``log pi(x_{k+1} | x_k, c)`` = mean over latent elements of ``log N(x_{k+1}; mu, std^2)`` (as for DDIM).

With ``a = 0`` step 2 is the Euler step of diffusers' ``FlowMatchEulerDiscreteScheduler`` and step 3 is 0.

The step variance differs by orders of magnitude across a chain (``sigma_t`` grows without bound near
``sigma = 1``), so the constant ``-log std`` of the log-densities does too. It cancels in the policy-to-reference
log-ratio, which the objective clamps, and so does the per-element average; the log-ratio of a step is still
larger where ``std`` is small (the same change of mean counts ``1 / std^2``). Computed in float32 or wider.
"""

from __future__ import annotations

import torch

from alignment.core.ddim import _compute_dtype, _per_sample, gaussian_log_prob

__all__ = ["MAX_NOISE_LEVEL", "flow_noise_scale", "flow_step_mean_std", "flow_step_log_prob", "flow_target"]

# a > sqrt(2) makes the step's coefficient on x, 1 + a^2 dt / (2 (1 - sigma)), negative on a coarse first step;
# Flow-GRPO trains at 0.7. The studio allows what its eta setting allows.
MAX_NOISE_LEVEL = 1.0


def _check_noise_level(noise_level: float) -> None:
    if not 0.0 <= float(noise_level) <= MAX_NOISE_LEVEL:
        raise ValueError(f"the flow SDE noise level must be in [0, {MAX_NOISE_LEVEL}], got {noise_level}")


def flow_noise_scale(sigma: torch.Tensor, noise_level: float,
                     sigma_guard: float | torch.Tensor | None = None) -> torch.Tensor:
    """``sigma_t = a * sqrt(sigma / (1 - sigma))`` (formula step 1), same shape as ``sigma``.

    sigma_guard: used in the denominator where ``sigma == 1``, a float or a tensor broadcastable to ``sigma``;
    required when any ``sigma`` is 1, and in (0, 1) there. ValueError for sigmas outside [0, 1], a missing or
    invalid guard, or a noise level out of range.
    """
    _check_noise_level(noise_level)
    sigma = torch.as_tensor(sigma)
    if not bool(((sigma >= 0) & (sigma <= 1)).all()):
        raise ValueError("flow sigmas must lie in [0, 1]")
    at_one = sigma >= 1
    guard = torch.full_like(sigma, 0.5)  # a placeholder where no guard is used
    if bool(at_one.any()):
        if sigma_guard is None:
            raise ValueError("the sigma schedule reaches sigma = 1, where the SDE's noise scale is infinite; pass "
                             "sigma_guard (the schedule's second sigma) to use in its place")
        guard = torch.as_tensor(sigma_guard, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
        if not bool(((guard > 0) & (guard < 1))[at_one].all()):
            raise ValueError(f"sigma_guard must be in (0, 1) where sigma = 1, got {sigma_guard}")
    return noise_level * (sigma / (1 - torch.where(at_one, guard, sigma))).sqrt()


def flow_step_mean_std(x_k: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor,
                       sigma_next: float | torch.Tensor, noise_level: float, *,
                       sigma_guard: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of one SDE step (formula steps 1-3).

    Args:
        x_k:        (B, ...) latents at ``sigma``.
        velocity:   (B, ...) the (guided) velocity at ``x_k``.
        sigma, sigma_next: floats or (B,) tensors with ``0 <= sigma_next < sigma <= 1``.
        noise_level: ``a`` in [0, MAX_NOISE_LEVEL].
        sigma_guard: see :func:`flow_noise_scale`; a float or (B,) tensor.

    Returns:
        mean (B, ...) and std broadcastable to it, (B, 1, ..) or 0-d, in float32 or wider.
    """
    if x_k.shape != velocity.shape:
        raise ValueError(f"x_k {tuple(x_k.shape)} and velocity {tuple(velocity.shape)} must have the same shape")
    dtype = _compute_dtype(x_k)
    s = _per_sample(sigma, x_k, "sigma")
    s_next = _per_sample(sigma_next, x_k, "sigma_next")
    if not bool((s_next < s).all()) or not bool((s > 0).all()):
        raise ValueError("a flow step needs 0 <= sigma_next < sigma <= 1 (time runs from 1, noise, to 0)")
    dt = s_next - s
    guard = None if sigma_guard is None else _per_sample(sigma_guard, x_k, "sigma_guard")
    g = flow_noise_scale(s, noise_level, guard)
    x, v = x_k.to(dtype), velocity.to(dtype)
    mean = x + (v + g**2 / (2 * s) * (x + (1 - s) * v)) * dt
    return mean, g * (-dt).sqrt()


def flow_step_log_prob(x_next: torch.Tensor, x_k: torch.Tensor, velocity: torch.Tensor,
                       sigma: float | torch.Tensor, sigma_next: float | torch.Tensor, noise_level: float, *,
                       sigma_guard: float | torch.Tensor | None = None) -> torch.Tensor:
    """``log pi(x_{k+1} | x_k, c)`` of one SDE step, (B,): :func:`flow_step_mean_std` then
    ``gaussian_log_prob`` (formula step 5). Use the noise level and guidance of sampling time."""
    if not float(noise_level) > 0:
        raise ValueError(f"noise level {noise_level} makes the flow step the deterministic ODE, which has no "
                         "log-probability; sample with a noise level > 0")
    mean, std = flow_step_mean_std(x_k, velocity, sigma, sigma_next, noise_level, sigma_guard=sigma_guard)
    return gaussian_log_prob(x_next, mean, std)


def flow_target(x_data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What a flow-matching model is trained to output at ``x_sigma = (1 - sigma) x_data + sigma noise``: the
    velocity ``noise - x_data`` (the regression target of flow Diffusion-DPO), in float32 or wider."""
    if x_data.shape != noise.shape:
        raise ValueError(f"x_data {tuple(x_data.shape)} and noise {tuple(noise.shape)} must have the same shape")
    dtype = _compute_dtype(x_data)
    return noise.to(dtype) - x_data.to(dtype)
