"""The Data tab: counts of votes, pairs and annotators; votes per annotator with their agreement on pairs that
several annotators judged; votes per prompt; a labeling campaign (`app.campaign`: prompts offered fewest votes
first); Pick-a-Pic Parquet export (a download) and import.

Import checks the whole file first and writes all of it or nothing (`storage.export`); its message is shown as
is, and it reads only Gradio's upload of the chosen file. Export, import and the campaign are admin controls (`AdminArea`):
votes carry annotator names, and an import changes what the worker trains on. Other annotators' names, counts and
agreement are shown to admins only; everyone else sees the totals and their own row. All events are private.
Knows Gradio and `Studio`.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.session import actor_of, uploaded_file, user_errors
from app.studio import Studio
from app.tabs import AdminArea
from app.tabs.label import PRIVATE

ANNOTATOR_COLUMNS = ["annotator", "votes", "left", "right", "tie", "both bad", "skip", "agreement", "shared pairs"]
COUPLE_COLUMNS = ["annotator A", "annotator B", "shared pairs", "agreement"]
PROMPT_COLUMNS = ["prompt", "votes", "campaign"]


def counts_text(counts: dict) -> str:
    choices = ", ".join(f"{c.replace('_', ' ')} {n}" for c, n in counts["per_choice"].items())
    return (f"**{counts['votes']}** votes on **{counts['pairs']}** pairs from **{counts['annotators']}** "
            f"annotator{'s' if counts['annotators'] != 1 else ''} ({choices}).")


def build(studio: Studio, session: gr.State) -> AdminArea:
    editable = {"interactive": studio.access.everyone_admin}  # app.ui unlocks them per session at page load
    with gr.Tab("Data", id="data") as tab:
        summary = gr.Markdown(elem_id="data-counts")
        per_annotator = gr.Dataframe(pd.DataFrame(columns=ANNOTATOR_COLUMNS), label="Votes per annotator",
                                     interactive=False, elem_id="per-annotator")
        gr.Markdown("Agreement: the share of votes equal to another annotator's vote on the same pair "
                    "(skips are not compared); shared pairs: pairs that someone else judged too.")
        couples = gr.Dataframe(pd.DataFrame(columns=COUPLE_COLUMNS), label="Agreement between annotators",
                               interactive=False, elem_id="agreement")
        per_prompt = gr.Dataframe(pd.DataFrame(columns=PROMPT_COLUMNS), label="Votes per prompt",
                                  interactive=False, elem_id="per-prompt")
        notice = gr.Markdown(elem_id="data-access")
        gr.Markdown("### Labeling campaign\nOne prompt a line: after each vote, annotators are offered the one with "
                    "the fewest votes. Empty ends the campaign.")
        campaign_box = gr.Textbox(label="Campaign prompts", lines=4, elem_id="campaign-prompts", **editable)
        campaign_btn = gr.Button("Start campaign", elem_id="campaign-btn", **editable)
        gr.Markdown("### Export\nEvery preference vote with its two images, in the Pick-a-Pic layout "
                    "(`caption, jpg_0, jpg_1, label_0, label_1`, …) that `datasets.load_dataset('parquet', …)` "
                    "reads.")
        export_btn = gr.Button("Export Parquet", variant="primary", elem_id="export-btn", **editable)
        download = gr.File(label="Download", interactive=False, elem_id="export-file")
        gr.Markdown("### Import\nA Parquet file in the same layout; its pairs train the Diffusion-DPO objective.")
        upload = gr.File(label="Parquet file", file_types=[".parquet"], elem_id="import-file", **editable)
        import_btn = gr.Button("Import", elem_id="import-btn", **editable)
        message = gr.Markdown(elem_id="data-message")

    def refresh(state: dict, request: gr.Request):
        """Everyone sees the counts; only admins see other annotators' names, counts and agreement."""
        actor = actor_of(state, request)
        rows, pairs = studio.annotator_rows(actor)
        return (counts_text(studio.counts()), pd.DataFrame(rows, columns=ANNOTATOR_COLUMNS),
                pd.DataFrame(pairs, columns=COUPLE_COLUMNS),
                pd.DataFrame(studio.prompt_rows(actor), columns=PROMPT_COLUMNS))

    @user_errors
    def start_campaign(text: str, state: dict, request: gr.Request):
        chosen = studio.set_campaign(text or "", actor=actor_of(state, request))
        return (f"Campaign of {len(chosen)} prompts: each vote is followed by the least-voted one."
                if chosen else "No campaign: annotators keep their own prompt.")

    @user_errors
    def export(state: dict, request: gr.Request):
        path, rows = studio.export(actor=actor_of(state, request))
        return str(path), (f"Exported {rows} preference votes to `{path.name}` (skip and both-bad votes say "
                           "nothing about which image is better).")

    @user_errors
    def import_(path, state: dict, request: gr.Request):
        actor = actor_of(state, request)
        studio.require_admin(actor, "import")
        added = studio.import_file(uploaded_file(path), actor=actor)
        return f"Imported {added} judged pairs."

    shown = [summary, per_annotator, couples, per_prompt]
    campaign_btn.click(start_campaign, [campaign_box, session], message, **PRIVATE
                       ).success(refresh, session, shown, **PRIVATE)
    tab.select(refresh, session, shown, **PRIVATE)
    export_btn.click(export, session, [download, message], **PRIVATE)
    import_btn.click(import_, [upload, session], message, **PRIVATE).success(refresh, session, shown, **PRIVATE)
    return AdminArea(notice, [export_btn, upload, import_btn, campaign_box, campaign_btn])
