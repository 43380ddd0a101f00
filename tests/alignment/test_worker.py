"""The worker end to end on storage: train on votes, register, promote or reject, keep the live adapter on failure."""

import threading
import time
from dataclasses import fields, replace

import pytest
import torch

from alignment.training.fidelity import FidelityGuard
from alignment.serving.live import LiveModel
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.core.lora_files import read_lora
from alignment.eval.simulate import collect_round
from alignment.training.trainer import Trainer
from settings import TrainerConfig
from alignment.training.worker import LEASE_NAME, Worker
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


GUARD_SETTINGS = {f.name for f in fields(WorkerConfig)}


def make_worker(repo, **cfg):
    """A worker on a fresh embedded trainer: keyword arguments go to TrainerConfig, or to WorkerConfig when they
    name one of its fields (the fidelity guard's settings)."""
    guard = {k: cfg.pop(k) for k in list(cfg) if k in GUARD_SETTINGS}
    tcfg = TrainerConfig(**{"train_steps": 3, "batch_pairs": 4, "steps_per_pair": 2, **cfg})
    wcfg = WorkerConfig(**{"train_every": 3, "min_votes": 2, "fidelity_seeds": (1000,), "fidelity_prompts": 6,
                           **guard})
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
        live = LiveModel(Sampler(load_pipeline()), repo_with_votes)
        assert live.sync() and live.adapter_version == run["version"]
        assert not live.sync()  # nothing changed: no swap
    assert not worker.should_train()  # no new votes since the run
    runs = repo_with_votes.list_training_runs()
    assert runs[0].status in ("succeeded", "rejected") and runs[0].adapter_version == run["version"]


def test_a_failing_run_is_recorded_and_keeps_the_live_adapter(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes)
    first = worker.run_once()
    repo_with_votes.set_adapter_status(first["version"], "live")
    monkeypatch.setattr(worker.trainer(), "guided_eps", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
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


def test_only_one_run_at_a_time(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes)
    inside, release = threading.Event(), threading.Event()

    def blocked_train(pairs, progress=None):  # holds the run open until the test has tried a second one
        inside.set()
        release.wait(30)
        raise RuntimeError("stand-in run ends here")

    monkeypatch.setattr(worker.trainer(), "train", blocked_train)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(worker.run_once()))
    thread.start()
    try:
        assert inside.wait(60)
        assert worker.state()["state"] == "training"
        assert worker.run_once() is None and worker.request_training() is False
        assert not worker.train_requested
    finally:
        release.set()
        thread.join(60)
    assert first[0]["status"] == "failed" and "stand-in" in first[0]["error"]
    assert worker.request_training() is True and worker.train_requested  # free again once the run ended


def test_an_adapter_the_guard_cannot_measure_stays_a_candidate_with_the_reason(repo_with_votes):
    """Fail-closed: a scorer that answers NaN decides nothing, and drift is off: registered, never promoted."""
    worker = make_worker(repo_with_votes, fidelity_scorer="tests.support.scorers:nan_scorer", fidelity_max_drift=None)
    run = worker.run_once()
    assert run["status"] == "candidate" and "returned nan" in run["reason"]
    record = repo_with_votes.get_adapter(run["version"])
    assert record.status == "candidate" and "not promoted automatically" in record.status_reason
    assert record.metrics["fidelity_scored"] is False and record.metrics["fidelity_passed"] is False
    assert record.metrics["fidelity_scorer"] == "tests.support.scorers:nan_scorer"
    assert repo_with_votes.live_adapter() is None and worker.state()["last_error"] == run["reason"]
    assert repo_with_votes.list_training_runs()[0].status == "succeeded"  # training worked; the verdict is pending
    repo_with_votes.set_adapter_status(run["version"], "live", "made live by admin")  # an admin still can
    assert repo_with_votes.live_adapter().version == run["version"]


def test_a_guard_with_no_prompts_leaves_the_adapter_a_candidate(repo_with_votes):
    worker = make_worker(repo_with_votes, fidelity_seeds=(1000,), fidelity_prompts=None)
    worker.guard(worker.trainer()).prompts = []  # e.g. a prompt list that came out empty
    run = worker.run_once()
    assert run["status"] == "candidate" and "no prompts" in run["reason"]
    assert repo_with_votes.live_adapter() is None


