"""The SD3 (flow-matching) family on its tiny copy: loading and refusals, the sampler's SDE chain re-scored by the
trainer, a short training run, and its LoRA in plain diffusers' StableDiffusion3Pipeline."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from alignment.core.lora_files import LORA_WEIGHT_NAME, AdapterLoadError, read_lora
from alignment.families import sd3
from alignment.families.base import ModelLoadError, check_lora_fits
from alignment.families.flow import FlowSDEScheduler, flow_scheduler
from alignment.families.loader import LoadedModel, load_pipeline
from alignment.families.tiny import build_family
from alignment.serving.sampler import Sampler
from alignment.serving.swap import SwapSlot
from alignment.training.trainer import Trainer, TrainingPair
from settings import SamplerConfig, TrainerConfig
from tests.support.families import edited_copy, tiny_family

PROMPTS = ["a red circle", "a large blue square on a yellow background", "a green triangle", "a small white circle"]


def config(**changes) -> SamplerConfig:
    return SamplerConfig(**{"steps": 8, "guidance_scale": 5.0, "eta": 0.7, "height": 64, "width": 64, **changes})


@pytest.fixture(scope="module")
def model():
    return load_pipeline(str(tiny_family("sd3")))


def test_the_tiny_sd3_loads_as_the_flow_family_with_the_sde_scheduler(model):
    assert model.family is sd3.FAMILY and isinstance(model.pipe.scheduler, FlowSDEScheduler)
    assert model.pipe.text_encoder_3 is None and model.settings["schedule"] == "flow"
    assert model.sampler_defaults["eta"] == 0.7


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_the_trainer_finds_standard_normal_noise_in_the_samplers_sde_chains(model, guidance):
    gens = Sampler(model, config(steps=10, guidance_scale=guidance)).generate(PROMPTS[1], [0, 1, 2, 3])
    trainer = Trainer(model, TrainerConfig())
    z = torch.cat([trainer.implied_noise(g.trajectory).flatten() for g in gens])  # 40 steps x 1024 elements
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    wrong = Trainer(model, TrainerConfig()).implied_noise(  # scored at another noise level: caught
        type(gens[0].trajectory)(**{**vars(gens[0].trajectory), "settings": {**gens[0].trajectory.settings,
                                                                             "eta": 0.35}}))
    assert abs(float(wrong.std()) - 1.0) > 0.2


def test_a_short_run_lowers_the_loss_and_its_lora_draws_the_studios_images_in_plain_diffusers(tmp_path):
    sampler_model = load_pipeline(str(tiny_family("sd3")))
    sampler = Sampler(sampler_model, config(steps=6))
    pairs = [TrainingPair(p, *(g.trajectory for g in sampler.generate(p, [2 * i, 2 * i + 1])))
             for i, p in enumerate(PROMPTS)]
    trainer = Trainer(load_pipeline(str(tiny_family("sd3"))),
                      TrainerConfig(train_steps=12, batch_pairs=4, steps_per_pair=2, lr=1e-2, log_ratio_clip=0.1,
                                    checkpoint_every=0))
    result = trainer.train(pairs)
    assert result.metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.metrics["loss"] < result.metrics["loss_first"] - 1e-3
    state = read_lora(result.lora)
    assert state and all(k.startswith("transformer.") for k in state)

    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / LORA_WEIGHT_NAME).write_bytes(result.lora)
    plain = StableDiffusion3Pipeline.from_pretrained(tiny_family("sd3"), text_encoder_3=None, tokenizer_3=None)
    before = {n: p.clone() for n, p in plain.transformer.named_parameters()}
    plain.load_lora_weights(str(tmp_path / "lora"))
    assert any("lora" in n for n, _ in plain.transformer.named_parameters())
    assert set(before) <= {n for n, _ in plain.transformer.named_parameters()} | {
        n.replace(".base_layer", "") for n, _ in plain.transformer.named_parameters()}
    plain.scheduler = flow_scheduler(plain.scheduler)  # the studio's SDE step over the same schedule
    served = LoadedModel(plain, "plain", sampler_model.sampler_defaults, family=sd3.FAMILY)
    studio = LoadedModel(trainer.model.pipe, "trainer", sampler_model.sampler_defaults, family=sd3.FAMILY)
    trainer.set_adapter_enabled(True)
    a = Sampler(served, config(steps=6)).generate(PROMPTS[0], [5, 6])
    b = Sampler(studio, config(steps=6)).generate(PROMPTS[0], [5, 6])
    base = Sampler(sampler_model, config(steps=6)).generate(PROMPTS[0], [5, 6])
    for x, y, z in zip(a, b, base):
        assert np.abs(np.asarray(x.image, np.int16) - np.asarray(y.image, np.int16)).max() <= 1
        assert torch.allclose(x.trajectory.latents.float(), y.trajectory.latents.float(), atol=2e-3)
        assert not torch.allclose(x.trajectory.latents[-1].float(), z.trajectory.latents[-1].float(), atol=1e-3)
    fused = load_pipeline(str(tiny_family("sd3")))
    SwapSlot(fused.pipe).load(1, result.lora)  # fused into the transformer's weights, as the studio serves it
    for x, y in zip(a, Sampler(fused, config(steps=6)).generate(PROMPTS[0], [5, 6])):
        assert np.abs(np.asarray(x.image, np.int16) - np.asarray(y.image, np.int16)).max() <= 2


def test_the_swap_slot_refuses_a_unet_lora_on_a_transformer_and_changes_nothing(model):
    slot = SwapSlot(model.pipe)
    before = Sampler(model, config(steps=4)).generate(PROMPTS[0], [1])[0].trajectory.latents
    unet_lora = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
                 "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)}
    with pytest.raises(AdapterLoadError, match="no 'transformer.' keys: it was made for another model family"):
        slot.load(1, unet_lora)
    assert slot.version is None
    assert torch.equal(Sampler(model, config(steps=4)).generate(PROMPTS[0], [1])[0].trajectory.latents, before)


def test_a_lora_for_another_transformer_shape_is_refused_before_loading(tmp_path, model):
    other = load_pipeline(str(build_family("sd3", tmp_path / "other")))
    other.pipe.transformer.requires_grad_(False)
    wider = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 48),
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)}
    with pytest.raises(AdapterLoadError, match="input size 48"):
        check_lora_fits(model.pipe.transformer, wider, prefix="transformer")
    with pytest.raises(AdapterLoadError, match="does not have"):
        check_lora_fits(model.pipe.transformer, {"transformer.nope.lora_A.weight": torch.zeros(4, 32)},
                        prefix="transformer")


def test_unsupported_flow_pipelines_and_schedules_are_refused_with_the_reason(tmp_path):
    dynamic = edited_copy("sd3", tmp_path / "dynamic", use_dynamic_shifting=True)
    with pytest.raises(ModelLoadError, match="use_dynamic_shifting"):
        load_pipeline(str(dynamic))
    flux = tmp_path / "flux"
    shutil.copytree(tiny_family("sd3"), flux)
    index = json.loads((flux / "model_index.json").read_text())
    (flux / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FLUX is guidance-distilled"):
        load_pipeline(str(flux))
    sampler = Sampler(load_pipeline(str(tiny_family("sd3"))), config())
    with pytest.raises(ValueError, match="no second sigma"):  # sigma = 1 and nothing to guard it with
        sampler.generate(PROMPTS[0], [0], config(steps=1))
    with pytest.raises(ValueError, match="guidance_rescale"):
        sampler.generate(PROMPTS[0], [0], config(guidance_rescale=0.5))


def test_a_model_folder_sets_the_t5_length_the_sampler_and_the_trainer_both_use(tmp_path, model):
    folder = tmp_path / "short"
    shutil.copytree(tiny_family("sd3"), folder)
    (folder / "studio.json").write_text(json.dumps({"pipeline": {"max_sequence_length": 8}}))
    short = load_pipeline(str(folder))
    assert sd3.text_length(short.pipe) == 8 and sd3.text_length(model.pipe) == sd3.DEFAULT_TEXT_LENGTH
    clip_tokens = short.pipe.tokenizer_max_length
    cond = short.family.conditioning(short.pipe, PROMPTS[0], guided=True)
    assert cond.embeds.shape[1] == clip_tokens + 8
    seen = []
    real = short.pipe.transformer.forward
    short.pipe.transformer.forward = lambda *a, **k: seen.append(k["encoder_hidden_states"].shape[1]) or real(*a, **k)
    Sampler(short, config(steps=2)).generate(PROMPTS[0], [0])
    assert set(seen) == {clip_tokens + 8}  # the pipeline's own call: the same sequence the trainer replays

    for bad in ({"max_sequence_length": 0}, {"max_sequence_length": "8"}, {"max_sequence_length": True},
                {"unknown": 1}):
        (folder / "studio.json").write_text(json.dumps({"pipeline": bad}))
        with pytest.raises(ModelLoadError, match="max_sequence_length|unknown"):
            load_pipeline(str(folder))
    (folder / "studio.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not read"):
        load_pipeline(str(folder))
    sd_folder = tmp_path / "sd"
    shutil.copytree(tiny_family("sd1"), sd_folder)
    (sd_folder / "studio.json").write_text(json.dumps({"pipeline": {"max_sequence_length": 8}}))
    with pytest.raises(ModelLoadError, match="does not take"):
        load_pipeline(str(sd_folder))
