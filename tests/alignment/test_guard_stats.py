"""The guard's statistics: Student's t, the paired lower bound by seed, the rendering plan, and the decision with
its confirmation on a second seed set (sampler stand-ins, no model)."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
from PIL import Image

from alignment.training.fidelity import (FidelityGuard, FidelityReport, guard_plan, paired_lower_bound,
                                         t_quantile)
from settings import WorkerConfig


@pytest.mark.parametrize("p, df, table", [(0.95, 5, 2.015), (0.95, 10, 1.812), (0.9, 63, 1.295), (0.975, 3, 3.182),
                                          (0.9, 1, 3.078), (0.95, 2, 2.920), (0.8, 30, 0.854)])
def test_t_quantiles_match_the_printed_table(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=5e-3)


def test_the_paired_lower_bound_by_hand():
    # differences -0.1, -0.2, 0: mean -0.1, sd 0.1, se 0.1/sqrt(3); t(0.9, 2) = 1.8856
    bound = paired_lower_bound([0.9, 0.8, 1.0], [1.0, 1.0, 1.0], alpha=0.1)
    assert bound.mean == pytest.approx(-0.1) and bound.units == 3
    assert bound.lower == pytest.approx(-0.1 - 1.8856 * 0.1 / math.sqrt(3), abs=1e-4)
    with pytest.raises(ValueError, match="at least two units"):
        paired_lower_bound([1.0], [1.0], 0.1)


def test_the_plan_takes_prompts_in_turn_with_few_images_per_seed():
    assert guard_plan("abc", [1, 2, 3, 4], 1) == [("a", 1), ("b", 2), ("c", 3), ("a", 4)]
    assert guard_plan("abc", [1, 2], 2) == [("a", 1), ("b", 1), ("c", 2), ("a", 2)]
    assert guard_plan("ab", [7], None) == [("a", 7), ("b", 7)] and guard_plan([], [1], 1) == []


class SeedSampler:
    """Flat images whose colour encodes the seed; with the adapter on, the seeds in `lost` come out black."""

    def __init__(self, lost=()):
        self.lost, self.enabled, self.calls = set(lost), False, []

    def set_adapter_enabled(self, on):
        self.enabled = on

    def generate(self, prompt, seeds):
        self.calls.append((prompt, list(seeds), self.enabled))
        return [SimpleNamespace(image=Image.new("RGB", (4, 4), (0, 0, 0) if self.enabled and s in self.lost else
                                                (255, s % 200 + 50, 0))) for s in seeds]


def not_black(images, prompts):
    """A plug-in scorer: the share of images that are not black."""
    return sum(im.getpixel((0, 0)) != (0, 0, 0) for im in images) / len(images)


def seed_guard(**kw):
    return FidelityGuard(prompts=["p", "q"], seeds=range(64), scorer=not_black, max_drift=None, **kw)


@pytest.mark.parametrize("lost, passes", [(0, True), (1, True), (2, False), (4, False)])
def test_the_lower_bound_not_the_mean_decides(lost, passes):
    """2 lost seeds of 64 are 3.1 points on average, within a 5-point margin, but the 90 % bound is -5.9: fail."""
    sampler = SeedSampler(lost=range(lost))
    report = seed_guard().check(sampler, sampler.set_adapter_enabled)
    assert report.passed is passes and report.scored and report.units == 64
    assert report.candidate == pytest.approx(1 - lost / 64)


def test_the_units_are_seeds_and_a_single_seed_falls_back_to_its_images():
    sampler = SeedSampler()
    report = seed_guard(per_seed=2).check(sampler, sampler.set_adapter_enabled)
    assert report.units == 64 and report.passed  # 128 images, 64 units
    one = FidelityGuard(prompts=["p", "q", "r"], seeds=(5,), per_seed=None, scorer=not_black)
    assert one.check(sampler, sampler.set_adapter_enabled).units == 3


def test_confirmation_seeds_are_disjoint_and_rendered_apart():
    sampler = SeedSampler()
    guard = seed_guard()
    assert not set(guard.seeds) & set(guard.confirm_seeds) and len(guard.confirm_seeds) == 64
    guard.confirm(sampler, sampler.set_adapter_enabled)
    assert {s for _, seeds, _ in sampler.calls for s in seeds} == set(guard.confirm_seeds)
    with pytest.raises(ValueError, match="none of fidelity_seeds"):
        FidelityGuard(seeds=(1, 2), confirm_seeds=(2, 3))
    with pytest.raises(ValueError, match="none of fidelity_seeds"):
        WorkerConfig(fidelity_seeds=(1, 2), fidelity_confirm_seeds=(2,))
    assert not set(WorkerConfig().fidelity_seeds) & set(WorkerConfig().confirm_seeds)
    smaller = dataclasses.replace(WorkerConfig(), fidelity_seeds=(1000, 1001))  # an unset set follows the selection
    assert len(smaller.confirm_seeds) == 2 and not set(smaller.confirm_seeds) & {1000, 1001}
    kept = dataclasses.replace(WorkerConfig(fidelity_confirm_seeds=(7, 8, 9)), fidelity_seeds=(1,))
    assert kept.confirm_seeds == (7, 8, 9)  # a set given stays


class FakeTrainer:
    def __init__(self):
        self.state = None

    def restore(self, state):
        self.state = state

    def set_adapter_enabled(self, on):
        pass


def report(passed, seed_set, base=0.9, cand=0.9):
    return FidelityReport(base, cand, 0.0, passed, None if passed else f"{seed_set} fell", units=8,
                          lower_bound=cand - base - 0.01, seed_set=seed_set)


@pytest.mark.parametrize("confirmed", [True, False])
def test_the_chosen_checkpoint_goes_live_only_when_the_confirmation_passes_too(confirmed):
    guard, trainer = seed_guard(), FakeTrainer()
    guard.check = lambda sampler, enable: report(trainer.state <= 40, "selection", cand=0.95)
    guard.confirm = lambda sampler, enable: report(confirmed, "confirmation", cand=0.91 if confirmed else 0.7)
    decision = guard.decide(None, trainer, [(20, 20), (40, 40), (60, 60)])
    assert decision.step == 40 and trainer.state == 40 and len(decision.selection) == 2
    assert decision.verdict.passed is confirmed and decision.verdict.scored
    if not confirmed:
        assert "step 40 passed the selection seeds but not the confirmation" in decision.verdict.reason
    metrics = decision.as_metrics()  # fidelity_* from the confirmation; the guard's own selection figures labelled
    assert metrics["fidelity_candidate"] == (0.91 if confirmed else 0.7)
    assert metrics["guard_selection_fidelity_candidate"] == 0.95 and metrics["fidelity_passed"] is confirmed


def test_when_no_checkpoint_passes_the_final_weights_are_confirmed_for_the_record_and_rejected():
    guard, trainer = seed_guard(), FakeTrainer()
    guard.check = lambda sampler, enable: report(False, "selection")
    guard.confirm = lambda sampler, enable: report(True, "confirmation")
    decision = guard.decide(None, trainer, [(20, 20), (40, 40)])
    assert decision.step is None and trainer.state == 40  # the trainer holds the final weights again
    assert not decision.verdict.passed and decision.verdict.reason == "selection fell"
