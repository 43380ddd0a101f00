"""Sampling first: training steps and guard renders in the studio's process wait while images are being made."""

import threading
import time

import pytest

from alignment.eval.labelers import larger
from alignment.eval.simulate import collect_round
from alignment.families.loader import load_pipeline
from alignment.serving.live import LiveModel
from alignment.serving.priority import SamplingFirst, WaitBudget, YieldingSampler
from alignment.serving.sampler import Sampler
from alignment.training.trainer import Trainer
from alignment.training.worker import Worker
from settings import TrainerConfig, WorkerConfig
from storage import Repository

PROMPT = "a red circle on a blue background"
PROMPTS = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
           "a purple circle on a white background", "a blue square", "an orange triangle"]


def hold_sampling(priority: SamplingFirst, seconds: float) -> threading.Thread:
    started = threading.Event()

    def run():
        with priority.sampling():
            started.set()
            time.sleep(seconds)

    t = threading.Thread(target=run)
    t.start()
    started.wait()
    return t


def test_an_idle_machine_lets_training_go_on_at_once():
    p = SamplingFirst(max_wait_s=5, grace_s=0.2)
    assert not p.busy
    assert p.yield_to_sampling() < 0.05


def test_training_waits_for_a_generation_and_its_grace_period_then_goes_on():
    p = SamplingFirst(max_wait_s=5, grace_s=0.2)
    t = hold_sampling(p, 0.4)
    assert p.busy
    waited = p.yield_to_sampling()
    t.join()
    assert 0.4 + 0.2 - 0.05 <= waited < 1.5  # the generation, then the grace period, not the 5 s bound
    assert p.generations == 1 and p.waited_s == pytest.approx(waited)


def test_a_studio_that_never_stops_generating_still_lets_training_advance():
    p = SamplingFirst(max_wait_s=0.3, grace_s=0.1)
    t = hold_sampling(p, 2.0)
    waited = p.yield_to_sampling()
    assert 0.25 <= waited < 1.0  # the bound, not the generation's 2 s
    t.join()


def test_a_budget_bounds_what_one_run_waits_in_all():
    p = SamplingFirst(max_wait_s=5, grace_s=0.1)
    budget = WaitBudget(p, per_wait_s=0.3, total_s=0.5)
    t = hold_sampling(p, 2.0)
    waits = [budget.wait() for _ in range(4)]
    t.join()
    assert 0.25 <= waits[0] < 0.45 and 0.1 <= waits[1] < 0.35  # the per-wait bound, then what was left
    assert waits[2:] == [0.0, 0.0] and budget.spent  # spent: the run goes on at once
    assert budget.waited_s == pytest.approx(sum(waits)) and 0.45 <= budget.waited_s < 0.65
    unbounded = WaitBudget(p, per_wait_s=0.2)
    t = hold_sampling(p, 1.0)
    assert [unbounded.wait() > 0.15 for _ in range(3)] == [True] * 3 and not unbounded.spent
    t.join()


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_wait_s"):
        SamplingFirst(max_wait_s=-1)
    with pytest.raises(ValueError, match="sampling_wait_s"):
        WorkerConfig(sampling_wait_s=-2)
    with pytest.raises(ValueError, match="sampling_wait_run_s"):
        WorkerConfig(sampling_wait_run_s=-1)
    with pytest.raises(ValueError, match="total_s"):
        WaitBudget(SamplingFirst(), 1.0, -1)


class SlowSampler:
    """Stands in for a `Sampler`: records whether generation was marked while it ran."""

    def __init__(self, priority: SamplingFirst | None = None, seconds: float = 0.0):
        self.priority, self.seconds, self.marked = priority, seconds, []

    def generate(self, prompt, seeds, config=None, adapter_version=None):
        if self.priority is not None:
            self.marked.append(self.priority.busy)
        time.sleep(self.seconds)
        return [object() for _ in seeds]


def test_the_live_model_marks_every_generation_at_any_version(fresh_sampler, tmp_path):
    repo = Repository(tmp_path / "data")
    try:
        live = LiveModel(fresh_sampler, repo)
        calls = []
        real = live._sampler.generate
        live._sampler.generate = lambda *a, **k: calls.append(live.priority.busy) or real(*a, **k)
        live.generate(PROMPT, [0])
        live.at(None).generate(PROMPT, [1])
        assert calls == [True, True] and live.priority.generations == 2
        assert not live.priority._active  # released afterwards, also for the pinned view
    finally:
        repo.close()


