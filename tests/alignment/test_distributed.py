"""`alignment.training.distributed` within one process: how `Ranks` splits a global batch and that one process
changes nothing, how rank 0's `lead` drives the worker's own loop, and that the module does not import the trainer.
The real multi-process runs (two processes under `accelerate launch`) are in tests/deploy/test_multi_gpu.py.
"""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignment.training import distributed, trainer
from alignment.training.distributed import IDLE, STOP, Ranks, launched_processes


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


def test_the_distributed_module_imports_no_trainer_and_the_trainer_imports_it():
    """One way only: trainer -> distributed (for `Ranks`); distributed knows the trainer's settings, not its module."""
    code = ("import sys, alignment.training.distributed as d; "
            "print(sorted(m for m in sys.modules if m.startswith('alignment.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "['alignment.training', 'alignment.training.distributed']"
    assert "from alignment.training.distributed import Ranks" in Path(trainer.__file__).read_text()


class FakeWorker:
    """Records how `lead` drives it: `run_once` for one run, `serve(between_polls)` for the loop."""

    def __init__(self, polls: int = 2, fail: bool = False):
        self.polls, self.fail, self.calls = polls, fail, []

    def run_once(self):
        self.calls.append("run_once")
        return {"status": "live", "version": 1}

    def serve(self, between_polls=None):
        self.calls.append("serve")
        for _ in range(self.polls):
            between_polls()
        if self.fail:
            raise KeyboardInterrupt


@pytest.mark.parametrize("once", [True, False])
def test_lead_drives_the_workers_own_loop_and_always_says_stop(monkeypatch, once):
    words = []
    monkeypatch.setattr(distributed, "send", words.append)
    worker = FakeWorker()
    run = distributed.lead(worker, once=once)
    if once:
        assert run == {"status": "live", "version": 1} and worker.calls == ["run_once"] and words == [STOP]
    else:
        assert run is None and worker.calls == ["serve"] and words == [IDLE, IDLE, STOP]
    words.clear()
    with pytest.raises(KeyboardInterrupt):  # the followers are told to stop however the loop ends
        distributed.lead(FakeWorker(polls=1, fail=True))
    assert words == [IDLE, STOP]
