"""The alignment benchmark's pure parts: variant specs, pooling seeds into one interval, the fidelity rule."""

import pytest

from benchmarks.alignment import Variant, judge_eval, table


def test_a_variant_spec_becomes_trainer_overrides():
    cfg = Variant("discounted:gamma=0.8,lr=3e-3,eps=0.05,targets=to_q+conv1").trainer_config(seed=2)
    assert (cfg.objective, cfg.gamma, cfg.lr, cfg.log_ratio_clip, cfg.seed) == ("discounted", 0.8, 3e-3, 0.05, 2)
    assert cfg.target_modules == ("to_q", "conv1")
    assert Variant("trajectory").trainer_config(0).effective_gamma == 1.0


@pytest.mark.parametrize("spec", ["discounted:alpha=3", "discounted:gamma", "nonsense", "discounted:gamma=2"])
def test_bad_variant_specs_are_refused(spec):
    with pytest.raises(ValueError):
        Variant(spec).trainer_config(0)


def _row(seed, wins, ties, n, fb=0.9, fa=0.9):
    return {"labeler": "alignment.eval.labelers:larger", "variant": "discounted", "labels": 128, "seed": seed,
            "wins": wins, "ties": ties, "comparisons": n, "win_rate": (wins + ties / 2) / n,
            "fidelity_base": fb, "fidelity_aligned": fa, "promoted": fa >= fb - 0.05}


def test_the_table_pools_the_seeds_comparisons():
    text = table([_row(0, 90, 0, 100), _row(1, 70, 20, 100, fa=0.8)])
    line = next(x for x in text.splitlines() if "| larger |" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "2" and cells[4] == "0.850"  # (90 + 70 + 10) / 200
    assert cells[6] == "0.90 0.80" and cells[8] == "1/2"


def test_judge_eval_counts_wins_with_alternating_positions_and_scores_fidelity():
    from PIL import Image, ImageDraw

    from alignment.embedded.evaluate import held_out_cases
    from alignment.eval.labelers import larger

    def square(size, colour):
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        ImageDraw.Draw(im).rectangle([16 - size, 16 - size, 16 + size, 16 + size], fill=colour)
        return im

    cases = held_out_cases(sizes=(None,))[:2]
    seeds = [0, 1]
    base = [square(4, (200, 0, 0)) for _ in range(4)]
    aligned = [square(8, (200, 0, 0)) for _ in range(3)] + [square(2, (200, 0, 0))]
    r = judge_eval(larger, base, aligned, cases, seeds)
    assert (r["wins"], r["ties"], r["comparisons"]) == (3, 0, 4)
    assert r["win_rate"] == 0.75 and 0 <= r["ci_low"] < 0.75 < r["ci_high"] <= 1
    assert 0 <= r["fidelity_base"] <= 1 and r["promoted"] == (r["fidelity_aligned"] >= r["fidelity_base"] - 0.05)


def test_each_labeler_labels_the_same_sampled_pool():
    from PIL import Image, ImageDraw

    from alignment.eval.labelers import larger, smaller
    from alignment.eval.simulate import png as png_bytes
    from benchmarks.alignment import label_pool

    def square(size):
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        ImageDraw.Draw(im).rectangle([16 - size, 16 - size, 16 + size, 16 + size], fill=(200, 0, 0))
        return png_bytes(im)

    pool = [{"prompt": "a red square", "a": b"traj-a0", "b": b"traj-b0", "image_a": square(3), "image_b": square(8)},
            {"prompt": "a red square", "a": b"traj-a1", "b": b"traj-b1", "image_a": square(5), "image_b": square(5)}]
    big, small = label_pool(pool, larger), label_pool(pool, smaller)
    assert (big[0]["w"], big[0]["l"], big[0]["target"]) == (b"traj-b0", b"traj-a0", 1.0)
    assert (small[0]["w"], small[0]["l"], small[0]["target"]) == (b"traj-a0", b"traj-b0", 1.0)
    assert big[1]["target"] == small[1]["target"] == 0.5  # equal areas: a tie, kept with target 0.5
    assert pool[0]["a"] == b"traj-a0"  # the sampled pool itself is not changed by labeling
