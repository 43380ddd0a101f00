"""benchmarks.flow_alignment, its short version on the tiny SD3: every variant trains and is judged."""

import json
import math

import pytest

from benchmarks.flow_alignment import main
from tests.support.families import tiny_family


def test_the_short_benchmark_trains_every_variant_and_reports_win_rates_and_fidelity():
    rows = main(["--model", str(tiny_family("sd3")), "--labels", "4", "--seeds", "0", "--labelers", "larger",
                 "--train-steps", "2", "--steps", "4", "--cases", "2", "--eval-seeds", "1", "--noise-levels"])
    assert sorted(r["variant"] for r in rows) == ["diffusion-dpo", "discounted", "gamma1"]
    for r in rows:
        assert 0.0 <= r["ci_low"] <= r["win_rate"] <= r["ci_high"] <= 1.0 and r["comparisons"] == 2
        assert 0.0 <= r["fidelity_aligned"] <= 1.0 and math.isfinite(r["loss"])
    dense = [r for r in rows if r["variant"] != "diffusion-dpo"]
    assert all(abs(r["loss_first"] - math.log(2)) < 1e-6 for r in dense)


def row(variant, seed, wins, ties, labels=32):
    return {"kind": "alignment", "variant": variant, "labeler": "larger", "labels": labels, "seed": seed,
            "wins": wins, "ties": ties, "comparisons": 64, "win_rate": (wins + ties / 2) / 64,
            "fidelity_base": 0.96, "fidelity_aligned": 0.9 + seed / 100}


def test_the_summary_pools_the_seeds_comparisons_and_keeps_each_seeds_rate(tmp_path):
    from benchmarks.flow_alignment import markdown, read_rows, summarize

    rows = [row("gamma1", 1, 30, 4), row("discounted", 0, 40, 8), row("discounted", 1, 20, 0),
            {"kind": "noise_level", "eta": 0.7}, row("discounted", 0, 60, 0, labels=64)]
    summary = summarize(rows)
    assert [(r["labels"], r["variant"]) for r in summary] == [(32, "discounted"), (32, "gamma1"), (64, "discounted")]
    pooled = summary[0]
    assert pooled["seeds"] == [0, 1] and pooled["win_rate"] == (40 + 4 + 20) / 128
    assert pooled["per_seed"] == [44 / 64, 20 / 64] and pooled["fidelity_aligned"] == pytest.approx(0.905)
    assert pooled["ci_low"] < pooled["win_rate"] < pooled["ci_high"]
    table = markdown(summary)
    assert "| larger | 32 | 0.500 [" in table and "(0.69/0.31)" in table
    with pytest.raises(ValueError, match="a seed appears twice"):
        summarize(rows + [row("gamma1", 1, 1, 1)])
    log = tmp_path / "run.log"
    log.write_text("[transformers] a warning\n" + "\n".join(json.dumps(r) for r in rows) + "\nLoading 100%\n")
    assert read_rows(log) == rows
    log.write_text('{"kind": "alignment", \n')
    with pytest.raises(SystemExit, match="not JSON"):
        read_rows(log)
