"""Following the live adapter: storage says which version is live, the sampler swaps to it with the heavy part of
the swap done beside generation."""

import time

import pytest
import torch

from alignment.live import LiveFollower, follow_live_adapter, sync_live_adapter
from alignment.models import load_pipeline
from alignment.sampler import Sampler
from storage import Repository
from tests.alignment.test_hotswap import latents, random_lora


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
    assert not follow_live_adapter(fresh_sampler, repo)  # nothing live, the base is served
    v1 = register(repo, loras[0])
    assert follow_live_adapter(fresh_sampler, repo) and fresh_sampler.adapter_version == v1
    prepared = []
    real = Sampler.prepare
    monkeypatch.setattr(Sampler, "prepare", lambda self, *a: prepared.append(real(self, *a)) or prepared[-1])
    v2 = register(repo, loras[1])
    assert follow_live_adapter(fresh_sampler, repo) and fresh_sampler.adapter_version == v2
    assert prepared == [True]  # the second version was prepared, so the lock was held only for the commit
    reference = Sampler(load_pipeline())
    sync_live_adapter(reference, repo)  # the plain path: the whole swap under the lock
    assert torch.equal(latents(fresh_sampler), latents(reference))
    assert not follow_live_adapter(fresh_sampler, repo)  # nothing changed
    repo.set_adapter_status(v2, "retired")
    assert follow_live_adapter(fresh_sampler, repo) and fresh_sampler.adapter_version is None


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
