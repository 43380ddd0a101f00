"""The flow SDE step (alignment.core.flow): hand-computed values, the ODE limit, the sigma = 1 guard, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from alignment.core import objective as obj
from alignment.families.flow import FlowSDEScheduler, check_flow_sampling, flow_scheduler, lend_noise
from alignment.families.base import ModelLoadError

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def test_step_mean_std_and_log_prob_match_hand_computed_values():
    # x = 1, v = 0.5, sigma 0.5 -> 0.25, a = 0.5: sigma_t = 0.5, mu = 1 + (0.5 + 0.25 / 1 * 1.25) * -0.25
    x, v = torch.ones(1, 2), torch.full((1, 2), 0.5)
    mean, std = obj.flow_step_mean_std(x, v, 0.5, 0.25, 0.5)
    assert torch.allclose(mean, torch.full((1, 2), 0.796875))
    assert float(std) == pytest.approx(0.25)
    logp = obj.flow_step_log_prob(mean, x, v, 0.5, 0.25, 0.5)
    assert float(logp) == pytest.approx(-math.log(0.25) - HALF_LOG_2PI, abs=1e-6)
    shifted = obj.flow_step_log_prob(mean + 0.25, x, v, 0.5, 0.25, 0.5)  # one std away: -1/2 lower
    assert float(logp - shifted) == pytest.approx(0.5, abs=1e-6)


def test_sigma_one_uses_the_guard_and_is_refused_without_it():
    x, v = torch.ones(1, 1), torch.full((1, 1), 0.5)
    # sigma 1 -> 0.8, guard 0.8: sigma_t^2 = 0.25 / 0.2 = 1.25, mu = 1 + (0.5 + 0.625) * -0.2, std = 0.5
    mean, std = obj.flow_step_mean_std(x, v, 1.0, 0.8, 0.5, sigma_guard=0.8)
    assert float(mean) == pytest.approx(0.775)
    assert float(std) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sigma = 1"):
        obj.flow_step_mean_std(x, v, 1.0, 0.8, 0.5)
    with pytest.raises(ValueError, match="sigma_guard"):
        obj.flow_step_mean_std(x, v, 1.0, 0.8, 0.5, sigma_guard=1.0)


def test_per_sample_sigmas_and_guards_give_each_row_its_own_step():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    sig, nxt, guard = torch.tensor([1.0, 0.5]), torch.tensor([0.8, 0.25]), torch.tensor([0.8, 0.5])
    mean, std = obj.flow_step_mean_std(x, v, sig, nxt, 0.7, sigma_guard=guard)
    for i in range(2):
        m_i, s_i = obj.flow_step_mean_std(x[i:i + 1], v[i:i + 1], float(sig[i]), float(nxt[i]), 0.7,
                                          sigma_guard=float(guard[i]))
        assert torch.allclose(mean[i], m_i[0]) and float(std[i]) == pytest.approx(float(s_i))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_noise_level_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="noise level"):
        obj.flow_step_mean_std(torch.ones(1, 1), torch.ones(1, 1), 0.5, 0.25, bad)
    with pytest.raises(ValueError, match="noise level"):
        check_flow_sampling(FlowMatchEulerDiscreteScheduler(shift=3.0), 10, bad)


def test_noise_level_zero_has_no_log_probability_and_steps_go_downwards():
    with pytest.raises(ValueError, match="deterministic"):
        obj.flow_step_log_prob(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.5, 0.25, 0.0)
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        obj.flow_step_mean_std(torch.ones(1, 1), torch.ones(1, 1), 0.25, 0.5, 0.5)


def test_noise_level_zero_equals_diffusers_euler_step_on_a_whole_chain():
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sde = flow_scheduler(stock)
    stock.set_timesteps(12)
    sde.set_timesteps(12)
    assert torch.equal(stock.sigmas, sde.sigmas)
    g = torch.Generator().manual_seed(0)
    x_stock = x_sde = torch.randn(2, 4, 8, 8, generator=g)
    for t in stock.timesteps:
        v = torch.randn(2, 4, 8, 8, generator=g)
        x_stock = stock.step(v, t, x_stock, return_dict=False)[0]
        with lend_noise(sde, [torch.Generator(), torch.Generator()], 0.0):
            x_sde = sde.step(v, t, x_sde, return_dict=False)[0]
        assert torch.allclose(x_sde, x_stock, atol=1e-5)


def test_sde_scheduler_draws_each_images_noise_from_its_own_generator():
    sde = FlowSDEScheduler(shift=3.0)
    v, x = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)

    def one_step(seeds):
        sde.set_timesteps(4)
        with lend_noise(sde, [torch.Generator().manual_seed(s) for s in seeds], 0.7):
            return sde.step(v, sde.timesteps[1], x, return_dict=False)[0]

    both, swapped = one_step([1, 2]), one_step([2, 1])
    assert torch.equal(both[0], swapped[1]) and not torch.equal(both[0], both[1])
    assert sde.noise_generators is None and sde.noise_level == 0.0  # lent for one call only


def test_schedules_the_step_log_probability_cannot_score_are_refused():
    with pytest.raises(ModelLoadError, match="FlowMatchEulerDiscreteScheduler"):
        flow_scheduler(torch.nn.Identity())
    for key in ("use_dynamic_shifting", "invert_sigmas", "stochastic_sampling"):
        with pytest.raises(ModelLoadError, match=key):
            flow_scheduler(FlowMatchEulerDiscreteScheduler(**{key: True}))
    with pytest.raises(ValueError, match="second sigma"):
        check_flow_sampling(FlowMatchEulerDiscreteScheduler(), 1, 0.7)
    assert bool(check_flow_sampling(FlowMatchEulerDiscreteScheduler(shift=3.0), 10, 0.7).all())


def test_flow_target_is_the_velocity_and_the_dense_loss_takes_flow_log_probs_unchanged():
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(obj.flow_target(x, eps), eps - x)
    logp = torch.randn(2, 3)  # policy == reference: log 2, whatever produced the log-probabilities
    out = obj.dense_dpo_loss(logp, logp, logp, logp, beta=10.0, log_ratio_clip=1e-2)
    assert float(out.loss) == pytest.approx(math.log(2))