def test_a_scorer_that_cannot_be_built_fails_the_run_before_training(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes, fidelity_scorer="tests.support.scorers:no_such_scorer")
    monkeypatch.setattr(worker.trainer(), "train", lambda *a, **k: pytest.fail("trained before the guard was built"))
    run = worker.run_once()
    assert run["status"] == "failed" and "ScorerError" in run["error"] and "no_such_scorer" in run["error"]
    assert repo_with_votes.list_adapters() == []


def test_registering_and_promoting_check_the_workers_lease_fence(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes)
    fences = []
    for name in ("register_adapter", "set_adapter_status"):
        real = getattr(repo_with_votes, name)
        monkeypatch.setattr(repo_with_votes, name,
                            lambda *a, _real=real, _name=name, **k: fences.append((_name, k.get("fence"))) or _real(*a, **k))
    run = worker.run_once()
    assert [name for name, _ in fences] == ["register_adapter", "set_adapter_status"], run
    assert all(f is not None and f.holder == worker.lease_holder_id and f.name == LEASE_NAME for _, f in fences)


def test_serve_polls_until_stopped_and_survives_a_failing_poll(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes, warm_guard=False)  # only the polls (rendering ahead asks should_train too)
    worker.config = replace(worker.config, poll_s=0.01)
    polls = []

    def should_train():
        polls.append(1)
        if len(polls) == 1:
            raise RuntimeError("database hiccup")
        return False

    monkeypatch.setattr(worker, "should_train", should_train)
    worker.serve(between_polls=lambda: len(polls) >= 3 and worker.stop(timeout=0))
    assert len(polls) == 3 and "database hiccup" in worker.state()["last_error"]
    assert worker.state()["state"] == "stopped"


