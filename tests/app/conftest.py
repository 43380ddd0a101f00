"""Fixtures of the app tests: a Studio on a temporary data dir, with the shared embedded model when no adapter is
swapped in, or with a private pipeline when one is."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="gradio-tests-"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def studio(embedded, tmp_path):
    """A Studio without a worker on the shared embedded model; tests using it must not swap adapters."""
    from alignment.serving.sampler import Sampler
    from app.studio import Studio
    from storage import Repository

    s = Studio(Sampler(embedded), Repository(tmp_path / "data"))
    yield s
    s.close()


@pytest.fixture
def own_sampler():
    """A sampler on a private copy of the embedded model, for tests that hot-swap adapters (the studio's live model
    owns its pipeline from then on, so every test gets its own)."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler

    return Sampler(load_pipeline("embedded"))


@pytest.fixture
def swap_studio(own_sampler, tmp_path):
    """A Studio whose live model may swap adapters, with a (not started) worker."""
    from alignment.training.worker import Worker
    from settings import WorkerConfig
    from app.studio import Studio
    from storage import Repository

    repo = Repository(tmp_path / "data")
    s = Studio(own_sampler, repo, Worker(repo, "embedded", config=WorkerConfig(train_every=8)))
    yield s
    s.close()
