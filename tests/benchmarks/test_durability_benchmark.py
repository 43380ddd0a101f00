"""The durability benchmark's short version: both settings really apply, and every vote is timed."""

from benchmarks.durability import measure


def test_durability_benchmark_times_each_setting_on_its_own_pragma(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = measure(votes=5)
    assert out["votes"] == 5
    for mode in ("full", "normal"):
        assert 0 < out[f"{mode}_p50_ms"] <= out[f"{mode}_p95_ms"]
    assert out["full_vs_normal_p50"] == out["full_p50_ms"] / out["normal_p50_ms"]
    assert list(tmp_path.iterdir()) == []  # the temporary repositories are gone
