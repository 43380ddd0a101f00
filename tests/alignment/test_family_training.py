"""Every family end to end on its tiny copy: the sampler's captured chain re-scored by the trainer, a short training
run, its LoRA in the family's plain diffusers pipeline, and a vote -> train -> live round through the studio."""

import functools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from alignment.core.lora_files import LORA_WEIGHT_NAME
from alignment.families.base import Conditioning
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.serving.swap import SwapSlot
from alignment.training.trainer import Trainer, TrainingPair
from alignment.training.worker import Worker
from app.studio import Studio
from settings import SamplerConfig, TrainerConfig, WorkerConfig
from storage import Repository
from tests.support.families import FLOW_KINDS, KINDS, tiny_family

TURBO = ("sd-turbo", "sdxl-turbo")
PROMPTS = ["a red circle", "a large blue square on a yellow background", "a green triangle", "a small white circle"]
FAST = TrainerConfig(train_steps=8, batch_pairs=4, steps_per_pair=2, lr=3e-3, log_ratio_clip=0.1)


def load(kind: str):
    """A private copy of the tiny `kind` pipeline (training and swaps change weights)."""
    return load_pipeline(str(tiny_family(kind)))


def short(model, **changes) -> SamplerConfig:
    """The family's sampler defaults with at most 6 steps (few-step models keep theirs)."""
    return SamplerConfig.from_defaults(model.sampler_defaults, **{"steps": min(6, model.sampler_defaults["steps"]),
                                                                 **changes})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------ the trainer re-scores the sampler's chain


