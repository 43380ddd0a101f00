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


def test_the_embedded_flow_model_loads_by_name_and_draws_the_prompted_colours_and_sizes():
    from alignment.families.loader import load_pipeline
    from alignment.families.sd3 import text_length

    model = load_pipeline("embedded-flow")
    assert model.family.flow and model.is_embedded and text_length(model.pipe) == 8
    assert model.sampler_defaults["eta"] == 0.7 and model.sampler_defaults["steps"] == 20
    sampler = Sampler(model)
    cases = held_out_cases()[:8]  # four combinations, small and large
    images, expected = [], []
    for case in cases:
        images += [g.image for g in sampler.generate(case.prompt, [0, 1])]
        expected += [case] * 2
    result = score(images, expected)
    assert result["colour"] >= 0.75 and result["background"] >= 0.75, result
    areas = [analyze(im).area for im in images]
    small, large = areas[0::4] + areas[1::4], areas[2::4] + areas[3::4]
    assert sum(l > s for s, l in zip(small, large)) >= 7, (small, large)
