"""The stochastic DDIM step as a Gaussian policy: model output -> (x0_hat, eps_hat) -> step mean, std, log-density.

Pure functions, tensors in and tensors out. This module knows the DDIM reverse step (Song et al. 2021, eqs. 12 and
16) exactly as diffusers' ``DDIMScheduler.step`` computes it for the three prediction types (``epsilon``,
``v_prediction``, ``sample``, with ``clip_sample=False`` and ``thresholding=False``), the scheduler's rule for the
timestep a step lands on, zero-terminal-SNR schedules (Lin et al. 2023, ``rescale_betas_zero_snr``), and
classifier-free guidance with ``guidance_rescale`` as the Stable Diffusion pipelines apply it, and what each
prediction type is trained to output (the regression target of Diffusion-DPO). It knows nothing
about UNets, scheduler objects, pipelines or devices: the caller runs the model, reads the scheduler's numbers
(``alphas_cumprod``, ``final_alpha_cumprod``) and passes them in. The losses built on these log-probabilities are
in ``alignment.core.objective``.

Notation (paper symbol -> name here)
------------------------------------
- ``K``                      ``num_steps``: the number of reverse (sampling) steps of the chain.
- ``T``                      ``num_train_timesteps`` of the noise schedule (1000 for Stable Diffusion).
- ``x_k``, ``k = 0 .. K``    latents in sampling order: ``x_0`` the start noise, ``x_K`` the final latent
                             (diffusers' timestep ``t`` *decreases* while ``k`` increases).
- ``t``, ``t_prev``          the timestep of step ``k`` and the one it lands on: ``t_prev = t - T // K`` for every
                             ``timestep_spacing`` (leading, trailing, linspace), as ``DDIMScheduler.step`` does.
- ``abar_t``, ``abar_prev``  ``alphas_cumprod[t]`` and ``alphas_cumprod[t_prev]`` (``final_alpha_cumprod`` when
                             ``t_prev < 0``). Zero-SNR schedules have ``abar = 0`` at ``t = T - 1``.
- ``m``                      ``model_output``: what the (guided) network predicts, read by ``prediction_type``:
                             ``epsilon`` (the noise), ``v_prediction`` (``v = sqrt(abar) eps - sqrt(1-abar) x0``),
                             ``sample`` (the clean latent itself).
- ``x0_hat``, ``eps_hat``    the predicted clean latent and noise derived from ``m``.
- ``w``                      ``guidance_scale`` (classifier-free guidance), ``phi`` ``guidance_rescale``.
- ``sigma_k``                ``std``: the step's standard deviation; ``eta`` scales it (0: deterministic DDIM).
- ``mu_theta(x_k, c)``       ``mean`` of the step; ``pi_theta(x_{k+1} | x_k, c) = N(mu_theta, sigma_k^2 I)``.

The formula, step by step
-------------------------
0. guidance (the pipeline, when ``w > 1``): ``m = m_u + w (m_c - m_u)``; with ``phi > 0``
   ``m = phi * m * std(m_c) / std(m) + (1 - phi) * m`` (std per sample over all other dimensions).
1. ``epsilon``:      ``x0_hat = (x_k - sqrt(1 - abar_t) m) / sqrt(abar_t)``,  ``eps_hat = m``
   ``v_prediction``: ``x0_hat = sqrt(abar_t) x_k - sqrt(1 - abar_t) m``,   ``eps_hat = sqrt(abar_t) m + sqrt(1 - abar_t) x_k``
   ``sample``:       ``x0_hat = m``,  ``eps_hat = (x_k - sqrt(abar_t) m) / sqrt(1 - abar_t)``
2. ``sigma_k  = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))``
3. ``dir      = sqrt(1 - abar_prev - sigma_k^2) * eps_hat``
4. ``mu       = sqrt(abar_prev) * x0_hat + dir``
5. ``x_{k+1}  = mu + sigma_k * z``, ``z ~ N(0, I)``                              (the sampler draws this)
6. ``log pi(x_{k+1} | x_k, c) = mean over latent elements of log N(x_{k+1}; mu, sigma_k^2)``
   (averaged, not summed, as the authors of the dense-reward objective do).

At ``abar_t = 0`` (zero SNR) step 1 has no ``epsilon`` form (division by zero), so an ``epsilon`` model is refused
there; ``v_prediction`` and ``sample`` are exact. ``abar_prev = 1`` (``set_alpha_to_one=True``) makes the last step
deterministic, with no log-density: keep it False.

Precision: the log-ratios the objective clamps are of the order of 1e-4 .. 1e-2, far below the resolution of
fp16/bf16, so steps 1-6 are computed in float32 (or wider, if the inputs are wider) whatever the input dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "PREDICTION_TYPES",
    "prev_timestep",
    "step_alphas",
    "predicted_x0_eps",
    "training_target",
    "classifier_free_guidance",
    "rescale_noise_cfg",
    "ddim_step_mean_std",
    "gaussian_log_prob",
    "ddim_step_log_prob",
    "implied_noise",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}")
    return torch.promote_types(x.dtype, torch.float32)


def _per_sample(value: float | torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """A float, a 0-d tensor, a (B,) tensor or a tensor broadcastable to ``like``, made broadcastable to it.

    A 1-d tensor is read as one value per batch element and reshaped to (B, 1, .., 1).
    """
    dtype = _compute_dtype(like)
    if isinstance(value, torch.Tensor):
        t = value.to(device=like.device, dtype=dtype)
    else:  # straight to the compute dtype: a detour through float32 would round a float64 input
        t = torch.as_tensor(value, dtype=dtype, device=like.device)
    if t.ndim == 1 and like.ndim > 1:
        if t.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"{name} has {t.shape[0]} values per batch but the batch size is {like.shape[0]}")
        t = t.reshape(-1, *([1] * (like.ndim - 1)))
    try:
        torch.broadcast_shapes(t.shape, like.shape)
    except RuntimeError as err:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {tuple(like.shape)}") from err
    return t


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


# ----------------------------------------------------------------------------------------------------------
# Timesteps


def prev_timestep(t: int | torch.Tensor, num_train_timesteps: int,
                  num_steps: int | torch.Tensor) -> int | torch.Tensor:
    """``t_prev = t - T // K``: the timestep whose ``abar`` a DDIM step from ``t`` lands on (negative after the
    last step). diffusers uses this rule for every ``timestep_spacing``; with ``trailing`` or ``linspace`` it is not
    always the next timestep of the schedule, and the log-probability must follow the rule, not the schedule."""
    if isinstance(num_steps, torch.Tensor):
        if bool(torch.any(num_steps < 1)):
            raise ValueError("num_steps must be >= 1")
        return t - torch.div(num_train_timesteps, num_steps, rounding_mode="floor")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if num_steps > num_train_timesteps:
        raise ValueError(f"num_steps ({num_steps}) exceeds num_train_timesteps ({num_train_timesteps})")
    return t - num_train_timesteps // num_steps


def step_alphas(alphas_cumprod: torch.Tensor, final_alpha_cumprod: float | torch.Tensor, t: torch.Tensor,
                num_steps: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(abar_t, abar_prev)`` for timesteps ``t`` ((B,) long, or 0-d) of a ``num_steps``-step chain (an int or
    (B,) per sample), from the scheduler's ``alphas_cumprod`` (T,) and ``final_alpha_cumprod``."""
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
    n_train = int(alphas_cumprod.shape[0])
    if t.numel() and not bool(torch.all((t >= 0) & (t < n_train))):
        raise ValueError(f"timesteps must lie in [0, {n_train}), got {t.tolist()}")
    t = t.to(alphas_cumprod.device)
    steps = num_steps.to(t.device) if isinstance(num_steps, torch.Tensor) else num_steps
    prev = prev_timestep(t, n_train, steps)
    abar_t = alphas_cumprod[t]
    final = torch.as_tensor(final_alpha_cumprod, dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    abar_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final)
    return abar_t, abar_prev


