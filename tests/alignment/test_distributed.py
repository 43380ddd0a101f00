"""`alignment.training.distributed.Ranks` within one process: how a global batch is split, and that one process changes
nothing. The real multi-process runs (two processes under `accelerate launch`) are in tests/deploy/test_multi_gpu.py.
"""

from types import SimpleNamespace

import pytest
import torch

from alignment.training.distributed import Ranks, launched_processes


def test_one_process_trains_on_the_whole_batch_and_needs_no_collectives():
    ranks = Ranks()
    batch = list(range(8))
    assert ranks.shard(batch) is batch and ranks.share(8) == 1.0
    t = torch.arange(3.0)
    assert ranks.sum(t) is t
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 0.5)
    ranks.sum_gradients([p])
    ranks.broadcast_parameters([p])
    ranks.check_in_sync([p])
    assert torch.equal(p.grad, torch.full((2,), 0.5)) and torch.equal(p.data, torch.ones(2))
    calls = []
    ranks.guarded(lambda *a: calls.append(a), 1, 2)
    ranks.guarded(None, 1, 2)
    assert calls == [(1, 2)]
    with pytest.raises(RuntimeError, match="lease"):  # one process: the error goes straight up
        ranks.guarded(lambda *a: (_ for _ in ()).throw(RuntimeError("lease lost")))


@pytest.mark.parametrize("count, batch_size", [(2, 8), (3, 8), (4, 5)])
def test_the_slices_of_the_processes_cover_the_batch_once_and_their_shares_sum_to_one(count, batch_size):
    batch = list(range(batch_size))
    slices = [Ranks(SimpleNamespace(process_index=i, num_processes=count)) for i in range(count)]
    assert sorted(x for r in slices for x in r.shard(batch)) == batch
    assert all(r.share(batch_size) == len(r.shard(batch)) / batch_size for r in slices)
    assert sum(r.share(batch_size) for r in slices) == pytest.approx(1.0)
    tensor = torch.arange(batch_size)
    assert torch.equal(slices[1].shard(tensor), torch.tensor(slices[1].shard(batch)))


def test_launched_processes_reads_the_launchers_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_processes() == 4
