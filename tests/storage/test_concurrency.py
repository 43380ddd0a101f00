"""Concurrent voters on one SQLite file, and a writer process killed with SIGKILL mid-stream."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from storage import Repository

from tests.support.storage import generation
from tests.support.storage import run_threads, stop_process

THREADS = 8
VOTES_PER_THREAD = 200
WRITER = Path(__file__).with_name("vote_writer.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _make_pairs(repo: Repository, n: int) -> list[int]:
    left, right = generation(seed=1, color=(1, 0, 0)), generation(seed=2, color=(0, 1, 0))
    return [repo.create_pair("one prompt for all", left, right).id for _ in range(n)]


def test_eight_threads_vote_on_one_file_each_vote_stored_once(file_repo):
    pair_ids = _make_pairs(file_repo, VOTES_PER_THREAD)
    results: dict[int, list] = {}

    def vote_all(t: int) -> None:
        results[t] = [
            file_repo.record_vote(pid, f"annotator-{t}", ("left", "right", "tie")[(pid + t) % 3]) for pid in pair_ids
        ]

    assert run_threads(vote_all, THREADS) == []  # no "database is locked", no other error
    assert all(created for rs in results.values() for _, created in rs)
    counts = file_repo.counts()
    assert counts["votes"] == THREADS * VOTES_PER_THREAD
    assert counts["per_annotator"] == {f"annotator-{t}": VOTES_PER_THREAD for t in range(THREADS)}
    assert len({vote.id for rs in results.values() for vote, _ in rs}) == THREADS * VOTES_PER_THREAD


def test_eight_threads_racing_on_the_same_votes_store_each_once(file_repo):
    pair_ids = _make_pairs(file_repo, VOTES_PER_THREAD)
    results: dict[int, list] = {}

    def vote_all(t: int) -> None:
        results[t] = [file_repo.record_vote(pid, "shared", ("left", "right", "tie")[t % 3]) for pid in pair_ids]

    assert run_threads(vote_all, THREADS) == []
    assert file_repo.counts()["votes"] == VOTES_PER_THREAD
    for i in range(VOTES_PER_THREAD):
        answers = [results[t][i] for t in range(THREADS)]
        assert sum(created for _, created in answers) == 1  # exactly one thread stored it
        assert len({vote for vote, _ in answers}) == 1  # everyone got back that same first vote


def _read_acks(process: subprocess.Popen, n: int) -> list[int]:
    acks = []
    while len(acks) < n:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"writer exited early: {process.stderr.read()}")
        acks.append(int(line))
    return acks


def test_writer_killed_mid_stream_loses_no_acknowledged_vote(tmp_path):
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    acknowledged: list[int] = []
    for round_, kill_after in enumerate((25, 40, 60)):  # three kills at different points, same database
        process = subprocess.Popen(
            [sys.executable, str(WRITER), str(data_dir), str(1000 * round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            acknowledged += _read_acks(process, kill_after)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            # Acks printed between our last read and the kill count too: the writer had confirmed them.
            acknowledged += [int(line) for line in process.stdout.read().split()]
        finally:
            stop_process(process)
        assert process.returncode == -signal.SIGKILL

    with sqlite3.connect(data_dir / "studio.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with Repository(data_dir) as repo:
        voted = {lp.pair_id for lp in repo.labeled_pairs(annotators=["writer"])}
        assert set(acknowledged) <= voted
        assert len(voted) <= len(acknowledged) + 3  # at most one committed-but-unprinted vote per kill
        assert repo.missing_blobs() == []
        for blob_hash in repo.blobs.hashes():  # nothing partial under a real name
            assert hashlib.sha256(repo.blobs.path(blob_hash).read_bytes()).hexdigest() == blob_hash