# ----------------------------------------------------------------------------------------------------------
# Guidance


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor,
                      guidance_rescale: float | torch.Tensor) -> torch.Tensor:
    """``phi * guided * std(cond) / std(guided) + (1 - phi) * guided`` (formula step 0; Lin et al. 2023, sec. 3.4),
    the std per sample over all other dimensions, as diffusers' ``rescale_noise_cfg``. ``phi`` is a float or (B,)."""
    if guided.shape != cond.shape or guided.ndim < 2:
        raise ValueError(f"guided {tuple(guided.shape)} and cond {tuple(cond.shape)} must share a (B, ...) shape")
    phi = _per_sample(guidance_rescale, guided, "guidance_rescale")
    if not bool(torch.all((phi >= 0) & (phi <= 1))):
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale}")
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1 - phi) * guided


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float | torch.Tensor,
                             guidance_rescale: float | torch.Tensor = 0.0) -> torch.Tensor:
    """``m_u + w (m_c - m_u)``, then :func:`rescale_noise_cfg` when ``phi > 0`` (formula step 0), in the inputs'
    dtype as the pipelines compute it. ``w`` and ``phi`` are floats or (B,) tensors. The pipelines skip guidance
    entirely when ``w <= 1`` (they use ``m_c``); that choice is the caller's."""
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond {tuple(uncond.shape)} and cond {tuple(cond.shape)} must have the same shape")
    w = _per_sample(guidance_scale, cond, "guidance_scale").to(cond.dtype)
    guided = uncond + w * (cond - uncond)
    phi = torch.as_tensor(guidance_rescale)
    if bool(torch.any(phi != 0)):
        guided = rescale_noise_cfg(guided, cond, guidance_rescale).to(cond.dtype)
    return guided


