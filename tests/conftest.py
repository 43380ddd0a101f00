"""Shared test setup: offline hub, quiet Gradio, one shared copy of the embedded model per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedded():
    """The committed embedded model, loaded once (tests must not change its weights in place)."""
    from alignment.families.loader import load_pipeline

    return load_pipeline("embedded")
