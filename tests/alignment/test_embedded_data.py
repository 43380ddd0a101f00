"""The procedural data generator, the caption grammar and the image analysis that reads shapes back."""

import random

import numpy as np
import pytest

from alignment.embedded.analysis import analyze
from alignment.embedded.data import (COLOURS, SHAPES, caption_for, draw, held_out_combinations, make_dataset,
                                     sample_spec)


def test_dataset_is_deterministic_per_seed():
    a, specs_a = make_dataset(64, seed=3)
    b, specs_b = make_dataset(64, seed=3)
    c, _ = make_dataset(64, seed=4)
    assert np.array_equal(a, b) and specs_a == specs_b
    assert not np.array_equal(a, c)
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8


def test_held_out_combinations_never_appear_in_training_data():
    held = held_out_combinations()
    _, specs = make_dataset(500, seed=0, exclude=held)
    assert held and not {(s.colour, s.shape, s.background) for s in specs} & held


def test_captions_use_both_articles_and_optional_parts():
    rng = random.Random(0)
    caps = [sample_spec(rng).caption(rng) for _ in range(400)]
    assert any(c.startswith("an ") for c in caps) and any(c.startswith("a ") for c in caps)
    assert any("background" in c for c in caps) and any("background" not in c for c in caps)
    assert any(c.split()[1] in ("small", "large") for c in caps)
    assert caption_for("orange", "circle", "large", "blue") == \
        "a large orange circle on a blue background"
    assert caption_for("orange", "square") == "an orange square"


def test_background_never_equals_shape_colour():
    with pytest.raises(ValueError):
        sample_spec(random.Random(0), colour="red", background="red")


@pytest.mark.parametrize("shape", SHAPES)
def test_analysis_reads_drawn_shapes_back(shape):
    rng = random.Random(1)
    hits = {"colour": 0, "background": 0, "shape": 0}
    for _ in range(40):
        spec = sample_spec(rng, shape=shape, size="large")
        r = analyze(draw(spec))
        hits["colour"] += r.colour == spec.colour
        hits["background"] += r.background == spec.background
        hits["shape"] += r.shape == spec.shape
    assert hits["colour"] == 40 and hits["background"] == 40
    assert hits["shape"] >= 38


def test_analysis_area_and_position_follow_the_drawing():
    small = analyze(draw(sample_spec(random.Random(2), colour="red", shape="circle", background="blue",
                                     size="small")))
    large = analyze(draw(sample_spec(random.Random(2), colour="red", shape="circle", background="blue",
                                     size="large")))
    assert large.area > 2 * small.area
    assert set(COLOURS) >= {small.colour, large.colour}
