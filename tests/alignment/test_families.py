"""The model families: loading by class, the embedded folder in plain diffusers, and for each family's tiny copy
the guided prediction and step log-probability of the stock pipeline's own chain."""

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from alignment.core.ddim import ddim_step_mean_std, implied_noise, step_alphas
from alignment.core.lora_files import AdapterLoadError, read_lora
from alignment.core.trajectory import Trajectory
from alignment.families.base import Conditioning, check_lora_fits
from alignment.families.loader import EMBEDDED_PATH, ModelLoadError, load_pipeline, pick_dtype
from alignment.families.schedules import check_sampling
from tests.support.families import KINDS, RecordedRun, tiny_family
from tests.support.lora import random_lora

FAMILY_OF = {"sd1": "sd", "sd2": "sd", "sd-turbo": "sd", "sdxl": "sdxl", "sdxl-turbo": "sdxl"}
TURBO = ("sd-turbo", "sdxl-turbo")
PROMPTS = ["a red circle", "a large blue square on a yellow background", "a green triangle", "a small white circle"]


@pytest.fixture(scope="module")
def models():
    """Each tiny family loaded once through the studio's loader (tests must not change the weights)."""
    return {kind: load_pipeline(str(tiny_family(kind))) for kind in KINDS}


# ------------------------------------------------------------------ the embedded model


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_committed_pipeline_loads_offline_with_plain_diffusers(dtype):
    # Weights are stored in fp16; the text encoder's config asks transformers for fp32, so that a CPU call works
    # without a dtype too (with none, diffusers loads the UNet and VAE in fp32 and transformers follows the config).
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PATH, local_files_only=True, **kwargs)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    out = pipe("a red circle", num_inference_steps=4, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


def test_committed_pipeline_loads_in_half_precision_when_asked():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PATH, local_files_only=True, dtype=torch.float16)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float16}


def test_embedded_model_is_stochastic_ddim_with_recorded_defaults(embedded):
    sched = embedded.pipe.scheduler
    assert isinstance(sched, DDIMScheduler) and not sched.config.set_alpha_to_one
    assert float(sched.final_alpha_cumprod) < 1.0  # the last reverse step keeps a non-zero variance
    assert embedded.model_id == "embedded" and embedded.dtype == torch.float32
    assert {"steps", "guidance_scale", "eta"} <= set(embedded.sampler_defaults)
    assert embedded.sampler_defaults["eta"] > 0
    assert embedded.family.name == "sd" and embedded.settings["prediction_type"] == "epsilon"


def test_weights_are_fp16_and_small():
    files = list(EMBEDDED_PATH.rglob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in EMBEDDED_PATH.rglob("*") if f.is_file()) < 20 * 2**20


# ------------------------------------------------------------------ loading by family


def test_each_tiny_copy_loads_as_its_family_with_its_schedule(models):
    expected = {"sd1": ("epsilon", "leading"), "sd2": ("v_prediction", "leading"), "sdxl": ("epsilon", "leading"),
                "sd-turbo": ("epsilon", "trailing"), "sdxl-turbo": ("epsilon", "trailing")}
    for kind, model in models.items():
        assert model.family.name == FAMILY_OF[kind]
        assert type(model.pipe).__name__ == model.family.class_names[0]
        sched = model.pipe.scheduler
        assert isinstance(sched, DDIMScheduler) and not sched.config.set_alpha_to_one
        assert (sched.config.prediction_type, sched.config.timestep_spacing) == expected[kind]
        assert sched.config.steps_offset == 1 and not sched.config.clip_sample
        assert model.settings["family"] == FAMILY_OF[kind]


def test_sampler_defaults_come_from_the_family(models):
    for kind, model in models.items():
        d = model.sampler_defaults
        assert (d["height"], d["width"]) == (64, 64)  # UNet sample size x the VAE's 8x
        if kind in TURBO:
            assert (d["steps"], d["guidance_scale"]) == (4, 1.0)
        else:
            assert d["steps"] == 30 and d["guidance_scale"] == (5.0 if kind == "sdxl" else 7.5)
        check_sampling(model.pipe.scheduler, d["steps"], d["eta"])  # the defaults can be scored


def _edited_copy(tmp_path, kind, edit):
    folder = tmp_path / kind
    shutil.copytree(tiny_family(kind), folder)
    edit(folder)
    return folder


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _scheduler_edit(**changes):
    return lambda folder: _edit_json(folder / "scheduler" / "scheduler_config.json", **changes)


