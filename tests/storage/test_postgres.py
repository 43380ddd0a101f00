"""PostgreSQL specifics: the engine, clear errors for unreachable databases, reconnecting after the server drops
connections, and two processes writing pairs and votes into one database at once (every vote stored once).

The Repository suite itself also runs on PostgreSQL (the ``postgres`` parameter of the ``repo`` fixture), and
the lease tests run their multi-process cases on it (``test_leases.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from storage import DatabaseUnavailableError, InvalidDatabaseUrlError, Repository, make_engine, upgrade_to_head
from storage.db import connect, current_revision, head_revision

from tests.support.storage import generation, run_threads
from .postgres import free_port

VOTER = Path(__file__).with_name("voter.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_postgres_engine_pings_and_gets_no_sqlite_settings(pg_url):
    engine = make_engine(pg_url)
    try:
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        assert engine.pool._pre_ping is True
        upgrade_to_head(engine)
        assert current_revision(engine) == head_revision()
        with connect(engine) as c:
            assert c.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_an_unreachable_server_gives_a_clear_error_with_the_password_masked(tmp_path):
    url = f"postgresql+psycopg://studio:s3cret-pw@127.0.0.1:{free_port()}/studio"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        Repository(tmp_path / "data", url)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "postgresql+psycopg://studio:***@127.0.0.1:" in message and "/studio" in message
    assert "cannot connect" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no deep driver chain
    assert time.monotonic() - started < 15


def test_wrong_database_name_and_missing_sqlite_folder_are_unavailable(postgres_server, tmp_path):
    with pytest.raises(DatabaseUnavailableError, match="no_such_db"):
        Repository(tmp_path / "data", postgres_server.url("no_such_db", password="pw"))
    engine = make_engine(f"sqlite:///{tmp_path / 'missing-folder' / 'studio.db'}")
    try:
        with pytest.raises(DatabaseUnavailableError, match="missing-folder"):
            upgrade_to_head(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "words"),
    [("not a url", "not a database URL"), ("nosuchdialect://x/y", "not installed"), ("", "non-empty")],
)
def test_malformed_urls_are_refused_before_connecting(tmp_path, url, words):
    with pytest.raises(InvalidDatabaseUrlError, match=words):
        Repository(tmp_path / "data", url)


def test_connections_dropped_by_the_server_are_replaced_transparently(postgres_server, pg_url, tmp_path):
    with Repository(tmp_path / "data", pg_url) as repo:
        pair = repo.create_pair("before the drop", generation(seed=1), generation(seed=2, color=(0, 0, 255)))
        dbname = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.url().replace("+psycopg", ""), autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchone()[0]
        assert dropped >= 1  # the repository's pooled connection was killed
        vote, created = repo.record_vote(pair.id, "after-drop", "left")
        assert created and repo.counts()["votes"] == 1


def test_two_processes_writing_at_once_store_every_vote_once(pg_url, tmp_path):
    data_dir = tmp_path / "data"
    with Repository(data_dir, pg_url) as repo:
        pair_ids = [
            repo.create_pair(f"prompt {i}", generation(seed=i), generation(seed=i + 1000, color=(0, i, 0))).id
            for i in range(40)
        ]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ids = ",".join(map(str, pair_ids))
    procs = [
        subprocess.Popen(
            [sys.executable, str(VOTER), str(data_dir), pg_url, name, str(go), ids, "10"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in ("studio-a", "studio-b")
    ]
    time.sleep(1.0)  # both import and connect, then start together
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out))

    with Repository(data_dir, pg_url) as repo:
        counts = repo.counts()
        shared_acks = results[0]["acknowledged"]["shared"] + results[1]["acknowledged"]["shared"]
        assert sorted(shared_acks) == sorted(set(shared_acks)) and len(shared_acks) == 40  # each acked once
        assert counts["per_annotator"] == {"shared": 40, "studio-a": 40, "studio-b": 40}
        assert counts["votes"] == 120 and counts["pairs"] == 40 + 20
        for result in results:
            for pid in result["created_pairs"]:
                assert repo.get_pair(pid).prompt.startswith("race prompt ")
        with repo.engine.connect() as c:
            prompt_rows = c.execute(text("SELECT count(*) FROM prompt WHERE text LIKE 'race prompt %'")).scalar()
            duplicates = c.execute(
                text("SELECT count(*) FROM (SELECT pair_id, annotator FROM vote GROUP BY 1, 2 HAVING count(*) > 1) d")
            ).scalar()
        assert prompt_rows == 10 and duplicates == 0  # the racing prompt inserts made one row per text


def test_simultaneous_first_starts_on_one_new_database_migrate_once(pg_url, tmp_path):
    """Two app processes and a worker starting together against an empty PostgreSQL database."""
    repos = []
    errors = run_threads(lambda i: repos.append(Repository(tmp_path / f"data-{i}", pg_url)), 4, timeout=60)
    try:
        assert errors == [] and len(repos) == 4
        assert {current_revision(r.engine) for r in repos} == {head_revision()}
    finally:
        for r in repos:
            r.close()
