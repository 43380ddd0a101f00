"""Fixtures for the storage tests: repositories on in-memory and on file SQLite, and a pair factory."""

from __future__ import annotations

import pytest

from storage import Repository

from .helpers import generation



@pytest.fixture(params=["memory", "file"])
def repo(request, tmp_path):
    """The same API on in-memory SQLite (fast) and on a real file (what the studio uses)."""
    if request.param == "memory":
        repository = Repository.in_memory(tmp_path / "data")
    else:
        repository = Repository(tmp_path / "data")
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
