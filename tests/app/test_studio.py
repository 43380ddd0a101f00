"""The Studio service on the embedded model and a temporary data dir: pairs, votes, compare, blind A/B, settings,
make live / roll back, export / import, status — and that bad input is refused before anything is written."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app.access import Actor
from app.inputs import parse_pair_id, parse_seeds
from app.studio import StudioError
from storage import PairNotServedError, UnknownAdapterError, UnknownPairError
from tests.support.lora import random_lora
from tests.support.studio import register_adapter

PROMPT = "a large red circle on a blue background"
ME = Actor("ann")  # a local studio without configured admins: everyone is an admin


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_new_pair_stores_both_generations_for_the_annotator(studio):
    view = studio.new_pair(PROMPT, "12, 34", annotator="ann")
    assert view.seeds == (12, 34) and view.left.size == (32, 32)
    pair = studio.repo.get_pair(view.id)
    assert (pair.prompt, pair.served_to) == (PROMPT, "ann")
    assert (pair.left.seed, pair.right.seed) == (12, 34)
    assert pair.left.trajectory_hash and pair.right.trajectory_hash
    direct = studio.live.at(None).generate(PROMPT, [12, 34])[0].image
    assert np.array_equal(pixels(direct), pixels(view.left))  # reproducible from (prompt, seeds, version)


def test_random_seeds_differ_and_whitespace_is_normalised(studio):
    view = studio.new_pair(f"  {PROMPT}  ", annotator="ann")
    assert view.seeds[0] != view.seeds[1]
    assert studio.repo.get_pair(view.id).prompt == PROMPT


@pytest.mark.parametrize("prompt, message", [("", "empty"), ("   ", "empty"), ("x" * 501, "limit is 500"),
                                             ("a red\x00circle", "NUL"), (None, "empty")])
def test_bad_prompts_are_refused_and_nothing_is_written(studio, prompt, message):
    with pytest.raises(StudioError, match=message):
        studio.new_pair(prompt, annotator="ann")
    assert studio.counts()["pairs"] == 0


@pytest.mark.parametrize("seeds, message", [("7", "give 2 seeds"), ("1, 2, 3", "give 2 seeds"),
                                            ("a, b", "not a whole number"), ("5, 5", "equal"),
                                            ("-1, 2", "out of range"), ([1.5, 2], "not a whole number")])
def test_bad_seeds_are_refused(studio, seeds, message):
    with pytest.raises(StudioError, match=message):
        studio.new_pair(PROMPT, seeds, annotator="ann")
    assert studio.counts()["pairs"] == 0


def test_seed_and_pair_id_parsing():
    assert parse_seeds(None, 2) is None and parse_seeds(" ", 2) is None
    assert parse_seeds("3 4", 2) == [3, 4] and parse_seeds([3.0, 4], 2) == [3, 4]
    assert parse_pair_id(7) == 7 and parse_pair_id(7.0) == 7 and parse_pair_id(" 7 ") == 7
    for bad in (None, "", True, 7.5, "seven"):
        with pytest.raises(StudioError):
            parse_pair_id(bad)


def test_vote_is_committed_before_the_acknowledgement(studio):
    view = studio.new_pair(PROMPT, "1, 2", annotator="ann")
    ack = studio.vote(view.id, "left", annotator="ann")
    assert ack["recorded"] and ack["pair_id"] == view.id and ack["choice"] == "left"
    [stored] = studio.repo.labeled_pairs()
    assert (stored.vote_id, stored.annotator, stored.choice) == (ack["vote_id"], "ann", "left")


def test_replayed_invalid_and_unknown_votes_write_nothing(studio):
    view = studio.new_pair(PROMPT, "1, 2", annotator="ann")
    studio.vote(view.id, "right", annotator="ann")
    with pytest.raises(StudioError, match="already has your vote 'right'"):
        studio.vote(view.id, "left", annotator="ann")
    with pytest.raises(StudioError, match="choice must be one of"):
        studio.vote(view.id, "best", annotator="other")
    with pytest.raises(UnknownPairError, match="no pair with id 999"):
        studio.vote(999, "left", annotator="ann")
    counts = studio.counts()
    assert counts["votes"] == 1 and counts["per_choice"]["right"] == 1
    with pytest.raises(PairNotServedError, match=f"pair {view.id} was not shown to you"):
        studio.vote(view.id, "tie", annotator="other")  # a vote counts only from whom the pair was served to
    assert studio.counts()["votes"] == 1


def test_status_reports_votes_live_version_and_worker(studio):
    view = studio.new_pair(PROMPT, "1, 2", annotator="ann")
    studio.vote(view.id, "skip", annotator="ann")
    status = studio.status()
    assert status["votes"] == 1 and status["pairs"] == 1
    assert status["live_adapter_version"] is None and status["worker_state"] == "off"


def test_new_pairs_follow_the_live_adapter(swap_studio, embedded):
    base = swap_studio.new_pair(PROMPT, "1, 2", annotator="ann")
    version = register_adapter(swap_studio.repo, random_lora(0))
    adapted = swap_studio.new_pair(PROMPT, "1, 2", annotator="ann")
    assert (base.adapter_version, adapted.adapter_version) == (None, version)
    assert swap_studio.repo.get_pair(adapted.id).left.adapter_version == version
    assert not np.array_equal(pixels(base.left), pixels(adapted.left))
    assert swap_studio.status()["serving_adapter_version"] == version


def test_compare_renders_any_version_and_leaves_the_live_one_serving(swap_studio, embedded):
    repo, live = swap_studio.repo, swap_studio.live
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2))
    assert live.sync() and live.adapter_version == v2
    served = swap_studio.new_pair(PROMPT, "5, 6", annotator="ann")
    base_a, v1_b = swap_studio.compare(PROMPT, 5, None, v1, annotator="ann")
    assert live.adapter_version == v2  # still serving the live one
    _, v2_b = swap_studio.compare(PROMPT, 5, v1, v2, annotator="ann")
    assert np.array_equal(pixels(v2_b), pixels(swap_studio.live.at(v2).generate(PROMPT, [5])[0].image))
    assert served.adapter_version == v2 and not np.array_equal(pixels(v1_b), pixels(v2_b))
    base_again, same = swap_studio.compare(PROMPT, "5", None, None, annotator="ann")
    assert np.array_equal(pixels(base_a), pixels(base_again)) and same is base_again
    assert not np.array_equal(pixels(base_a), pixels(v1_b))
    with pytest.raises(UnknownAdapterError):
        swap_studio.compare(PROMPT, 5, None, 99, annotator="ann")
    assert live.adapter_version == v2


def test_pairs_never_see_a_compared_version(swap_studio, embedded):
    """Compare swaps other versions in and out while pairs are generated: every pair uses the live adapter."""
    repo, live = swap_studio.repo, swap_studio.live
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2))
    errors: list[BaseException] = []

    def compare_loop():
        try:
            for _ in range(4):
                swap_studio.compare(PROMPT, 3, None, v1, annotator="ann")
        except BaseException as e:  # reported below; a thread cannot fail the test itself
            errors.append(e)

    thread = threading.Thread(target=compare_loop)
    thread.start()
    views = [swap_studio.new_pair(PROMPT, annotator="ann") for _ in range(4)]
    thread.join()
    assert not errors
    assert {repo.get_pair(v.id).left.adapter_version for v in views} == {v2}
    assert live.adapter_version == v2


def test_blind_trials_are_stored_apart_from_votes(swap_studio, embedded, monkeypatch):
    with pytest.raises(StudioError, match="no adapter is live"):
        swap_studio.blind_trial(PROMPT, annotator="ann")
    version = register_adapter(swap_studio.repo, random_lora(0))
    monkeypatch.setattr("app.studio.random.choice", lambda sides: "right")
    trial = swap_studio.blind_trial(PROMPT, seed=4, annotator="ann")
    base_img, adapted_img = swap_studio.compare(PROMPT, 4, None, version, annotator="ann")
    assert np.array_equal(pixels(trial.right), pixels(adapted_img))
    assert np.array_equal(pixels(trial.left), pixels(base_img))
    result = swap_studio.record_blind(trial, "right", annotator="ann")
    assert result["outcome"] == "adapter" and result["n"] == 1 and result["rate"] == 1.0
    result = swap_studio.record_blind(trial, "left", annotator="ann")
    assert result["outcome"] == "base" and result["rate"] == 0.5 and 0 < result["lo"] < 0.5 < result["hi"] < 1
    assert swap_studio.counts()["votes"] == 0  # never training data
    with pytest.raises(StudioError, match="blind choice"):
        swap_studio.record_blind(trial, "both_bad", annotator="ann")
    with pytest.raises(StudioError, match="no blind trial"):
        swap_studio.record_blind(None, "left", annotator="ann")
    assert swap_studio.win_rate(version)["n"] == 2


def test_settings_are_validated_and_reach_the_worker(swap_studio):
    before = swap_studio.settings()
    for bad, message in [({"gamma": 1.5}, "gamma must be in"), ({"objective": "ppo"}, "unknown objective"),
                         ({"train_steps": 0}, "train_steps must be at least 1"), ({"lr": None}, "lr is empty"),
                         ({"train_every": 0}, "train_every"), ({"train_steps": 2.5}, "whole number"),
                         ({"eta": 0.5}, "unknown setting")]:
        with pytest.raises(StudioError, match=message):
            swap_studio.update_settings(actor=ME, **bad)
        assert swap_studio.settings() == before
    after = swap_studio.update_settings(actor=ME, objective="trajectory", gamma=0.8, beta=None, lr=1e-4, train_steps=12.0,
                                        train_every=3)
    assert after == {"objective": "trajectory", "gamma": 0.8, "beta": None, "lr": 1e-4, "train_steps": 12,
                     "train_every": 3, "train_annotators": None, "train_voters": "everyone"}
    assert swap_studio.worker.trainer_config.train_steps == 12 and swap_studio.worker.config.train_every == 3


def test_make_live_and_roll_back(swap_studio, embedded):
    repo, live = swap_studio.repo, swap_studio.live
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2))
    assert swap_studio.rollback(actor=ME) == v1
    assert repo.live_adapter().version == v1 and live.adapter_version == v1
    assert repo.get_adapter(v2).status == "rolled_back"  # a later roll back never returns to it
    assert swap_studio.rollback(actor=ME) is None and live.adapter_version is None
    with pytest.raises(StudioError, match="nothing to roll back"):
        swap_studio.rollback(actor=ME)
    swap_studio.make_live(v2, actor=ME)
    assert repo.live_adapter().version == v2 and live.adapter_version == v2
    rows = swap_studio.adapters()
    assert [r["version"] for r in rows] == [v2, v1] and rows[0]["status"] == "live"
    assert {p["version"] for p in swap_studio.loss_points()} == {f"v{v1}", f"v{v2}"}
    with pytest.raises(UnknownAdapterError):
        swap_studio.make_live(42, actor=ME)


def test_export_then_import_into_another_studio(studio, embedded, tmp_path):
    for choice in ("left", "tie", "skip"):
        view = studio.new_pair(PROMPT, annotator="ann")
        studio.vote(view.id, choice, annotator="ann")
    path, rows = studio.export(actor=ME)
    assert rows == 2 and path.is_file()  # skip says nothing about which image is better

    from alignment.serving.sampler import Sampler
    from app.studio import Studio
    from storage import Repository

    other = Studio(Sampler(embedded), Repository(tmp_path / "other"))
    assert other.import_file(str(path), actor=ME) == 2
    assert other.counts()["votes"] == 2 and other.counts()["per_choice"]["tie"] == 1
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError):
        other.import_file(str(bad), actor=ME)
    with pytest.raises(StudioError, match="choose a .parquet file"):
        other.import_file(None, actor=ME)
    assert other.counts()["votes"] == 2
    other.repo.close()


def test_train_now_needs_enough_preference_votes(swap_studio):
    with pytest.raises(StudioError, match="at least 4 preference votes"):
        swap_studio.train_now(actor=ME)
    for choice in ("left", "right", "tie", "skip", "left"):
        view = swap_studio.new_pair(PROMPT, annotator="ann")
        swap_studio.vote(view.id, choice, annotator="ann")
    assert swap_studio.train_now(actor=ME) is True  # queued for the (here not started) worker


def test_polled_status_may_be_slightly_old_but_the_api_status_is_fresh(studio):
    assert studio.status(max_age_s=60)["votes"] == 0
    view = studio.new_pair(PROMPT, "1, 2", annotator="ann")
    studio.vote(view.id, "left", annotator="ann")
    assert studio.status(max_age_s=60)["votes"] == 0
    assert studio.status()["votes"] == 1
