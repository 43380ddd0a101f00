"""Sampling first: training steps and guard renders in the studio's process wait while images are being made."""

import threading
import time

import pytest

from alignment.serving.live import LiveModel
from alignment.serving.priority import SamplingFirst, YieldingSampler
from alignment.training.worker import Worker
from settings import WorkerConfig
from storage import Repository

PROMPT = "a red circle on a blue background"


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


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_wait_s"):
        SamplingFirst(max_wait_s=-1)
    with pytest.raises(ValueError, match="sampling_wait_s"):
        WorkerConfig(sampling_wait_s=-2)


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
        t = hold_sampling(worker.priority, 0.5)
        start = time.monotonic()
        worker.report_progress(1, 10)  # a step is done: the next one waits for the generation
        assert time.monotonic() - start >= 0.45
        t.join()
        start = time.monotonic()
        worker.report_progress(10, 10)  # the last step: nothing left to wait for
        assert time.monotonic() - start < 0.1

        inner = SlowSampler(worker.priority)
        guard_sampler = YieldingSampler(inner, worker.priority)
        t = hold_sampling(worker.priority, 0.4)
        start = time.monotonic()
        guard_sampler.generate(PROMPT, [0, 1])
        assert time.monotonic() - start >= 0.35 and inner.marked == [False]  # rendered after the generation
        t.join()

        off = Worker(repo, config=WorkerConfig(sampling_wait_s=0))
        off._lease_renewed_at = off_lease
        off.priority = SamplingFirst()
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
