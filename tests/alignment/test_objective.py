"""Unit tests of alignment/core/objective.py (discounting, the DPO losses, win rates) on hand-computed values.

The DDIM step they build on is tested in test_ddim.py."""

import math

import pytest
import torch

from alignment.core.objective import (
    DPOOutput,
    dense_dpo_loss,
    diffusion_dpo_loss,
    paired_win_rate,
    sample_step_indices,
    step_weights,
    timestep_discount,
)

F64 = torch.float64


def t64(values):
    return torch.tensor(values, dtype=F64)


def softplus(x):
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------ dense DPO


def test_dense_policy_equals_reference_gives_log2():
    logp = torch.randn(4, 3, dtype=F64)
    out = dense_dpo_loss(logp, logp.clone(), logp + 1, logp + 1, beta=10.0, log_ratio_clip=1e-4)
    assert isinstance(out, DPOOutput)
    assert out.loss.item() == math.log(2)
    assert torch.equal(out.margin, torch.zeros(4, dtype=F64))
    assert out.accuracy.item() == 0.0  # margin 0 is not "correct"
    assert out.clipped_fraction.item() == 0.0


def test_dense_two_step_hand_example():
    # One pair, M = 2 steps, eps = 0.025, beta = 10.
    #   w: log-ratios  -1.00-(-1.02) = +0.02 (inside),  -2.00-(-1.97) = -0.03 -> clipped to -0.025
    #   l: log-ratios  -1.50-(-1.49) = -0.01 (inside),  -0.70-(-0.74) = +0.04 -> clipped to +0.025
    logp_w, ref_w = t64([[-1.00, -2.00]]), t64([[-1.02, -1.97]])
    logp_l, ref_l = t64([[-1.50, -0.70]]), t64([[-1.49, -0.74]])
    kw = dict(beta=10.0, log_ratio_clip=0.025)

    # Plain mean over the M sampled steps: s_w = (0.02 - 0.025)/2, s_l = (-0.01 + 0.025)/2.
    s_w, s_l = (0.02 - 0.025) / 2, (-0.01 + 0.025) / 2  # -0.0025, 0.0075
    margin = s_w - s_l  # -0.01
    out = dense_dpo_loss(logp_w, ref_w, logp_l, ref_l, **kw)
    assert out.loss.item() == pytest.approx(softplus(-10.0 * margin), rel=1e-12)  # -log sigmoid(x) = log(1+e^-x)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(0.1)), rel=1e-12)
    assert out.margin.item() == pytest.approx(-0.01, rel=1e-9)
    assert out.accuracy.item() == 0.0
    assert out.clipped_fraction.item() == 0.5  # 2 of 4 log-ratios at the bound

    # Exact discounted sum with gamma = 0.9 over K = 2: weights (1, 0.9) / 1.9.
    s_w = (1.0 * 0.02 + 0.9 * -0.025) / 1.9  # -0.0025/1.9
    s_l = (1.0 * -0.01 + 0.9 * 0.025) / 1.9  # 0.0125/1.9
    expected = math.log(1 + math.exp(-10.0 * (s_w - s_l)))  # = log(1 + e^(0.15/1.9))
    for sw in (step_weights(2, 0.9, dtype=F64), t64([[1.0, 0.9]])):  # (M,) and (B, M), normalised or not
        out = dense_dpo_loss(logp_w, ref_w, logp_l, ref_l, step_weight=sw, **kw)
        assert out.loss.item() == pytest.approx(expected, rel=1e-12)

    # A tie (target 0.5) is symmetric: -(0.5 log sig(x) + 0.5 log sig(-x)) with x = beta*margin = -0.1.
    out = dense_dpo_loss(logp_w, ref_w, logp_l, ref_l, target=t64([0.5]), **kw)
    assert out.loss.item() == pytest.approx(0.5 * softplus(0.1) + 0.5 * softplus(-0.1), rel=1e-12)
    assert math.isnan(out.accuracy.item())  # no non-tie rows


