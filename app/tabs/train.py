"""The Train tab: objective settings (validated by the alignment core), Train now, the adapter history with
make live / roll back, and plots of training loss and blind win rate over versions.

Settings apply to the next training run; an impossible value is refused with the core's message and nothing
changes. All events are private. Knows Gradio and `Studio`.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.config import OBJECTIVES
from app.studio import Studio
from app.session import user_errors
from app.tabs.compare import BASE, parse_version, version_choices, version_label
from app.tabs.label import PRIVATE

HISTORY_COLUMNS = ["version", "status", "objective", "votes used", "loss", "metrics", "created", "note"]
LOSS_COLUMNS = ["step", "loss", "version"]
WIN_COLUMNS = ["version", "win rate", "series"]


def build(studio: Studio) -> None:
    cfg = studio.settings()
    with gr.Tab("Train", id="train") as tab:
        run_info = gr.Markdown(elem_id="run-info")
        with gr.Row():
            objective = gr.Dropdown(choices=list(OBJECTIVES), value=cfg["objective"], label="Objective",
                                    info="discounted: the paper's γ-weighted DPO; trajectory: γ = 1")
            gamma = gr.Number(value=cfg["gamma"], label="γ (gamma)", info="temporal discount, (0, 1]")
            beta = gr.Textbox(value="" if cfg["beta"] is None else str(cfg["beta"]), label="β (beta)",
                              placeholder="objective's default", info="empty = the objective's default")
            lr = gr.Number(value=cfg["lr"], label="Learning rate")
            train_steps = gr.Number(value=cfg["train_steps"], precision=0, label="Steps per run")
            train_every = gr.Number(value=cfg["train_every"], precision=0, label="Train every N votes")
        with gr.Row():
            apply_btn = gr.Button("Apply settings", variant="primary", elem_id="apply-settings")
            train_btn = gr.Button("Train now", elem_id="train-now")
        message = gr.Markdown(elem_id="train-message")
        history = gr.Dataframe(pd.DataFrame(columns=HISTORY_COLUMNS), label="Adapter history", interactive=False,
                               elem_id="adapter-history", wrap=True,
                               column_widths=["70px", "90px", "110px", "70px", "80px", "40%", "160px", "15%"])
        with gr.Row(equal_height=True):
            pick = gr.Dropdown(choices=[BASE], value=BASE, label="Version", elem_id="live-pick", scale=2)
            live_btn = gr.Button("Make live", elem_id="make-live")
            rollback_btn = gr.Button("Roll back", elem_id="roll-back")
            refresh_btn = gr.Button("Refresh", elem_id="train-refresh")
        with gr.Row():
            loss_plot = gr.LinePlot(pd.DataFrame(columns=LOSS_COLUMNS), x="step", y="loss", color="version",
                                    title="Training loss per step, by version", elem_id="loss-plot")
            # Points, not lines: one version gives one point per series, which a line plot would not draw.
            win_plot = gr.ScatterPlot(pd.DataFrame(columns=WIN_COLUMNS), x="version", y="win rate", color="series",
                                      y_lim=[0, 1], elem_id="winrate-plot",
                                      title="Blind win rate over base, with its 95 % interval")

    def refresh():
        return (run_text(studio.status()), pd.DataFrame(studio.adapters(), columns=HISTORY_COLUMNS),
                gr.update(choices=version_choices(studio)),
                pd.DataFrame(studio.loss_points(), columns=LOSS_COLUMNS),
                pd.DataFrame(studio.win_rate_points(), columns=WIN_COLUMNS))

    @user_errors
    def apply(objective_v, gamma_v, beta_v, lr_v, steps_v, every_v):
        new = studio.update_settings(objective=objective_v, gamma=gamma_v, beta=beta_v, lr=lr_v,
                                     train_steps=steps_v, train_every=every_v)
        return "Settings saved for the next run: " + ", ".join(f"{k} = {v}" for k, v in new.items())

    @user_errors
    def train_now():
        started = studio.train_now()
        return "Training requested." if started else "A training run is already going; try again when it ends."

    @user_errors
    def make_live(label):
        version = studio.make_live(parse_version(label))
        return f"{version_label(version)} is live."

    @user_errors
    def rollback():
        version = studio.rollback()
        return f"Rolled back: {version_label(version)} is live."

    refreshed = [run_info, history, pick, loss_plot, win_plot]
    tab.select(refresh, None, refreshed, **PRIVATE)
    refresh_btn.click(refresh, None, refreshed, **PRIVATE)
    apply_btn.click(apply, [objective, gamma, beta, lr, train_steps, train_every], message, **PRIVATE)
    train_btn.click(train_now, None, message, **PRIVATE).then(refresh, None, refreshed, **PRIVATE)
    live_btn.click(make_live, pick, message, **PRIVATE).success(refresh, None, refreshed, **PRIVATE)
    rollback_btn.click(rollback, None, message, **PRIVATE).success(refresh, None, refreshed, **PRIVATE)


def run_text(status: dict) -> str:
    """One line about the worker and its last run, and the last error if there was one."""
    parts = [f"Worker: **{status['worker_state']}**",
             f"live adapter: **{version_label(status['live_adapter_version'])}**"]
    if status.get("votes_pending") is not None:
        parts.append(f"{status['votes_pending']} new votes since the last run")
    run = status.get("last_run") or {}
    if run.get("status") in ("live", "rejected"):
        outcome = "went live" if run["status"] == "live" else "was rejected"
        parts.append(f"last run: {version_label(run.get('version'))} {outcome}")
    elif run:
        parts.append(f"last run: {run.get('status', '?')}")
    text = " · ".join(parts)
    if status.get("worker_error"):
        text += f"\n\n⚠️ last error: {status['worker_error']}"
    return text
