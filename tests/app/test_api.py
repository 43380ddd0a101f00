"""The studio's API through `gradio_client`: the public endpoints, bad input refused with nothing written,
and four clients voting at once while the worker trains and the sampler hot-swaps the new adapter."""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app.access import Actor
from app.studio import Studio
from app.ui import build_ui, launch
from storage import VOTE_CHOICES, Repository
from tests.support.studio import api_identity, free_port

PROMPT = "a small green circle on an orange background"


@pytest.fixture
def served(embedded, tmp_path):
    """The studio (no worker, shared embedded model) served in this process; yields (url, studio)."""
    from alignment.serving.sampler import Sampler

    studio = Studio(Sampler(embedded), Repository(tmp_path / "data"))
    demo = build_ui(studio)
    port = free_port()
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", studio
    demo.close()
    studio.close()


def test_only_the_documented_endpoints_are_public(served):
    url, _ = served
    api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/identity", "/new_pair", "/vote", "/status", "/whoami", "/train_now",
                                           "/update_settings", "/make_live", "/rollback", "/import_votes",
                                           "/blind_trial", "/blind_choice"}
    assert not api["unnamed_endpoints"]
    # No endpoint takes an annotator: the server decides who acts.
    for name, endpoint in api["named_endpoints"].items():
        assert not any("annotator" in p["parameter_name"] for p in endpoint["parameters"]), name


def test_new_pair_vote_status_round_trip(served):
    url, studio = served
    client = Client(url, verbose=False)
    me = api_identity(client)
    left, right, pair_id = client.predict(PROMPT, "3, 4", me, api_name="/new_pair")
    assert Image.open(left).size == (32, 32) and Image.open(right).size == (32, 32)
    pair = studio.repo.get_pair(pair_id)
    assert (pair.left.seed, pair.right.seed) == (3, 4) and pair.served_to == me.split(".")[0]
    ack = client.predict(pair_id, "right", me, api_name="/vote")
    assert ack["recorded"] and ack["pair_id"] == pair_id and ack["annotator"] == pair.served_to
    [stored] = studio.repo.labeled_pairs()
    assert stored.vote_id == ack["vote_id"] and stored.choice == "right"  # committed before the answer
    _, _, second = client.predict(PROMPT, "", me, api_name="/new_pair")  # seeds are optional
    assert second == pair_id + 1
    status = client.predict(api_name="/status")
    assert status["votes"] == 1 and status["pairs"] == 2
    assert status["live_adapter_version"] is None and status["worker_state"] == "off"


@pytest.mark.parametrize("args, message", [
    (("", ""), "prompt is empty"),
    (("   ", ""), "prompt is empty"),
    (("x" * 501, ""), "limit is 500"),
    ((PROMPT, "7"), "give 2 seeds"),
    ((PROMPT, "7, 7"), "seeds are equal"),
    ((PROMPT, "-1, 3"), "out of range"),
])
def test_bad_new_pair_requests_get_an_error_and_write_nothing(served, args, message):
    url, studio = served
    client = Client(url, verbose=False)
    me = api_identity(client)
    with pytest.raises(AppError, match=message):
        client.predict(*args, me, api_name="/new_pair")
    assert studio.counts()["pairs"] == 0


def test_new_pair_and_vote_without_an_identity_are_refused(served):
    url, studio = served
    client = Client(url, verbose=False)
    for call in (lambda: client.predict(PROMPT, "1, 2", api_name="/new_pair"),
                 lambda: client.predict(PROMPT, "1, 2", "anon-0123456789ab.forged", api_name="/new_pair"),
                 lambda: client.predict(1, "left", api_name="/vote")):
        with pytest.raises(AppError, match="nobody is acting|not issued by this studio"):
            call()
    assert studio.counts()["pairs"] == 0 and studio.counts()["votes"] == 0


def test_bad_votes_get_an_error_and_write_nothing(served):
    url, studio = served
    client = Client(url, verbose=False)
    me = api_identity(client)
    _, _, pair_id = client.predict(PROMPT, "1, 2", me, api_name="/new_pair")
    client.predict(pair_id, "tie", me, api_name="/vote")
    for args, message in [((pair_id, "left"), "already has your vote 'tie'"),  # replayed, even with a new choice
                          ((pair_id, "tie"), "already has your vote"),
                          ((999, "left"), "no pair with id 999"),
                          ((pair_id, "better"), "choice must be one of"),
                          (("abc", "left"), "pair id must be a whole number"),
                          ((None, "left"), "no pair to vote on")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, me, api_name="/vote")
    counts = studio.counts()
    assert counts["votes"] == 1 and counts["per_choice"]["tie"] == 1 and counts["pairs"] == 1


def test_four_clients_vote_while_the_worker_trains_and_hot_swaps(tmp_path):
    """Every acknowledged vote is stored exactly once, no request fails, and pairs switch to the new adapter."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from settings import TrainerConfig
    from alignment.training.worker import Worker
    from settings import WorkerConfig
    from tests.support.processes import SMALL_GUARD_CONFIG

    repo = Repository(tmp_path / "data")
    # A tiny learning rate keeps the adapter close to the base, so the fidelity guard lets it go live; a guard of
    # 4 + 4 seeds: what is tested here is the clients and the swap, not the guard's statistics.
    worker = Worker(repo, "embedded", TrainerConfig(train_steps=4, lr=1e-5),
                    WorkerConfig(train_every=6, min_votes=6, poll_s=0.2, **SMALL_GUARD_CONFIG))
    studio = Studio(Sampler(load_pipeline("embedded")), repo, worker)
    demo = build_ui(studio)
    port = free_port()
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True)
    worker.start()
    acks: list[dict] = []
    failures: list[BaseException] = []
    after_swap = {i: 0 for i in range(4)}
    deadline = time.monotonic() + 420  # generous for a loaded machine; about 90 s on an idle 2-core one

    def client_loop(i: int) -> None:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        me = api_identity(client)
        n = 0
        try:
            while time.monotonic() < deadline and min(after_swap.values()) < 2:
                _, _, pair_id = client.predict(PROMPT, "", me, api_name="/new_pair")
                acks.append(client.predict(pair_id, VOTE_CHOICES[(i + n) % 5], me, api_name="/vote"))
                if repo.get_pair(pair_id).left.adapter_version is not None:
                    after_swap[i] += 1
                    studio.update_settings(actor=Actor("test"), train_every=10_000)  # one run is enough here: finish sooner
                n += 1
                time.sleep(0.5)  # a person's pace, leaving the training run some CPU
        except BaseException as e:  # collected: an exception in a thread would not fail the test
            failures.append(e)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        demo.close()
        worker.stop()
    assert not failures, failures
    stored = repo.labeled_pairs(choices=VOTE_CHOICES)
    acked_ids = [a["vote_id"] for a in acks]
    assert len(set(acked_ids)) == len(acked_ids) == len(stored)
    assert sorted(v.vote_id for v in stored) == sorted(acked_ids)
    assert {(v.pair_id, v.choice) for v in stored} == {(a["pair_id"], a["choice"]) for a in acks}
    assert len({a["annotator"] for a in acks}) == 4
    runs = repo.list_training_runs()
    assert repo.live_adapter() is not None and any(r.status == "succeeded" for r in runs), runs
    versions = {v.left.adapter_version for v in stored} | {v.right.adapter_version for v in stored}
    assert None in versions and len(versions) >= 2  # pairs before and after the hot-swap
    assert all(repo.get_adapter(v).status in ("live", "retired") for v in versions - {None})
    studio.close()
