"""Following the live adapter: storage says which version is live, the sampler swaps to it with the heavy part of
the swap done beside generation."""

import time

import pytest
import torch

from alignment.serving.live import LiveFollower, sync_live_adapter
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from storage import Repository
from tests.support.lora import latents, random_lora


@pytest.fixture
def repo(tmp_path):
    r = Repository(tmp_path / "data")
    yield r
    r.close()


def register(repo, lora: bytes, live: bool = True) -> int:
    record = repo.register_adapter(lora, parent_version=None, objective="discounted", hyperparams={}, votes_used=0,
                                   metrics={})
    if live:
        repo.set_adapter_status(record.version, "live")
    return record.version


def test_the_follower_swaps_to_each_new_live_version_preparing_beside_generation(repo, fresh_sampler, monkeypatch):
    loras = random_lora(1), random_lora(2)
    follower = LiveFollower(fresh_sampler, repo)
    assert not follower.follow_once()  # nothing live, the base is served
    v1 = register(repo, loras[0])
    assert follower.follow_once() and fresh_sampler.adapter_version == v1
    prepared = []
    real = Sampler.prepare
    monkeypatch.setattr(Sampler, "prepare", lambda self, *a: prepared.append(real(self, *a)) or prepared[-1])
    v2 = register(repo, loras[1])
    assert follower.follow_once() and fresh_sampler.adapter_version == v2
    assert prepared == [True]  # the second version was prepared, so the lock was held only for the commit
    reference = Sampler(load_pipeline())
    sync_live_adapter(reference, repo)  # the plain path: the whole swap under the lock
    assert torch.equal(latents(fresh_sampler), latents(reference))
    assert not follower.follow_once()  # nothing changed
    repo.set_adapter_status(v2, "retired")
    assert follower.follow_once() and fresh_sampler.adapter_version is None


def test_the_follower_thread_picks_up_a_version_registered_later(repo, fresh_sampler):
    follower = LiveFollower(fresh_sampler, repo, interval_s=0.05)
    follower.start()
    try:
        version = register(repo, random_lora(3))
        deadline = time.monotonic() + 60
        while fresh_sampler.adapter_version != version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fresh_sampler.adapter_version == version
    finally:
        follower.stop()
    assert not follower._thread.is_alive()
    with pytest.raises(ValueError):
        LiveFollower(fresh_sampler, repo, interval_s=0)


def test_a_version_made_live_while_the_follower_prepares_another_wins(repo, fresh_sampler, monkeypatch):
    follower = LiveFollower(fresh_sampler, repo)
    v1 = register(repo, random_lora(1))
    follower.follow_once()
    v1_latents = latents(fresh_sampler)
    v2 = register(repo, random_lora(2))
    real = Sampler.prepare

    def prepare_while_an_admin_rolls_back(self, *args):
        out = real(self, *args)
        repo.set_adapter_status(v1, "live")  # the rollback lands between prepare and the commit
        return out

    monkeypatch.setattr(Sampler, "prepare", prepare_while_an_admin_rolls_back)
    follower.follow_once()
    assert repo.live_adapter().version == v1 and fresh_sampler.adapter_version == v1
    assert torch.equal(latents(fresh_sampler), v1_latents)
    assert v2 != v1


def test_a_live_version_that_cannot_load_is_logged_once_and_the_sampler_keeps_serving(repo, fresh_sampler,
                                                                                   monkeypatch, caplog):
    follower = LiveFollower(fresh_sampler, repo)
    v1 = register(repo, random_lora(1))
    follower.follow_once()
    bad = register(repo, b"not a safetensors file")
    calls = []
    real = Sampler.prepare
    monkeypatch.setattr(Sampler, "prepare", lambda self, *a: calls.append(a[0]) or real(self, *a))
    assert not follower.follow_once() and not follower.follow_once()  # tried once, then skipped
    assert calls == [bad] and fresh_sampler.adapter_version == v1
    assert "cannot be loaded" in caplog.text
    v3 = register(repo, random_lora(3))
    assert follower.follow_once() and fresh_sampler.adapter_version == v3