def test_the_worker_yields_between_steps_and_before_each_guard_render(tmp_path):
    repo = Repository(tmp_path / "data")
    try:
        worker = Worker(repo, config=WorkerConfig(sampling_wait_s=5))
        worker._lease_renewed_at = off_lease = time.monotonic()  # as inside a run: no lease renewal due
        worker.priority = SamplingFirst(grace_s=0.0)
        worker._budget = worker._wait_budget(WorkerConfig().sampling_wait_run_s)  # as a run starts
        t = hold_sampling(worker.priority, 0.5)
        start = time.monotonic()
        worker.report_progress(1, 10)  # a step is done: the next one waits for the generation
        assert time.monotonic() - start >= 0.45
        t.join()
        start = time.monotonic()
        worker.report_progress(10, 10)  # the last step: nothing left to wait for
        assert time.monotonic() - start < 0.1

        inner = SlowSampler(worker.priority)
        guard_sampler = YieldingSampler(inner, WaitBudget(worker.priority, 5))
        t = hold_sampling(worker.priority, 0.4)
        start = time.monotonic()
        guard_sampler.generate(PROMPT, [0, 1])
        assert time.monotonic() - start >= 0.35 and inner.marked == [False]  # rendered after the generation
        t.join()

        off = Worker(repo, config=WorkerConfig(sampling_wait_s=0))
        off._lease_renewed_at = off_lease
        off.priority = SamplingFirst()
        assert off._wait_budget(60) is None
        off._budget = None
        t = hold_sampling(off.priority, 0.5)
        start = time.monotonic()
        off.report_progress(1, 10)
        assert time.monotonic() - start < 0.1  # waits switched off
        t.join()
    finally:
        repo.close()


def test_the_studio_gives_its_worker_the_live_models_priority(fresh_sampler, tmp_path):
    from app.studio import Studio

    repo = Repository(tmp_path / "data")
    worker = Worker(repo)
    studio = Studio(fresh_sampler, repo, worker)
    try:
        assert worker.priority is studio.live.priority
    finally:
        studio.close()


def keep_sampling(priority: SamplingFirst, stop: threading.Event) -> threading.Thread:
    """A person who never stops: one generation after another, with no pause the grace period would not cover."""
    def run():
        while not stop.is_set():
            with priority.sampling():
                time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("budget_s", [0.8, 1e4])
def test_a_run_waits_for_a_busy_live_model_only_within_its_budget(tmp_path, embedded, budget_s):
    """The live model is never idle: each step and guard render waits its full bound until the run's budget is
    spent, and the run's metrics say how long it waited."""
    repo = Repository(tmp_path / "data")
    stop = threading.Event()
    try:
        collect_round(Sampler(embedded), repo, larger, PROMPTS, 0, "tester")
        cfg = TrainerConfig(train_steps=6, batch_pairs=4, steps_per_pair=2)
        worker = Worker(repo, "embedded", cfg, WorkerConfig(
            train_every=1, min_votes=2, fidelity_seeds=(1000, 1001), fidelity_confirm_seeds=(2000, 2001),
            fidelity_prompts=1, warm_guard=False, sampling_wait_s=0.4, sampling_wait_run_s=budget_s),
            trainer=Trainer(load_pipeline(), cfg))
        worker.priority = SamplingFirst(grace_s=0.2)
        t = keep_sampling(worker.priority, stop)
        run = worker.run_once()
        stop.set()
        t.join()
        assert run["status"] in ("live", "rejected"), run
        waited = run["metrics"]["sampling_waited_s"]
        assert waited == pytest.approx(worker.priority.waited_s, abs=0.1)
        if budget_s < 10:
            assert 0.7 <= waited <= 1.0  # two waits of 0.4 s, the second cut to what was left
        else:  # 5 steps after the first and at least 4 guard renders (base and candidate, two seed sets)
            assert waited >= 9 * 0.4 * 0.9
    finally:
        stop.set()
        repo.close()
