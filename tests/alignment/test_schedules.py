"""alignment/families/schedules.py: which schedulers become a stochastic DDIM chain, and which chains can be scored."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)

from alignment.families.base import ModelLoadError
from alignment.families.schedules import ROUNDING_EDGE, check_sampling, ddim_scheduler, few_step, schedule_settings

SD_BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("source", [
    PNDMScheduler(**SD_BETAS, skip_prk_steps=True, steps_offset=1),
    EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1),
    DPMSolverMultistepScheduler(**SD_BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                timestep_spacing="linspace"),
    DDIMScheduler(**SD_BETAS, prediction_type="sample", clip_sample=False, set_alpha_to_one=True),
], ids=["pndm", "euler-v-trailing", "dpm-zero-snr", "ddim-sample"])
def test_a_ddpm_schedule_becomes_stochastic_ddim_keeping_what_the_log_prob_needs(source):
    ddim = ddim_scheduler(source)
    assert isinstance(ddim, DDIMScheduler)
    assert not ddim.config.set_alpha_to_one and not ddim.config.clip_sample and not ddim.config.thresholding
    for key in ("prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr"):
        assert ddim.config[key] == source.config.get(key, DDIMScheduler().config[key]), key
    reference = DDIMScheduler(**SD_BETAS, rescale_betas_zero_snr=ddim.config.rescale_betas_zero_snr)
    torch.testing.assert_close(ddim.alphas_cumprod, reference.alphas_cumprod)  # the same noise schedule
    assert float(ddim.final_alpha_cumprod) == pytest.approx(float(reference.alphas_cumprod[0]))
    assert set(schedule_settings(ddim)) == {"prediction_type", "timestep_spacing", "steps_offset",
                                            "rescale_betas_zero_snr", "num_train_timesteps"}


@pytest.mark.parametrize("source, words", [
    (FlowMatchEulerDiscreteScheduler(), "FlowMatchEulerDiscreteScheduler, which is not a discrete-time DDPM"),
    (EDMEulerScheduler(), "EDMEulerScheduler"),
    (DDPMScheduler(**SD_BETAS), "clip_sample=true"),  # DDPM clips x0 by default
    (DDIMScheduler(**SD_BETAS, clip_sample=False, thresholding=True), "thresholding=true"),
    (DDIMScheduler(**SD_BETAS, clip_sample=False, rescale_betas_zero_snr=True), "zero-SNR models predict v"),
    (EulerDiscreteScheduler(**SD_BETAS, timestep_type="continuous"), "continuous timesteps"),
    (DDPMScheduler(beta_schedule="sigmoid", clip_sample=False), "DDIM cannot use this noise schedule"),
], ids=["flow", "edm", "ddpm-clip", "thresholding", "zero-snr-epsilon", "continuous", "beta-schedule"])
def test_what_the_log_prob_cannot_represent_is_refused_with_the_reason(source, words):
    with pytest.raises(ModelLoadError, match=words):
        ddim_scheduler(source)


def test_an_unknown_prediction_type_is_refused():
    sched = DDIMScheduler(**SD_BETAS, clip_sample=False)
    sched.register_to_config(prediction_type="flow_prediction")
    with pytest.raises(ModelLoadError, match="flow_prediction"):
        ddim_scheduler(sched)


def test_few_step_means_trailing_spacing_without_zero_snr():
    assert few_step(ddim_scheduler(EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing")))
    assert not few_step(ddim_scheduler(EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading")))
    zero_snr = DDIMScheduler(**SD_BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                             timestep_spacing="trailing", clip_sample=False)
    assert not few_step(ddim_scheduler(zero_snr))


def test_check_sampling_masks_identity_steps_and_refuses_unscorable_chains():
    leading = ddim_scheduler(PNDMScheduler(**SD_BETAS, skip_prk_steps=True, steps_offset=1))
    assert check_sampling(leading, 10, 1.0).tolist() == [True] * 10
    linspace = ddim_scheduler(EulerDiscreteScheduler(**SD_BETAS))  # Euler's default spacing
    assert check_sampling(linspace, 5, 1.0).tolist() == [True] * 4 + [False]  # the t = 0 step is the identity
    with pytest.raises(ValueError, match="no step .* is stochastic"):
        check_sampling(linspace, 1, 1.0)
    zero_snr = ddim_scheduler(DDIMScheduler(**SD_BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                            timestep_spacing="trailing", clip_sample=False))
    with pytest.raises(ValueError, match="NaN at t = 999.*use eta < 1"):
        check_sampling(zero_snr, 3, 1.0)  # diffusers' own step returns NaN here
    assert check_sampling(zero_snr, 3, 0.9).all()
    with pytest.raises(ValueError, match="eta must be in"):
        check_sampling(leading, 10, 0.0)
    with pytest.raises(ValueError, match="2000 steps"):
        check_sampling(leading, 2000, 1.0)


def test_where_check_sampling_refuses_diffusers_step_sits_on_a_rounding_edge_and_is_nan_below_it():
    """The refused step's `1 - abar_prev - std^2` is 0 in exact arithmetic; diffusers' float32 value lies within
    rounding of it, on either side depending on the CPU, and its step is NaN exactly when it lies below."""
    sched = DDIMScheduler(**SD_BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                          timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(3)
    t = int(sched.timesteps[0])
    abar_t, abar_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1000 // 3]
    variance = sched._get_variance(t, t - 1000 // 3)
    residue = float(1 - abar_prev - (1.0 * variance**0.5) ** 2)
    assert float(abar_t) == 0 and abs(residue) < ROUNDING_EDGE * float(1 - abar_prev)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sched.step(x, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    assert bool(torch.isnan(out).all()) == (residue < 0) and bool(torch.isnan(out).any()) == (residue < 0)
