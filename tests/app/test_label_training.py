"""Training you can see while labeling: the status the header and the Train tab show names the worker's phase
(waiting for votes, training, checking fidelity, going live) with step/total and time left, and afterwards what
the new version changed (votes used, the guard's verdict)."""

from __future__ import annotations

from alignment.families.loader import load_pipeline
from alignment.training.trainer import Trainer
from alignment.training.worker import Worker
from app.studio import Studio, public_status
from app.tabs.train import progress_text, release_text, run_text
from app.ui import status_markdown
from settings import TrainerConfig, WorkerConfig
from storage import Repository

PROMPTS = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
           "a purple circle on a white background"]


def test_the_status_follows_a_run_through_its_phases_and_then_says_what_changed(own_sampler, tmp_path):
    repo = Repository(tmp_path / "data")
    tcfg = TrainerConfig(train_steps=3, batch_pairs=4, steps_per_pair=2)
    worker = Worker(repo, "embedded", tcfg, WorkerConfig(train_every=3, min_votes=2, fidelity_seeds=(1000,),
                                                         fidelity_prompts=4), trainer=Trainer(load_pipeline(), tcfg))
    studio = Studio(own_sampler, repo, worker)
    try:
        for i, prompt in enumerate(PROMPTS):
            view = studio.new_pair(prompt, [2 * i, 2 * i + 1], annotator="ann")
            studio.vote(view.id, "left", annotator="ann")
        before = studio.status()
        assert before["training_phase"] == "waiting for votes" and before["last_release"] is None
        assert "Worker: **stopped**" in status_markdown(before)  # never started here: run_once drives it

        seen: list[dict] = []
        report_progress = worker.report_progress

        def watched_progress(step, total):
            report_progress(step, total)
            seen.append(studio.status())

        guard = worker.guard(worker.trainer())
        decide = guard.decide

        def watched_decide(*args, **kwargs):
            seen.append(studio.status())
            return decide(*args, **kwargs)

        register = repo.register_adapter

        def watched_register(*args, **kwargs):
            seen.append(studio.status())
            return register(*args, **kwargs)

        worker.report_progress, guard.decide, repo.register_adapter = watched_progress, watched_decide, \
            watched_register
        run = worker.run_once()
        assert run["status"] in ("live", "rejected") and run["votes_used"] == 4

        phases = [s["training_phase"] for s in seen]
        assert phases[0] == "training" and phases[-2:] == ["checking fidelity", "going live"]
        training = [s for s in seen if s["training_phase"] == "training"]
        assert [tuple(s["training_progress"]) for s in training] == [(1, 3), (2, 3), (3, 3)]
        assert training[0]["time_left_s"] >= 0 and training[-1]["time_left_s"] == 0
        assert "**training** step 2/3" in status_markdown(training[1]) and " left" in status_markdown(training[1])

        after = public_status(studio.status())
        assert after["training_phase"] == "waiting for votes" and after["training_progress"] is None
        release = after["last_release"]
        assert (release["version"], release["votes_used"], release["new_votes"]) == (run["version"], 4, 4)
        assert release["guard_passed"] is (run["status"] == "live")
        header = status_markdown(after)
        assert f"v{run['version']} {'went live' if run['status'] == 'live' else 'was rejected'}: 4 votes" in header
        assert ("guard passed" if run["status"] == "live" else "guard failed") in header
        assert "Latest version:" in run_text(after)
    finally:
        studio.close()


def test_progress_and_release_lines_read_as_sentences():
    status = {"worker_state": "training", "training_phase": "training", "training_progress": (30, 120),
              "time_left_s": 135.0, "votes_pending": 2}
    assert progress_text(status) == "**training** step 30/120, 2 min left"
    assert progress_text(status, bar=True).startswith("`█████░░░░░░░░░░░░░░░` ")
    assert progress_text({"worker_state": "off", "training_phase": None}) == "**off**"
    assert progress_text({"worker_state": "idle", "training_phase": "waiting for votes", "votes_pending": 3}) == \
        "**waiting for votes** (3 new since the last run)"
    assert progress_text({"worker_state": "training", "training_phase": "checking fidelity"}) == \
        "**checking fidelity**"
    release = {"version": 3, "status": "live", "votes_used": 24, "new_votes": 8, "guard_passed": True,
               "fidelity_base": 0.931, "fidelity_candidate": 0.912}
    assert release_text(release) == "v3 went live: 24 votes (+8), guard passed (fidelity 0.912 vs base 0.931)"
    assert release_text(None) == ""
