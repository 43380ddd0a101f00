"""benchmarks.transfer: the final weights judged on the training prompts and on the evaluation prompts."""

import json

import pytest
from PIL import Image, ImageDraw

from alignment.eval.splits import (
    EVAL_SEED_BASE,
    EVAL_SEEDS_PER_RUN,
    TRAINING_SEED_STRIDE,
    TRANSFER_SEED_BASE,
)
from benchmarks.transfer import area_change, main
from settings import GUARD_SELECTION_SEED_BASE


def square(half: int) -> Image.Image:
    im = Image.new("RGB", (32, 32), (255, 255, 255))
    ImageDraw.Draw(im).rectangle([16 - half, 16 - half, 16 + half, 16 + half], fill=(220, 30, 30))
    return im


def test_the_area_change_is_aligned_minus_base_per_pair():
    base, aligned = [square(4), square(8)], [square(8), square(8)]
    change = area_change(base, aligned)
    assert change > 0 and area_change(aligned, base) == -change  # one pair grew, one stayed
    assert area_change([square(5)], [square(5)]) == 0


def test_the_transfer_seeds_are_used_by_no_other_purpose():
    last_eval_seed = EVAL_SEED_BASE + EVAL_SEEDS_PER_RUN * 999 + EVAL_SEEDS_PER_RUN - 1
    assert last_eval_seed < TRANSFER_SEED_BASE < GUARD_SELECTION_SEED_BASE - 1000
    assert TRAINING_SEED_STRIDE * 13_999 + TRAINING_SEED_STRIDE <= TRANSFER_SEED_BASE


def test_a_tiny_run_judges_three_sets(tmp_path):
    main(["--labelers", "larger", "--seeds", "1", "--trainer-seeds", "5", "--labels", "2", "--eval-seeds", "1",
          "--variant", "discounted:steps=2,ckpt=1", "--out", str(tmp_path)])
    (line,) = (tmp_path / "results.jsonl").read_text().splitlines()
    r = json.loads(line)
    assert (r["labeler"], r["seed"], r["trainer_seed"], r["labels"]) == ("alignment.eval.labelers:larger", 1, 5, 2)
    trained = r["training prompts"]
    assert trained["comparisons"] <= 2 and "fidelity_base" not in trained  # two pairs: at most two prompts
    for key in ("eval prompts, own seeds", "eval prompts, other seeds"):
        assert r[key]["comparisons"] == 8 and 0 <= r[key]["fidelity_aligned"] <= 1
        assert 0 <= r[key]["win_rate"] <= 1 and isinstance(r[key]["area_change"], float)


def test_trainer_seeds_must_pair_with_the_run_seeds(tmp_path):
    with pytest.raises(SystemExit, match="one seed per run seed"):
        main(["--seeds", "1", "3", "--trainer-seeds", "1", "--out", str(tmp_path)])
    assert not (tmp_path / "results.jsonl").exists()


def test_the_mean_of_kept_adapters_is_judged_without_training(tmp_path):
    main(["--labelers", "larger", "--seeds", "1", "1", "--trainer-seeds", "5", "6", "--labels", "2", "--eval-seeds",
          "1", "--variant", "discounted:steps=2,ckpt=1", "--out", str(tmp_path)])
    assert len(list((tmp_path / "adapters").glob("*.pt"))) == 2
    main(["--labelers", "larger", "--seeds", "1", "--labels", "2", "--eval-seeds", "1", "--variant",
          "discounted:steps=2,ckpt=1", "--mean-of", "5,6", "--out", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["trainer_seed"] for r in rows] == [5, 6, "mean(5,6)"] and "train_accuracy" not in rows[2]
    assert rows[2]["eval prompts, own seeds"]["comparisons"] == 8
    for group, message in (("5,7", "no kept adapter"), ("5", "two or more"), ("5,5", "two or more"),
                           ("5,x", "comma-separated")):
        with pytest.raises(SystemExit, match=message):
            main(["--labelers", "larger", "--seeds", "1", "--labels", "2", "--mean-of", group, "--out",
                  str(tmp_path)])
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