def test_dense_accuracy_follows_label_and_skips_ties():
    z = torch.zeros(3, 1, dtype=F64)
    logp_w = t64([[0.01], [0.01], [-0.01]])  # margins +0.01, +0.01, -0.01
    out = dense_dpo_loss(logp_w, z, z, z, beta=1.0, log_ratio_clip=1.0, target=t64([1.0, 0.5, 0.0]))
    assert out.accuracy.item() == 1.0  # row 0 right (margin > 0), row 2 right (label 0, margin < 0), row 1 a tie


def test_clip_stops_gradient_beyond_eps():
    eps = 0.01
    ref = torch.zeros(1, 4, dtype=F64)
    logp_w = t64([[0.5 * eps, 2 * eps, -3 * eps, -0.2 * eps]]).requires_grad_()
    logp_l = t64([[-0.5 * eps, 1.5 * eps, 0.1 * eps, -5 * eps]]).requires_grad_()
    dense_dpo_loss(logp_w, ref, logp_l, ref, beta=5.0, log_ratio_clip=eps).loss.backward()
    inside_w, inside_l = torch.tensor([True, False, False, True]), torch.tensor([True, False, True, False])
    assert torch.all(logp_w.grad[0, ~inside_w] == 0) and torch.all(logp_w.grad[0, inside_w] != 0)
    assert torch.all(logp_l.grad[0, ~inside_l] == 0) and torch.all(logp_l.grad[0, inside_l] != 0)
    assert torch.all(logp_w.grad[0, inside_w] < 0) and torch.all(logp_l.grad[0, inside_l] > 0)  # raise w, lower l


# ------------------------------------------------------------------ step weights and sampling


def test_step_weights_hand_values():
    assert torch.allclose(step_weights(5, 1.0, dtype=F64), torch.full((5,), 0.2, dtype=F64))
    # gamma = 0.9, K = 3: (1, 0.9, 0.81) / 2.71
    expected = t64([1 / 2.71, 0.9 / 2.71, 0.81 / 2.71])
    assert torch.allclose(step_weights(3, 0.9, dtype=F64), expected, rtol=1e-12, atol=0)
    assert step_weights(3, 0.9).dtype == torch.float32


