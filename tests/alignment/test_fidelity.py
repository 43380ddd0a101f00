"""The fidelity guard: checkpoint selection (the latest state that passes, or none), the drift and prompt-fidelity
checks, the scorers (embedded analysis, CLIP, module:function), and that a candidate it cannot measure never
passes."""

import json
import math
import random
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from alignment.training.fidelity import FidelityGuard, FidelityReport
from alignment.training.scorers import (ClipScorer, ScorerError, drift, embedded_fidelity, load_scorer,
                                        resolve_scorer)
from settings import MAX_DRIFT, WorkerConfig
from tests.support.scorers import failing_scorer, nan_scorer, tiny_clip


class FakeTrainer:
    """Holds one 'state' (a checkpoint's step) and records what was restored, like Trainer.restore."""

    def __init__(self):
        self.state = None
        self.enabled = []

    def restore(self, state):
        self.state = state["step"]

    def set_adapter_enabled(self, on):
        self.enabled.append(on)


def guard_passing(trainer: FakeTrainer, passing_steps: set[int]) -> tuple[FidelityGuard, list]:
    """A guard whose check passes exactly when the restored state is in `passing_steps` (no rendering)."""
    guard = FidelityGuard(embedded=True, per_seed=1)
    checked = []

    def check(sampler, set_adapter_enabled):
        set_adapter_enabled(True)
        checked.append(trainer.state)
        ok = trainer.state in passing_steps
        return FidelityReport(0.9, 0.9 if ok else 0.7, 0.1, ok, None if ok else "too far")

    guard.check = check
    return guard, checked


def checkpoints(*steps):
    return [(step, {"step": step}) for step in steps]


def test_select_keeps_the_latest_checkpoint_that_passes_and_stops_there():
    trainer = FakeTrainer()
    guard, checked = guard_passing(trainer, {20, 40})
    before = []
    chosen, reports = guard.select(None, trainer, checkpoints(20, 40, 60, 80), before_each=lambda: before.append(1))
    assert chosen == 40 and trainer.state == 40  # the trainer is left holding the chosen state
    assert checked == [80, 60, 40] and len(before) == 3  # latest first; 20 is never rendered
    assert [r.passed for r in reports] == [False, False, True] and trainer.enabled == [True] * 3


def test_select_returns_none_when_no_checkpoint_passes():
    trainer = FakeTrainer()
    guard, checked = guard_passing(trainer, set())
    chosen, reports = guard.select(None, trainer, checkpoints(20, 40))
    assert chosen is None and checked == [40, 20] and not any(r.passed for r in reports)
    assert reports[0].candidate == 0.7 and reports[0].reason == "too far"


def test_select_takes_the_final_state_when_it_passes():
    trainer = FakeTrainer()
    guard, checked = guard_passing(trainer, {60, 80})
    chosen, reports = guard.select(None, trainer, checkpoints(60, 80))
    assert chosen == 80 and len(reports) == 1 and checked == [80]


# ---- drift and fail-closed checks (no rendering: a sampler stand-in draws flat images) ---------------------------
def flat(rgb) -> Image.Image:
    return Image.new("RGB", (8, 8), rgb)


def noise_image(rgb) -> Image.Image:
    return Image.fromarray(np.random.default_rng(sum(rgb)).integers(0, 256, (8, 8, 3), dtype=np.uint8))


class FlatSampler:
    """`generate(prompt, seeds)` draws one flat colour per (prompt, seed) for the base; the candidate's images are
    `candidate(base_colour)` (the adapter state comes from the `set_adapter_enabled` the guard calls)."""

    def __init__(self, candidate=flat):
        self.candidate, self.enabled = candidate, False

    def set_adapter_enabled(self, on: bool) -> None:
        self.enabled = on

    def generate(self, prompt, seeds):
        out = []
        for seed in seeds:
            rgb = tuple(zlib.crc32(f"{prompt}/{seed}".encode()) >> shift & 255 for shift in (0, 8, 16))
            out.append(SimpleNamespace(image=self.candidate(rgb) if self.enabled else flat(rgb)))
        return out


PROMPTS = ["a red circle", "a blue square"]


def check(guard, sampler):
    return guard.check(sampler, sampler.set_adapter_enabled)


