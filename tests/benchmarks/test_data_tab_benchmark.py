"""The short version of `benchmarks.data_tab`: it builds both layouts, times both queries and reports ratios; the
studio's query returns the same agreement whatever the layout costs."""

from __future__ import annotations

from benchmarks.data_tab import build, run


def test_the_data_tab_benchmark_reports_both_layouts(tmp_path):
    result = run(votes=24, repeats=1)
    assert set(result["annotator_stats_s"]) == {"spread", "one pair", "one vote"}
    assert all(t > 0 for t in result["annotator_stats_s"].values())
    assert result["one_pair_over_spread"] > 0 and result["self_join_one_pair_over_spread"] > 0


def test_one_pair_with_many_votes_has_every_annotator_compared(tmp_path):
    repo = build(tmp_path / "one", 12, one_pair=True)
    try:
        rows = repo.annotator_stats()["annotators"]
    finally:
        repo.close()
    judged = [r for r in rows if r["per_choice"]["skip"] == 0]
    assert len(rows) == 12 and all(r["comparisons"] == len(judged) - 1 for r in judged)