def test_sampled_indices_follow_discount_and_are_reproducible():
    m = 200_000
    idx = sample_step_indices(4, 0.5, m, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (m,) and idx.dtype == torch.long
    freq = torch.bincount(idx, minlength=4).double() / m
    assert torch.allclose(freq, t64([8, 4, 2, 1]) / 15, atol=0.005)  # 0.5^k / (1 + .5 + .25 + .125)
    a = sample_step_indices(50, 0.9, 7, generator=torch.Generator().manual_seed(3))
    b = sample_step_indices(50, 0.9, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 50


def test_timestep_discount_hand_values():
    # T = 1000, K = 10: bins of 100 timesteps; mean of 0.9^k over k = 0..9 is (1 - 0.9^10) / (10 * 0.1).
    norm = 1 - 0.9**10
    t = torch.tensor([999, 901, 900, 899, 1, 0])
    k = [0, 0, 0, 1, 9, 9]
    w = timestep_discount(t, 1000, 10, 0.9)
    assert torch.allclose(w, torch.tensor([0.9**kk / norm for kk in k]), rtol=1e-6)
    assert timestep_discount(torch.arange(1000), 1000, 10, 0.9).double().mean().item() == pytest.approx(1.0)
    assert torch.equal(timestep_discount(t, 1000, 10, 1.0), torch.ones(6))


# ------------------------------------------------------------------ Diffusion-DPO


def test_diffusion_dpo_equal_models_give_log2():
    err = torch.rand(5, dtype=F64)
    out = diffusion_dpo_loss(err, err.clone(), err * 2, err * 2, beta=5000.0)
    assert out.loss.item() == math.log(2)
    assert out.clipped_fraction.item() == 0.0


def test_diffusion_dpo_hand_values():
    # Row 0: d = -((0.30 - 0.32) - (0.25 - 0.24)) = 0.03; row 1: d = -((0.20 - 0.20) - (0.10 - 0.12)) = -0.02.
    err_w, ref_w = t64([0.30, 0.20]), t64([0.32, 0.20])
    err_l, ref_l = t64([0.25, 0.10]), t64([0.24, 0.12])
    beta = 50.0
    l0, l1 = softplus(-beta * 0.03), softplus(-beta * -0.02)  # log(1 + e^-1.5), log(1 + e^1)
    out = diffusion_dpo_loss(err_w, ref_w, err_l, ref_l, beta=beta)
    assert out.loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)
    torch.testing.assert_close(out.margin, t64([0.03, -0.02]))
    assert out.accuracy.item() == 0.5
    out = diffusion_dpo_loss(err_w, ref_w, err_l, ref_l, beta=beta, weight=t64([1.5, 0.5]))
    assert out.loss.item() == pytest.approx((1.5 * l0 + 0.5 * l1) / 2, rel=1e-12)
    out = diffusion_dpo_loss(err_w, ref_w, err_l, ref_l, beta=beta, target=t64([1.0, 0.0]))
    assert out.loss.item() == pytest.approx((l0 + softplus(beta * -0.02)) / 2, rel=1e-12)
    assert out.accuracy.item() == 1.0


# ------------------------------------------------------------------ bad input


_a = torch.zeros(2, 3)
_kw = dict(beta=1.0, log_ratio_clip=0.1)
BAD_INPUT = [
    pytest.param(lambda: step_weights(3, 0.0), id="gamma-0"),
    pytest.param(lambda: step_weights(3, 1.5), id="gamma-1.5"),
    pytest.param(lambda: step_weights(0, 0.9), id="zero-steps"),
    pytest.param(lambda: sample_step_indices(3, 1.5, 4), id="sample-gamma-1.5"),
    pytest.param(lambda: timestep_discount(torch.tensor([5]), 1000, 10, 0.0), id="discount-gamma-0"),
    pytest.param(lambda: timestep_discount(torch.tensor([1000]), 1000, 10, 0.9), id="timestep-out-of-range"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, beta=0.0, log_ratio_clip=0.1), id="beta-0"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, beta=-1.0, log_ratio_clip=0.1), id="beta-negative"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, beta=1.0, log_ratio_clip=0.0), id="eps-0"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, beta=1.0, log_ratio_clip=-0.1), id="eps-negative"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, torch.zeros(2, 4), **_kw), id="mismatched-shapes"),
    pytest.param(lambda: dense_dpo_loss(_a[0], _a[0], _a[0], _a[0], **_kw), id="not-2d"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, step_weight=torch.ones(4), **_kw), id="step-weight-shape"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, target=torch.ones(3), **_kw), id="target-shape"),
    pytest.param(lambda: dense_dpo_loss(_a, _a, _a, _a, target=torch.tensor([1.0, 2.0]), **_kw), id="target-out-of-range"),
    pytest.param(lambda: diffusion_dpo_loss(_a[0], _a[0], _a[0], _a[0], beta=0.0), id="dpo-beta-0"),
    pytest.param(lambda: diffusion_dpo_loss(_a[0], _a[0], _a[0], torch.zeros(2), beta=1.0), id="dpo-mismatched-shapes"),
    pytest.param(lambda: diffusion_dpo_loss(_a[0], _a[0], _a[0], _a[0], beta=1.0, weight=torch.ones(2)), id="dpo-weight-shape"),
    pytest.param(lambda: paired_win_rate(5, 6, 10), id="wins-plus-ties-exceed-n"),
    pytest.param(lambda: paired_win_rate(-1, 0, 10), id="negative-wins"),
]


@pytest.mark.parametrize("call", BAD_INPUT)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------ win rate


def test_wilson_interval_hand_value():
    # 8 wins of 10, z = 1.96: center = (0.8 + 0.19208) / 1.38416, half = 1.96/1.38416 * sqrt(0.016 + 0.009604).
    rate, lo, hi = paired_win_rate(8, 0, 10)
    center, half = 0.99208 / 1.38416, 1.96 / 1.38416 * math.sqrt(0.025604)
    assert rate == 0.8
    assert lo == pytest.approx(center - half, rel=1e-12) and lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(center + half, rel=1e-12) and hi == pytest.approx(0.9433, abs=1e-4)
    assert paired_win_rate(6, 4, 10)[0] == 0.8  # ties count half
    rate, lo, hi = paired_win_rate(0, 0, 0)
    assert math.isnan(rate) and (lo, hi) == (0.0, 1.0)
