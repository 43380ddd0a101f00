"""Worker leases: one holder at a time, extension by the same holder, expiry, release, bad input; across
repositories on one SQLite file, across processes, and a holder killed with SIGKILL (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import InvalidLeaseError, Repository
from tests.support.storage import run_threads, stop_process

HOLDER_SCRIPT = Path(__file__).with_name("lease_holder.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_one_holder_at_a_time_and_the_same_holder_extends(repo):
    assert repo.lease_holder("trainer") is None
    assert repo.acquire_lease("trainer", "host-a:1", 60)
    holder, first_expiry = repo.lease_holder("trainer")
    assert holder == "host-a:1" and first_expiry.tzinfo is not None
    assert not repo.acquire_lease("trainer", "host-b:2", 60)
    assert repo.acquire_lease("trainer", "host-a:1", 120)  # same holder: extends
    assert repo.lease_holder("trainer")[1] > first_expiry
    assert repo.acquire_lease("other-job", "host-b:2", 60)  # names are independent
    assert repo.lease_holder("trainer")[0] == "host-a:1"


def test_release_frees_the_lease_only_for_its_holder(repo):
    assert repo.acquire_lease("trainer", "a", 60)
    repo.release_lease("trainer", "b")  # not the holder: nothing happens
    assert repo.lease_holder("trainer")[0] == "a"
    repo.release_lease("trainer", "a")
    assert repo.lease_holder("trainer") is None
    repo.release_lease("trainer", "a")  # releasing twice is harmless
    assert repo.acquire_lease("trainer", "b", 60)
    assert repo.lease_holder("trainer")[0] == "b"
    repo.release_lease("never-taken", "b")


def test_an_expired_lease_can_be_taken_and_cannot_be_renewed(repo):
    assert repo.acquire_lease("trainer", "a", 0.3)
    assert repo.renew_lease("trainer", "a", 0.3)
    assert not repo.renew_lease("trainer", "b", 60)  # only the holder renews
    time.sleep(0.5)
    assert repo.lease_holder("trainer") is None
    assert not repo.renew_lease("trainer", "a", 60)  # lost: the caller must know
    assert repo.acquire_lease("trainer", "b", 60)
    assert repo.lease_holder("trainer")[0] == "b"
    assert not repo.acquire_lease("trainer", "a", 60)


def test_a_renewal_pushes_the_expiry_forward(repo):
    assert repo.acquire_lease("trainer", "a", 0.6)
    time.sleep(0.4)
    assert repo.renew_lease("trainer", "a", 0.6)
    time.sleep(0.4)  # 0.8 s after acquiring: expired without the renewal
    assert repo.lease_holder("trainer")[0] == "a"


@pytest.mark.parametrize(
    ("name", "holder", "ttl"),
    [
        ("", "a", 1),
        ("trainer", "   ", 1),
        ("trainer", None, 1),
        ("x" * 65, "a", 1),
        ("trainer", "h" * 201, 1),
        ("trainer", "a", 0),
        ("trainer", "a", -5),
        ("trainer", "a", float("nan")),
        ("trainer", "a", float("inf")),
        ("trainer", "a", True),
        ("trainer", "a", "60"),
        ("trainer", "a", 8 * 24 * 3600),
    ],
)
def test_bad_lease_arguments_are_refused_and_write_nothing(file_repo, name, holder, ttl):
    with pytest.raises(InvalidLeaseError):
        file_repo.acquire_lease(name, holder, ttl)
    with pytest.raises(InvalidLeaseError):
        file_repo.renew_lease(name, holder, ttl)
    with file_repo.engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM worker_lease").scalar() == 0


def start_holder(data_dir: Path, url: str, holder: str, ttl_s: float) -> subprocess.Popen:
    """A lease-holding process; returns once it printed "acquired" (fails the test otherwise)."""
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER_SCRIPT), str(data_dir), url, "trainer", holder, str(ttl_s)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if line != "acquired":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"lease holder printed {line!r}: {err[-2000:]}")
    return proc


@pytest.fixture(params=["sqlite", "postgres"])
def shared_database(request, tmp_path) -> tuple[Path, str]:
    """``(data_dir, url)`` that several processes share: a SQLite file ("-") or a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "data", "-"
    return tmp_path / "data", request.getfixturevalue("pg_url")