@pytest.mark.parametrize("kind, edit, words", [
    ("sd1", lambda f: _edit_json(f / "model_index.json", _class_name="KandinskyV22Pipeline"),
     r"'KandinskyV22Pipeline' are not supported.*StableDiffusionPipeline \(sd\), StableDiffusionXLPipeline"),
    ("sdxl", _scheduler_edit(clip_sample=True), "clip_sample=true"),  # StableDiffusionPipeline resets it itself
    ("sd2", _scheduler_edit(thresholding=True), "thresholding=true"),
    ("sd1", _scheduler_edit(rescale_betas_zero_snr=True), "zero terminal SNR an epsilon prediction"),
    ("sd2", _scheduler_edit(timestep_spacing="karras"), "timestep_spacing 'karras'"),
], ids=["unsupported-class", "clip-sample", "thresholding", "zero-snr-epsilon", "spacing"])
def test_unsupported_folders_get_clear_errors(tmp_path, kind, edit, words):
    with pytest.raises(ModelLoadError, match=words):
        load_pipeline(str(_edited_copy(tmp_path, kind, edit)))


def test_a_flow_matching_scheduler_is_refused(tmp_path):
    def edit(folder):
        _edit_json(folder / "scheduler" / "scheduler_config.json", _class_name="FlowMatchEulerDiscreteScheduler")
        index = json.loads((folder / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="FlowMatchEulerDiscreteScheduler.*not a discrete-time DDPM"):
        load_pipeline(str(_edited_copy(tmp_path, "sdxl", edit)))


@pytest.mark.parametrize("model, words", [
    ("/nonexistent/model", "not a diffusers pipeline folder"),
    ("just-a-word", "neither a local diffusers folder nor a hub id"),
])
def test_bad_model_names_get_clear_errors(model, words):
    with pytest.raises(ModelLoadError, match=words):
        load_pipeline(model)


def test_unreachable_hub_model_names_the_offline_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="embedded"):
        load_pipeline("some-org/some-model-that-is-not-cached")


