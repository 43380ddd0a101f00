"""Repository behaviour on in-memory and file SQLite: pairs, votes, labeled pairs, counts, bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage import (
    MAX_PROMPT_CHARS,
    BlobIntegrityError,
    InvalidAnnotatorError,
    InvalidChoiceError,
    InvalidGenerationError,
    InvalidPromptError,
    Repository,
    UnknownAdapterError,
    UnknownPairError,
)
from storage.models import Prompt
from storage.prompts import prompt_row_id

from tests.support.storage import generation


def _row_counts(repo) -> dict:
    c = repo.counts()
    blobs = sorted(repo.blobs.hashes())
    return {"pairs": c["pairs"], "votes": c["votes"], "blobs": blobs, "adapters": len(repo.list_adapters())}


def test_create_pair_stores_rows_and_blobs(repo):
    left = generation(seed=1, color=(200, 0, 0), trajectory=b"left trajectory")
    right = generation(seed=2, color=(0, 200, 0), trajectory=b"right trajectory")
    pair = repo.create_pair("a red circle", left, right, served_to="alice")

    assert pair.prompt == "a red circle" and pair.served_to == "alice"
    assert (pair.left.seed, pair.right.seed) == (1, 2)
    assert pair.left.sampler_settings == {"steps": 4, "guidance_scale": 7.5, "eta": 1.0}
    assert repo.read_blob(pair.left.image_hash) == left.image_png
    assert repo.read_blob(pair.right.trajectory_hash) == b"right trajectory"
    assert pair.created_at.tzinfo == dt.timezone.utc
    assert abs(dt.datetime.now(dt.timezone.utc) - pair.created_at) < dt.timedelta(minutes=1)
    assert repo.get_pair(pair.id) == pair
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.prompt = "changed"  # type: ignore[misc]


def test_pairs_share_prompt_rows_and_identical_blobs(repo):
    gen = generation(seed=1, trajectory=None)
    first = repo.create_pair("same prompt", gen, generation(seed=2, color=(0, 0, 9), trajectory=None))
    second = repo.create_pair("same prompt", gen, generation(seed=3, color=(0, 0, 9), trajectory=None))
    assert first.left.image_hash == second.left.image_hash
    assert first.left.trajectory_hash is None
    assert len(list(repo.blobs.hashes())) == 2
    assert repo.counts()["pairs"] == 2


def test_get_unknown_pair(repo):
    with pytest.raises(UnknownPairError):
        repo.get_pair(12345)
    with pytest.raises(KeyError):  # callers may catch the builtin
        repo.get_pair(12345)


def test_vote_is_stored_and_repeat_returns_the_first_vote(repo, make_pair):
    pair = make_pair()
    vote, created = repo.record_vote(pair.id, "alice", "left")
    assert created and vote.choice == "left" and vote.pair_id == pair.id and vote.annotator == "alice"
    again, created_again = repo.record_vote(pair.id, "alice", "right")
    assert (again, created_again) == (vote, False)
    other, created_other = repo.record_vote(pair.id, "bob", "tie")
    assert created_other and other.id != vote.id
    assert repo.counts()["votes"] == 2


def test_vote_on_unknown_pair_writes_nothing(repo, make_pair):
    make_pair()
    for bad_id in (999, -1, "1", None, True):
        with pytest.raises(UnknownPairError):
            repo.record_vote(bad_id, "alice", "left")
    assert repo.counts()["votes"] == 0


@pytest.mark.parametrize("choice", ["LEFT", "middle", "", None, 1])
def test_invalid_choice_writes_nothing(repo, make_pair, choice):
    pair = make_pair()
    with pytest.raises(InvalidChoiceError):
        repo.record_vote(pair.id, "alice", choice)
    with pytest.raises(ValueError):
        repo.record_vote(pair.id, "alice", choice)
    assert repo.counts()["votes"] == 0


@pytest.mark.parametrize("annotator", ["", "   ", "x" * 101, None, 7])
def test_invalid_annotator_writes_nothing(repo, make_pair, annotator):
    pair = make_pair()
    with pytest.raises(InvalidAnnotatorError):
        repo.record_vote(pair.id, annotator, "left")
    assert repo.counts()["votes"] == 0


@pytest.mark.parametrize("prompt", ["", "   \n\t", "x" * (MAX_PROMPT_CHARS + 1), None, b"bytes", "nul\x00char"])
def test_invalid_prompt_writes_no_rows_and_no_blobs(repo, prompt):
    with pytest.raises(InvalidPromptError):
        repo.create_pair(prompt, generation(seed=1), generation(seed=2, color=(0, 0, 1)))
    assert _row_counts(repo) == {"pairs": 0, "votes": 0, "blobs": [], "adapters": 0}


def test_prompt_at_the_limit_is_accepted(repo):
    pair = repo.create_pair("y" * MAX_PROMPT_CHARS, generation(seed=1), generation(seed=2, color=(0, 0, 1)))
    assert len(pair.prompt) == MAX_PROMPT_CHARS


@pytest.mark.parametrize(
    "overrides",
    [
        {"seed": 1.5},
        {"seed": 2**63},
        {"seed": True},
        {"model_id": ""},
        {"adapter_version": 0},
        {"sampler_settings": {"eta": float("nan")}},
        {"sampler_settings": {"scheduler": object()}},
        {"image_png": b"not a png"},
        {"trajectory": b""},
    ],
)
def test_invalid_generation_writes_no_rows_and_no_blobs(repo, overrides):
    with pytest.raises(InvalidGenerationError):
        repo.create_pair("p", generation(seed=1), generation(**{"seed": 2, **overrides}))
    assert _row_counts(repo) == {"pairs": 0, "votes": 0, "blobs": [], "adapters": 0}


def test_generation_with_unknown_adapter_writes_no_rows_and_no_blobs(repo):
    with pytest.raises(UnknownAdapterError):
        repo.create_pair("p", generation(seed=1), generation(seed=2, color=(0, 0, 1), adapter_version=3))
    assert _row_counts(repo) == {"pairs": 0, "votes": 0, "blobs": [], "adapters": 0}


def test_generation_with_registered_adapter(repo):
    adapter = repo.register_adapter(
        b"lora", parent_version=None, objective="dense_dpo", hyperparams={}, votes_used=0, metrics={}
    )
    pair = repo.create_pair("p", generation(seed=1), generation(seed=1, color=(0, 0, 1), adapter_version=1))
    assert (pair.left.adapter_version, pair.right.adapter_version) == (None, adapter.version)


def test_labeled_pairs_filters_and_order(repo, make_pair):
    pairs = [make_pair(f"prompt {i}") for i in range(5)]
    votes = [(3, "alice", "left"), (1, "bob", "right"), (0, "alice", "tie"), (2, "alice", "skip"), (4, "bob", "both_bad")]
    for index, annotator, choice in votes:
        repo.record_vote(pairs[index].id, annotator, choice)
        time.sleep(0.002)  # timestamps have millisecond resolution; keep the "since" cut unambiguous

    labeled = repo.labeled_pairs()
    expected = [(pairs[3].id, "left"), (pairs[1].id, "right"), (pairs[0].id, "tie")]
    assert [(lp.pair_id, lp.choice) for lp in labeled] == expected
    first = labeled[0]
    assert first.prompt == "prompt 3" and first.annotator == "alice"
    assert first.left == pairs[3].left and first.right == pairs[3].right
    assert repo.read_blob(first.left.trajectory_hash) == b"trajectory"
    assert [lp.voted_at for lp in labeled] == sorted(lp.voted_at for lp in labeled)

    assert [lp.pair_id for lp in repo.labeled_pairs(annotators=["bob"])] == [pairs[1].id]
    assert repo.labeled_pairs(annotators=[]) == []
    assert len(repo.labeled_pairs(choices=("skip", "both_bad"))) == 2
    assert len(repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))) == 5
    assert [lp.pair_id for lp in repo.labeled_pairs(since=labeled[1].voted_at)] == [pairs[1].id, pairs[0].id]
    naive = labeled[1].voted_at.replace(tzinfo=None)  # naive means UTC
    assert len(repo.labeled_pairs(since=naive)) == 2
    assert repo.labeled_pairs(since=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)) == []
    assert [lp.pair_id for lp in repo.labeled_pairs(after_vote_id=first.vote_id)] == [pairs[1].id, pairs[0].id]
    with pytest.raises(InvalidChoiceError):
        repo.labeled_pairs(choices=("great",))


def test_vote_watermarks_for_the_worker(repo, make_pair):
    assert repo.last_vote_id() == 0 and repo.votes_since(0) == 0
    pairs = [make_pair() for _ in range(4)]
    repo.record_vote(pairs[0].id, "a", "left")
    mark = repo.last_vote_id()
    repo.record_vote(pairs[1].id, "a", "right")
    repo.record_vote(pairs[2].id, "a", "skip")  # not a preference: does not call for training
    repo.record_vote(pairs[1].id, "a", "left")  # repeat: not a new vote
    assert repo.votes_since(mark) == 1
    assert repo.votes_since(mark, choices=("left", "right", "tie", "skip")) == 2
    assert repo.votes_since(0) == 2
    assert repo.last_vote_id() > mark


def test_counts_per_annotator_and_day(repo, make_pair):
    pairs = [make_pair() for _ in range(3)]
    repo.record_vote(pairs[0].id, "alice", "left")
    repo.record_vote(pairs[1].id, "alice", "skip")
    repo.record_vote(pairs[0].id, "bob", "right")
    counts = repo.counts()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert counts["votes"] == 3 and counts["pairs"] == 3 and counts["annotators"] == 2
    assert counts["per_annotator"] == {"alice": 2, "bob": 1}
    assert counts["per_day"] == {today: 3}
    assert counts["per_choice"] == {"left": 1, "right": 1, "tie": 0, "both_bad": 0, "skip": 1}


def test_read_blob_validates_hash_and_content(repo, make_pair):
    pair = make_pair()
    with pytest.raises(BlobIntegrityError):
        repo.read_blob("../studio.db")
    repo.blobs.path(pair.left.image_hash).write_bytes(b"\x89PNG damaged")
    with pytest.raises(BlobIntegrityError):
        repo.read_blob(pair.left.image_hash)
    assert repo.missing_blobs() == []
    repo.blobs.path(pair.right.image_hash).unlink()
    assert repo.missing_blobs() == [pair.right.image_hash]


def test_vote_race_lost_at_insert_returns_the_stored_vote(repo, make_pair, monkeypatch):
    """Where writers are not serialised (PostgreSQL), two identical votes can both pass the lookup; the UNIQUE
    constraint stops the second, which must then return the first. Simulated by hiding the first lookup."""
    pair = make_pair()
    first, _ = repo.record_vote(pair.id, "alice", "left")
    real_find = Repository._find_vote
    calls = []

    def miss_once(s, pair_id, annotator):
        calls.append(pair_id)
        return None if len(calls) == 1 else real_find(s, pair_id, annotator)

    monkeypatch.setattr(Repository, "_find_vote", staticmethod(miss_once))
    assert repo.record_vote(pair.id, "alice", "right") == (first, False)
    assert len(calls) == 2 and repo.counts()["votes"] == 1


def test_prompt_insert_race_falls_back_to_the_existing_row(repo, make_pair, monkeypatch):
    pair = make_pair("shared prompt")
    real_scalar = Session.scalar
    calls = []

    def miss_once(self, *args, **kwargs):
        calls.append(1)
        return None if len(calls) == 1 else real_scalar(self, *args, **kwargs)

    with repo._write.begin() as s:
        monkeypatch.setattr(Session, "scalar", miss_once)
        pid = prompt_row_id(s, "shared prompt")  # INSERT hits UNIQUE inside a savepoint, then re-reads
        monkeypatch.undo()
        assert s.scalar(select(Prompt.id).where(Prompt.text == "shared prompt")) == pid
    again = repo.create_pair("shared prompt", generation(seed=5), generation(seed=6, color=(0, 0, 5)))
    assert again.prompt == pair.prompt
    with repo._read.begin() as s:
        assert s.scalar(select(func.count()).select_from(Prompt)) == 1
