"""Engine settings, migrations and the constraints that live in the schema itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from storage import Repository, make_engine, upgrade_to_head
from storage.db import alembic_config, current_revision, head_revision
from storage.models import Base
from tests.support.storage import run_threads

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAD = head_revision()


def test_sqlite_pragmas_are_set_on_every_connection(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        connections = [engine.connect() for _ in range(3)]  # three distinct pooled connections
        for connection in connections:
            pragmas = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
            assert pragmas == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1, "synchronous": 2}
        for connection in connections:
            connection.close()
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "file"])
def test_upgrade_of_empty_database_matches_the_models(tmp_path, url):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}" if url == "file" else url)
    try:
        assert current_revision(engine) is None
        upgrade_to_head(engine)
        upgrade_to_head(engine)  # a second start finds nothing to do
        assert current_revision(engine) == HEAD
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        upgrade_to_head(engine)
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade_to_head(engine)
        assert current_revision(engine) == HEAD
    finally:
        engine.dispose()


def test_upgrade_from_the_first_revision_keeps_rows_and_adds_the_lease_table(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
            connection.execute(text("INSERT INTO prompt (text) VALUES ('kept')"))
        assert "worker_lease" not in inspect(engine).get_table_names()
        upgrade_to_head(engine)
        assert current_revision(engine) == HEAD
        assert "worker_lease" in inspect(engine).get_table_names()
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0001")
            assert connection.execute(text("SELECT text FROM prompt")).scalars().all() == ["kept"]
        assert "worker_lease" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_upgrade_from_0002_keeps_adapters_and_leases_and_allows_rolled_back(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0002")
            connection.execute(text(
                "INSERT INTO adapter (version, file_hash, objective, hyperparams, votes_used, metrics, status) "
                "VALUES (1, 'h', 'discounted', '{}', 3, '{}', 'retired')"))
            connection.execute(text(
                "INSERT INTO worker_lease (name, holder, expires_at, acquired_at, heartbeat) "
                "VALUES ('trainer', 'a', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
            with pytest.raises(IntegrityError):  # 0002 does not know the status yet
                with connection.begin_nested():
                    connection.execute(text("UPDATE adapter SET status = 'rolled_back'"))
        upgrade_to_head(engine)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT generation FROM worker_lease")).scalar_one() == 1
            connection.execute(text("UPDATE adapter SET status = 'rolled_back'"))
            assert connection.execute(text("SELECT status, votes_used FROM adapter")).one() == ("rolled_back", 3)
            with pytest.raises(IntegrityError):  # the CHECK constraint is still there
                with connection.begin_nested():
                    connection.execute(text("UPDATE adapter SET status = 'deleted'"))
    finally:
        engine.dispose()


def test_repository_migrates_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Repository("relative-data") as repo:
        assert current_revision(repo.engine) == HEAD
    assert (tmp_path / "relative-data" / "studio.db").is_file()
    assert (tmp_path / "relative-data" / "blobs").is_dir()


def _insert(connection, sql: str, **params) -> None:
    connection.execute(text(sql), params)


def test_schema_enforces_choices_uniqueness_and_foreign_keys(file_repo):
    """The rules hold for any client of the database, not only for code that goes through Repository."""
    engine = file_repo.engine
    with engine.begin() as c:
        _insert(c, "INSERT INTO prompt (id, text) VALUES (1, 'p')")
        for gid in (1, 2):
            _insert(
                c,
                "INSERT INTO generation (id, prompt_id, seed, model_id, sampler_settings, image_hash) "
                "VALUES (:id, 1, 0, 'm', '{}', :h)",
                id=gid,
                h=str(gid) * 64,
            )
        _insert(c, "INSERT INTO pair (id, prompt_id, left_generation_id, right_generation_id) VALUES (1, 1, 1, 2)")
        _insert(c, "INSERT INTO vote (pair_id, annotator, choice) VALUES (1, 'a', 'left')")

    bad_statements = [
        "INSERT INTO vote (pair_id, annotator, choice) VALUES (1, 'b', 'maybe')",  # CHECK choice
        "INSERT INTO vote (pair_id, annotator, choice) VALUES (1, 'a', 'right')",  # UNIQUE (pair, annotator)
        "INSERT INTO vote (pair_id, annotator, choice) VALUES (99, 'a', 'left')",  # FOREIGN KEY pair
        "INSERT INTO vote (pair_id, annotator, choice) VALUES (1, '', 'left')",  # empty annotator
        "INSERT INTO pair (prompt_id, left_generation_id, right_generation_id) VALUES (1, 1, 1)",  # same image twice
        "INSERT INTO generation (prompt_id, model_id, sampler_settings, image_hash, adapter_version) "
        "VALUES (1, 'm', '{}', 'h', 7)",  # FOREIGN KEY adapter
        "INSERT INTO adapter (version, file_hash, objective, hyperparams, votes_used, metrics, status) "
        "VALUES (1, 'h', 'o', '{}', 0, '{}', 'golden')",  # CHECK status
    ]
    for sql in bad_statements:
        with pytest.raises(IntegrityError):
            with engine.begin() as c:
                _insert(c, sql)

    with engine.begin() as c:
        for version in (1, 2):
            _insert(
                c,
                "INSERT INTO adapter (version, file_hash, objective, hyperparams, votes_used, metrics) "
                "VALUES (:v, 'h', 'o', '{}', 0, '{}')",
                v=version,
            )
        c.execute(text("UPDATE adapter SET status = 'live' WHERE version = 1"))
    with pytest.raises(IntegrityError):  # partial unique index: one live adapter at most
        with engine.begin() as c:
            c.execute(text("UPDATE adapter SET status = 'live' WHERE version = 2"))
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM vote")).scalar() == 1


def test_storage_imports_no_torch_and_no_gradio():
    code = (
        "import sys, storage, storage.repository, storage.export, storage.blobs, storage.db; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'gradio')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_simultaneous_first_starts_migrate_once(tmp_path):
    """Several processes (here: engines, each with its own connections) opening a new data dir at once."""
    repos = []
    errors = run_threads(lambda _: repos.append(Repository(tmp_path / "data")), 4, timeout=60)
    assert errors == [] and len(repos) == 4
    assert {current_revision(r.engine) for r in repos} == {HEAD}
    for r in repos:
        r.close()