# ----------------------------------------------------------------------------------------------------------
# The step


def predicted_x0_eps(x_k: torch.Tensor, model_output: torch.Tensor, abar_t: float | torch.Tensor,
                     prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_hat, eps_hat)`` from the model output (formula step 1), in float32 or wider.

    ``abar_t`` is a float, 0-d or (B,) tensor in [0, 1); ``abar_t = 0`` (zero terminal SNR) only for
    ``v_prediction`` and ``sample``.
    """
    _check_prediction_type(prediction_type)
    if x_k.shape != model_output.shape:
        raise ValueError(f"x_k {tuple(x_k.shape)} and model_output {tuple(model_output.shape)} must have the same "
                         "shape")
    dtype = _compute_dtype(x_k)
    a_t = _per_sample(abar_t, x_k, "abar_t")
    if not bool(torch.all((a_t >= 0) & (a_t < 1))):
        raise ValueError(f"abar_t must lie in [0, 1), got {abar_t}")
    if prediction_type == "epsilon" and not bool(torch.all(a_t > 0)):
        raise ValueError("abar_t = 0 (a zero-terminal-SNR schedule at its last timestep) has no x0 for an "
                         "epsilon prediction; such schedules need v_prediction or sample")
    x, m = x_k.to(dtype), model_output.to(dtype)
    sqrt_a, sqrt_b = a_t.sqrt(), (1 - a_t).sqrt()
    if prediction_type == "epsilon":
        return (x - sqrt_b * m) / sqrt_a, m
    if prediction_type == "v_prediction":
        return sqrt_a * x - sqrt_b * m, sqrt_a * m + sqrt_b * x
    return m, (x - sqrt_a * m) / sqrt_b


def training_target(x0: torch.Tensor, noise: torch.Tensor, abar_t: float | torch.Tensor,
                    prediction_type: str = "epsilon") -> torch.Tensor:
    """What the model is trained to output at ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``: the noise
    (``epsilon``), ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (``v_prediction``, as the schedulers'
    ``get_velocity``) or ``x0`` (``sample``); the regression target of Diffusion-DPO's errors. Float32 or wider."""
    _check_prediction_type(prediction_type)
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    dtype = _compute_dtype(x0)
    a_t = _per_sample(abar_t, x0, "abar_t")
    if prediction_type == "epsilon":
        return noise.to(dtype)
    if prediction_type == "v_prediction":
        return a_t.sqrt() * noise.to(dtype) - (1 - a_t).sqrt() * x0.to(dtype)
    return x0.to(dtype)


