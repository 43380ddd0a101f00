"""benchmarks.flow_alignment, its short version on the tiny SD3: every variant trains and is judged."""

import math

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
