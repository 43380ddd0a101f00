"""A small quality check of the committed embedded model (the full evaluation is `alignment.embedded.evaluate`)."""

from alignment.embedded.analysis import analyze
from alignment.embedded.evaluate import held_out_cases, score
from alignment.serving.sampler import Sampler


def test_embedded_model_draws_the_prompted_colours(embedded):
    sampler = Sampler(embedded)
    cases = held_out_cases(sizes=(None,))[:8]
    images, expected = [], []
    for case in cases:
        images += [g.image for g in sampler.generate(case.prompt, [0, 1, 2, 3])]
        expected += [case] * 4
    result = score(images, expected)
    assert result["colour"] >= 0.75, result
    assert result["background"] >= 0.6, result


def test_large_is_larger_than_small(embedded):
    sampler = Sampler(embedded)
    bigger = 0
    for colour in ("red", "blue", "yellow", "purple"):
        small = sampler.generate(f"a small {colour} square on a white background", [5, 6])
        large = sampler.generate(f"a large {colour} square on a white background", [5, 6])
        bigger += sum(analyze(l.image).area > analyze(s.image).area for s, l in zip(small, large))
    assert bigger >= 7
