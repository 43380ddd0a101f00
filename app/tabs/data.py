"""The Data tab: counts of votes, pairs and annotators; Pick-a-Pic Parquet export (a download) and import.

Import checks the whole file first and writes all of it or nothing (`storage.export`); its message is shown as
is. All events are private. Knows Gradio and `Studio`.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.session import user_errors
from app.studio import Studio
from app.tabs.label import PRIVATE


def counts_text(counts: dict) -> str:
    choices = ", ".join(f"{c.replace('_', ' ')} {n}" for c, n in counts["per_choice"].items())
    return (f"**{counts['votes']}** votes on **{counts['pairs']}** pairs from **{counts['annotators']}** "
            f"annotator{'s' if counts['annotators'] != 1 else ''} ({choices}).")


def build(studio: Studio) -> None:
    with gr.Tab("Data", id="data") as tab:
        summary = gr.Markdown(elem_id="data-counts")
        per_annotator = gr.Dataframe(pd.DataFrame(columns=["annotator", "votes"]), label="Votes per annotator",
                                     interactive=False, elem_id="per-annotator")
        gr.Markdown("### Export\nEvery preference vote with its two images, in the Pick-a-Pic layout "
                    "(`caption, jpg_0, jpg_1, label_0, label_1`, …) that `datasets.load_dataset('parquet', …)` "
                    "reads.")
        export_btn = gr.Button("Export Parquet", variant="primary", elem_id="export-btn")
        download = gr.File(label="Download", interactive=False, elem_id="export-file")
        gr.Markdown("### Import\nA Parquet file in the same layout; its pairs train the Diffusion-DPO objective.")
        upload = gr.File(label="Parquet file", file_types=[".parquet"], elem_id="import-file")
        import_btn = gr.Button("Import", elem_id="import-btn")
        message = gr.Markdown(elem_id="data-message")

    def refresh():
        counts = studio.counts()
        table = pd.DataFrame(sorted(counts["per_annotator"].items()), columns=["annotator", "votes"])
        return counts_text(counts), table

    @user_errors
    def export():
        path, rows = studio.export()
        return str(path), (f"Exported {rows} preference votes to `{path.name}` (skip and both-bad votes say "
                           "nothing about which image is better).")

    @user_errors
    def import_(path):
        added = studio.import_file(path)
        return f"Imported {added} judged pairs."

    tab.select(refresh, None, [summary, per_annotator], **PRIVATE)
    export_btn.click(export, None, [download, message], **PRIVATE)
    import_btn.click(import_, upload, message, **PRIVATE).success(refresh, None, [summary, per_annotator], **PRIVATE)