def test_drift_is_the_candidates_distance_from_the_base_relative_to_the_distance_between_base_images():
    black, white, grey = (Image.new("RGB", (4, 4), (v, v, v)) for v in (0, 255, 51))
    same = drift([black, white], [black, white])
    assert (same.mean_abs, same.reference, same.ratio) == (0.0, 1.0, 0.0)
    moved = drift([grey, white], [black, white])  # one image moved 0.2 of the way: mean 0.1 of a spread of 1
    assert moved.mean_abs == pytest.approx(0.1) and moved.ratio == pytest.approx(0.1)
    assert math.isnan(drift([black], [white]).ratio)  # one image: no spread to compare with
    assert drift([white, white], [black, black]).ratio == math.inf  # the base never varies, the candidate moved
    with pytest.raises(ValueError, match="as many"):
        drift([black], [black, white])


def test_an_adapter_that_changes_nothing_passes_on_drift_alone():
    report = check(FidelityGuard(prompts=PROMPTS, seeds=(1, 2)), FlatSampler())
    assert report.passed and report.scored and report.reason is None
    assert report.drift_ratio == 0.0 and report.scorer == "drift"
    assert report.as_metrics()["fidelity_scored"] is True


def test_an_adapter_that_turns_images_into_noise_is_rejected_on_drift_alone():
    report = check(FidelityGuard(prompts=PROMPTS, seeds=(1, 2)), FlatSampler(noise_image))
    assert not report.passed and report.scored  # measured and failed: rejected, not left as a candidate
    assert report.drift_ratio > MAX_DRIFT and "drifted" in report.reason


@pytest.mark.parametrize("guard_kwargs, why", [
    (dict(prompts=[]), "no prompts"),
    (dict(prompts=PROMPTS, seeds=()), "no prompts or seeds"),
    (dict(prompts=PROMPTS[:1], seeds=(1,)), "at least two images"),
    (dict(prompts=PROMPTS, max_drift=None), "no fidelity check"),
    (dict(prompts=PROMPTS, scorer=nan_scorer, max_drift=None), "returned nan"),
    (dict(prompts=PROMPTS, scorer=lambda images, prompts: None), "returned None"),
    (dict(prompts=PROMPTS, scorer=failing_scorer), "scoring service is down"),
])
def test_a_candidate_that_could_not_be_measured_never_passes(guard_kwargs, why):
    """Fail-closed: nothing rendered, a NaN, None or failing scorer, no check at all: not passed, not scored."""
    report = check(FidelityGuard(**{"seeds": (1, 2), **guard_kwargs}), FlatSampler())
    assert not report.passed and not report.scored
    assert why in report.reason and "not promoted automatically" in report.reason
    json.dumps(report.as_metrics(), allow_nan=False)  # storable: no NaN in the metrics


def test_a_measured_failure_outweighs_a_check_that_could_not_measure():
    report = check(FidelityGuard(prompts=PROMPTS, seeds=(1, 2), scorer=nan_scorer), FlatSampler(noise_image))
    assert not report.passed and report.scored and "drifted" in report.reason


def test_a_module_function_scorer_decides_with_the_drop_rule():
    scores = iter([0.9, 0.9, 0.8, 0.8])  # base's two seeds, then the candidate's: 0.1 below on each, beyond max_drop
    guard = FidelityGuard(prompts=PROMPTS, seeds=(1, 2), scorer=lambda images, prompts: next(scores), max_drop=0.05)
    report = check(guard, FlatSampler())
    assert not report.passed and report.scored and "fell from 0.900 to 0.800" in report.reason
    assert report.units == 2 and report.lower_bound == pytest.approx(-0.1)  # no spread: the bound is the mean
    assert load_scorer("tests.support.scorers:constant_scorer")([], []) == 0.8
    for bad in ("tests.support.scorers", "tests.support.scorers:missing", "no_such_module:fn", ":fn"):
        with pytest.raises(ScorerError):
            load_scorer(bad)


def test_the_worker_setting_names_the_scorer():
    assert resolve_scorer("auto", embedded=True) is embedded_fidelity
    assert resolve_scorer("auto", embedded=False) is None  # drift alone
    assert resolve_scorer("drift", embedded=True) is None
    assert resolve_scorer("tests.support.scorers:nan_scorer", embedded=False) is nan_scorer
    with pytest.raises(ScorerError, match="needs a CLIP model"):
        resolve_scorer("clip", embedded=False)
    with pytest.raises(ScorerError, match="unknown fidelity scorer"):
        resolve_scorer("vibes", embedded=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fidelity_scorer="vibes"), "fidelity_scorer"), (dict(fidelity_scorer="module:"), "fidelity_scorer"),
    (dict(fidelity_scorer="clip"), "needs clip_model"), (dict(clip_model=" "), "clip_model"),
    (dict(fidelity_max_drift=0), "fidelity_max_drift"), (dict(fidelity_max_drift=-1.0), "fidelity_max_drift"),
])
def test_invalid_guard_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorkerConfig(**kwargs)
    assert WorkerConfig(fidelity_scorer="clip", clip_model="openai/clip-vit-base-patch32").clip_model