def test_device_and_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ModelLoadError):
        pick_dtype(torch.device("cpu"), "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            load_pipeline("embedded", device="cuda")


# ------------------------------------------------------------------ the guided prediction and the step


def _conditioning(model, run, prompts, *, from_stored: bool, size: int) -> Conditioning:
    return Conditioning.cat([
        model.family.conditioning(model.pipe, p, "", guided=run.guided, size=(size, size),
                                  stored=run.stored[i] if from_stored else None)
        for i, p in enumerate(prompts)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("guidance, rescale", [(1.0, 0.0), (5.0, 0.0), (5.0, 0.7)])
def test_guided_output_is_what_the_stock_pipeline_fed_to_the_scheduler(models, kind, guidance, rescale):
    model = models[kind]
    prompts = PROMPTS[:2]
    run = RecordedRun(model.pipe, model.family, prompts, guidance_scale=guidance, guidance_rescale=rescale,
                      steps=3, size=64, seeds=[0, 1])
    if model.family.name == "sdxl":  # pooled embeddings and time ids come back from the callback, per image
        assert set(run.stored[0]) == ({"text_embeds", "time_ids"} |
                                      ({"negative_text_embeds", "negative_time_ids"} if run.guided else set()))
        assert run.stored[1]["time_ids"].tolist() == [64, 64, 0, 0, 64, 64]
    for from_stored in (False, True):
        cond = _conditioning(model, run, prompts, from_stored=from_stored, size=64)
        for model_output, t, sample in run.steps:
            out = model.family.guided_output(model.pipe.unet, sample, torch.tensor([t, t]), cond, guidance, rescale)
            torch.testing.assert_close(out, model_output, rtol=1e-5, atol=1e-5)


def test_a_batch_mixing_guided_and_unguided_samples_matches_each_alone(models):
    model = models["sdxl"]
    unet, family = model.pipe.unet, model.family
    cond = Conditioning.cat([family.conditioning(model.pipe, p, "", guided=True, size=(64, 64)) for p in PROMPTS[:3]])
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    t = torch.tensor([901, 501, 101])
    mixed = family.guided_output(unet, x, t, cond, torch.tensor([1.0, 5.0, 3.0]), 0.5)
    for i, scale in enumerate((1.0, 5.0, 3.0)):
        alone = family.guided_output(unet, x[i:i + 1], t[i:i + 1], cond[i:i + 1], scale, 0.5)
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    mixed.sum().backward()  # differentiable through both branches (the trainer's policy pass)
    assert all(bool(g.abs().sum() > 0) for g in x.grad)
    with pytest.raises(ValueError, match="negative"):
        family.guided_output(unet, x[:2], t[:2], Conditioning.cat([cond[:1], family.conditioning(
            model.pipe, "a red circle", guided=False, size=(64, 64))]), 5.0)


def test_a_trajectory_from_another_family_or_schedule_is_refused(models):
    sd2, sdxl = models["sd2"], models["sdxl"]
    sd2.check_trajectory_settings({"guidance_scale": 5.0, **sd2.settings})
    sd2.check_trajectory_settings({"guidance_scale": 5.0})  # older trajectories record no schedule
    with pytest.raises(ValueError, match="family: recorded 'sdxl'.*prediction_type: recorded 'epsilon'"):
        sd2.check_trajectory_settings(sdxl.settings)


def _implied_noise(model, run, prompts, steps, guidance, prediction_type=None):
    sched = model.pipe.scheduler
    cond = _conditioning(model, run, prompts, from_stored=True, size=128)
    ts = torch.tensor([t for _, t, _ in run.steps])
    abar_t, abar_prev = step_alphas(sched.alphas_cumprod, sched.final_alpha_cumprod, ts, steps)
    zs = []
    for k, (model_output, t, _) in enumerate(run.steps):
        x, x_next = run.trajectory[:, k], run.trajectory[:, k + 1]
        out = model.family.guided_output(model.pipe.unet, x, torch.full((len(x),), t), cond, guidance)
        mean, std = ddim_step_mean_std(x, out, abar_t[k], abar_prev[k], 1.0,
                                       prediction_type=prediction_type or sched.config.prediction_type)
        reference = sched.step(model_output, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        if prediction_type is None:  # the step mean is diffusers' own
            torch.testing.assert_close(mean, reference, rtol=1e-5, atol=1e-5)
        zs.append(implied_noise(x_next, mean, std).flatten())
    return torch.cat(zs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_captured_chain_re_evaluated_has_standard_normal_implied_noise(models, kind, guidance):
    model = models[kind]
    steps, prompts = (4, PROMPTS * 2) if kind in TURBO else (10, PROMPTS)  # >= 32k latent elements either way
    run = RecordedRun(model.pipe, model.family, prompts, guidance_scale=guidance, steps=steps, size=128,
                      seeds=list(range(len(prompts))))
    z = _implied_noise(model, run, prompts, steps, guidance)
    assert z.numel() >= 32_000
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.02, (z.mean().item(), z.std().item())


def test_reading_a_v_prediction_as_epsilon_is_caught_by_the_implied_noise(models):
    model = models["sd2"]
    run = RecordedRun(model.pipe, model.family, PROMPTS, guidance_scale=5.0, steps=10, size=128, seeds=[0, 1, 2, 3])
    z = _implied_noise(model, run, PROMPTS, 10, 5.0, prediction_type="epsilon")
    assert abs(z.std().item() - 1) > 0.1  # the failure the studio had before it read prediction_type


# ------------------------------------------------------------------ stored conditioning and LoRA files


def test_sdxl_conditioning_survives_the_trajectory_format(models):
    model = models["sdxl"]
    run = RecordedRun(model.pipe, model.family, PROMPTS[:1], guidance_scale=5.0, steps=2, size=64, seeds=[3])
    traj = Trajectory(run.trajectory[0].half(), torch.tensor([t for _, t, _ in run.steps]), PROMPTS[0], 3,
                      {"guidance_scale": 5.0, **model.settings}, "tiny-sdxl", None, run.stored[0])
    back = Trajectory.from_bytes(traj.to_bytes())
    assert set(back.conditioning) == set(run.stored[0])
    for key, value in run.stored[0].items():
        assert torch.equal(back.conditioning[key], value)
    old = Trajectory(traj.latents, traj.timesteps, traj.prompt, 3, traj.settings, "tiny-sdxl", None)
    assert Trajectory.from_bytes(old.to_bytes()).conditioning == {}  # trajectories without conditioning read back


def test_sdxl_time_ids_follow_an_imported_images_size(models):
    model = models["sdxl"]
    cond = model.family.conditioning(model.pipe, "a red circle", guided=False, size=(64, 64),
                                     original_size=(300, 200), crop_top_left=(10, 0))
    assert cond.added["time_ids"].tolist() == [[300, 200, 10, 0, 64, 64]] and cond.negative_embeds is None
    with pytest.raises(ValueError, match="original_size"):
        model.family.conditioning(model.pipe, "a red circle", guided=False, size=(64, 64), original_size=(0, 200))
    with pytest.raises(ValueError, match="image size"):
        model.family.conditioning(model.pipe, "a red circle", guided=False)


@pytest.mark.parametrize("kind", KINDS)
def test_a_lora_for_the_family_loads_in_its_plain_pipeline_and_one_for_another_is_refused(models, kind):
    model = models[kind]
    lora = random_lora(1, scale=0.5, unet=model.pipe.unet)
    check_lora_fits(model.pipe.unet, read_lora(lora))
    pipe = type(model.pipe).from_pretrained(tiny_family(kind), dtype=torch.float32)
    kwargs = dict(prompt="a red circle", num_inference_steps=2, height=64, width=64, output_type="latent")
    before = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(read_lora(lora))
    after = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert (after - before).abs().max() > 1e-3  # the adapter's weights arrived
    other = "sdxl" if FAMILY_OF[kind] == "sd" else "sd1"
    with pytest.raises(AdapterLoadError, match="another model family"):
        check_lora_fits(model.pipe.unet, read_lora(random_lora(1, unet=models[other].pipe.unet)))
