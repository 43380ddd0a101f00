"""The objective of Alignment Studio: temporal discounting and the DPO losses on step log-probabilities.

Pure functions, tensors in and tensors out. This module knows the math of Yang, Chen & Zhou, "A Dense Reward
View on Aligning Text-to-Image Diffusion with Preference" (ICML 2024, arXiv 2402.08265) and of Diffusion-DPO
(Wallace et al. 2023). The per-step policy, the stochastic DDIM step's Gaussian for every prediction type, is
``alignment.core.ddim``; its functions are re-exported here (``ddim_step_mean_std``, ``ddim_step_log_prob``, ...)
so that ``objective`` is the one import of a trainer; so are the flow-matching SDE step's of ``alignment.core.flow``
(``flow_step_mean_std``, ``flow_step_log_prob``), whose log-probabilities the same losses take unchanged. It knows nothing about UNets, scheduler objects, LoRA,
storage or devices: the caller runs the models, reads the scheduler's numbers (``alphas_cumprod``) and passes
them in.

Notation (paper symbol -> name here)
------------------------------------
- ``c``                      the prompt (the caller conditions the model on it).
- ``K``                      ``num_steps``: the number of reverse (sampling) steps of the DDIM chain.
- ``x_k``, ``k = 0 .. K``    latents of the chain in sampling order: ``x_0`` is the start noise (noisiest),
                             ``x_K`` the final latent. NB: the opposite of the DDPM convention where ``x_0`` is
                             data; diffusers' timestep ``t`` *decreases* while ``k`` increases.
- ``tau``                    a trajectory ``(x_0, .., x_K)``; ``tau_w`` the preferred one of a pair, ``tau_l``
                             the other one (``_w`` / ``_l`` suffixes).
- ``pi_theta(x_{k+1}|x_k,c)`` the policy, the DDIM step's ``N(mu_theta, sigma_k^2 I)`` with the LoRA on (see
                             ``alignment.core.ddim`` for ``mu``, ``sigma`` and the prediction types); ``logp``.
- ``pi_ref``                 the same Gaussian from the base model (LoRA off); ``ref_logp``.
- ``r_theta(tau, k)``        the dense implicit reward ``log pi_theta - log pi_ref`` of step ``k``, clamped.
- ``eps``                    ``log_ratio_clip``: the clamp bound of ``r``.
- ``gamma``                  the temporal discount: step ``k`` weighs ``gamma^k`` (``gamma = 1``: trajectory-level
                             DPO without discount, the D3PO-style baseline).
- ``beta``                   strength of the KL regularisation towards ``pi_ref`` (inverse temperature of the
                             Bradley-Terry model).
- ``M``                      the number of step indices sampled per pair to estimate the discounted sum.

The formula, step by step
-------------------------
Steps 1-6 (the DDIM step's mean, std and element-averaged log-density ``log pi(x_{k+1} | x_k, c)``) are in
``alignment.core.ddim``. The log-density is averaged, not summed, over the latent elements, as the authors' code
does: this divides the true log-density by the number of latent elements ``D``, so ``beta`` here is ``D`` times
the ``beta`` of a summed log-density. Dense-reward DPO on a stored pair (the paper's temporally discounted
objective):

7. ``r_theta(tau, k) = clamp(log pi_theta - log pi_ref, -eps, eps)``           (zero gradient beyond ``eps``)
8. ``s_theta(tau) = sum_k gamma^k r_theta(tau, k) / sum_k gamma^k``
   estimated without bias by the mean of ``r`` over ``M`` indices ``k ~ gamma^k / sum_j gamma^j``, drawn once per
   pair and shared by ``tau_w`` and ``tau_l``.
9. ``loss = -log sigmoid(beta * (s_theta(tau_w) - s_theta(tau_l)))``

Precision: the log-ratios of step 7 are of the order of ``eps`` (1e-4 .. 1e-2), far below the resolution of
fp16/bf16; the log-probabilities come in float32 or wider from ``alignment.core.ddim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignment.core.ddim import (
    PREDICTION_TYPES,
    classifier_free_guidance,
    ddim_step_log_prob,
    ddim_step_mean_std,
    gaussian_log_prob,
    implied_noise,
    predicted_x0_eps,
    prev_timestep,
    rescale_noise_cfg,
    step_alphas,
    training_target,
)
from alignment.core.flow import flow_noise_scale, flow_step_log_prob, flow_step_mean_std, flow_target

__all__ = [
    "DPOOutput",
    # the per-step policy, from alignment.core.ddim
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
    # the flow SDE step, from alignment.core.flow
    "flow_noise_scale",
    "flow_step_mean_std",
    "flow_step_log_prob",
    "flow_target",
    # discounting, losses, statistics
    "step_weights",
    "sample_step_indices",
    "dense_dpo_loss",
    "diffusion_dpo_loss",
    "timestep_discount",
    "paired_win_rate",
]


@dataclass(frozen=True)
class DPOOutput:
    """What a DPO loss returns.

    loss:             scalar, the mean (or weighted mean) of the per-pair losses; differentiable.
    margin:           (B,) detached; ``s_w - s_l`` (dense) or the implicit reward difference (Diffusion-DPO).
    accuracy:         scalar, fraction of non-tie pairs whose margin has the label's sign (margin > 0 for
                      target > 0.5, margin < 0 for target < 0.5); a margin of exactly 0 counts as wrong. NaN when
                      the batch holds only ties (target == 0.5): average it with ``nanmean``.
    clipped_fraction: scalar, fraction of per-step log-ratios at the clip bound (both trajectories); 0 for
                      Diffusion-DPO, which does not clip.
    """

    loss: torch.Tensor
    margin: torch.Tensor
    accuracy: torch.Tensor
    clipped_fraction: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Temporal discounting


def _check_gamma(gamma: float) -> None:
    if not (0 < gamma <= 1):
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")


def _check_num_steps(num_steps: int, name: str = "num_steps") -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_steps!r}")


def step_weights(
    num_steps: int, gamma: float, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """(K,) normalised discount ``gamma^k / sum_j gamma^j``, ``k = 0`` the noisiest step (formula step 8)."""
    _check_num_steps(num_steps)
    _check_gamma(gamma)
    w = torch.tensor(gamma, dtype=torch.float64).pow(torch.arange(num_steps, dtype=torch.float64))
    return (w / w.sum()).to(dtype=dtype, device=device)


def sample_step_indices(
    num_steps: int, gamma: float, m: int, generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(m,) long step indices drawn with replacement, ``P(k) = gamma^k / sum_j gamma^j``.

    The mean of ``r_theta(tau, k)`` over them is an unbiased estimate of the normalised discounted sum
    ``s_theta(tau)`` (formula step 8). The caller must evaluate the *same* indices for ``tau_w`` and ``tau_l``
    of a pair; for a batch of B pairs draw ``m = B * M`` and reshape to (B, M). ``generator`` is a CPU
    generator; the indices live on the CPU. ``allowed`` ((K,) bool) restricts the draw to the steps that have a
    log-density (``linspace`` spacing ends in a deterministic identity step), the weights renormalised over them;
    all True draws exactly what no mask draws.
    """
    _check_num_steps(num_steps)
    _check_num_steps(m, "m")
    probs = step_weights(num_steps, gamma, dtype=torch.float64)
    if allowed is not None:
        allowed = torch.as_tensor(allowed, dtype=torch.bool).cpu()
        if allowed.shape != (num_steps,):
            raise ValueError(f"allowed must be a ({num_steps},) bool mask, got shape {tuple(allowed.shape)}")
        if not bool(allowed.any()):
            raise ValueError("allowed excludes every step: there is no step to draw")
        if not bool(allowed.all()):
            probs = probs * allowed
    return torch.multinomial(probs, m, replacement=True, generator=generator)


