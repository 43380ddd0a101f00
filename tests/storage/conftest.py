"""Fixtures for the storage tests: repositories on in-memory SQLite, file SQLite and a real PostgreSQL server,
and a pair factory.

The PostgreSQL server is started once per test session (``tests/storage/postgres.py``); each test that uses it
gets a fresh database. Missing server binaries FAIL these tests (no skip): CI installs them.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from storage import Repository
from storage.models import Base

from tests.support.storage import generation
from .postgres import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on 127.0.0.1 for this test session."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    try:
        server.start()
    except PostgresUnavailable as e:
        server.stop()
        pytest.fail(str(e), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The SQLAlchemy URL of a new, empty PostgreSQL database."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def _shared_pg_url(postgres_server) -> str:
    """One database for the Repository suite, emptied before each test (cheaper than a database per test)."""
    return postgres_server.create_database()


def _empty_all_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            names = [f'"{t.name}"' for t in Base.metadata.sorted_tables]
            existing = connection.execute(text("SELECT count(*) FROM pg_tables WHERE tablename = 'vote'")).scalar()
            if existing:
                connection.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["memory", "file", "postgres"])
def repo(request, tmp_path):
    """The same API on in-memory SQLite (fast), a real file (what the studio uses) and PostgreSQL (scale-out)."""
    if request.param == "memory":
        repository = Repository.in_memory(tmp_path / "data")
    elif request.param == "file":
        repository = Repository(tmp_path / "data")
    else:
        url = request.getfixturevalue("_shared_pg_url")
        _empty_all_tables(url)
        repository = Repository(tmp_path / "data", url)
    yield repository
    repository.close()


@pytest.fixture
def file_repo(tmp_path):
    repository = Repository(tmp_path / "data")
    yield repository
    repository.close()


@pytest.fixture
def make_pair(repo):
    """Create a pair in ``repo``; each call gets its own seeds and image colours unless given."""
    counter = iter(range(1, 10_000))

    def make(prompt: str = "a large red circle on a blue background", **kwargs):
        n = next(counter)
        left = kwargs.pop("left", generation(seed=2 * n, color=(n % 256, 0, 0)))
        right = kwargs.pop("right", generation(seed=2 * n + 1, color=(0, n % 256, 0)))
        return repo.create_pair(prompt, left, right, **kwargs)

    return make
