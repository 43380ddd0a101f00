"""The store of open blind trials alone (`app.blind.PendingTrials`): ownership, one answer, bounds, expiry."""

from __future__ import annotations

import threading

import pytest

from app.blind import PER_ANNOTATOR, PendingTrials
from app.errors import StudioError


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_trial_is_answered_once_by_its_owner():
    store = PendingTrials()
    trial_id = store.add("trial-a", "alice")
    with pytest.raises(StudioError, match="another annotator"):
        with store.answering(trial_id, "bob"):
            pass
    with store.answering(trial_id, "alice") as trial:
        assert trial == "trial-a"
    assert store.open_count("alice") == 0
    with pytest.raises(StudioError, match="answered already"):
        with store.answering(trial_id, "alice"):
            pass


def test_a_failed_answer_leaves_the_trial_open():
    store = PendingTrials()
    trial_id = store.add("trial-a", "alice")
    with pytest.raises(RuntimeError):
        with store.answering(trial_id, "alice"):
            raise RuntimeError("rate limit")
    assert store.open_count("alice") == 1
    with store.answering(trial_id, "alice") as trial:
        assert trial == "trial-a"


def test_two_answers_at_once_get_one_trial_between_them():
    store = PendingTrials()
    trial_id = store.add("trial-a", "alice")
    inside, release, outcomes = threading.Event(), threading.Event(), []

    def first():
        with store.answering(trial_id, "alice"):
            inside.set()
            release.wait(5)
        outcomes.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(5)
    with pytest.raises(StudioError, match="being answered"):
        with store.answering(trial_id, "alice"):
            pass
    release.set()
    thread.join(5)
    assert outcomes == ["first"] and store.open_count() == 0


@pytest.mark.parametrize("trial_id, message", [
    ("never-issued", "no blind trial has that id"), ("", "no blind trial given"), (None, "no blind trial given"),
    (12, "is the text /blind_trial gave you"), ("x" * 65, "is the text /blind_trial gave you"),
    (["a"], "is the text /blind_trial gave you"),
])
def test_unknown_and_malformed_ids_are_clear_errors(trial_id, message):
    store = PendingTrials()
    store.add("trial-a", "alice")
    with pytest.raises(StudioError, match=message):
        with store.answering(trial_id, "alice"):
            pass
    assert store.open_count("alice") == 1


def test_the_default_store_holds_per_annotator_open_trials_for_each_annotator():
    store = PendingTrials()  # as the studio's API builds it
    for i in range(PER_ANNOTATOR):
        store.add(f"alice-{i}", "alice")
    with pytest.raises(StudioError, match=f"{PER_ANNOTATOR} blind trials open"):
        store.check_room("alice")
    store.check_room("bob")


def test_open_trials_are_bounded_per_annotator_and_in_all():
    store = PendingTrials(per_annotator=2, capacity=3)
    ids = [store.add(f"alice-{i}", "alice") for i in range(2)]
    with pytest.raises(StudioError, match="2 blind trials open"):
        store.check_room("alice")
    with pytest.raises(StudioError, match="2 blind trials open"):
        store.add("alice-2", "alice")
    store.add("bob-0", "bob")
    with pytest.raises(StudioError, match="3 open blind trials"):
        store.add("carol-0", "carol")
    with store.answering(ids[0], "alice"):
        pass
    store.add("carol-0", "carol")  # room again
    assert store.open_count() == 3 and store.open_count("alice") == 1


def test_trials_expire_and_free_their_room():
    clock = Clock()
    store = PendingTrials(per_annotator=1, ttl_s=60, clock=clock)
    old = store.add("trial-a", "alice")
    clock.now = 59.0
    with pytest.raises(StudioError, match="1 blind trials open"):
        store.add("trial-b", "alice")
    clock.now = 60.0
    new = store.add("trial-b", "alice")
    with pytest.raises(StudioError, match="expired"):
        with store.answering(old, "alice"):
            pass
    with store.answering(new, "alice") as trial:
        assert trial == "trial-b"


def test_a_hostile_client_cannot_grow_the_store_without_bound():
    clock = Clock()
    store = PendingTrials(per_annotator=4, capacity=50, ttl_s=10, remember=20, clock=clock)
    refused = 0
    for i in range(2000):
        clock.now = i * 0.01
        try:
            store.add(object(), f"identity-{i % 300}")
        except StudioError:
            refused += 1
        try:
            with store.answering(f"guess-{i}", "identity-0"):
                pass
        except StudioError:
            pass
    assert refused > 0
    assert store.open_count() <= 50
    assert len(store._owned) <= 50 and len(store._closed) <= 20
    clock.now = 1000.0
    assert store.open_count() == 0 and not store._owned  # all expired, nothing left behind


def test_ids_are_unguessable_and_distinct():
    store = PendingTrials(per_annotator=100, capacity=100)
    ids = {store.add(i, "alice") for i in range(100)}
    assert len(ids) == 100 and all(len(i) >= 20 for i in ids)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        PendingTrials(per_annotator=0)
    with pytest.raises(ValueError):
        PendingTrials(ttl_s=0)