@pytest.fixture(scope="module")
def models():
    return {kind: load(kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("guidance, rescale", [(1.0, 0.0), (5.0, 0.0), (5.0, 0.7)])
def test_the_trainer_finds_standard_normal_noise_in_the_samplers_stored_chains(models, kind, guidance, rescale):
    model = models[kind]
    steps, seeds = (4, list(range(8))) if kind in TURBO else (10, list(range(4)))  # >= 32k latent elements
    cfg = short(model, steps=steps, guidance_scale=guidance, guidance_rescale=rescale, height=128, width=128)
    gens = Sampler(model, cfg).generate("a large blue square on a yellow background", seeds)
    traj = gens[0].trajectory
    assert traj.settings["family"] == model.family.name and traj.latents.dtype == torch.float16
    if model.family.name == "sdxl":  # what the UNet saw beside the prompt is stored with the chain
        assert traj.conditioning["time_ids"].tolist() == [128, 128, 0, 0, 128, 128]
        assert ("negative_text_embeds" in traj.conditioning) == (guidance > 1)
    else:
        assert traj.conditioning == {}
    trainer = Trainer(model)
    z = torch.cat([trainer.implied_noise(g.trajectory).flatten() for g in gens])
    assert z.numel() >= 32_000
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.02, (z.mean().item(), z.std().item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("guidance, rescale, negative", [(1.0, 0.0, ""), (5.0, 0.7, "a blurry photo")])
def test_the_trainer_recomputes_exactly_what_the_samplers_pipeline_fed_to_the_scheduler(models, kind, guidance,
                                                                                       rescale, negative,
                                                                                       monkeypatch):
    model = models[kind]
    recorded = []
    step = model.pipe.scheduler.step

    @functools.wraps(step)  # the pipeline passes eta and the generator only to a step whose signature has them
    def recording_step(model_output, timestep, sample, *args, **kwargs):
        recorded.append((model_output.clone(), int(timestep), sample.clone()))
        return step(model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(model.pipe.scheduler, "step", recording_step)
    cfg = short(model, steps=3, guidance_scale=guidance, guidance_rescale=rescale, negative_prompt=negative)
    gens = Sampler(model, cfg).generate("a small white circle", [5, 6])
    trainer = Trainer(model)
    cond = Conditioning.cat([trainer.replay.of_trajectory(g.trajectory, guided=guidance > 1) for g in gens])
    assert len(recorded) == 3
    for model_output, t, sample in recorded:  # the stored conditioning and settings, on the pipeline's own x_k
        out = trainer.guided_eps(sample, torch.tensor([t, t]), cond, torch.full((2,), guidance),
                                 torch.full((2,), rescale))
        torch.testing.assert_close(out, model_output, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ a short run, its LoRA in plain diffusers


@pytest.fixture(scope="module", params=KINDS)
def trained(request):
    """(kind, sampler settings, pairs, trainer after a short run, the run's result, loss before and after)."""
    kind = request.param
    model = load(kind)
    cfg = short(model)
    sampler = Sampler(model, cfg)
    pairs = []
    for i, prompt in enumerate(PROMPTS):
        a, b = sampler.generate_pair(prompt, (2 * i, 2 * i + 1))
        pairs.append(TrainingPair(prompt, a.trajectory, b.trajectory))
    tr = Trainer(load(kind), FAST)

    def full_loss():
        with torch.no_grad():
            return tr.batch_loss(pairs, torch.Generator().manual_seed(0))[0].loss.item()

    tr.fresh_adapter()
    before = full_loss()
    result = tr.train(pairs)
    return kind, cfg, pairs, tr, result, before, full_loss()


def test_a_short_run_lowers_the_loss_and_changes_the_images(trained):
    kind, cfg, _, tr, _, before, after = trained
    assert before == pytest.approx(np.log(2), abs=1e-5) and after < before - 1e-2
    sampler = Sampler(tr.model, cfg)
    adapted = sampler.generate(PROMPTS[0], [7])[0].image
    tr.set_adapter_enabled(False)
    try:
        base = sampler.generate(PROMPTS[0], [7])[0].image
    finally:
        tr.set_adapter_enabled(True)
    assert np.abs(pixels(adapted) - pixels(base)).max() >= 3, kind


def test_the_lora_loads_in_the_plain_pipeline_and_draws_what_the_fused_studio_sampler_draws(trained, tmp_path):
    kind, cfg, _, _, result, _, _ = trained
    live = load(kind)
    SwapSlot(live.pipe).load(1, result.lora)  # fused into the weights, as the studio serves it
    studio = Sampler(live, cfg).generate(PROMPTS[1], [3, 4])
    (tmp_path / LORA_WEIGHT_NAME).write_bytes(result.lora)
    plain = type(live.pipe).from_pretrained(tiny_family(kind), torch_dtype=torch.float32)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, set_alpha_to_one=False, clip_sample=False)
    plain.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, eta=cfg.eta, height=cfg.height,
                  width=cfg.width)
    base = plain([PROMPTS[1]] * 2, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], **kwargs).images
    plain.load_lora_weights(str(tmp_path))  # plain diffusers: StableDiffusion(XL)Pipeline.load_lora_weights
    images = plain([PROMPTS[1]] * 2, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], **kwargs).images
    for ours, theirs, before in zip(studio, images, base):
        assert np.abs(pixels(ours.image) - pixels(theirs)).max() <= 2  # fused vs unfused: float rounding
        assert np.abs(pixels(theirs) - pixels(before)).max() >= 3  # and the adapter did arrive


# ------------------------------------------------------------------ through the studio


@pytest.mark.parametrize("kind", KINDS + FLOW_KINDS)
def test_a_vote_train_live_round_through_the_studio(kind, tmp_path):
    model = load(kind)
    repo = Repository(tmp_path / "data")
    tcfg = TrainerConfig(train_steps=4, batch_pairs=4, steps_per_pair=2, lr=3e-3, log_ratio_clip=0.1)
    wcfg = WorkerConfig(train_every=4, min_votes=4, fidelity_seeds=(1000,), fidelity_prompts=2,
                        fidelity_max_drift=5.0)  # random weights: the guard's limit is not what is tested here
    worker = Worker(repo, model.model_id, tcfg, wcfg, trainer=Trainer(load(kind), tcfg))
    studio = Studio(Sampler(model, short(model)), repo, worker)
    try:
        base = studio.live.generate(PROMPTS[0], [11])[0].trajectory.latents
        for i, prompt in enumerate(PROMPTS):
            pair = studio.new_pair(prompt, [2 * i, 2 * i + 1], annotator="ann")
            studio.vote(pair.id, "left", annotator="ann")
        assert worker.should_train()
        run = worker.run_once()
        assert run["status"] == "live", run
        assert studio.live.sync() and studio.live.adapter_version == run["version"]
        (now,) = studio.live.generate(PROMPTS[0], [11])
        assert now.trajectory.adapter_version == run["version"]
        assert not torch.equal(now.trajectory.latents, base)
        before, after = studio.compare(PROMPTS[0], 11, None, run["version"], annotator="ann")
        assert np.abs(pixels(before) - pixels(after)).max() > 0
        for i, prompt in enumerate(PROMPTS):  # a second round on the live adapter's pairs, hot-swapped in
            pair = studio.new_pair(prompt, [20 + 2 * i, 21 + 2 * i], annotator="ann")
            assert pair.adapter_version == run["version"]
            studio.vote(pair.id, "right", annotator="ann")
        second = worker.run_once()
        assert second["status"] == "live" and second["version"] == run["version"] + 1, second
        assert studio.live.follow_once() and studio.live.adapter_version == second["version"]
        assert studio.live.prepared_version is None  # prepared beside generation, then committed
        assert not torch.equal(studio.live.generate(PROMPTS[0], [11])[0].trajectory.latents, now.trajectory.latents)
    finally:
        studio.close()


def test_the_embedded_flow_model_runs_the_studio_loop_with_its_image_analysis_as_the_guard(tmp_path):
    from alignment.eval.labelers import larger

    model = load_pipeline("embedded-flow")
    repo = Repository(tmp_path / "data")
    tcfg = TrainerConfig(train_steps=6, batch_pairs=4, steps_per_pair=2, lr=1e-4)
    wcfg = WorkerConfig(train_every=6, min_votes=6, fidelity_seeds=tuple(range(1000, 1004)), fidelity_prompts=2)
    worker = Worker(repo, model.model_id, tcfg, wcfg, trainer=Trainer(load_pipeline("embedded-flow"), tcfg))
    studio = Studio(Sampler(model), repo, worker)
    try:
        assert any("circle" in p or "square" in p for p in studio.suggestions)  # the shapes prompts
        for i in range(6):
            pair = studio.new_pair(studio.suggestions[i % len(studio.suggestions)], [2 * i, 2 * i + 1],
                                   annotator="ann")
            choice = {0: "left", 1: "right", None: "tie"}[larger(pair.left, pair.right, pair.prompt)]
            studio.vote(pair.id, choice, annotator="ann")
        run = worker.run_once()
        assert run["status"] in ("live", "rejected"), run
        metrics = repo.get_adapter(run["version"]).metrics
        assert metrics["fidelity_scorer"] == "embedded" and metrics["fidelity_base"] > 0.5  # scored, not drift only
        if run["status"] == "live":
            assert studio.live.sync() and studio.new_pair(studio.suggestions[0], annotator="ann").adapter_version \
                == run["version"]
    finally:
        studio.close()
