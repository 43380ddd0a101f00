"""Short versions of the labeling benchmarks: the labeling latency (idle and while a worker trains) and the
click-to-effect time with its breakdown, at tiny sizes, checked for what they report."""

import pytest

from benchmarks import click_to_effect, labeling

TINY_GUARD = {"fidelity_seeds": (1000, 1001, 1002, 1003), "fidelity_prompts": 1}


def test_labeling_while_training_counts_only_votes_cast_during_a_run(tmp_path):
    r = labeling.label_session(2, 4, (0.0, 0.05), tmp_path / "d", sampling_wait_s=5.0, batch=2)
    assert r["training"] and r["votes"] == 4 and r["sampling_wait_s"] == 5.0 and r["batch"] == 2
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"] and 0 <= r["ready_share"] <= 1
    assert r["labels_per_minute"] > 0 and r["pairs_stored"] >= 8 + 4  # the 8 votes the runs train on, then 4
    assert 0 < r["make_pair_p50_ms"] <= r["make_pair_p95_ms"]


# A first start's run renders the guard's base itself (the worker tests cover that); the restarted studio's
# short run also renders the base ahead (warm_guard) and reads it back, so it alone is in the default run.
@pytest.mark.parametrize("restarted", [pytest.param(False, marks=pytest.mark.slow), True])
def test_click_to_effect_splits_the_time_from_the_trigger_to_the_first_pair_of_the_new_version(tmp_path,
                                                                                               restarted):
    trainer, worker = click_to_effect.parse_config("train_steps=3,lr=1e-5,train_every=3,min_votes=3,"
                                                   "fidelity_seeds=4,fidelity_prompts=1,sampling_wait_s=0.3")
    assert trainer == {"train_steps": 3, "lr": 1e-5} and worker["fidelity_seeds"] == (1_500_000_000, 1_500_000_001,
                                                                                      1_500_000_002, 1_500_000_003)
    r = click_to_effect.one_config("tiny", trainer, worker, "alignment.eval.labelers:larger", (0.5, 1.0),
                                   tmp_path / "d", max_s=300, restarted=restarted)
    assert r["status"] == "live" and "error" not in r, r
    entries = list((tmp_path / "d" / "cache" / "guard-base").iterdir())
    assert len(entries) == 2  # the base images of both seed sets, on disk for the next start
    phases = r["phases_s"]
    assert list(phases) == list(click_to_effect.PHASE_NAMES) and all(v >= 0 for v in phases.values())
    assert sum(phases.values()) == pytest.approx(r["click_to_effect_s"], abs=0.05)
    assert r["steps"] == 3 and r["votes_used"] >= 3  # the trigger's three votes, or more
    assert 1 <= r["pairs_trained"] <= r["votes_used"]  # a tie (equal areas, to the labeler) is not trained on
    with pytest.raises(SystemExit, match="unknown setting"):
        click_to_effect.parse_config("no_such_setting=1")
    assert click_to_effect.parse_config("warm_guard=false,pair_epochs=1e5") == ({"pair_epochs": 1e5},
                                                                               {"warm_guard": False})
    with pytest.raises(SystemExit, match="true or false"):
        click_to_effect.parse_config("warm_guard=0")
