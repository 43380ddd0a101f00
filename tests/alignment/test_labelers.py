"""Programmatic labelers on drawn shapes, the noisy-human wrapper and plug-in loading."""

import random

import pytest

from alignment.embedded.data import ShapeSpec, draw
from alignment.eval.labelers import (LabelerError, centered, judge, larger, load_labeler, lower, noisy, saturated,
                                smaller)


def img(radius=5.0, cx=16.0, cy=16.0, colour="red", bg="white"):
    return draw(ShapeSpec(colour, "circle", bg, "small", radius, cx, cy))


def test_size_position_and_colour_preferences():
    assert larger(img(4), img(10), "p") == 1 and larger(img(10), img(4), "p") == 0
    assert smaller(img(4), img(10), "p") == 0
    assert centered(img(cx=16, cy=16), img(cx=8, cy=8), "p") == 0
    assert lower(img(cy=8), img(cy=24), "p") == 1
    assert saturated(img(colour="white", bg="blue"), img(colour="red", bg="blue"), "p") == 1
    assert larger(img(6), img(6), "p") is None  # identical images are a tie


def test_noisy_human_agrees_at_the_given_rate():
    human = noisy(larger, 0.8, seed=1)
    a, b = img(4), img(10)
    agree = sum(human(a, b, "p") == 1 for _ in range(1000))
    assert 760 <= agree <= 840
    with pytest.raises(ValueError):
        noisy(larger, 0.3)


def test_labelers_load_from_module_function_strings():
    assert load_labeler("alignment.eval.labelers:larger") is larger
    assert load_labeler("tests.alignment.test_labelers:quirky")(img(), img(), "p") in (0, 1)
    with pytest.raises(LabelerError):
        load_labeler("alignment.eval.labelers:nope")
    with pytest.raises(LabelerError):
        load_labeler("no_such_module:f")


def quirky(a, b, prompt):
    """A plug-in labeler defined outside the package."""
    return random.Random(len(prompt)).randint(0, 1)


def test_misbehaving_labelers_get_a_clear_error():
    with pytest.raises(LabelerError, match="returned 'left'"):
        judge(lambda a, b, p: "left", img(), img(), "p")
    with pytest.raises(LabelerError, match="raised ZeroDivisionError"):
        judge(lambda a, b, p: 1 / 0, img(), img(), "p")


def test_parse_caption_reads_every_grammar_form():
    from alignment.embedded.data import caption_for, parse_caption

    assert parse_caption(caption_for("red", "circle", "large", "blue")) == {
        "size": "large", "colour": "red", "shape": "circle", "background": "blue"}
    assert parse_caption("an orange triangle") == {"colour": "orange", "shape": "triangle"}
    assert parse_caption("a photo of a cat") == {}


def test_faithful_prefers_what_was_asked_for_then_defers():
    from alignment.eval.labelers import faithful_larger

    prompt = "a red circle on a white background"
    right_small, wrong_big = img(4, colour="red"), img(10, colour="blue")
    assert larger(right_small, wrong_big, prompt) == 1  # the bare labeler takes the big wrong one
    assert faithful_larger(right_small, wrong_big, prompt) == 0
    assert faithful_larger(wrong_big, right_small, prompt) == 1
    assert faithful_larger(img(4), img(10), prompt) == 1  # both faithful: the larger
    assert load_labeler("faithful_larger") is faithful_larger
