"""The simulated person's short version: a studio process with a small worker, 8 votes at a fast pace, one
checkpoint of 8 blind trials through the API and the offline check of the same adapter; then the blind
endpoints' bad input on the same server. The campaign itself (32, 64, 128 votes) is in docs/benchmarks.md."""

from __future__ import annotations

import json
import signal

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from alignment.eval.splits import EVAL_SEED_BASE, eval_cases, guard_prompts
from benchmarks import person
from storage import Repository
from tests.support.studio import api_identity

# A worker that trains soon and briefly, with a guard of 4 + 4 seeds that passes whatever it sees (fidelity is
# not what this test checks): so that an adapter is live at the checkpoint.
SMALL_WORKER = ["--train-steps", "10", "--fidelity-seeds", "1500000000,1500000001,1500000002,1500000003",
                "--fidelity-confirm-seeds", "1600000000,1600000001,1600000002,1600000003", "--fidelity-prompts", "1",
                "--fidelity-max-drop", "0.99"]
VOTES, TRIALS, OFFLINE_SEEDS = 8, 8, 2


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The script run against a studio started by its own helper; yields (figures, url, data dir)."""
    root = tmp_path_factory.mktemp("person")
    studio = person.start_studio(root / "data", root / "studio.log", SMALL_WORKER)
    try:
        out = root / "out.json"
        try:  # --grace-s 60: 8 fast votes come before the worker has rendered its guard's base images
            person.main(["--labeler", "larger", "--checkpoints", str(VOTES), "--blind-trials", str(TRIALS),
                         "--offline-seeds", str(OFFLINE_SEEDS), "--think-s", "0", "0.05", "--grace-s", "60",
                         "--connect", studio.url,
                         "--data-dir", str(root / "data"), "--out", str(out)])
        except SystemExit as e:  # a failed check exits 1 after writing the figures; the test reads them
            assert e.code == 1
        yield json.loads(out.read_text()), studio.url, root / "data"
    finally:
        studio.kill(signal.SIGTERM)


def test_votes_and_a_checkpoint_through_the_real_server(campaign):
    figures, _, data_dir = campaign
    [run] = figures["runs"]
    assert run["votes_cast"] == run["votes_acknowledged"] == run["votes_stored"] == VOTES
    assert run["votes_missing"] == 0 and run["votes_counted_by"] == "database"
    [point] = run["checkpoints"]
    assert point["votes"] == VOTES and not point["timed_out"]
    assert point["live_version"] is not None and point["adapter_votes_used"] <= VOTES
    blind = point["blind"]
    assert len(blind["trials"]) == TRIALS and blind["versions_seen"] == [point["live_version"]]
    assert {t["outcome"] for t in blind["trials"]} <= {"adapter", "base", "tie"}
    for w in (blind["studio"], blind["checkpoint"], point["offline"]):
        assert 0.0 <= w["lo"] <= w["rate"] <= w["hi"] <= 1.0
    assert blind["studio"]["n"] == blind["checkpoint"]["n"] == TRIALS  # a fresh version: the same figure
    assert blind["studio"]["rate"] == pytest.approx(blind["checkpoint"]["rate"])
    assert blind["checkpoint"]["wins"] == sum(t["outcome"] == "adapter" for t in blind["trials"])
    fidelity = blind["fidelity"]
    assert fidelity["trials"] == sum(t["outcome"] != "tie" for t in blind["trials"])
    assert fidelity["trials"] == 0 or 0 <= fidelity["base"] <= 1 and 0 <= fidelity["adapter"] <= 1
    # the offline check of the same adapter ran, on the evaluation prompts
    offline = point["offline"]
    assert offline["version"] == point["live_version"] and offline["n"] == len(eval_cases()) * OFFLINE_SEEDS
    assert 0 <= offline["fidelity"]["base"] <= 1 and isinstance(point["agree"], bool)
    # blind trials: evaluation prompts and seeds only, never the guard's
    prompts = {c.prompt for c in eval_cases()}
    assert all(t["prompt"] in prompts and t["prompt"] not in guard_prompts() for t in blind["trials"])
    assert all(t["seed"] >= EVAL_SEED_BASE + person.BLIND_SEED_OFFSET for t in blind["trials"])
    with Repository(data_dir) as repo:  # stored as blind trials, never as training votes
        assert repo.counts()["votes"] == VOTES
        assert sum(repo.ab_results(adapter_version=point["live_version"], annotator=run["annotator"]).values()) \
            == TRIALS


def test_blind_endpoints_refuse_bad_input_on_the_real_server(campaign):
    _, url, _ = campaign
    client = Client(url, verbose=False)
    alice, bob = api_identity(client), api_identity(client)
    trial = client.predict(eval_cases()[0].prompt, "", alice, api_name="/blind_trial")["trial"]
    with pytest.raises(AppError, match="given to another annotator"):
        client.predict(trial, "left", bob, api_name="/blind_choice")
    assert client.predict(trial, "left", alice, api_name="/blind_choice")["n"] == 1
    with pytest.raises(AppError, match="answered already"):
        client.predict(trial, "left", alice, api_name="/blind_choice")
    with pytest.raises(AppError, match="no blind trial has that id"):
        client.predict("made-up-trial-id", "left", alice, api_name="/blind_choice")
    for _ in range(8):
        client.predict(eval_cases()[1].prompt, "", bob, api_name="/blind_trial")
    with pytest.raises(AppError, match="8 blind trials open"):
        client.predict(eval_cases()[1].prompt, "", bob, api_name="/blind_trial")


@pytest.mark.parametrize("argv, message", [
    (["--labeler", "larger", "smaller", "--connect", "http://127.0.0.1:1/"], "one --labeler"),
    (["--labeler", "larger", "--data-dir", "d"], "name a connected studio"),
    (["--labeler", "larger", "--think-s", "2", "1"], "LO <= HI"),
    (["--labeler", "larger", "--blind-trials", "5000"], "at most 4000 blind trials"),
    (["--labeler", "larger", "--checkpoints", "0"], "must be >= 1"),
])
def test_bad_arguments_are_refused_before_anything_starts(argv, message, capsys):
    with pytest.raises(SystemExit):
        person.parse(argv)
    assert message in capsys.readouterr().err


class FakeClient:
    """Answers `/status` with the (worker state, votes pending) given, one per call (the last one repeats)."""

    def __init__(self, states=(), errors=()):
        self.states, self.errors, self.calls = list(states), list(errors), []

    def predict(self, *args, api_name):
        self.calls.append(api_name)
        if self.errors:
            raise self.errors.pop(0)
        state, pending = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"worker_state": state, "votes_pending": pending}


IDLE, SEEN_ALL, TRAINING = ("idle", 8), ("idle", 0), ("training", 0)


@pytest.mark.parametrize("mode, states, runs", [
    ("quiet", [SEEN_ALL], 0),  # nothing to wait for
    ("quiet", [IDLE], 0),  # votes its trigger does not take: given up after the grace time
    ("quiet", [IDLE, IDLE, TRAINING, ("idle", 8), TRAINING, SEEN_ALL], 2),  # a late start, then the next run
    ("run", [TRAINING, TRAINING, ("idle", 8), TRAINING, SEEN_ALL], 1),  # the run in progress only
    ("quiet", [("off", 8)], 0),  # no worker
])
def test_waiting_for_the_worker(monkeypatch, mode, states, runs):
    monkeypatch.setattr(person, "POLL_S", 0.01)
    waited = person.wait_for_worker(FakeClient(states), mode, grace_s=0.5, max_s=5)
    assert waited["runs_finished"] == runs and not waited["timed_out"]


def test_waiting_for_the_worker_is_bounded(monkeypatch):
    monkeypatch.setattr(person, "POLL_S", 0.01)
    assert person.wait_for_worker(FakeClient([TRAINING]), "quiet", grace_s=0.05, max_s=0.1)["timed_out"]


def test_a_rate_limit_is_waited_out_and_other_errors_are_not():
    limited = AppError("rate limit: try again in 0 s (at most 30 pairs per 60 s per annotator)")
    client = FakeClient([SEEN_ALL], errors=[limited, limited])
    me = person.Person(client, "id", "anon", None, (0.0, 0.0), None)
    assert me.call("/status") == {"worker_state": "idle", "votes_pending": 0} and len(client.calls) == 3
    client = FakeClient([SEEN_ALL], errors=[AppError("the prompt is empty")])
    with pytest.raises(AppError, match="prompt is empty"):
        person.Person(client, "id", "anon", None, (0.0, 0.0), None).call("/status")
