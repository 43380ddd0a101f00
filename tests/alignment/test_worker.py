"""The worker end to end on storage: train on votes, register, promote or reject, keep the live adapter on failure."""

from dataclasses import replace

import pytest
import torch

from alignment.training.fidelity import FidelityGuard
from alignment.serving.live import sync_live_adapter
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.core.lora_files import read_lora
from alignment.eval.simulate import collect_round
from alignment.training.trainer import Trainer
from settings import TrainerConfig
from alignment.training.worker import Worker
from settings import WorkerConfig
from storage import Repository


@pytest.fixture
def repo_with_votes(tmp_path, embedded):
    repo = Repository(tmp_path / "data")
    prompts = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
               "a purple circle on a white background", "a blue square", "an orange triangle"]
    collect_round(Sampler(embedded), repo, load_labeler_larger(), prompts, 0, "tester")
    yield repo
    repo.close()


def load_labeler_larger():
    from alignment.eval.labelers import larger
    return larger


def make_worker(repo, **cfg):
    tcfg = TrainerConfig(train_steps=3, batch_pairs=4, steps_per_pair=2, **cfg)
    wcfg = WorkerConfig(train_every=3, min_votes=2, fidelity_seeds=(1000,), fidelity_prompts=6)
    return Worker(repo, "embedded", tcfg, wcfg,
                  trainer=Trainer(load_pipeline(), tcfg))


def test_a_run_registers_a_live_adapter_that_the_sampler_picks_up(repo_with_votes):
    worker = make_worker(repo_with_votes)
    assert worker.should_train()
    run = worker.run_once()
    assert run["status"] in ("live", "rejected")
    record = repo_with_votes.get_adapter(run["version"])
    assert record.votes_used == 6 and record.metrics["pairs"] >= 1 and "fidelity_base" in record.metrics
    if run["status"] == "live":
        sampler = Sampler(load_pipeline())
        assert sync_live_adapter(sampler, repo_with_votes) and sampler.adapter_version == run["version"]
        assert not sync_live_adapter(sampler, repo_with_votes)  # nothing changed: no swap
    assert not worker.should_train()  # no new votes since the run
    runs = repo_with_votes.list_training_runs()
    assert runs[0].status in ("succeeded", "rejected") and runs[0].adapter_version == run["version"]


def test_a_failing_run_is_recorded_and_keeps_the_live_adapter(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes)
    first = worker.run_once()
    repo_with_votes.set_adapter_status(first["version"], "live")
    monkeypatch.setattr(worker.trainer(), "_guided_eps", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    worker.request_training()
    run = worker.run_once()
    assert run["status"] == "failed" and "boom" in run["error"]
    assert repo_with_votes.live_adapter().version == first["version"]
    assert repo_with_votes.list_training_runs()[0].status == "failed"
    assert worker.state()["last_error"] and len(repo_with_votes.list_adapters()) == 1


def test_a_reward_hacked_adapter_is_rejected_by_the_fidelity_guard(repo_with_votes):
    # A huge learning rate with no effective clip wrecks the images; the guard must keep it from going live.
    worker = make_worker(repo_with_votes, lr=0.5, log_ratio_clip=100.0, beta=1000.0)
    run = worker.run_once()
    assert run["status"] in ("rejected", "failed")
    assert repo_with_votes.live_adapter() is None
    if run["status"] == "rejected":
        assert "fidelity" in repo_with_votes.get_adapter(run["version"]).status_reason


def test_an_earlier_checkpoint_goes_live_when_the_final_weights_fail_the_guard(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes, checkpoint_every=1, lr=3e-3)
    trainer = worker.trainer()
    results = []
    real_train, real_check = trainer.train, FidelityGuard.check
    monkeypatch.setattr(trainer, "train", lambda *a, **k: results.append(real_train(*a, **k)) or results[-1])

    def check(self, sampler, set_enabled):  # renders for real; fails exactly the final weights
        final = results[-1].checkpoints[-1][1]
        at_final = all(torch.equal(final[n], w) for n, w in trainer.lora_state().items())
        report = real_check(self, sampler, set_enabled)
        return replace(report, passed=not at_final, reason="fidelity fell" if at_final else None)

    monkeypatch.setattr(FidelityGuard, "check", check)
    run = worker.run_once()
    assert run["status"] == "live"
    assert (run["metrics"]["checkpoint_step"], run["metrics"]["checkpoints_checked"]) == (2, 2)
    record = repo_with_votes.get_adapter(run["version"])
    assert record.status == "live" and record.metrics["checkpoint_step"] == 2
    stored = read_lora(repo_with_votes.read_blob(record.file_hash))
    for step, expected_equal in ((2, True), (3, False)):  # the file holds step 2's weights, not the final ones
        trainer.restore(dict(results[-1].checkpoints)[step])
        exported = read_lora(trainer.export_lora())
        assert stored.keys() == exported.keys()
        assert all(torch.equal(stored[k], exported[k]) for k in stored) == expected_equal


def test_when_no_checkpoint_passes_the_final_weights_are_recorded_as_rejected(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes, checkpoint_every=1)
    real_check = FidelityGuard.check
    monkeypatch.setattr(FidelityGuard, "check",
                        lambda self, s, t: replace(real_check(self, s, t), passed=False, reason="fidelity fell"))
    run = worker.run_once()
    assert run["status"] == "rejected" and run["metrics"]["checkpoints_checked"] == 3
    assert run["metrics"]["checkpoint_step"] == 3 and repo_with_votes.live_adapter() is None
    assert repo_with_votes.get_adapter(run["version"]).status_reason == "fidelity fell"


def test_only_one_run_at_a_time(repo_with_votes):
    worker = make_worker(repo_with_votes)
    with worker._run_lock:
        assert worker.run_once() is None and worker.request_training() is False


def test_worker_cli_passes_gpu_training_settings_and_refuses_bad_ones(tmp_path):
    from alignment.training.worker import main

    with pytest.raises(SystemExit, match="lora_rank must be at least 1"):
        main(["--data-dir", str(tmp_path), "--rank", "0"])
    with pytest.raises(SystemExit):  # argparse: not one of no, fp16, bf16
        main(["--data-dir", str(tmp_path), "--mixed-precision", "fp8"])
    assert not any(tmp_path.iterdir())  # refused before touching the data dir