def ddim_step_mean_std(
    x_k: torch.Tensor,
    model_output: torch.Tensor,
    abar_t: float | torch.Tensor,
    abar_prev: float | torch.Tensor,
    eta: float,
    *,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the stochastic DDIM step ``x_{k+1} | x_k`` (formula steps 1-4).

    Args:
        x_k:          (B, C, H, W) latent before the step.
        model_output: (B, C, H, W) the guided prediction at ``x_k`` (what the pipeline passes to
                      ``scheduler.step``), read according to ``prediction_type``.
        abar_t:       ``alphas_cumprod[t]``; a float, 0-d tensor or (B,) tensor (one per batch element).
        abar_prev:    ``alphas_cumprod[t - T // K]``, or ``final_alpha_cumprod`` when that index is negative
                      (:func:`step_alphas` gives both).
        eta:          DDIM stochasticity, >= 0. ``eta = 0`` gives ``std = 0`` (deterministic DDIM), for which
                      :func:`gaussian_log_prob` refuses to compute a density.
        prediction_type: ``epsilon`` | ``v_prediction`` | ``sample`` (the scheduler config's).

    Returns:
        ``(mean, std)``: mean (B, C, H, W) and std broadcastable to it ((B, 1, 1, 1) or 0-d), in float32 or
        wider (see the module docstring on precision).

    Raises:
        ValueError: eta < 0, abar outside its range, ``abar_t > abar_prev`` (steps run towards less noise), an
            epsilon prediction at ``abar_t = 0``, or an eta so large that ``1 - abar_prev - std^2 < 0``
            (diffusers would return NaN there).
    """
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    x0_hat, eps_hat = predicted_x0_eps(x_k, model_output, abar_t, prediction_type)  # 1.
    a_t = _per_sample(abar_t, x_k, "abar_t")
    a_prev = _per_sample(abar_prev, x_k, "abar_prev")
    if not bool(torch.all((a_prev > 0) & (a_prev <= 1))):
        raise ValueError(f"abar_prev must lie in (0, 1], got {abar_prev}")
    if not bool(torch.all(a_t <= a_prev)):
        raise ValueError(
            f"abar_t ({abar_t}) must not exceed abar_prev ({abar_prev}): a reverse step goes towards less noise"
        )
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()  # 2.
    dir_coef_sq = 1 - a_prev - std**2
    if not bool(torch.all(dir_coef_sq >= 0)):
        raise ValueError(f"eta={eta} is too large for this step: 1 - abar_prev - std^2 < 0")
    mean = a_prev.sqrt() * x0_hat + dir_coef_sq.sqrt() * eps_hat  # 3. and 4.
    return mean, std


def gaussian_log_prob(
    x_next: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor
) -> torch.Tensor:
    """``log N(x_next; mean, std^2 I)`` averaged over the latent elements (formula step 6).

    Args:
        x_next: (B, ...) the stored latent after the step.
        mean:   (B, ...) the step's mean.
        std:    a float, 0-d, (B,) or broadcastable tensor; every value must be > 0 and finite.

    Returns:
        (B,) mean element-wise log-density, in float32 or wider.
    """
    if x_next.shape != mean.shape:
        raise ValueError(f"x_next {tuple(x_next.shape)} and mean {tuple(mean.shape)} must have the same shape")
    if x_next.ndim < 1:
        raise ValueError("x_next needs a batch dimension")
    std_t = _per_sample(std, x_next, "std")
    if not bool(torch.all((std_t > 0) & torch.isfinite(std_t))):
        raise ValueError(
            "std must be > 0 and finite: a step with std == 0 (eta = 0, or abar_prev == 1 from "
            "set_alpha_to_one=True) is deterministic and has no log-density"
        )
    dtype = _compute_dtype(x_next)
    z = (x_next.to(dtype) - mean.to(dtype)) / std_t
    log_density = -0.5 * z**2 - std_t.log() - _HALF_LOG_2PI  # (B, ...)
    return log_density.flatten(1).mean(dim=1) if log_density.ndim > 1 else log_density


def ddim_step_log_prob(
    x_next: torch.Tensor,
    x_k: torch.Tensor,
    model_output: torch.Tensor,
    abar_t: float | torch.Tensor,
    abar_prev: float | torch.Tensor,
    eta: float,
    *,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """``log pi(x_{k+1} | x_k, c)`` of one DDIM step, (B,): :func:`ddim_step_mean_std` then
    :func:`gaussian_log_prob`. Use the same ``eta``, guidance and prediction type as at sampling time."""
    if not eta > 0:
        raise ValueError(f"eta must be > 0 for a log-probability (eta = {eta} makes DDIM deterministic)")
    mean, std = ddim_step_mean_std(x_k, model_output, abar_t, abar_prev, eta, prediction_type=prediction_type)
    return gaussian_log_prob(x_next, mean, std)


def implied_noise(x_next: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """``z = (x_next - mean) / std``: the noise a step must have drawn (formula step 5, solved for z).

    On a faithfully recomputed trajectory it is standard normal; a std far from 1 means the log-probs are
    computed with other settings (eta, guidance, step count, prediction type) than the sampler used.
    """
    std_t = _per_sample(std, x_next, "std")
    dtype = _compute_dtype(x_next)
    return (x_next.to(dtype) - mean.to(dtype)) / std_t
