"""Scale-out: the worker trains only while it holds the database lease "trainer".

The training itself is replaced by a stand-in run given to ``Worker.run_exclusively`` (what ``run_once`` wraps
around the real run), so these tests check the lease wiring only: a
second worker is refused while another holds the lease, a holder killed with SIGKILL blocks it only until the
lease expires, the heartbeat keeps a long run's lease alive, a lost lease aborts the run, and the lease is
released when the run ends (also when it fails). Real training runs are covered in ``tests/alignment``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignment.training.worker import LEASE_NAME, LeaseLostError, Worker
from settings import WorkerConfig
from storage import Repository
from tests.support.storage import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
HOLDER_SCRIPT = REPO_ROOT / "tests" / "storage" / "lease_holder.py"


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def repo(data_dir):
    repository = Repository(data_dir)
    yield repository
    repository.close()


def stand_in_run(worker: Worker, calls: list, steps: int = 0, step_s: float = 0.0):
    """A run that records who held the lease while it ran, reporting ``steps`` progress steps."""

    def run() -> dict:
        calls.append(worker.repo.lease_holder(LEASE_NAME))
        for step in range(steps):
            time.sleep(step_s)
            worker.report_progress(step + 1, steps)
            calls.append(worker.repo.lease_holder(LEASE_NAME))
        return {"status": "live", "version": 1}

    return run


def make_worker(repo: Repository, ttl: float = 60.0) -> Worker:
    return Worker(repo, "embedded", config=WorkerConfig(lease_ttl_s=ttl))


def test_a_run_holds_the_lease_and_releases_it(repo):
    worker = make_worker(repo)
    calls: list = []
    assert worker.run_exclusively(stand_in_run(worker, calls)) == {"status": "live", "version": 1}
    assert calls[0][0] == worker.lease_holder_id
    assert worker.lease_holder_id.count(":") == 2 and str(os.getpid()) in worker.lease_holder_id
    assert repo.lease_holder(LEASE_NAME) is None


def test_a_second_worker_is_busy_while_the_first_trains(repo, data_dir):
    other_repo = Repository(data_dir)  # another process's view of the same database
    try:
        first, second = make_worker(repo), make_worker(other_repo)
        seen: list = []

        def first_run() -> dict:
            # the second worker tries while the first is inside its run
            seen.append(second.run_exclusively(lambda: pytest.fail("the second worker trained under the lease")))
            seen.append(second.run_once())  # the real run is refused the same way, before it loads anything
            return {"status": "live", "version": 1}

        assert first.run_exclusively(first_run)["status"] == "live"
        assert seen == [{"status": "busy", "holder": first.lease_holder_id}] * 2
        assert second.run_exclusively(lambda: {"status": "live", "version": 2})["version"] == 2  # free again
    finally:
        other_repo.close()


def test_a_failing_run_still_releases_the_lease(repo):
    worker = make_worker(repo)

    def boom() -> dict:
        raise RuntimeError("database went away mid-run")

    with pytest.raises(RuntimeError, match="went away"):
        worker.run_exclusively(boom)
    assert repo.lease_holder(LEASE_NAME) is None


def test_the_heartbeat_keeps_a_long_run_leased_and_a_lost_lease_aborts(repo, data_dir):
    worker = make_worker(repo, ttl=0.6)
    calls: list = []
    # 1.2 s: twice the ttl
    assert worker.run_exclusively(stand_in_run(worker, calls, steps=8, step_s=0.15))["status"] == "live"
    assert calls and all(held is not None and held[0] == worker.lease_holder_id for held in calls)

    def run_that_loses_the_lease() -> dict:
        time.sleep(0.8)  # no heartbeat for longer than the ttl: the lease expires ...
        with Repository(data_dir) as intruder:
            assert intruder.acquire_lease(LEASE_NAME, "intruder", 60)  # ... and someone else takes it
        worker.report_progress(1, 10)
        return {"status": "live"}

    with pytest.raises(LeaseLostError):
        worker.run_exclusively(run_that_loses_the_lease)
    assert repo.lease_holder(LEASE_NAME)[0] == "intruder"  # the loser's release did not free someone else's


def test_a_holder_killed_with_sigkill_blocks_the_worker_only_until_expiry(repo, data_dir):
    ttl = 2.0
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER_SCRIPT), str(data_dir), "-", LEASE_NAME, "killed-worker", str(ttl)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout.readline().strip() != "acquired":
            pytest.fail(f"the lease holder did not start: {proc.communicate(timeout=30)[1][-2000:]}")
        worker = make_worker(repo)
        def stand_in() -> dict:
            return {"status": "live", "version": 1}

        assert worker.run_exclusively(stand_in) == {"status": "busy", "holder": "killed-worker"}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + ttl + 10
        outcomes = []
        while time.monotonic() < deadline:
            outcome = worker.run_exclusively(stand_in)
            outcomes.append(outcome["status"])
            if outcome["status"] == "live":
                break
            time.sleep(0.1)
        assert outcomes[-1] == "live", "the dead holder's lease never expired"
        assert set(outcomes[:-1]) <= {"busy"}
        assert repo.lease_holder(LEASE_NAME) is None
    finally:
        stop_process(proc)


def test_lease_ttl_is_validated():
    with pytest.raises(ValueError, match="lease_ttl_s"):
        WorkerConfig(lease_ttl_s=0)


def test_a_restarted_worker_takes_over_the_lease_of_a_dead_process_on_this_machine(repo):
    import socket

    from alignment.training.worker import holder_is_dead

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_holder = f"{socket.gethostname()}:{dead.pid}:1"
    assert holder_is_dead(dead_holder)
    assert not holder_is_dead(f"{socket.gethostname()}:{os.getpid()}:1")  # this process: alive
    assert not holder_is_dead(f"other-host:{dead.pid}:1")  # another machine's holder is never judged dead
    assert not holder_is_dead("not-a-holder-id")
    assert repo.acquire_lease(LEASE_NAME, dead_holder, 600)  # killed while holding a long lease
    stale_fence = repo.fence(LEASE_NAME, dead_holder)
    worker, calls = make_worker(repo), []
    worker.run_exclusively(stand_in_run(worker, calls))
    assert calls, "the run waited for the dead worker's lease instead of taking it over"
    assert repo.fence(LEASE_NAME, dead_holder) is None
    assert repo.acquire_lease(LEASE_NAME, "probe", 60)  # released after the run: free again
    assert repo.fence(LEASE_NAME, "probe").generation == stale_fence.generation + 2  # taken over, then taken


def test_a_live_holder_on_another_machine_keeps_the_lease(repo):
    assert repo.acquire_lease(LEASE_NAME, "other-host:1:1", 600)
    worker, calls = make_worker(repo), []
    assert worker.run_exclusively(stand_in_run(worker, calls)) == {"status": "busy", "holder": "other-host:1:1"}
    assert calls == [] and repo.lease_holder(LEASE_NAME)[0] == "other-host:1:1"

