"""Admin-only controls, rate limits, training on chosen annotators and adapter hashes, enforced by `Studio` itself:
a non-admin is refused every admin action with nothing changed (database, worker, sampler); an admin by name or by
token succeeds; a tampered adapter file never reaches the sampler."""

from __future__ import annotations

import logging

import pytest
import torch

from app.access import AccessPolicy, Actor, AdminRequiredError, RateLimitedError, RateLimits
from app.studio import StudioError
from storage import Repository
from tests.support.lora import latents, random_lora
from tests.support.studio import register_adapter, stored_votes
from tests.support.storage import generation

PROMPT = "a large red circle on a blue background"
TOKEN = "token-for-the-admin-tests"
ALICE = Actor("alice", authenticated=True)  # in --admins
BOB = Actor("bob", authenticated=True)  # signed in, not an admin
STRANGER = Actor("anon-0123456789ab")
TOKEN_HOLDER = Actor("client-1234", token=TOKEN)


@pytest.fixture
def public_studio(swap_studio):
    """`swap_studio` as if it were bound to 0.0.0.0 with one admin and a token."""
    swap_studio.access = AccessPolicy.for_host("0.0.0.0", admins=["alice"], admin_token=TOKEN)
    return swap_studio


def snapshot(studio) -> dict:
    return {"settings": studio.settings(), "live": studio.repo.live_adapter().version,
            "serving": studio.live.adapter_version, "counts": studio.counts(),
            "statuses": [(a.version, a.status) for a in studio.repo.list_adapters()],
            "requested": studio.worker.train_requested}


def test_non_admins_are_refused_every_admin_action_and_nothing_changes(public_studio, embedded, tmp_path, caplog):
    studio = public_studio
    caplog.set_level(logging.INFO, logger="app")
    v1 = register_adapter(studio.repo, random_lora(1))
    v2 = register_adapter(studio.repo, random_lora(2))
    studio.make_live(v2, actor=ALICE)
    stored_votes(studio.repo, [("ann", "left")] * 5)
    path, _ = studio.export(actor=ALICE)
    before = snapshot(studio)
    actions = {
        "changing the training settings": lambda a: studio.update_settings(actor=a, gamma=0.5),
        "train now": lambda a: studio.train_now(actor=a),
        "make live": lambda a: studio.make_live(v1, actor=a),
        "roll back": lambda a: studio.rollback(actor=a),
        "import": lambda a: studio.import_file(str(path), actor=a),
        "export": lambda a: studio.export(actor=a),
        "training annotators": lambda a: studio.update_settings(actor=a, train_annotators=["bob"]),
    }
    wrong_token = [Actor("anon-1", token="wrong-token-wrong-token", address=f"10.0.0.{i}") for i in range(len(actions))]
    for actor in (BOB, STRANGER, Actor("alice"), None, "wrong token"):
        for i, (name, action) in enumerate(actions.items()):
            with pytest.raises(AdminRequiredError, match="is for admins only"):
                action(wrong_token[i] if actor == "wrong token" else actor)
            assert snapshot(studio) == before, (actor, name)
    assert caplog.text.count("not an admin") == 5 * len(actions)

    assert studio.update_settings(actor=ALICE, gamma=0.5)["gamma"] == 0.5
    assert studio.train_now(actor=TOKEN_HOLDER) is True
    assert studio.rollback(actor=TOKEN_HOLDER) == v1 and studio.live.adapter_version == v1
    assert studio.make_live(v2, actor=ALICE) == v2 and studio.live.adapter_version == v2
    assert studio.import_file(str(path), actor=ALICE) == 5
    assert "made live by 'alice'" in caplog.text


def test_a_tampered_adapter_file_is_refused_and_the_live_sampler_is_unchanged(swap_studio, caplog):
    studio, repo = swap_studio, swap_studio.repo
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2), live=False)
    studio.make_live(v1, actor=ALICE)
    path = repo.blobs.path(repo.get_adapter(v2).file_hash)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights: same size, same safetensors header
    path.write_bytes(bytes(data))
    before = latents(studio.live)
    with pytest.raises(StudioError, match=f"adapter v{v2} is refused: its file does not match the SHA-256"):
        studio.make_live(v2, actor=ALICE)
    assert repo.live_adapter().version == v1 and repo.get_adapter(v2).status == "candidate"
    assert studio.live.adapter_version == v1
    assert torch.equal(latents(studio.live), before)  # the weights still hold v1
    assert f"adapter v{v2} refused" in caplog.text
    path.unlink()  # a missing file is refused the same way
    with pytest.raises(StudioError, match="does not match the SHA-256"):
        studio.make_live(v2, actor=ALICE)
    assert repo.live_adapter().version == v1 and studio.live.adapter_version == v1


