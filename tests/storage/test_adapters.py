"""Adapter versions and status, training runs, blind A/B trials."""

from __future__ import annotations

import pytest

from storage import (
    InvalidAnnotatorError,
    InvalidChoiceError,
    InvalidMetadataError,
    InvalidPromptError,
    InvalidStatusError,
    UnknownAdapterError,
    UnknownTrainingRunError,
)


def _register(repo, data: bytes = b"lora weights", parent=None, **overrides):
    kwargs = dict(
        parent_version=parent,
        objective="dense_dpo",
        hyperparams={"gamma": 0.9, "beta": 10.0, "rank": 4},
        votes_used=12,
        metrics={"loss": 0.61},
    )
    kwargs.update(overrides)
    return repo.register_adapter(data, **kwargs)


def test_register_assigns_consecutive_versions_and_stores_the_file(repo):
    first = _register(repo, b"v1")
    second = _register(repo, b"v2", parent=1)
    assert (first.version, second.version) == (1, 2)
    assert (first.status, second.parent_version) == ("candidate", 1)
    assert first.hyperparams == {"gamma": 0.9, "beta": 10.0, "rank": 4} and first.votes_used == 12
    assert repo.read_blob(second.file_hash) == b"v2"
    assert repo.get_adapter(2) == second
    assert repo.list_adapters() == [first, second]
    assert repo.live_adapter() is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"metrics": {"loss": float("nan")}},
        {"hyperparams": ["not", "a", "dict"]},
        {"votes_used": -1},
        {"objective": ""},
    ],
)
def test_register_rejects_bad_metadata_and_writes_nothing(repo, overrides):
    with pytest.raises(InvalidMetadataError):
        _register(repo, **overrides)
    assert repo.list_adapters() == [] and list(repo.blobs.hashes()) == []


def test_register_with_unknown_parent(repo):
    with pytest.raises(UnknownAdapterError):
        _register(repo, parent=5)
    assert repo.list_adapters() == []


def test_making_an_adapter_live_retires_the_previous_one(repo):
    for i in range(3):
        _register(repo, f"v{i}".encode())
    assert repo.set_adapter_status(1, "live").status == "live"
    assert repo.live_adapter().version == 1
    repo.set_adapter_status(2, "live", reason="won A/B")
    statuses = {a.version: (a.status, a.status_reason) for a in repo.list_adapters()}
    assert statuses == {1: ("retired", "replaced by version 2"), 2: ("live", "won A/B"), 3: ("candidate", None)}
    repo.set_adapter_status(3, "rejected", reason="fidelity guard: drift 0.4 > 0.2")
    repo.set_adapter_status(1, "live", reason="roll back")  # any earlier version can come back
    assert [a.version for a in repo.list_adapters() if a.status == "live"] == [1]
    assert repo.set_adapter_status(1, "live").status == "live"  # already live: no change


def test_adapter_status_errors(repo):
    _register(repo)
    with pytest.raises(InvalidStatusError):
        repo.set_adapter_status(1, "golden")
    with pytest.raises(UnknownAdapterError):
        repo.set_adapter_status(9, "live")
    with pytest.raises(UnknownAdapterError):
        repo.get_adapter(9)
    assert repo.get_adapter(1).status == "candidate"


def test_training_run_lifecycle(repo):
    run_id = repo.start_training_run({"gamma": 0.9, "steps": 100})
    adapter = _register(repo)
    finished = repo.finish_training_run(run_id, "succeeded", metrics={"loss": 0.5}, adapter_version=adapter.version)
    assert finished.status == "succeeded" and finished.adapter_version == 1
    assert finished.config == {"gamma": 0.9, "steps": 100}
    assert finished.finished_at >= finished.started_at
    failed_id = repo.start_training_run({})
    repo.finish_training_run(failed_id, "failed", error="loss is NaN at step 3")
    runs = repo.list_training_runs()
    assert [(r.id, r.status) for r in runs] == [(failed_id, "failed"), (run_id, "succeeded")]
    assert runs[0].error == "loss is NaN at step 3" and runs[0].metrics is None
    assert len(repo.list_training_runs(limit=1)) == 1


def test_training_run_errors(repo):
    run_id = repo.start_training_run({})
    with pytest.raises(InvalidStatusError):
        repo.finish_training_run(run_id, "running")
    with pytest.raises(UnknownTrainingRunError):
        repo.finish_training_run(run_id + 1, "failed")
    with pytest.raises(UnknownAdapterError):
        repo.finish_training_run(run_id, "succeeded", adapter_version=4)
    with pytest.raises(InvalidMetadataError):
        repo.start_training_run({"lr": float("inf")})
    repo.finish_training_run(run_id, "interrupted")
    with pytest.raises(InvalidStatusError, match="already finished"):
        repo.finish_training_run(run_id, "succeeded")
    assert [r.status for r in repo.list_training_runs()] == ["interrupted"]


