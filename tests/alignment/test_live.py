"""The live model: storage says which version is live, the live model swaps to it (the heavy part beside
generation), serves every thread under its own lock, renders other versions without changing what is live, and
reads storage only while generation runs on."""

import threading
import time

import pytest
import torch

from alignment.families.loader import load_pipeline
from alignment.serving.live import LiveModel
from alignment.serving.sampler import Sampler
from alignment.serving.swap import SwapSlot
from storage import Repository, UnknownAdapterError
from tests.support.lora import latents, random_lora

PROMPT = "a blue square on a yellow background"


@pytest.fixture
def repo(tmp_path):
    r = Repository(tmp_path / "data")
    yield r
    r.close()


@pytest.fixture
def live(fresh_sampler, repo):
    model = LiveModel(fresh_sampler, repo)
    yield model
    model.stop()


def register(repo, lora: bytes, live: bool = True) -> int:
    record = repo.register_adapter(lora, parent_version=None, objective="discounted", hyperparams={}, votes_used=0,
                                   metrics={})
    if live:
        repo.set_adapter_status(record.version, "live")
    return record.version


def test_the_follower_swaps_to_each_new_live_version_preparing_beside_generation(repo, live, monkeypatch):
    loras = random_lora(1), random_lora(2)
    assert not live.follow_once()  # nothing live, the base is served
    v1 = register(repo, loras[0])
    assert live.follow_once() and live.adapter_version == v1
    prepared, commits = [], []
    real_prepare, real_commit = SwapSlot.prepare, SwapSlot.commit
    monkeypatch.setattr(SwapSlot, "prepare", lambda self, *a: prepared.append(real_prepare(self, *a)) or prepared[-1])
    monkeypatch.setattr(SwapSlot, "commit", lambda self, *a: commits.append(real_commit(self, *a)) or commits[-1])
    v2 = register(repo, loras[1])
    assert live.follow_once() and live.adapter_version == v2
    assert prepared == [True] and commits == [True]  # prepared beside generation, then only committed
    reference = LiveModel(Sampler(load_pipeline()), repo)
    assert reference.sync()  # the plain path: the whole swap
    assert torch.equal(latents(live), latents(reference))
    assert not live.follow_once() and not live.sync()  # nothing changed
    repo.set_adapter_status(v2, "retired")
    assert live.follow_once() and live.adapter_version is None


def test_the_follower_thread_picks_up_a_version_registered_later(repo, live, fresh_sampler):
    live.interval_s = 0.05
    live.start()
    try:
        version = register(repo, random_lora(3))
        deadline = time.monotonic() + 60
        while live.adapter_version != version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.adapter_version == version
    finally:
        live.stop()
    assert not live.running
    with pytest.raises(ValueError):
        LiveModel(fresh_sampler, repo, interval_s=0)


def test_a_version_made_live_while_the_follower_prepares_another_wins(repo, live, monkeypatch):
    v1 = register(repo, random_lora(1))
    live.follow_once()
    v1_latents = latents(live)
    v2 = register(repo, random_lora(2))
    real = SwapSlot.prepare

    def prepare_while_an_admin_rolls_back(self, *args):
        out = real(self, *args)
        repo.set_adapter_status(v1, "live")  # the rollback lands between prepare and the commit
        return out

    monkeypatch.setattr(SwapSlot, "prepare", prepare_while_an_admin_rolls_back)
    live.follow_once()
    assert repo.live_adapter().version == v1 and live.adapter_version == v1
    assert torch.equal(latents(live), v1_latents)
    assert v2 != v1


def test_a_live_version_that_cannot_load_is_logged_once_and_the_live_model_keeps_serving(repo, live, monkeypatch,
                                                                                      caplog):
    v1 = register(repo, random_lora(1))
    live.follow_once()
    bad = register(repo, b"not a safetensors file")
    calls = []
    real = SwapSlot.prepare
    monkeypatch.setattr(SwapSlot, "prepare", lambda self, *a: calls.append(a[0]) or real(self, *a))
    assert not live.follow_once() and not live.follow_once()  # tried once, then skipped
    assert calls == [bad] and live.adapter_version == v1
    assert "cannot be loaded" in caplog.text
    v3 = register(repo, random_lora(3))
    assert live.follow_once() and live.adapter_version == v3


def test_images_at_the_live_version_follow_storage_without_a_follower(repo, live):
    base = latents(live)
    v1 = register(repo, random_lora(1))
    (g,) = live.generate(PROMPT, [4])  # a request swaps by itself when nothing else has yet
    assert g.trajectory.adapter_version == v1 == live.adapter_version
    assert not torch.equal(g.trajectory.latents, base)
    repo.set_adapter_status(v1, "retired")
    (g,) = live.generate(PROMPT, [4])
    assert g.trajectory.adapter_version is None and torch.equal(g.trajectory.latents, base)


