"""Unit tests of alignment/core/ddim.py: the DDIM step against diffusers' DDIMScheduler.step for every prediction
type, timestep spacing and zero-SNR schedule, and against hand-computed values."""

import math

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as diffusers_rescale

from alignment.core.ddim import (
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

F64 = torch.float64
SD_BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def t64(values):
    return torch.tensor(values, dtype=F64)


def scheduler(prediction_type="epsilon", spacing="leading", zero_snr=False, steps=10, offset=1):
    sched = DDIMScheduler(**SD_BETAS, prediction_type=prediction_type, timestep_spacing=spacing,
                          rescale_betas_zero_snr=zero_snr, steps_offset=offset, clip_sample=False,
                          set_alpha_to_one=False)
    sched.set_timesteps(steps)
    return sched


# ------------------------------------------------------------------ against DDIMScheduler.step

SCHEDULES = [pytest.param(p, s, z, id=f"{p}-{s}{'-zero-snr' if z else ''}")
             for p in ("epsilon", "v_prediction", "sample") for s in ("leading", "trailing", "linspace")
             for z in (False, True) if not (z and p == "epsilon")]  # zero SNR needs v or sample (see below)


@pytest.mark.parametrize("prediction_type, spacing, zero_snr", SCHEDULES)
@pytest.mark.parametrize("steps, eta", [(1, 0.9), (4, 0.9), (10, 1.0), (10, 0.5)])
def test_step_mean_and_std_match_diffusers_on_every_timestep(prediction_type, spacing, zero_snr, steps, eta):
    if zero_snr and spacing != "leading" and eta == 1.0:
        eta = 0.95  # at t = T-1, eta = 1 leaves 1 - abar_prev - std^2 at 0 up to rounding (NaN on some CPUs)
    sched = scheduler(prediction_type, spacing, zero_snr, steps)
    gen = torch.Generator().manual_seed(steps)
    x, out, z = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    ts = sched.timesteps
    abar_t, abar_prev = step_alphas(sched.alphas_cumprod, sched.final_alpha_cumprod, ts, steps)
    if zero_snr and int(ts[0]) == 999:
        assert abar_t[0] == 0  # the schedule reaches SNR 0 at t = T-1
    for i, t in enumerate(ts.tolist()):
        ref = sched.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        mean, std = ddim_step_mean_std(x, out, abar_t[i], abar_prev[i], eta, prediction_type=prediction_type)
        torch.testing.assert_close(mean + std * z, ref, rtol=1e-5, atol=1e-5)
        if float(std) == 0.0:  # linspace ends at t = 0 and lands on abar[0] again: an identity step, no noise
            assert spacing == "linspace" and t == 0
            torch.testing.assert_close(ref, x, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(implied_noise(ref, mean, std), z, rtol=1e-3, atol=1e-3)
        mean0 = sched.step(out, t, x, eta=eta, variance_noise=torch.zeros_like(z)).prev_sample
        torch.testing.assert_close(mean, mean0, rtol=1e-5, atol=1e-5)


def test_per_sample_alphas_broadcast_over_the_batch():
    sched = scheduler("v_prediction", steps=10)
    gen = torch.Generator().manual_seed(2)
    x, out, z = (torch.randn(2, 4, 6, 6, generator=gen) for _ in range(3))
    ts = sched.timesteps[[2, -1]]
    abar_t, abar_prev = step_alphas(sched.alphas_cumprod, sched.final_alpha_cumprod, ts, torch.tensor([10, 10]))
    mean, std = ddim_step_mean_std(x, out, abar_t, abar_prev, eta=1.0, prediction_type="v_prediction")
    assert std.shape == (2, 1, 1, 1)
    for i, t in enumerate(ts.tolist()):
        ref = sched.step(out[i:i + 1], t, x[i:i + 1], eta=1.0, variance_noise=z[i:i + 1]).prev_sample
        torch.testing.assert_close(mean[i:i + 1] + std[i] * z[i:i + 1], ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ timesteps


def test_prev_timestep_follows_the_scheduler_rule_not_the_schedule():
    trailing = scheduler(spacing="trailing", steps=4).timesteps
    assert trailing.tolist() == [999, 749, 499, 249]
    assert prev_timestep(trailing, 1000, 4).tolist() == [749, 499, 249, -1]
    linspace = scheduler(spacing="linspace", steps=10).timesteps
    assert linspace[:2].tolist() == [999, 888]
    assert prev_timestep(999, 1000, 10) == 899  # T // K = 100 below, not the next timestep 888
    assert prev_timestep(torch.tensor([901, 1]), 1000, torch.tensor([10, 20])).tolist() == [801, -49]


def test_step_alphas_use_the_final_alpha_after_the_last_step():
    abar = torch.linspace(0.99, 0.01, 1000)
    a_t, a_prev = step_alphas(abar, 0.995, torch.tensor([900, 50]), 10)
    torch.testing.assert_close(a_t, abar[[900, 50]])
    torch.testing.assert_close(a_prev, torch.stack([abar[800], torch.tensor(0.995)]))
    with pytest.raises(ValueError, match="integer"):
        step_alphas(abar, 0.995, torch.tensor([900.0]), 10)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        step_alphas(abar, 0.995, torch.tensor([1000]), 10)


# ------------------------------------------------------------------ hand values


def test_prediction_types_hand_values():
    # abar_t = 0.36: sqrt(abar) = 0.6, sqrt(1 - abar) = 0.8; x = 1.
    x = t64([[1.0]])
    x0, eps = predicted_x0_eps(x, t64([[0.5]]), 0.36, "epsilon")
    assert (x0.item(), eps.item()) == pytest.approx(((1 - 0.8 * 0.5) / 0.6, 0.5), rel=1e-12)
    x0, eps = predicted_x0_eps(x, t64([[0.5]]), 0.36, "v_prediction")  # v = 0.5
    assert (x0.item(), eps.item()) == pytest.approx((0.6 - 0.4, 0.3 + 0.8), rel=1e-12)
    x0, eps = predicted_x0_eps(x, t64([[0.2]]), 0.36, "sample")  # the same x0 gives back the same eps
    assert (x0.item(), eps.item()) == pytest.approx((0.2, 1.1), rel=1e-12)
    assert 0.6 * 0.2 + 0.8 * 1.1 == pytest.approx(1.0)  # x = sqrt(abar) x0 + sqrt(1 - abar) eps


def test_ddim_step_hand_values():
    # abar_t = 0.5, abar_prev = 0.8, eta = 1: std^2 = (0.2/0.5) * (1 - 0.625) = 0.15,
    # x0_hat = (x - sqrt(.5) e) / sqrt(.5); mean = sqrt(.8) x0_hat + sqrt(1 - .8 - .15) e.
    x, e = t64([[1.0]]), t64([[0.5]])
    mean, std = ddim_step_mean_std(x, e, 0.5, 0.8, eta=1.0)
    x0 = (1.0 - math.sqrt(0.5) * 0.5) / math.sqrt(0.5)
    assert std.item() == pytest.approx(math.sqrt(0.15), rel=1e-12)
    assert mean.item() == pytest.approx(math.sqrt(0.8) * x0 + math.sqrt(0.05) * 0.5, rel=1e-12)
    mean0, std0 = ddim_step_mean_std(x, e, 0.5, 0.8, eta=0.0)  # deterministic DDIM is allowed here
    assert std0.item() == 0.0 and mean0.item() == pytest.approx(math.sqrt(0.8) * x0 + math.sqrt(0.2) * 0.5)
    # v_prediction, same step: x0_hat = sqrt(.5)(x - v), eps_hat = sqrt(.5)(v + x)
    mean, std = ddim_step_mean_std(x, e, 0.5, 0.8, eta=1.0, prediction_type="v_prediction")
    x0, eps = math.sqrt(0.5) * 0.5, math.sqrt(0.5) * 1.5
    assert mean.item() == pytest.approx(math.sqrt(0.8) * x0 + math.sqrt(0.05) * eps, rel=1e-12)


def test_zero_snr_step_is_exact_for_v_and_refused_for_epsilon():
    x, v = t64([[0.7]]), t64([[-0.3]])
    x0, eps = predicted_x0_eps(x, v, 0.0, "v_prediction")  # abar_t = 0: x0 = -v, eps = x
    assert (x0.item(), eps.item()) == (0.3, 0.7)
    mean, std = ddim_step_mean_std(x, v, 0.0, 0.64, eta=0.5, prediction_type="v_prediction")
    # std^2 = eta^2 (1 - abar_prev); mean = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps
    assert std.item() == pytest.approx(0.5 * 0.6, rel=1e-12)
    assert mean.item() == pytest.approx(0.8 * 0.3 + math.sqrt(0.36 - 0.09) * 0.7, rel=1e-12)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        ddim_step_mean_std(x, v, 0.0, 0.64, eta=0.5, prediction_type="epsilon")


def test_training_targets_match_the_schedulers_and_invert_the_step_conversion():
    sched = scheduler("v_prediction")
    gen = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(2, 4, 4, 4, generator=gen), torch.randn(2, 4, 4, 4, generator=gen)
    t = torch.tensor([800, 50])
    abar = sched.alphas_cumprod[t]
    torch.testing.assert_close(training_target(x0, noise, abar, "v_prediction"), sched.get_velocity(x0, noise, t))
    assert torch.equal(training_target(x0, noise, abar, "epsilon"), noise)
    assert torch.equal(training_target(x0, noise, abar, "sample"), x0)
    x_t = sched.add_noise(x0, noise, t)
    for kind in ("epsilon", "v_prediction", "sample"):  # a perfect model's output gives back x0 and the noise
        x0_hat, eps_hat = predicted_x0_eps(x_t, training_target(x0, noise, abar, kind), abar, kind)
        torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ guidance


def test_guidance_hand_values():
    u, c = t64([[1.0, 1.0]]), t64([[3.0, 0.0]])
    torch.testing.assert_close(classifier_free_guidance(u, c, 2.0), t64([[5.0, -1.0]]))
    torch.testing.assert_close(classifier_free_guidance(torch.cat([u, u]), torch.cat([c, c]), t64([1.0, 3.0])),
                               t64([[3.0, 0.0], [7.0, -2.0]]))  # one scale per sample
    # rescale: guided [1, 3] has std sqrt(2), cond [0, 4] std 2 sqrt(2): rescaled [2, 6]; phi = 0.5 mixes halfway
    torch.testing.assert_close(rescale_noise_cfg(t64([[1.0, 3.0]]), t64([[0.0, 4.0]]), 0.5), t64([[1.5, 4.5]]))


def test_guidance_rescale_matches_diffusers():
    gen = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    guided = u + 7.5 * (c - u)
    expected = diffusers_rescale(guided, c, guidance_rescale=0.7)
    torch.testing.assert_close(classifier_free_guidance(u, c, 7.5, 0.7), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(classifier_free_guidance(u, c, 7.5), guided, rtol=0, atol=0)


# ------------------------------------------------------------------ Gaussian log-prob


def test_gaussian_log_prob_at_mean_and_against_torch_normal():
    mean = torch.randn(3, 2, 4, 4, dtype=F64)
    std = t64([0.5, 1.0, 2.0])
    lp = gaussian_log_prob(mean, mean, std)
    expected = t64([-math.log(s) - 0.5 * math.log(2 * math.pi) for s in (0.5, 1.0, 2.0)])
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)

    x = mean + torch.randn_like(mean)
    normal = torch.distributions.Normal(mean, std.view(3, 1, 1, 1))
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), normal.log_prob(x).mean(dim=(1, 2, 3)))


def test_log_prob_upcasts_half_precision():
    x = torch.randn(2, 4, 4).to(torch.bfloat16)
    assert gaussian_log_prob(x, x, 0.3).dtype == torch.float32
    mean, _ = ddim_step_mean_std(x, x, 0.5, 0.8, 1.0, prediction_type="v_prediction")
    assert mean.dtype == torch.float32


@pytest.mark.parametrize("std", [0.0, -0.1, t64([1.0, 0.0]), float("nan")])
def test_gaussian_log_prob_rejects_nonpositive_std(std):
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="std must be > 0"):
        gaussian_log_prob(x, x, std)