def test_rollback_onto_a_tampered_version_changes_nothing(swap_studio, embedded):
    studio, repo = swap_studio, swap_studio.repo
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2))
    studio.make_live(v2, actor=ALICE)
    repo.blobs.path(repo.get_adapter(v1).file_hash).write_bytes(b"not the adapter")
    with pytest.raises(StudioError, match=f"adapter v{v1} is refused"):
        studio.rollback(actor=ALICE)
    assert repo.live_adapter().version == v2 and studio.live.adapter_version == v2
    assert repo.get_adapter(v1).status == "retired"


def test_a_rolled_back_version_never_comes_back_by_a_later_roll_back(swap_studio):
    studio, repo = swap_studio, swap_studio.repo
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2))
    assert studio.rollback(actor=ALICE) == v1 and repo.get_adapter(v2).status == "rolled_back"
    v3 = register_adapter(repo, random_lora(3))  # the worker promotes a new version
    assert studio.rollback(actor=ALICE) == v1  # not v2, which was rolled back
    assert studio.live.adapter_version == v1 and repo.get_adapter(v3).status == "rolled_back"
    assert studio.rollback(actor=ALICE) is None and studio.live.adapter_version is None  # then the base
    with pytest.raises(StudioError, match="base model is live"):
        studio.rollback(actor=ALICE)


def test_rate_limits_per_annotator_write_nothing_when_hit(embedded, tmp_path):
    from alignment.serving.sampler import Sampler
    from app.studio import Studio

    now = [100.0]
    studio = Studio(Sampler(embedded), Repository(tmp_path / "data"),
                    limits=RateLimits.per_minute(pairs=2, votes=1, clock=lambda: now[0]))
    try:
        first = studio.new_pair(PROMPT, "1, 2", annotator="ann")
        now[0] += 20
        studio.compare(PROMPT, 3, None, None, annotator="ann")  # rendering counts as generation too
        with pytest.raises(RateLimitedError, match=r"^rate limit: try again in 40 s"):
            studio.new_pair(PROMPT, "5, 6", annotator="ann")
        assert studio.counts()["pairs"] == 1
        studio.new_pair(PROMPT, "5, 6", annotator="other")  # someone else is not slowed down
        studio.vote(first.id, "left", annotator="ann")
        now[0] += 61
        second = studio.new_pair(PROMPT, "7, 8", annotator="ann")
        now[0] += 1
        third = studio.new_pair(PROMPT, "9, 10", annotator="ann")
        studio.vote(second.id, "right", annotator="ann")
        with pytest.raises(RateLimitedError, match="try again in 60 s"):
            studio.vote(third.id, "left", annotator="ann")
        assert studio.counts()["votes"] == 2
        now[0] += 61
        studio.vote(third.id, "right", annotator="ann")
        assert studio.counts()["votes"] == 3
    finally:
        studio.close()


def test_training_can_be_limited_to_chosen_annotators(swap_studio):
    studio = swap_studio
    stored_votes(studio.repo, [("bob", "left")] * 4 + [("alice", "right")])
    assert studio.settings()["train_annotators"] is None
    after = studio.update_settings(actor=ALICE, train_annotators="alice, carol")
    assert after["train_annotators"] == ["alice", "carol"]
    assert studio.worker.config.train_annotators == ("alice", "carol")  # what the worker's next run reads
    with pytest.raises(StudioError, match=r"at least 4 preference votes \(left, right or tie\) from alice, carol; "
                                          r"there are 1"):
        studio.train_now(actor=ALICE)
    assert studio.update_settings(actor=ALICE, train_annotators=[])["train_annotators"] is None
    assert studio.worker.config.train_annotators is None
    assert studio.train_now(actor=ALICE) is True
    for bad in (42, ["x" * 101], [None]):
        with pytest.raises(StudioError, match="annotator"):
            studio.update_settings(actor=ALICE, train_annotators=bad)
    assert studio.worker.config.train_annotators is None


def test_annotator_table_of_the_data_tab(studio):
    stored_votes(studio.repo, [("alice", "left"), ("bob", "skip")])
    pair = studio.repo.create_pair(PROMPT, generation(seed=90), generation(seed=91, color=(0, 9, 0)))
    for annotator, choice in (("alice", "tie"), ("bob", "tie"), ("carol", "left")):
        studio.repo.record_vote(pair.id, annotator, choice)
    rows, couples = studio.annotator_rows(Actor("me"))  # an admin (the fixture is a one-person studio)
    assert rows[0] == {"annotator": "alice", "votes": 2, "left": 1, "right": 0, "tie": 1, "both bad": 0, "skip": 0,
                       "agreement": 0.5, "shared pairs": 1}
    assert [r["annotator"] for r in rows] == ["alice", "bob", "carol"] and rows[2]["agreement"] == 0.0
    assert couples == [
        {"annotator A": "alice", "annotator B": "bob", "shared pairs": 1, "agreement": 1.0},
        {"annotator A": "alice", "annotator B": "carol", "shared pairs": 1, "agreement": 0.0},
        {"annotator A": "bob", "annotator B": "carol", "shared pairs": 1, "agreement": 0.0},
    ]