def test_ab_trials_are_counted_apart_from_votes(repo):
    _register(repo, b"v1")
    _register(repo, b"v2")
    trial = dict(prompt="a small blue square", seed=7, adapter_side="left")
    repo.record_ab_trial(**trial, adapter_version=1, annotator="alice", choice="adapter")
    repo.record_ab_trial(**trial, adapter_version=1, annotator="alice", choice="adapter")
    repo.record_ab_trial(**trial, adapter_version=1, annotator="bob", choice="base")
    repo.record_ab_trial(**trial, adapter_version=2, annotator="alice", choice="tie")
    assert repo.ab_results() == {"adapter": 2, "base": 1, "tie": 1}
    assert repo.ab_results(adapter_version=1) == {"adapter": 2, "base": 1, "tie": 0}
    assert repo.ab_results(adapter_version=1, annotator="bob") == {"adapter": 0, "base": 1, "tie": 0}
    assert repo.counts()["votes"] == 0 and repo.labeled_pairs() == []


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"adapter_version": 3}, UnknownAdapterError),
        ({"adapter_side": "middle"}, InvalidChoiceError),
        ({"choice": "left"}, InvalidChoiceError),
        ({"annotator": ""}, InvalidAnnotatorError),
        ({"prompt": " "}, InvalidPromptError),
    ],
)
def test_ab_trial_bad_input_writes_nothing(repo, overrides, error):
    _register(repo)
    trial = dict(prompt="p", seed=1, adapter_version=1, adapter_side="right", annotator="alice", choice="base")
    trial.update(overrides)
    with pytest.raises(error):
        repo.record_ab_trial(**trial)
    assert repo.ab_results() == {"adapter": 0, "base": 0, "tie": 0}


def test_runs_left_running_by_a_dead_worker_are_closed_as_interrupted(repo):
    done = repo.start_training_run({})
    repo.finish_training_run(done, "failed", error="boom")
    stale = [repo.start_training_run({}), repo.start_training_run({})]
    assert repo.interrupt_running_runs("its worker died") == 2
    runs = {r.id: r for r in repo.list_training_runs()}
    assert all(runs[i].status == "interrupted" and runs[i].error == "its worker died" and runs[i].finished_at
               for i in stale)
    assert (runs[done].status, runs[done].error) == ("failed", "boom")  # finished runs are untouched
    assert repo.interrupt_running_runs("again") == 0
    with pytest.raises(InvalidMetadataError):
        repo.interrupt_running_runs("  ")


def test_roll_back_never_returns_to_a_rolled_back_version(repo):
    for n in (1, 2):
        _register(repo, f"v{n}".encode())
    repo.set_adapter_status(1, "live")
    repo.set_adapter_status(2, "live")  # v1 retired
    assert repo.rollback_target() == 1
    assert repo.roll_back(2, 1, "rolled back by admin").version == 1
    assert repo.get_adapter(2).status == "rolled_back"
    _register(repo, b"v3")
    repo.set_adapter_status(3, "live")  # v1 retired again
    assert repo.rollback_target() == 1  # not v2: it was rolled back
    repo.roll_back(3, 1, "again")
    assert [a.status for a in repo.list_adapters()] == ["live", "rolled_back", "rolled_back"]
    assert repo.rollback_target() is None  # nothing older was live: the base
    assert repo.roll_back(1, None, "to base") is None and repo.live_adapter() is None
    with pytest.raises(InvalidStatusError, match="base model is live"):
        repo.rollback_target()


def test_roll_back_refuses_when_the_live_version_changed_meanwhile(repo):
    for n in (1, 2, 3):
        _register(repo, f"v{n}".encode())
    repo.set_adapter_status(1, "live")
    repo.set_adapter_status(2, "live")
    target = repo.rollback_target()
    repo.set_adapter_status(3, "live")  # the worker promoted v3 between the read and the roll back
    with pytest.raises(InvalidStatusError, match="changed|not v2"):
        repo.roll_back(2, target, "stale")
    assert repo.live_adapter().version == 3 and repo.get_adapter(2).status == "retired"


@pytest.mark.parametrize("version", [0, -1, 2**63, 2**64, -(2**63) - 1])
def test_a_version_no_64_bit_column_can_hold_is_unknown_not_a_driver_error(repo, version):
    _register(repo)
    with pytest.raises(UnknownAdapterError):
        repo.get_adapter(version)
    with pytest.raises(UnknownAdapterError):
        repo.set_adapter_status(version, "live")
