"""The Train tab: objective settings (validated by the alignment core), whose votes to train on, Train now, the
adapter history with make live / roll back, and plots of training loss and blind win rate over versions. A line
at the top, refreshed every 2 s, shows what the worker is doing (its phase, step/total and time left) and what the
newest version changed (votes used, the fidelity guard's verdict).

Settings apply to the next training run; an impossible value is refused with the core's message and nothing
changes. Settings, Train now, make live and roll back are admin controls (`AdminArea`): `Studio` refuses them to
others, and the UI shows them read-only. All events are private (the API has its own endpoints, `app.api`).
Knows Gradio and `Studio`.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from settings import OBJECTIVES, TRAIN_VOTERS
from app.session import actor_of, user_errors
from app.studio import Studio
from app.tabs import AdminArea
from app.tabs.compare import BASE, parse_version, version_choices, version_label
from app.tabs.label import PRIVATE

HISTORY_COLUMNS = ["version", "status", "objective", "votes used", "loss", "metrics", "created", "note"]
LOSS_COLUMNS = ["step", "loss", "version"]
WIN_COLUMNS = ["version", "win rate", "series"]
PROGRESS_EVERY_S = 2.0


def build(studio: Studio, session: gr.State) -> AdminArea:
    cfg = studio.settings_for(None)  # in the page config, which everyone can read: no annotator names
    editable = {"interactive": studio.access.everyone_admin}  # app.ui unlocks them per session at page load
    with gr.Tab("Train", id="train") as tab:
        notice = gr.Markdown(elem_id="train-access")
        run_info = gr.Markdown(elem_id="run-info")
        live_progress = gr.Markdown(elem_id="train-progress")  # the phase, kept current by a timer
        with gr.Row():
            objective = gr.Dropdown(choices=list(OBJECTIVES), value=cfg["objective"], label="Objective",
                                    info="discounted: the paper's γ-weighted DPO; trajectory: γ = 1", **editable)
            gamma = gr.Number(value=cfg["gamma"], label="γ (gamma)", info="temporal discount, (0, 1]", **editable)
            beta = gr.Textbox(value="" if cfg["beta"] is None else str(cfg["beta"]), label="β (beta)",
                              placeholder="objective's default", info="empty = the objective's default", **editable)
            lr = gr.Number(value=cfg["lr"], label="Learning rate", **editable)
            train_steps = gr.Number(value=cfg["train_steps"], precision=0, label="Steps per run", **editable)
            train_every = gr.Number(value=cfg["train_every"], precision=0, label="Train every N votes", **editable)
        annotators = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                                 label="Train on votes of", info="empty = every annotator's votes (of those "
                                 "below)", elem_id="train-annotators", **editable)
        voters = gr.Radio(choices=list(TRAIN_VOTERS), value=cfg["train_voters"], label="Whose votes train",
                          info="signed-in: password logins and Hugging Face sign-ins, no anonymous ids",
                          elem_id="train-voters", **editable)
        with gr.Row():
            apply_btn = gr.Button("Apply settings", variant="primary", elem_id="apply-settings", **editable)
            train_btn = gr.Button("Train now", elem_id="train-now", **editable)
        message = gr.Markdown(elem_id="train-message")
        history = gr.Dataframe(pd.DataFrame(columns=HISTORY_COLUMNS), label="Adapter history", interactive=False,
                               elem_id="adapter-history", wrap=True,
                               column_widths=["70px", "90px", "110px", "70px", "80px", "40%", "160px", "15%"])
        with gr.Row(equal_height=True):
            pick = gr.Dropdown(choices=[BASE], value=BASE, label="Version", elem_id="live-pick", scale=2)
            live_btn = gr.Button("Make live", elem_id="make-live", **editable)
            rollback_btn = gr.Button("Roll back", elem_id="roll-back", **editable)
            refresh_btn = gr.Button("Refresh", elem_id="train-refresh")
        with gr.Row():
            loss_plot = gr.LinePlot(pd.DataFrame(columns=LOSS_COLUMNS), x="step", y="loss", color="version",
                                    title="Training loss per step, by version", elem_id="loss-plot")
            # Points, not lines: one version gives one point per series, which a line plot would not draw.
            win_plot = gr.ScatterPlot(pd.DataFrame(columns=WIN_COLUMNS), x="version", y="win rate", color="series",
                                      y_lim=[0, 1], elem_id="winrate-plot",
                                      title="Blind win rate over base, with its 95 % interval")

    def refresh(state: dict, request: gr.Request):
        actor = actor_of(state, request)
        admin = studio.is_admin(actor)
        shown = studio.settings_for(actor)
        chosen = shown["train_annotators"] or []
        voted = [row["annotator"] for row in studio.annotator_rows(actor)[0]] if admin else []
        return (run_text(studio.status(admin=admin), shown), pd.DataFrame(studio.adapters(actor),
                                                                          columns=HISTORY_COLUMNS),
                gr.update(choices=version_choices(studio)),
                pd.DataFrame(studio.loss_points(), columns=LOSS_COLUMNS),
                pd.DataFrame(studio.win_rate_points(), columns=WIN_COLUMNS),
                gr.update(choices=sorted(set(voted) | set(chosen)), value=chosen),
                gr.update(value=shown["train_voters"]))

    # Handlers are not named like app.api's endpoints: Gradio names private events after their function as well,
    # and a clash would rename the public endpoint.
    @user_errors
    def apply(objective_v, gamma_v, beta_v, lr_v, steps_v, every_v, annotators_v, voters_v, state: dict,
              request: gr.Request):
        changes = {"objective": objective_v, "gamma": gamma_v, "beta": beta_v, "lr": lr_v, "train_steps": steps_v}
        if studio.worker is not None:  # the worker's own settings (a studio without one shows them empty)
            changes.update(train_every=every_v, train_annotators=list(annotators_v or []), train_voters=voters_v)
        new = studio.update_settings(actor=actor_of(state, request), **changes)
        return "Settings saved for the next run: " + ", ".join(f"{k} = {v}" for k, v in new.items())

    @user_errors
    def ask_training(state: dict, request: gr.Request):
        started = studio.train_now(actor=actor_of(state, request))
        return "Training requested." if started else "A training run is already going; try again when it ends."

    @user_errors
    def choose_live(label, state: dict, request: gr.Request):
        version = studio.make_live(parse_version(label), actor=actor_of(state, request))
        return f"{version_label(version)} is live."

    @user_errors
    def roll_back(state: dict, request: gr.Request):
        version = studio.rollback(actor=actor_of(state, request))
        return f"Rolled back: {version_label(version)} is live."

    def show_progress(state: dict, request: gr.Request):
        status = studio.status(max_age_s=PROGRESS_EVERY_S / 2, admin=studio.is_admin(actor_of(state, request)))
        text = f"Now: {progress_text(status, bar=True)}"
        return text + (f" · {release_text(status['last_release'])}" if status.get("last_release") else "")

    gr.Timer(PROGRESS_EVERY_S).tick(show_progress, session, live_progress, **PRIVATE, concurrency_limit=None,
                                    show_progress="hidden")
    refreshed = [run_info, history, pick, loss_plot, win_plot, annotators, voters]
    tab.select(refresh, session, refreshed, **PRIVATE)
    refresh_btn.click(refresh, session, refreshed, **PRIVATE)
    apply_btn.click(apply, [objective, gamma, beta, lr, train_steps, train_every, annotators, voters, session],
                    message, **PRIVATE)
    train_btn.click(ask_training, session, message, **PRIVATE).then(refresh, session, refreshed, **PRIVATE)
    live_btn.click(choose_live, [pick, session], message, **PRIVATE).success(refresh, session, refreshed, **PRIVATE)
    rollback_btn.click(roll_back, session, message, **PRIVATE).success(refresh, session, refreshed, **PRIVATE)
    return AdminArea(notice, [objective, gamma, beta, lr, train_steps, train_every, annotators, voters, apply_btn,
                              train_btn, live_btn, rollback_btn])


def progress_text(status: dict, *, bar: bool = False) -> str:
    """The worker's phase (waiting for votes, training, checking fidelity, going live), with step/total and the
    time left while training; `bar` adds a text progress bar (the Train tab's)."""
    phase = status.get("training_phase") or status.get("worker_state") or "off"
    if status.get("worker_state") in ("off", "stopped"):
        phase = str(status.get("worker_state"))
    text = f"**{phase}**"
    step_total = status.get("training_progress")
    if phase == "training" and step_total:
        step, total = step_total
        text += f" step {step}/{total}"
        if bar and total:
            filled = round(20 * step / total)
            text = f"`{'█' * filled}{'░' * (20 - filled)}` " + text
        if status.get("time_left_s") is not None:
            text += f", {duration(status['time_left_s'])} left"
    elif phase == "waiting for votes" and status.get("votes_pending") is not None:
        text += f" ({status['votes_pending']} new since the last run)"
    return text


def release_text(release: dict | None) -> str:
    """What the newest version changed: votes used, and the fidelity guard's verdict with its figures."""
    if not release:
        return ""
    outcome = {"live": "went live", "rejected": "was rejected", "candidate": "awaits an admin"}.get(
        release["status"], f"is {release['status']}")
    text = f"{version_label(release['version'])} {outcome}: {release['votes_used']} votes"
    if release.get("new_votes") is not None and release["new_votes"] != release["votes_used"]:
        text += f" ({release['new_votes']:+d})"
    passed = release.get("guard_passed")
    if passed is not None:
        text += f", guard {'passed' if passed else 'failed'}"
        base, cand = release.get("fidelity_base"), release.get("fidelity_candidate")
        if isinstance(base, (int, float)) and isinstance(cand, (int, float)):
            text += f" (fidelity {cand:.3g} vs base {base:.3g})"
    return text


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def run_text(status: dict, settings: dict | None = None) -> str:
    """One line about the worker and its last run (and whose votes train), and the last error if there was one."""
    parts = [f"Worker: {progress_text(status, bar=True)}",
             f"live adapter: **{version_label(status['live_adapter_version'])}**"]
    if settings and settings.get("train_voters"):
        whose = "signed-in annotators'" if settings["train_voters"] == "signed-in" else "everyone's"
        if settings.get("train_annotators"):
            whose += f" (only {', '.join(settings['train_annotators'])})"
        parts.append(f"training on {whose} votes")
    run = status.get("last_run") or {}
    if run.get("status") in ("live", "rejected"):
        outcome = "went live" if run["status"] == "live" else "was rejected"
        parts.append(f"last run: {version_label(run.get('version'))} {outcome}")
    elif run:
        parts.append(f"last run: {run.get('status', '?')}")
    text = " · ".join(parts)
    if status.get("last_release"):
        text += f"\n\nLatest version: {release_text(status['last_release'])}"
    if status.get("worker_error"):
        text += f"\n\n⚠️ last error: {status['worker_error']}"
    return text
