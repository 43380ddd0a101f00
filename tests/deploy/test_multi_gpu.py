"""Multi-GPU training through `accelerate launch`, checked for real with two CPU processes (gloo backend).

`accelerate launch --multi_gpu --num_processes 2 -m alignment.worker` (on a machine without CUDA the worker joins
as CPU processes) trains on the votes in the database: rank 0 is the worker (lease, guard, registration), rank 1
follows its runs, each process trains on half of every batch and the LoRA gradients are all-reduced. Checked here:

- the adapter it registers matches the one a single process trains on the same pairs with the same seeds (same
  global batches, so only float rounding differs; without the gradient all-reduce rank 0's LoRA differs from it by
  about 30 % and the run fails its ranks-in-sync check);
- between runs the follower waits, and it joins the next run when new votes arrive;
- only rank 0 touches the database: one training run and one adapter per run.
"""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load

from alignment.families.loader import load_pipeline
from alignment.training.trainer import Trainer
from settings import TrainerConfig
from alignment.training.worker import Worker
from settings import WorkerConfig
from storage import Repository
from tests.support.studio import free_port
from tests.support.processes import SMALL_GUARD, SMALL_GUARD_CONFIG, start_worker, stop_all, tail, wait_for

PROMPTS = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
           "a purple circle on a white background", "a blue square", "an orange triangle",
           "a small red square on a white background", "a large blue triangle"]
WORKER_ARGS = ("--train-every", "2", "--min-votes", "2", "--train-steps", "3", *SMALL_GUARD)


def add_votes(repo, embedded, prompts, seed0: int) -> None:
    from alignment.eval.labelers import larger
    from alignment.serving.sampler import Sampler
    from alignment.eval.simulate import collect_round

    assert collect_round(Sampler(embedded), repo, larger, prompts, seed0, "tester") == len(prompts)


def lora(repo, version: int) -> dict[str, torch.Tensor]:
    return load(repo.read_blob(repo.get_adapter(version).file_hash))


def test_two_processes_train_the_adapter_one_process_would(tmp_path, embedded):
    two, one = tmp_path / "two-processes", tmp_path / "one-process"
    with Repository(two) as repo:
        add_votes(repo, embedded, PROMPTS[:6], seed0=0)
    shutil.copytree(two, one)  # the same database and blobs for the single-process reference

    log = tmp_path / "launch.log"
    launch = start_worker(two, *WORKER_ARGS, log=log, processes=2, port=free_port())
    repo = Repository(two)

    def registered(n: int):
        """The training runs once `n` of them have registered an adapter (oldest first)."""
        runs = repo.list_training_runs()[::-1]
        return runs if sum(r.adapter_version is not None for r in runs) >= n else None

    try:
        first = wait_for(lambda: registered(1), timeout=300, what="the first 2-process run",
                         procs=[("accelerate launch", launch)])
        add_votes(repo, embedded, PROMPTS[6:], seed0=100)  # two more votes: a second run on the same processes
        runs = wait_for(lambda: registered(2), timeout=300, what="the second 2-process run",
                        procs=[("accelerate launch", launch)])
    finally:
        stop_all([launch])
    text = tail(log, 100_000)
    assert "training process 1 of 2 follows the main process" in text and "(2 training process(es))" in text
    assert len(runs) == 2 and all(r.status in ("succeeded", "rejected") for r in runs), text[-3000:]
    adapters = repo.list_adapters()
    assert len(adapters) == 2  # one per run: rank 1 registered nothing
    assert sorted(a.votes_used for a in adapters) == [6, 8]  # the second run saw the two new votes
    assert all(r.metrics["processes"] == 2 for r in runs)

    # The reference: the same worker in one process (in this one), with the settings the command line gave.
    with Repository(one) as reference:
        tcfg = TrainerConfig(train_steps=3)
        worker = Worker(reference, "embedded", tcfg, WorkerConfig(train_every=2, min_votes=2, **SMALL_GUARD_CONFIG),
                        trainer=Trainer(load_pipeline("embedded"), tcfg))
        ref_run = worker.run_once()
        assert ref_run["metrics"]["processes"] == 1
        ref = lora(reference, ref_run["version"])
    got = lora(repo, first[0].adapter_version)
    repo.close()
    assert got.keys() == ref.keys() and len(got) > 0
    # lora "up" weights start at zero, so their norm is what training moved; the "down" ones start equal (seeded).
    ups = [k for k in got if ".lora.up." in k or "lora_B" in k]
    moved = torch.sqrt(sum((ref[k].float() ** 2).sum() for k in ups))
    diff = torch.sqrt(sum(((got[k].float() - ref[k].float()) ** 2).sum() for k in ups))
    assert moved > 0 and diff / moved < 1e-3, (diff / moved).item()
    assert max((got[k].float() - ref[k].float()).abs().max().item() for k in got) < 1e-4