def test_a_holder_killed_with_sigkill_blocks_only_until_expiry(shared_database):
    data_dir, url = shared_database
    ttl = 2.0
    repo = Repository(data_dir, None if url == "-" else url)
    proc = start_holder(data_dir, url, "doomed-worker", ttl)
    try:
        time.sleep(ttl * 1.2)  # longer than one ttl: only the holder's heartbeats keep it
        assert repo.lease_holder("trainer")[0] == "doomed-worker"
        assert not repo.acquire_lease("trainer", "second-worker", 60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _, expires_at = repo.lease_holder("trainer")
        while not repo.acquire_lease("trainer", "second-worker", 60):
            now = dt.datetime.now(dt.timezone.utc)
            assert now < expires_at + dt.timedelta(seconds=5), "the dead holder's lease never expired"
            time.sleep(0.05)
        taken_at = dt.datetime.now(dt.timezone.utc)
        assert taken_at >= expires_at - dt.timedelta(seconds=0.5)  # not before the expiry (clock jitter aside)
        assert repo.lease_holder("trainer")[0] == "second-worker"
    finally:
        stop_process(proc)
        repo.close()


def test_a_second_process_is_refused_while_the_first_holds(shared_database):
    data_dir, url = shared_database
    repo = Repository(data_dir, None if url == "-" else url)
    try:
        assert repo.acquire_lease("trainer", "first", 60)
        proc = subprocess.run(
            [sys.executable, str(HOLDER_SCRIPT), str(data_dir), url, "trainer", "second", "60"],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (proc.returncode, proc.stdout.strip()) == (3, "busy")
        assert repo.lease_holder("trainer")[0] == "first"
    finally:
        repo.close()


def test_threads_with_their_own_repositories_race_and_one_wins(shared_database):
    """Round 1 races on inserting the lease's first row, round 2 on updating an expired one."""
    data_dir, url = shared_database
    repos = [Repository(data_dir, None if url == "-" else url) for _ in range(4)]
    try:
        for round_ttl in (0.5, 60):
            winners: list[int] = []

            def contend(i: int, ttl: float = round_ttl) -> None:
                if repos[i % 4].acquire_lease("trainer", f"holder-{i}", ttl):
                    winners.append(i)

            assert run_threads(contend, 8, timeout=60) == []
            assert len(winners) == 1
            assert repos[0].lease_holder("trainer")[0] == f"holder-{winners[0]}"
            if round_ttl < 1:
                time.sleep(0.6)  # let round 1's lease expire
    finally:
        for r in repos:
            r.close()


def test_a_fence_names_the_current_holder_and_generation(repo):
    assert repo.fence("trainer", "a") is None  # never taken
    assert repo.acquire_lease("trainer", "a", 60)
    first = repo.fence("trainer", "a")
    assert first is not None and (first.name, first.holder) == ("trainer", "a")
    assert repo.acquire_lease("trainer", "a", 120)  # an extension by the holder is no hand-over
    assert repo.fence("trainer", "a") == first
    assert repo.fence("trainer", "b") is None
    repo.release_lease("trainer", "a")
    assert repo.fence("trainer", "a") is None
    assert repo.acquire_lease("trainer", "b", 60)
    assert repo.fence("trainer", "b").generation == first.generation + 1


def test_a_stale_fence_writes_no_adapter_and_promotes_nothing(repo):
    from storage import LeaseLostError

    assert repo.acquire_lease("trainer", "a", 60)
    fence_a = repo.fence("trainer", "a")
    kwargs = dict(parent_version=None, objective="discounted", hyperparams={}, votes_used=1, metrics={})
    v1 = repo.register_adapter(b"by a", fence=fence_a, **kwargs)
    repo.set_adapter_status(v1.version, "live", fence=fence_a)
    repo.release_lease("trainer", "a")
    assert repo.acquire_lease("trainer", "b", 60)  # b takes over, e.g. after a's lease ran out mid-guard
    with pytest.raises(LeaseLostError):
        repo.register_adapter(b"late by a", fence=fence_a, **kwargs)
    v2 = repo.register_adapter(b"by b", fence=repo.fence("trainer", "b"), **kwargs)
    with pytest.raises(LeaseLostError):
        repo.set_adapter_status(v2.version, "live", fence=fence_a)
    assert [a.version for a in repo.list_adapters()] == [1, 2] and repo.live_adapter().version == 1
    repo.release_lease("trainer", "b")
    assert repo.acquire_lease("trainer", "a", 60)  # a holds it again, but at a new generation
    with pytest.raises(LeaseLostError):
        repo.set_adapter_status(v2.version, "live", fence=fence_a)
    repo.set_adapter_status(v2.version, "live", fence=repo.fence("trainer", "a"))
    assert repo.live_adapter().version == 2