def test_storage_is_never_read_while_generation_is_paused(repo, live, fresh_sampler, monkeypatch):
    """Every repository call happens while nobody holds the generation lock: a probe thread can take it."""
    register(repo, random_lora(1))
    blocked = []

    def probe(name):
        real = getattr(repo, name)

        def call(*args, **kwargs):
            got = []
            t = threading.Thread(target=lambda: got.append(live.at(None).generate(PROMPT, [1])))
            t.start()
            t.join(60)  # a generation in another thread finishes: the lock is free during the query
            blocked.append((name, not got))
            return real(*args, **kwargs)
        monkeypatch.setattr(repo, name, call)

    for name in ("live_adapter", "get_adapter", "read_blob"):
        probe(name)
    live.follow_once()
    v2 = register(repo, random_lora(2))
    live.generate(PROMPT, [1])
    live.follow_once()
    live.at(v2).generate(PROMPT, [1])
    assert blocked and not any(b for _, b in blocked), blocked
    assert {name for name, _ in blocked} >= {"live_adapter", "read_blob", "get_adapter"}


def test_a_slow_request_never_swaps_back_to_a_version_a_newer_answer_replaced(repo, live, monkeypatch):
    v0 = register(repo, random_lora(0))
    v1 = register(repo, random_lora(1), live=False)
    live.sync()
    v2 = register(repo, random_lora(2))
    real, answered, resume = repo.live_adapter, threading.Event(), threading.Event()
    slow = threading.local()

    def live_adapter():
        out = real()
        if getattr(slow, "on", False):  # this thread's answer (v2) arrives late
            answered.set()
            resume.wait(60)
        return out

    monkeypatch.setattr(repo, "live_adapter", live_adapter)
    results = []

    def slow_request():
        slow.on = True
        results.append(live.generate(PROMPT, [4])[0].trajectory.adapter_version)

    t = threading.Thread(target=slow_request)
    t.start()
    assert answered.wait(60)
    repo.set_adapter_status(v1, "live")  # an admin's choice, followed before the slow answer lands
    assert live.sync() and live.adapter_version == v1
    resume.set()
    t.join(60)
    assert results == [v1] and live.adapter_version == v1  # the older answer (v2) did not win
    assert v0 != v1 != v2


def test_requests_during_swaps_never_fail_or_mix_and_each_image_is_labelled_with_its_weights(repo, live):
    loras = {None: None, 1: random_lora(1), 2: random_lora(2)}
    v1, v2 = register(repo, loras[1], live=False), register(repo, loras[2], live=False)
    expected = {None: latents(live.at(None)), v1: latents(live.at(v1)), v2: latents(live.at(v2))}
    errors, results = [], []

    def generate():
        try:
            for _ in range(4):
                (g,) = live.generate(PROMPT, [4])
                results.append((g.trajectory.adapter_version, g.trajectory.latents))
        except Exception as e:  # collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(9):
        target = (None, v1, v2)[i % 3]
        if target is None:
            live_now = repo.live_adapter()
            if live_now is not None:
                repo.set_adapter_status(live_now.version, "retired")
        else:
            repo.set_adapter_status(target, "live")
        live.follow_once() if i % 2 else live.sync()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for version, lat in results:
        assert torch.equal(lat, expected[version])


def test_rendering_other_versions_between_prepare_and_commit_keeps_the_commit_cheap(repo, live, monkeypatch):
    """Compare and blind A/B (images at a version) while the follower has a swap prepared: the swap stays prepared
    and is then committed by a pointer swap, with no whole load."""
    base = latents(live)
    v1 = register(repo, random_lora(1))
    live.sync()
    v1_latents = latents(live)
    v3 = register(repo, random_lora(3), live=False)
    v2 = register(repo, random_lora(2))
    seen, commits, loads = {}, [], []
    real_prepare, real_commit, real_load = SwapSlot.prepare, SwapSlot.commit, SwapSlot.load

    def prepare_then_compare(self, *args):
        out = real_prepare(self, *args)
        seen.update(prepared=live.prepared_version, base=latents(live.at(None)), v1=latents(live.at(v1)),
                    v3=latents(live.at(v3)), serving=live.adapter_version)
        return out

    monkeypatch.setattr(SwapSlot, "prepare", prepare_then_compare)
    monkeypatch.setattr(SwapSlot, "commit", lambda self, *a: commits.append(real_commit(self, *a)) or commits[-1])
    monkeypatch.setattr(SwapSlot, "load", lambda self, *a: loads.append(a) or real_load(self, *a))
    assert live.follow_once() and live.adapter_version == v2
    assert seen["prepared"] == v2 and seen["serving"] == v1
    assert commits == [True] and loads == []  # the prepared swap survived the renders: a commit, no whole load
    assert torch.equal(seen["base"], base) and torch.equal(seen["v1"], v1_latents)
    assert torch.equal(latents(live.at(v3)), seen["v3"]) and not torch.equal(seen["v3"], v1_latents)
    assert torch.equal(latents(live.at(v1)), v1_latents)  # rendered from v2 now: the same images
    with pytest.raises(UnknownAdapterError):
        live.at(99)
