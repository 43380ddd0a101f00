"""Blind A/B through the public API (`/blind_trial`, `/blind_choice`) of a studio served in this process: the
side stays on the server, a trial is its owner's and answered once, bad input is a clear error that writes
nothing, open trials are bounded and expire, and choices go through `Studio.record_blind` (its rate limits and its
table, apart from the training votes)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app.access import RateLimits
from app.blind import PendingTrials
from app.ui import build_ui, launch
from tests.support.lora import random_lora
from tests.support.studio import api_identity, free_port, register_adapter

PROMPT = "a small green circle on an orange background"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serve(studio):
    demo = build_ui(studio)
    port = free_port()
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture
def serve_live(swap_studio, monkeypatch):
    """Serves `swap_studio` with a live stand-in adapter: call it, with the server's `PendingTrials` settings
    (a limit, a clock) if any, for (client, version); the server closes after the test."""
    demos = []

    def start(**trials) -> tuple[Client, int]:
        if trials:
            monkeypatch.setattr("app.api.PendingTrials", functools.partial(PendingTrials, **trials))
        version = register_adapter(swap_studio.repo, random_lora(0))
        demo, url = serve(swap_studio)
        demos.append(demo)
        return Client(url, verbose=False), version

    yield start
    for demo in demos:
        demo.close()


@pytest.fixture
def served(serve_live, swap_studio):
    """A studio with a live stand-in adapter: (client, studio, version)."""
    client, version = serve_live()
    return client, swap_studio, version


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def stored_trials(studio) -> int:
    return sum(sum(studio.repo.ab_results(adapter_version=v).values()) for v in studio.versions())


def test_a_trial_shows_base_and_adapter_and_keeps_the_side_on_the_server(served):
    client, studio, version = served
    me = api_identity(client)
    trial = client.predict(PROMPT, "4", me, api_name="/blind_trial")
    assert set(trial) == {"trial", "left", "right", "prompt", "seed", "adapter_version", "expires_in_s"}
    assert (trial["prompt"], trial["seed"], trial["adapter_version"]) == (PROMPT, 4, version)
    assert Path(trial["left"]).name == Path(trial["right"]).name  # not even a file name tells the sides apart
    base, adapted = studio.compare(PROMPT, 4, None, version, annotator="test")
    shown = pixels(trial["left"]), pixels(trial["right"])
    adapter_left = np.array_equal(shown[0], np.asarray(adapted))
    assert np.array_equal(shown[1 if adapter_left else 0], np.asarray(base))
    assert np.array_equal(shown[0 if adapter_left else 1], np.asarray(adapted))
    answer = client.predict(trial["trial"], "left", me, api_name="/blind_choice")
    assert answer["outcome"] == ("adapter" if adapter_left else "base") and answer["trial"] == trial["trial"]
    assert answer["version"] == version and answer["n"] == 1 and answer["rate"] == float(adapter_left)
    assert 0 <= answer["lo"] <= answer["rate"] <= answer["hi"] <= 1
    assert studio.counts()["votes"] == 0  # never training data
    assert studio.win_rate(version, me.split(".")[0])["n"] == 1


def test_a_trial_is_its_owners_and_answered_once(served):
    client, studio, version = served
    alice, bob = api_identity(client), api_identity(client)
    trial = client.predict(PROMPT, "", alice, api_name="/blind_trial")["trial"]
    with pytest.raises(AppError, match="given to another annotator"):
        client.predict(trial, "left", bob, api_name="/blind_choice")
    with pytest.raises(AppError, match="nobody is acting"):
        client.predict(trial, "left", "", api_name="/blind_choice")
    with pytest.raises(AppError, match="not issued by this studio"):
        client.predict(trial, "left", alice + "x", api_name="/blind_choice")
    assert stored_trials(studio) == 0
    assert client.predict(trial, "tie", alice, api_name="/blind_choice")["outcome"] == "tie"  # bob closed nothing
    with pytest.raises(AppError, match="answered already"):
        client.predict(trial, "right", alice, api_name="/blind_choice")
    assert stored_trials(studio) == 1


@pytest.mark.parametrize("trial, choice, message", [
    ("never-issued", "left", "no blind trial has that id"), ("", "left", "no blind trial given"),
    ("x" * 500, "left", "is the text /blind_trial gave you"), (None, "left", "no blind trial given"),
])
def test_unknown_trials_are_clear_errors(served, trial, choice, message):
    client, studio, _ = served
    me = api_identity(client)
    with pytest.raises(AppError, match=message):
        client.predict(trial, choice, me, api_name="/blind_choice")
    assert stored_trials(studio) == 0


def test_a_bad_choice_leaves_the_trial_open_for_a_good_one(served):
    client, studio, _ = served
    me = api_identity(client)
    trial = client.predict(PROMPT, "", me, api_name="/blind_trial")["trial"]
    for bad in ("both_bad", "skip", "", "LEFT"):
        with pytest.raises(AppError, match="blind choice must be one of"):
            client.predict(trial, bad, me, api_name="/blind_choice")
    assert stored_trials(studio) == 0
    assert client.predict(trial, "right", me, api_name="/blind_choice")["n"] == 1


@pytest.mark.parametrize("args, message", [
    (("", ""), "prompt is empty"), (("x" * 501, ""), "limit is 500"), ((PROMPT, "1, 2"), "give 1 seed"),
    ((PROMPT, "-3"), "out of range"),
])
def test_bad_trial_requests_are_refused_and_keep_nothing_open(served, args, message):
    client, studio, _ = served
    me = api_identity(client)
    with pytest.raises(AppError, match=message):
        client.predict(*args, me, api_name="/blind_trial")
    with pytest.raises(AppError, match="nobody is acting"):
        client.predict(PROMPT, "", "", api_name="/blind_trial")


def test_no_trial_before_an_adapter_is_live(swap_studio):
    demo, url = serve(swap_studio)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="no adapter is live"):
            client.predict(PROMPT, "", api_identity(client), api_name="/blind_trial")
    finally:
        demo.close()


def test_too_many_open_trials_are_refused_before_rendering(serve_live, swap_studio, monkeypatch):
    client, _ = serve_live(per_annotator=3)  # the default's limit, PER_ANNOTATOR, is tested in test_blind.py
    rendered = []
    render = swap_studio.blind_trial
    monkeypatch.setattr(swap_studio, "blind_trial", lambda *a, **k: rendered.append(1) or render(*a, **k))
    alice, bob = api_identity(client), api_identity(client)
    trials = [client.predict(PROMPT, "", alice, api_name="/blind_trial")["trial"] for _ in range(3)]
    with pytest.raises(AppError, match="3 blind trials open"):
        client.predict(PROMPT, "", alice, api_name="/blind_trial")
    assert len(rendered) == 3
    client.predict(PROMPT, "", bob, api_name="/blind_trial")  # another annotator is not held up
    client.predict(trials[0], "left", alice, api_name="/blind_choice")
    client.predict(PROMPT, "", alice, api_name="/blind_trial")  # room again after an answer


def test_unanswered_trials_expire(serve_live, swap_studio):
    clock = Clock()
    client, _ = serve_live(ttl_s=60, clock=clock)
    me = api_identity(client)
    trial = client.predict(PROMPT, "", me, api_name="/blind_trial")
    assert trial["expires_in_s"] == 60
    clock.now = 61.0
    with pytest.raises(AppError, match="expired"):
        client.predict(trial["trial"], "left", me, api_name="/blind_choice")
    assert stored_trials(swap_studio) == 0


def test_choices_count_against_the_vote_rate_limit_like_the_tab(served):
    client, studio, _ = served
    studio.limits = RateLimits.per_minute(0, 1)
    me = api_identity(client)
    first, second = (client.predict(PROMPT, "", me, api_name="/blind_trial")["trial"] for _ in range(2))
    client.predict(first, "left", me, api_name="/blind_choice")
    with pytest.raises(AppError, match="rate limit"):
        client.predict(second, "left", me, api_name="/blind_choice")
    assert stored_trials(studio) == 1
    studio.limits = RateLimits.off()
    assert client.predict(second, "left", me, api_name="/blind_choice")["n"] == 2  # it stayed open