def test_the_embedded_image_analysis_scores_grammar_prompts_only():
    from alignment.embedded.data import COLOURS, draw, sample_spec

    spec = sample_spec(random.Random(0), colour="red", shape="circle", background="blue")
    image = draw(spec)
    assert embedded_fidelity([image], ["a red circle on a blue background"]) == 1.0
    assert embedded_fidelity([image], ["a green square on a white background"]) < 1.0
    assert embedded_fidelity([image], ["a photo of a red apple"]) is None  # not the grammar: not measured
    assert set(COLOURS) >= {"red", "blue"}


# ---- CLIP: a tiny random CLIP saved offline (its numbers mean nothing: plumbing and fail-closed only) -----------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_a_named_clip_model_loads_from_a_folder_and_scores_images_against_prompts(clip_dir):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    scorer = resolve_scorer("auto", embedded=False, clip_model=str(clip_dir))
    assert isinstance(scorer, ClipScorer) and scorer.name == f"clip:{clip_dir}"
    images = [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 20, 220))]
    prompts = ["a red circle", "a blue square on a white background"]
    # the cosines from CLIP's own forward pass: logits_per_image = exp(logit_scale) * cos(image, text)
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(**processor(text=prompts, images=images, return_tensors="pt", padding=True))
        cos = out.logits_per_image.diagonal() / model.logit_scale.exp()
    assert torch.allclose(scorer.similarities(images, prompts), cos, atol=1e-5) and cos.abs().min() > 1e-3
    value = scorer(images, prompts)  # CLIP-S = 2.5 max(cos, 0), capped at 1, averaged
    assert value == pytest.approx(float((2.5 * cos.clamp(min=0)).clamp(max=1).mean()), abs=1e-5)
    assert 0.0 <= value <= 1.0
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(images, prompts[:1])
    assert scorer([], []) is None
    report = check(FidelityGuard(prompts=prompts, seeds=(1, 2), scorer=scorer), FlatSampler())
    assert report.scored and report.passed and report.scorer == f"clip:{clip_dir}"  # equal images: equal scores


def test_a_clip_model_that_does_not_load_is_a_clear_error(tmp_path):
    with pytest.raises(ScorerError, match="cannot load the CLIP model"):
        ClipScorer(tmp_path / "no-such-clip")


# ---- on the embedded model's real renders ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer_and_sampler():
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.trainer import Trainer
    from settings import SamplerConfig

    trainer = Trainer(load_pipeline())
    return trainer, Sampler(trainer.model, SamplerConfig.from_defaults(trainer.model.sampler_defaults), fuse=False)


def set_random_lora(trainer, scale: float) -> None:
    import torch

    trainer.fresh_adapter()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.mark.parametrize("embedded", [False, True])
def test_on_renders_a_noise_adapter_is_rejected_and_a_tiny_lora_passes(trainer_and_sampler, embedded):
    """Drift alone (any model) and the embedded analysis with drift: A and B ~ N(0, 1) turn every image into
    coloured noise, about as far from its base as two unrelated base images are from each other (a drift ratio
    near 1, 0.96-1.01 across CPUs), N(0, 0.01^2) barely moves a pixel."""
    trainer, sampler = trainer_and_sampler
    guard = FidelityGuard(embedded=embedded, prompts=["a red circle on a blue background",
                                                      "a green square on a white background"], seeds=(1000, 1001),
                          per_seed=None)
    set_random_lora(trainer, 1.0)
    noise = guard.check(sampler, trainer.set_adapter_enabled)
    assert not noise.passed and noise.scored and noise.drift_ratio > 1.5 * MAX_DRIFT, noise
    set_random_lora(trainer, 0.01)
    tiny = guard.check(sampler, trainer.set_adapter_enabled)
    assert tiny.passed and tiny.drift_ratio < 0.1 * MAX_DRIFT, tiny
    if embedded:
        assert noise.candidate < noise.base - 0.05 and tiny.candidate == pytest.approx(tiny.base, abs=0.05)
