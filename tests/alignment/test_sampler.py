"""Generation with trajectory capture: determinism (exact within a batch composition, within rounding across), what a
trajectory holds, bad input."""

import numpy as np
import pytest
import torch

from alignment.core.limits import PromptError
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from settings import SamplerConfig
from alignment.core.trajectory import Trajectory
from alignment.training.trainer import Trainer
from tests.support.families import edited_copy


def test_the_same_call_gives_bit_identical_images_and_trajectories(embedded):
    s = Sampler(embedded)
    a, b = s.generate_pair("a large red circle on a blue background", (7, 8))
    a2, b2 = s.generate_pair("a large red circle on a blue background", (7, 8))
    assert torch.equal(a.trajectory.latents, a2.trajectory.latents) and torch.equal(b.trajectory.latents,
                                                                                    b2.trajectory.latents)
    assert a.image.tobytes() == a2.image.tobytes() and b.image.tobytes() == b2.image.tobytes()
    assert not torch.equal(a.trajectory.latents, b.trajectory.latents)  # each seed its own noise


def test_a_seed_in_another_batch_composition_agrees_within_float_rounding(embedded):
    """Kernels choose their reduction order by batch size: alone and in a pair, one seed differs by a few fp16
    rounding steps at most (0.02 on latents up to |x| ~ 4), far below what another seed or adapter changes."""
    s = Sampler(embedded)
    a, b = s.generate_pair("a large red circle on a blue background", (7, 8))
    (alone,) = s.generate("a large red circle on a blue background", [7])
    diff = (a.trajectory.latents.float() - alone.trajectory.latents.float()).abs()
    assert diff.max() <= 0.02 and diff.mean() <= 1e-4, (diff.max(), diff.mean())
    pixels = np.abs(np.asarray(a.image, np.int16) - np.asarray(alone.image, np.int16))
    assert pixels.max() <= 2
    other = (a.trajectory.latents.float() - b.trajectory.latents.float()).abs()
    assert other.mean() > 100 * diff.mean() + 0.1  # another seed is a different image, not a rounding step


def test_trajectory_holds_every_latent_once_in_fp16(embedded):
    s = Sampler(embedded)
    (g,) = s.generate("a green square", [1])
    k = s.config.steps
    tr = g.trajectory
    assert tr.latents.shape == (k + 1, 4, 16, 16) and tr.latents.dtype == torch.float16
    assert tr.timesteps.shape == (k,) and bool((tr.timesteps[:-1] > tr.timesteps[1:]).all())
    assert tr.prompt == "a green square" and tr.seed == 1 and tr.adapter_version is None
    assert tr.settings["eta"] == s.config.eta and tr.model_id == "embedded"
    assert tr.settings["guidance_rescale"] == 0.0 and tr.conditioning == {}  # SD: the prompt gives it all back
    assert {k: tr.settings[k] for k in ("family", "prediction_type", "timestep_spacing")} == {
        "family": "sd", "prediction_type": "epsilon", "timestep_spacing": embedded.pipe.scheduler.config.timestep_spacing}
    back = Trajectory.from_bytes(tr.to_bytes())
    assert torch.equal(back.latents, tr.latents) and back.settings == tr.settings and back.seed == 1


def test_captured_trajectory_reevaluated_by_its_own_model_gives_unit_noise(embedded):
    (g,) = Sampler(embedded).generate("a large red circle on a blue background", [3])
    z = Trainer(embedded).implied_noise(g.trajectory)
    assert abs(z.std().item() - 1.0) <= 0.02
    assert abs(z.mean().item()) <= 0.05


@pytest.mark.parametrize("prompt", ["", "   ", "x" * 501])
def test_bad_prompts_are_refused(embedded, prompt):
    with pytest.raises(PromptError):
        Sampler(embedded).generate(prompt, [0])


@pytest.mark.parametrize("seeds", [[-1], [2**64], ["3"], [1.5], []])
def test_bad_seeds_are_refused(embedded, seeds):
    with pytest.raises(ValueError, match="seed"):
        Sampler(embedded).generate("a red circle", seeds)


@pytest.mark.parametrize("field, value", [("steps", 0), ("eta", 0.0), ("guidance_scale", 0.5), ("height", 30),
                                          ("guidance_rescale", 1.5), ("guidance_rescale", -0.1)])
def test_bad_sampler_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{field: value})


def test_a_sampler_only_generates():
    with pytest.raises(TypeError, match="only generates"):
        Sampler(None, SamplerConfig(), fuse=True)


def test_the_trajectory_carries_the_label_its_caller_gives(embedded):
    (g,) = Sampler(embedded).generate("a green square", [1], adapter_version=3)
    assert g.trajectory.adapter_version == 3


def test_unknown_words_and_long_prompts_still_generate(embedded):
    (g,) = Sampler(embedded).generate("a zebra " + "red circle " * 40, [0])
    assert g.image.size == (32, 32)


def test_a_chain_the_trainer_could_not_score_is_refused_before_generating(tmp_path):
    """A zero-terminal-SNR model: its defaults come from the schedule (guidance_rescale 0.7, eta below 1); at eta 1
    some step counts make diffusers' own first step NaN, and those are refused."""
    folder = edited_copy("sd2", tmp_path / "zero-snr", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    sampler = Sampler(load_pipeline(str(folder)))
    assert sampler.config.guidance_rescale == 0.7 and sampler.config.eta < 1
    (g,) = sampler.generate("a red circle", [0], SamplerConfig(steps=3, eta=0.9, height=64, width=64))
    assert g.trajectory.settings["rescale_betas_zero_snr"] and bool(torch.isfinite(g.trajectory.latents).all())
    with pytest.raises(ValueError, match="use eta < 1"):
        sampler.generate("a red circle", [0], SamplerConfig(steps=3, eta=1.0, height=64, width=64))