def test_worker_cli_passes_gpu_training_settings_and_refuses_bad_ones(tmp_path, capsys, monkeypatch):
    from alignment.training.worker import main, parse_args

    monkeypatch.delenv("STUDIO_MICRO_BATCH", raising=False)
    parsed = parse_args(["--data-dir", str(tmp_path), "--mixed-precision", "bf16", "--gradient-checkpointing",
                         "--rank", "8", "--batch-pairs", "2", "--lease-ttl", "60", "--once"])
    trainer, worker = parsed.build(TrainerConfig), parsed.build(WorkerConfig)
    assert (trainer.mixed_precision, trainer.gradient_checkpointing, trainer.lora_rank, trainer.batch_pairs) == (
        "bf16", True, 8, 2)
    assert worker.lease_ttl_s == 60 and parsed.extra.once
    monkeypatch.setenv("STUDIO_MICRO_BATCH", "2")
    assert parse_args([]).build(TrainerConfig).micro_batch == 2
    for argv, message in ((["--rank", "0"], "lora_rank must be at least 1"),
                          (["--mixed-precision", "fp8"], "invalid choice: 'fp8'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--data-dir", str(tmp_path), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before touching the data dir


def test_a_vote_that_commits_after_a_larger_id_was_read_still_counts_as_pending(tmp_path):
    """On a server database ids are handed out at insert, not at commit; simulated here by removing vote 2 and
    writing it back after the worker read its watermark."""
    from sqlalchemy import text

    from tests.support.studio import stored_votes

    repo = Repository(tmp_path / "data")
    stored_votes(repo, [("a", "left"), ("b", "right"), ("c", "left")])
    with repo.engine.begin() as conn:
        late = conn.execute(text("SELECT pair_id, annotator, choice, created_at FROM vote WHERE id = 2")).one()
        conn.execute(text("DELETE FROM vote WHERE id = 2"))
    record = repo.register_adapter(b"v1", parent_version=None, objective="discounted",
                                   hyperparams={"last_vote_id": 3}, votes_used=2, metrics={})
    repo.set_adapter_status(record.version, "live")
    worker = Worker(repo, "embedded", config=WorkerConfig(train_every=1, min_votes=1))
    assert worker.votes_pending() == 0
    with repo.engine.begin() as conn:  # the in-flight vote commits now, with the smaller id
        conn.execute(text("INSERT INTO vote (id, pair_id, annotator, choice, created_at) "
                          "VALUES (2, :pair_id, :annotator, :choice, :created_at)"), late._asdict())
    assert repo.votes_since(3) == 0  # what the worker used to look at
    assert worker.votes_pending() == 1 and worker.should_train()
    repo.close()


def test_the_guards_base_images_are_rendered_while_waiting_so_a_run_renders_only_candidates(repo_with_votes,
                                                                                            monkeypatch):
    worker = make_worker(repo_with_votes, fidelity_seeds=(1000, 1001), fidelity_prompts=2, train_every=20)
    renders = []
    real = FidelityGuard._render
    monkeypatch.setattr(FidelityGuard, "_render", lambda self, sampler, plan, done=None: renders.append(len(plan))
                        or real(self, sampler, plan, done))
    assert not worker.should_train() and worker._warm_guard_due()  # votes, but not enough for a run
    assert worker.warm_guard()  # the base's selection and confirmation images
    assert renders == [4, 4] and worker.guard(worker.trainer()).base_ready
    assert not worker._warm_guard_due() and not worker.warm_guard()  # once per worker
    worker.request_training()
    run = worker.run_once()
    assert run["status"] in ("live", "rejected")
    assert len(renders) == 2 + run["metrics"]["checkpoints_checked"] + 1  # candidates only: checks + confirmation
    cold = make_worker(repo_with_votes, fidelity_seeds=(1000, 1001), fidelity_prompts=2, warm_guard=False)
    assert not cold._warm_guard_due()
    rare = make_worker(repo_with_votes, fidelity_seeds=(1000, 1001), fidelity_prompts=2, train_every=25)
    assert not rare._warm_guard_due()  # 6 votes: not yet a quarter of the 25 that start a run


def test_a_stopped_worker_stops_rendering_ahead(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes, fidelity_seeds=(1000, 1001), fidelity_prompts=2, train_every=20)
    worker._stop.set()
    assert not worker.warm_guard() and not worker.guard(worker.trainer()).base_ready


def test_rendering_ahead_gives_way_to_a_run_that_becomes_due(repo_with_votes, monkeypatch):
    worker = make_worker(repo_with_votes, fidelity_seeds=(1000, 1001), fidelity_prompts=2, train_every=20)
    real = FidelityGuard._render
    renders = []

    def render(self, sampler, plan, done=None):
        renders.append(len(plan))
        return real(self, sampler, plan, done)

    monkeypatch.setattr(FidelityGuard, "_render", render)
    # the votes for a run arrive once the selection set is rendered
    monkeypatch.setattr(worker, "should_train", lambda: "selection" in worker.guard(worker.trainer())._base_cache)
    assert not worker.warm_guard()
    guard = worker.guard(worker.trainer())
    assert renders == [4, 4] and "selection" in guard._base_cache and not guard.base_ready  # kept what it finished


@pytest.mark.parametrize("phase", ["training", "checking fidelity"])
def test_stopping_the_worker_ends_its_run_as_interrupted_between_two_steps(repo_with_votes, phase):
    """A studio that closes does not leave its run going on beside what comes next: the run stops at the next
    training step or guard render, is closed as interrupted, and registers nothing."""
    worker = make_worker(repo_with_votes, train_steps=400 if phase == "training" else 2, warm_guard=False,
                         poll_s=0.05, fidelity_seeds=tuple(range(1000, 1040)), fidelity_prompts=1)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (worker.state()["phase"] == phase
                                               and (phase != "training" or (worker._progress or (0,))[0] >= 1)):
        time.sleep(0.02)
    assert worker.state()["phase"] == phase, worker.state()
    start = time.monotonic()
    worker.stop(timeout=60)
    assert time.monotonic() - start < 15 and not worker._thread.is_alive()  # a step or a batch, not the run
    [run] = repo_with_votes.list_training_runs()
    assert run.status == "interrupted" and "stopped" in run.error
    assert repo_with_votes.list_adapters() == [] and worker.state()["state"] == "stopped"
