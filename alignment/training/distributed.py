"""Training one worker's runs on several GPUs (or CPU processes) started by `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 4 -m alignment.worker --database-url URL --data-dir /shared

Every process loads the model and a trainer. Only the main process (rank 0) is a `Worker`: it watches the
database, holds the training lease, runs the fidelity guard and registers the adapter. The others follow
(`follow`): they wait for rank 0's word, read the same labeled pairs from the shared storage (read only, up to the
same vote id), train in lockstep with rank 0 and wait again. Words from rank 0 (object broadcasts): a run spec
`{"watermark", "annotators", "config"}`, `IDLE` (sent every poll, so a follower's wait never reaches the
collective timeout) and `STOP`.

Inside a run (`Ranks`, used by `Trainer.train`) every process draws the same global batch (same seeds) and
trains on its slice of it; the LoRA gradients are summed with one all-reduce per step after each slice's loss was
weighted by its share of the batch, so the update is the single-process update on the whole batch (what DDP does;
the UNet is not wrapped in DDP because the reference pass toggles the adapter on the module itself). The fresh
LoRA is broadcast from rank 0 before the first step, and the ranks' weights are compared after the last one.

With one process every `Ranks` method is a no-op and nothing here is used.
"""

from __future__ import annotations

import datetime as dt
import logging
import os

import torch

from settings import TrainerConfig

log = logging.getLogger(__name__)

IDLE, STOP = "idle", "stop"
# A follower waits in a broadcast between two of rank 0's polls, and during rank 0's guard and registration.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=2)


class RanksDivergedError(RuntimeError):
    """The processes of a run ended with different LoRA weights (their gradients were not synchronised)."""


class RunStoppedError(RuntimeError):
    """Another process of the run stopped it (e.g. rank 0 lost the training lease); this one stops too."""


def launched_processes() -> int:
    """How many processes the launcher started (WORLD_SIZE of `accelerate launch` / torchrun); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class Ranks:
    """The processes of one training run as the trainer sees them (from an `Accelerator`, or one process)."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.index = accelerator.process_index if accelerator is not None else 0
        self.count = accelerator.num_processes if accelerator is not None else 1

    def shard(self, items):
        """This process's slice of a global batch (a list or a tensor along dim 0): items index, index + count, ..."""
        return items if self.count == 1 else items[self.index::self.count]

    def share(self, batch_size: int) -> float:
        """The fraction of a global batch of `batch_size` that this process trains on."""
        return len(range(self.index, batch_size, self.count)) / batch_size

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.count == 1 else self.accelerator.reduce(tensor, reduction="sum")

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Start every process from rank 0's values (a fresh LoRA's random init)."""
        if self.count > 1:
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of `params` in one flat buffer."""
        if self.count == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.sum(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def guarded(self, fn, *args) -> None:
        """Call `fn(*args)` here (None: nothing); if it raised on any process, every process stops together."""
        error: Exception | None = None
        try:
            if fn is not None:
                fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below once every process knows
            if self.count == 1:
                raise
            error = e
        if self.count > 1:
            flag = torch.tensor([float(error is not None)], device=self.accelerator.device)
            if self.sum(flag).item() > 0:
                raise error or RunStoppedError("another process stopped this training run")

    def check_in_sync(self, params: list[torch.nn.Parameter]) -> None:
        """Raise `RanksDivergedError` unless every process holds the same weights (compared by fingerprint)."""
        if self.count == 1:
            return
        with torch.no_grad():
            mine = torch.stack([sum(p.double().sum() for p in params), sum(p.double().abs().sum() for p in params)])
            mine = mine.to(self.accelerator.device)
            every = self.accelerator.gather(mine[None]).view(self.count, 2)
        if not torch.allclose(every, every[0].expand_as(every), rtol=1e-9, atol=0.0):
            raise RanksDivergedError(f"LoRA weights differ between processes: fingerprints {every.tolist()}")


def init_processes(cpu: bool):
    """Join the process group that `accelerate launch` set up (gloo on CPUs, NCCL on GPUs); the `PartialState`."""
    from accelerate import PartialState

    return PartialState(cpu=cpu, timeout=COLLECTIVE_TIMEOUT)


def send(word) -> None:
    """Rank 0: tell every follower `word` (a run spec, IDLE or STOP)."""
    torch.distributed.broadcast_object_list([word], src=0)


def receive():
    """A follower: wait for rank 0's next word."""
    box = [None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def agree(ok: bool) -> bool:
    """True when `ok` is true on every process (a collective: every process must call it)."""
    flag = torch.tensor([0.0 if ok else 1.0])
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    torch.distributed.all_reduce(flag)
    return flag.item() == 0


def follow(load_pairs, trainer) -> None:
    """A follower process's loop: train on rank 0's runs until it says STOP.

    `load_pairs(watermark, annotators)` returns the labeled training pairs up to `watermark` (as rank 0 loads
    them); `trainer` is this process's `Trainer`. A run's error here is logged; rank 0 records the run's outcome.
    """
    while True:
        word = receive()
        if word == STOP:
            return
        if word == IDLE:
            continue
        try:
            pairs = load_pairs(word["watermark"], word["annotators"])
            trainer.config = TrainerConfig(**word["config"])
            ok = True
        except Exception as e:  # noqa: BLE001 - reported to rank 0 through `agree`
            log.exception("could not load the training pairs: %s", e)
            ok = False
        if not agree(ok):
            continue
        try:
            trainer.train(pairs)
        except Exception as e:  # noqa: BLE001 - rank 0 saw the same failure and records it
            log.warning("training run failed on this process: %s: %s", type(e).__name__, e)


def announce(spec: dict) -> None:
    """Rank 0: start a run on every follower (`spec` as `follow` expects) once rank 0's own pairs are loaded."""
    send(spec)
    if not agree(True):
        raise RuntimeError("a follower process could not load the training pairs (see its log)")


def lead(worker, once: bool = False) -> dict | None:
    """Rank 0's loop: the worker's own polling loop (`Worker.serve`) in this thread (every collective must come
    from one thread), telling the followers IDLE after every poll; `once`: one run now. STOP on the way out;
    returns the run's summary with `once`."""
    try:
        if once:
            return worker.run_once()
        worker.serve(between_polls=lambda: send(IDLE))
        return None
    finally:
        send(STOP)
