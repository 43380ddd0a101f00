"""The worker kill campaign's short version (`benchmarks.worker_kills`): a worker SIGKILLed at random points of
its run never leaves a broken or missing live adapter, its run is closed as interrupted, and the next run
succeeds."""

from benchmarks.worker_kills import run


def test_killed_workers_leave_a_verified_live_adapter_and_the_next_run_succeeds(tmp_path):
    out = run(kills=3, pairs=6, train_steps=10, lease_ttl_s=120, seed=3, work_dir=tmp_path)
    assert out["failures"] == []
    assert out["kills"] == 3 and all(r["verified"] for r in out["rows"])
    assert all(r["live_after"] is not None for r in out["rows"])
    assert out["runs"].get("running", 0) == 0 and out["runs"]["succeeded"] >= 2
    # a kill while the model loads comes before any run row; every later kill leaves one run interrupted
    assert 0 < out["runs"].get("interrupted", 0) <= out["kills"]
    assert {r["phase"] for r in out["rows"]} >= {"loading", "training"}