def test_ddim_log_prob_refuses_deterministic_step():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_log_prob(x, x, x, 0.5, 0.8, eta=0.0)
    with pytest.raises(ValueError, match="std must be > 0"):  # abar_prev = 1 (set_alpha_to_one=True) at eta > 0
        ddim_step_log_prob(x, x, x, 0.5, 1.0, eta=1.0)


def test_log_prob_of_each_prediction_type_is_the_gaussian_of_its_mean():
    gen = torch.Generator().manual_seed(5)
    x, out, x_next = (torch.randn(2, 4, 4, 4, generator=gen) for _ in range(3))
    for kind in ("epsilon", "v_prediction", "sample"):
        mean, std = ddim_step_mean_std(x, out, 0.3, 0.6, 1.0, prediction_type=kind)
        torch.testing.assert_close(ddim_step_log_prob(x_next, x, out, 0.3, 0.6, 1.0, prediction_type=kind),
                                   gaussian_log_prob(x_next, mean, std))


# ------------------------------------------------------------------ bad input

_z = torch.zeros(1, 2)
BAD_INPUT = [
    pytest.param(lambda: ddim_step_mean_std(_z, _z, 0.5, 0.8, eta=-1.0), id="eta-negative"),
    pytest.param(lambda: ddim_step_mean_std(_z, _z, 0.8, 0.5, eta=1.0), id="abar-order"),
    pytest.param(lambda: ddim_step_mean_std(_z, _z, 0.5, 0.8, eta=3.0), id="eta-too-large"),
    pytest.param(lambda: ddim_step_mean_std(torch.zeros(2, 2), torch.zeros(2, 2), torch.full((3,), 0.5), 0.8,
                                            eta=1.0), id="abar-batch-mismatch"),
    pytest.param(lambda: ddim_step_mean_std(_z, _z, 0.5, 0.8, 1.0, prediction_type="flow"), id="prediction-type"),
    pytest.param(lambda: ddim_step_mean_std(_z, torch.zeros(1, 3), 0.5, 0.8, 1.0), id="output-shape"),
    pytest.param(lambda: predicted_x0_eps(_z, _z, 1.0, "v_prediction"), id="abar-t-one"),
    pytest.param(lambda: prev_timestep(10, 1000, 0), id="zero-steps"),
    pytest.param(lambda: prev_timestep(10, 1000, 1001), id="more-steps-than-timesteps"),
    pytest.param(lambda: rescale_noise_cfg(torch.ones(1, 2), torch.ones(1, 2), 1.5), id="rescale-above-1"),
    pytest.param(lambda: classifier_free_guidance(torch.ones(1, 2), torch.ones(1, 3), 2.0), id="guidance-shapes"),
]


@pytest.mark.parametrize("call", BAD_INPUT)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
