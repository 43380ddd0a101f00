"""Divergence never goes live: NaN or inf injected into the loss, the gradients, the LoRA weights or the stored
trajectories, at a random step, and a learning rate that explodes, each end the run as failed with the reason,
with no adapter registered and the live adapter (and its file) unchanged. A pair whose stored trajectory is not
finite is left out of training; only when no pair is left does the run fail."""

from __future__ import annotations

import random

import pytest
import torch

from alignment.eval.labelers import larger
from alignment.eval.simulate import collect_round
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.training.trainer import Trainer
from alignment.training.worker import Worker
from settings import TrainerConfig, WorkerConfig
from storage import Repository
from tests.support.lora import random_lora
from tests.support.studio import register_adapter

PROMPTS = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
           "a purple circle on a white background", "a blue square", "an orange triangle"]
STEPS = 6


@pytest.fixture
def repo(tmp_path, embedded):
    repo = Repository(tmp_path / "data")
    collect_round(Sampler(embedded), repo, larger, PROMPTS, 0, "tester")
    register_adapter(repo, random_lora(1))  # what is live before the run
    yield repo
    repo.close()


def worker_for(repo, **trainer_settings) -> Worker:
    cfg = TrainerConfig(**{"train_steps": STEPS, "batch_pairs": 4, "steps_per_pair": 2, **trainer_settings})
    return Worker(repo, "embedded", cfg, WorkerConfig(train_every=1, min_votes=2, fidelity_seeds=(1000,),
                                                      fidelity_prompts=4), trainer=Trainer(load_pipeline(), cfg))


def assert_failed_and_nothing_changed(repo, run: dict, reason: str) -> None:
    live = repo.live_adapter()
    assert run["status"] == "failed", run
    assert reason in run["error"], run["error"]
    assert [a.version for a in repo.list_adapters()] == [1] and live.version == 1
    repo.read_blob(live.file_hash)  # the live file still verifies
    [last] = [r for r in repo.list_training_runs() if r.id == run["run_id"]]
    assert last.status == "failed" and reason in last.error


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_at_a_random_step_fails_the_run(repo, bad):
    worker = worker_for(repo)
    trainer, real = worker.trainer(), None
    real = trainer.guided_eps
    poison_at, calls = random.Random(0).randrange(1, 2 * STEPS), [0]

    def guided_eps(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        return out * bad if calls[0] >= poison_at else out

    trainer.guided_eps = guided_eps
    assert_failed_and_nothing_changed(repo, worker.run_once(), "TrainingDivergedError")


def test_non_finite_gradients_fail_the_run(repo):
    worker = worker_for(repo)
    trainer = worker.trainer()
    real = trainer.fresh_adapter

    def fresh_adapter():
        real()
        first = trainer.lora_parameters()[0]
        first.register_hook(lambda grad: torch.full_like(grad, float("nan")))

    trainer.fresh_adapter = fresh_adapter
    assert_failed_and_nothing_changed(repo, worker.run_once(), "TrainingDivergedError")


def test_lora_weights_poisoned_mid_run_fail_the_run(repo):
    worker = worker_for(repo)
    trainer, real = worker.trainer(), worker.report_progress
    poison_at = random.Random(1).randrange(1, STEPS)

    def report_progress(step, total):
        if step == poison_at:
            with torch.no_grad():
                trainer.lora_parameters()[-1].fill_(float("inf"))
        return real(step, total)

    worker.report_progress = report_progress
    assert_failed_and_nothing_changed(repo, worker.run_once(), "TrainingDivergedError")


def test_an_exploding_learning_rate_never_goes_live(repo):
    run = worker_for(repo, lr=0.9, grad_clip=1e6, log_ratio_clip=1e6).run_once()
    # Either the numbers overflow (a failed run) or the weights are finite nonsense that the guard refuses.
    assert run["status"] in ("failed", "rejected"), run
    assert repo.live_adapter().version == 1
    repo.read_blob(repo.live_adapter().file_hash)


def _store_pair(repo, sampler, prompt: str, seeds, poison: bool) -> None:
    """One voted pair; with `poison`, NaN written into the preferred side's stored trajectory at a random step."""
    from alignment.eval.simulate import png
    from storage import NewGeneration

    a, b = sampler.generate_pair(prompt, seeds)
    if poison:
        k = random.Random(seeds[0]).randrange(1, a.trajectory.latents.shape[0])
        a.trajectory.latents[k].view(-1)[0] = float("nan")
    gens = [NewGeneration(g.seed, g.trajectory.model_id, None, g.trajectory.settings, png(g.image),
                          g.trajectory.to_bytes()) for g in (a, b)]
    pair = repo.create_pair(prompt, gens[0], gens[1], served_to="tester")
    repo.record_vote(pair.id, "tester", "left")


def test_non_finite_stored_trajectories_are_left_out_and_all_of_them_fail_the_run(tmp_path, embedded):
    sampler = Sampler(embedded)
    with Repository(tmp_path / "some") as repo:  # one poisoned pair among clean ones: left out, the run goes on
        register_adapter(repo, random_lora(1))
        for i, prompt in enumerate(PROMPTS[:4]):
            _store_pair(repo, sampler, prompt, (2 * i, 2 * i + 1), poison=i == 0)
        run = worker_for(repo).run_once()
        assert run["status"] != "failed" and run["metrics"]["pairs"] == 3, run
    with Repository(tmp_path / "all") as repo:  # nothing finite to train on: failed with the reason
        register_adapter(repo, random_lora(1))
        for i, prompt in enumerate(PROMPTS[:3]):
            _store_pair(repo, sampler, prompt, (2 * i, 2 * i + 1), poison=True)
        assert_failed_and_nothing_changed(repo, worker_for(repo).run_once(), "PairError")
