"""Fixtures for the alignment tests: fresh samplers and a few labeled pairs from the embedded model."""

from __future__ import annotations

import pytest

from alignment.eval.labelers import larger
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.training.trainer import TrainingPair


@pytest.fixture
def fresh_sampler():
    """A sampler over its own pipeline copy (tests may swap adapters on it)."""
    return Sampler(load_pipeline("embedded"))


@pytest.fixture(scope="session")
def labeled_pairs(embedded):
    """Eight pairs of the embedded model judged by the 'larger shape' labeler (ties skipped)."""
    sampler = Sampler(embedded)
    prompts = ["a large red circle on a blue background", "a small green square", "a yellow triangle",
               "a purple circle on a white background", "a blue square on an orange background",
               "a black triangle on a yellow background", "an orange circle", "a white square on a red background",
               "a small red triangle on a green background", "a large blue circle"]
    pairs = []
    for i, p in enumerate(prompts):
        a, b = sampler.generate_pair(p, (10 * i, 10 * i + 1))
        choice = larger(a.image, b.image, p)
        if choice is not None:
            w, l = (a, b) if choice == 0 else (b, a)
            pairs.append(TrainingPair(p, w.trajectory, l.trajectory))
    return pairs[:8]