def timestep_discount(
    timesteps: torch.Tensor, num_train_timesteps: int, num_inference_steps: int, gamma: float
) -> torch.Tensor:
    """(B,) per-sample weights ``gamma^k`` for Diffusion-DPO at training timesteps ``t``.

    A training timestep ``t`` in [0, T) is mapped to the reverse-step index of a K-step sampler it falls in,
    ``k = floor((T - 1 - t) * K / T)`` clipped to [0, K-1] (``t = T-1`` -> k = 0, the noisiest step). The weights
    are divided by their mean over all T timesteps, so with ``t ~ Uniform{0..T-1}`` the expected weight is 1:
    ``mean(w * loss)`` then estimates the loss under ``t ~ gamma^k`` without changing its scale, and ``beta`` and
    the learning rate keep their meaning across gammas. ``gamma = 1`` gives all ones.
    """
    _check_num_steps(num_train_timesteps, "num_train_timesteps")
    _check_num_steps(num_inference_steps, "num_inference_steps")
    if num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps ({num_inference_steps}) exceeds num_train_timesteps ({num_train_timesteps})"
        )
    _check_gamma(gamma)
    t = torch.as_tensor(timesteps)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
    if t.numel() and not bool(torch.all((t >= 0) & (t < num_train_timesteps))):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {timesteps}")

    T, K = num_train_timesteps, num_inference_steps

    def step_index(tt: torch.Tensor) -> torch.Tensor:
        return torch.div((T - 1 - tt) * K, T, rounding_mode="floor").clamp(0, K - 1)

    gamma64 = torch.tensor(gamma, dtype=torch.float64)
    norm = gamma64.pow(step_index(torch.arange(T, dtype=torch.int64))).mean()
    w = gamma64.pow(step_index(t.to(torch.int64).cpu())) / norm
    return w.to(device=t.device, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Losses


def _check_positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _target(target: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
    if target is None:
        return torch.ones(batch, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(target, device=like.device).to(like.dtype)
    if t.shape != (batch,):
        raise ValueError(f"target must have shape ({batch},), got {tuple(t.shape)}")
    if not bool(torch.all((t >= 0) & (t <= 1))):
        raise ValueError("target values must lie in [0, 1] (1: w preferred, 0.5: tie, 0: l preferred)")
    return t


def _bradley_terry(
    margin: torch.Tensor, beta: float, target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-label DPO loss (formula step 9) and label accuracy. target 0.5 pulls the margin towards 0."""
    z = beta * margin
    per_pair = -(target * F.logsigmoid(z) + (1 - target) * F.logsigmoid(-z))  # (B,)
    loss = per_pair.mean() if weight is None else (weight * per_pair).mean()
    with torch.no_grad():
        decided = target != 0.5
        correct = torch.where(target > 0.5, margin > 0, margin < 0)
        n = decided.sum()
        accuracy = (correct & decided).sum().to(margin.dtype) / n if n > 0 else margin.new_tensor(float("nan"))
    return loss, accuracy


def dense_dpo_loss(
    logp_w: torch.Tensor,
    ref_logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_logp_l: torch.Tensor,
    *,
    beta: float,
    log_ratio_clip: float,
    target: torch.Tensor | None = None,
    step_weight: torch.Tensor | None = None,
) -> DPOOutput:
    """Temporally discounted dense-reward DPO loss (formula steps 7-9).

    Args:
        logp_w, ref_logp_w: (B, M) ``log pi_theta`` / ``log pi_ref`` of the preferred trajectory at M step
            indices (from :func:`sample_step_indices`, shared with ``l``). The reference ones carry no gradient.
        logp_l, ref_logp_l: (B, M) the same for the other trajectory, at the same indices.
        beta: > 0.
        log_ratio_clip: ``eps`` > 0; ``math.inf`` disables the clamp. Beyond ``eps`` a step's log-ratio gets
            zero gradient (``torch.clamp``), which bounds how far one update moves the policy from pi_ref.
        target: (B,) soft label in [0, 1], default 1 (``w`` preferred). A tie given 0.5 is a symmetric loss that
            pulls the margin towards 0 (the "half weight" tie policy); dropping ties is the caller's filter.
        step_weight: optional (M,) or (B, M) non-negative weights; then ``s = sum(w * r) / sum(w)`` instead of
            the mean over M. With all K steps and ``step_weights(K, gamma)`` this is the exact discounted sum.
    """
    _check_positive(beta, "beta")
    _check_positive(log_ratio_clip, "log_ratio_clip")
    shapes = {n: tuple(v.shape) for n, v in
              (("logp_w", logp_w), ("ref_logp_w", ref_logp_w), ("logp_l", logp_l), ("ref_logp_l", ref_logp_l))}
    if len(set(shapes.values())) != 1 or logp_w.ndim != 2 or logp_w.shape[1] == 0:
        raise ValueError(f"the four log-prob tensors must share one (B, M) shape with M >= 1, got {shapes}")
    batch, m = logp_w.shape

    raw_w = logp_w - ref_logp_w  # (B, M)
    raw_l = logp_l - ref_logp_l
    r_w = torch.clamp(raw_w, -log_ratio_clip, log_ratio_clip)  # 7.
    r_l = torch.clamp(raw_l, -log_ratio_clip, log_ratio_clip)

    if step_weight is None:
        s_w, s_l = r_w.mean(dim=1), r_l.mean(dim=1)  # 8. (Monte-Carlo over sampled k)
    else:
        sw = torch.as_tensor(step_weight, device=r_w.device).to(r_w.dtype)
        if sw.shape not in ((m,), (batch, m)):
            raise ValueError(f"step_weight must have shape ({m},) or ({batch}, {m}), got {tuple(sw.shape)}")
        if not bool(torch.all(sw >= 0)) or not bool(torch.all(sw.sum(dim=-1) > 0)):
            raise ValueError("step_weight must be non-negative with a positive sum per pair")
        sw = sw.expand(batch, m)
        s_w = (sw * r_w).sum(dim=1) / sw.sum(dim=1)  # 8. (exact weighted sum)
        s_l = (sw * r_l).sum(dim=1) / sw.sum(dim=1)

    margin = s_w - s_l  # (B,)
    loss, accuracy = _bradley_terry(margin, beta, _target(target, batch, margin), None)  # 9.
    with torch.no_grad():
        at_bound = torch.cat([raw_w, raw_l]).abs() >= log_ratio_clip
        clipped_fraction = at_bound.to(margin.dtype).mean()
    return DPOOutput(loss=loss, margin=margin.detach(), accuracy=accuracy, clipped_fraction=clipped_fraction)


def diffusion_dpo_loss(
    err_w: torch.Tensor,
    ref_err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_l: torch.Tensor,
    *,
    beta: float,
    weight: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
) -> DPOOutput:
    """Diffusion-DPO (Wallace et al. 2023) on forward-noised images, for pairs without trajectories.

    Args:
        err_w, ref_err_w: (B,) per-sample mean squared error ``||target - model_output||^2`` (mean over latent
            elements; the target is the noise for epsilon models, see ``training_target``) of the policy /
            reference on the preferred image, noised at the same t and noise for both models.
        err_l, ref_err_l: (B,) the same on the other image.
        beta: > 0. The implicit reward difference is ``d = -((err_w - ref_err_w) - (err_l - ref_err_l))`` and
            ``loss_i = -log sigmoid(beta * d)``. (diffusers' research example multiplies by ``-0.5 * beta_dpo``,
            so its ``beta_dpo`` is twice this ``beta``.)
        weight: optional (B,) non-negative per-sample weights, e.g. :func:`timestep_discount`; the loss is then
            ``mean(weight * loss_i)`` (an importance-weighted mean, not ``sum(w l) / sum(w)``: a
            self-normalised mean would cancel the weight entirely at batch size 1).
        target: (B,) soft label as in :func:`dense_dpo_loss`.

    ``margin`` is ``d``; ``clipped_fraction`` is 0 (nothing is clipped).
    """
    _check_positive(beta, "beta")
    shapes = {n: tuple(v.shape) for n, v in
              (("err_w", err_w), ("ref_err_w", ref_err_w), ("err_l", err_l), ("ref_err_l", ref_err_l))}
    if len(set(shapes.values())) != 1 or err_w.ndim != 1:
        raise ValueError(f"the four error tensors must share one (B,) shape, got {shapes}")
    batch = err_w.shape[0]
    d = -((err_w - ref_err_w) - (err_l - ref_err_l))  # (B,)
    w = None
    if weight is not None:
        w = torch.as_tensor(weight, device=d.device).to(d.dtype)
        if w.shape != (batch,):
            raise ValueError(f"weight must have shape ({batch},), got {tuple(w.shape)}")
        if not bool(torch.all((w >= 0) & torch.isfinite(w))):
            raise ValueError("weight must be finite and non-negative")
    loss, accuracy = _bradley_terry(d, beta, _target(target, batch, d), w)
    return DPOOutput(loss=loss, margin=d.detach(), accuracy=accuracy, clipped_fraction=d.new_zeros(()))


# ----------------------------------------------------------------------------------------------------------
# Pair statistics


def paired_win_rate(wins: int, ties: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """Win rate with ties counted half, and its Wilson score interval.

    ``rate = (wins + ties / 2) / n``; ``(lo, hi)`` is the Wilson interval for a proportion ``rate`` observed in
    ``n`` trials at normal quantile ``z`` (1.96: 95 %). Counting a tie as half a success gives it Bernoulli
    variance, so with ties the interval is slightly conservative. ``n = 0`` returns ``(nan, 0.0, 1.0)``: no
    votes, no information (the UI can show it before the first vote).
    """
    for name, v in (("wins", wins), ("ties", ties), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if wins + ties > n:
        raise ValueError(f"wins + ties ({wins} + {ties}) exceeds the number of comparisons n = {n}")
    if not (isinstance(z, (int, float)) and z > 0 and math.isfinite(z)):
        raise ValueError(f"z must be a finite number > 0, got {z!r}")
    if n == 0:
        return math.nan, 0.0, 1.0
    p = (wins + 0.5 * ties) / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return p, max(0.0, center - half), min(1.0, center + half)
