"""The Compare tab: any two versions (base, v1 … vN) from one prompt and seed, and the blind A/B mode.

Blind A/B shows base and the live adapter from the same seed in random order; which side is the adapter stays in
the session state on the server until the person chooses. Choices go to `Repository.record_ab_trial` (never into
the training votes) and the person's running win rate of the adapter over the base is shown with its 95 % Wilson
interval. All events are private; generation shares the "gpu" concurrency group. Knows Gradio and `Studio`.
"""

from __future__ import annotations

import gradio as gr

from app.session import annotator_of, user_errors
from app.studio import Studio, StudioError
from app.tabs.label import GPU, PRIVATE, bind_choice

BASE = "base"
BLIND_BUTTONS = [("left", "Left is better (1)", "ab-left"), ("right", "Right is better (2)", "ab-right"),
                 ("tie", "Tie (3)", "ab-tie")]


def version_label(version: int | None) -> str:
    return BASE if version is None else f"v{version}"


def parse_version(label) -> int | None:
    """'base' → None, 'v3' (or 3) → 3."""
    text = str(label).strip().lower() if label is not None else ""
    if text == BASE:
        return None
    digits = text[1:] if text.startswith("v") else text
    if not digits.isdigit():
        raise StudioError(f"pick a version: 'base' or v1, v2, …; got {label!r:.40}")
    return int(digits)


def version_choices(studio: Studio) -> list[str]:
    return [BASE] + [version_label(v) for v in studio.versions()]


def win_rate_text(w: dict) -> str:
    if not w["n"]:
        return f"No blind choices yet for {version_label(w['version'])}."
    return (f"Your blind win rate of **{version_label(w['version'])}** over the base: **{w['rate']:.0%}** "
            f"(95 % interval {w['lo']:.0%} – {w['hi']:.0%}; n = {w['n']}: {w['adapter']} adapter, "
            f"{w['base']} base, {w['tie']} tie).")


def build(studio: Studio, session: gr.State) -> None:
    with gr.Tab("Compare", id="compare") as tab:
        gr.Markdown("Two versions from the same prompt and seed, side by side.")
        with gr.Row(equal_height=True):
            prompt = gr.Dropdown(choices=studio.suggestions, value=studio.suggestions[0], allow_custom_value=True,
                                 label="Prompt", scale=4, elem_id="compare-prompt")
            seed = gr.Number(value=0, precision=0, label="Seed", scale=1, elem_id="compare-seed")
        with gr.Row(equal_height=True):
            version_a = gr.Dropdown(choices=[BASE], value=BASE, label="Left version", elem_id="version-a")
            version_b = gr.Dropdown(choices=[BASE], value=BASE, label="Right version", elem_id="version-b")
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
        with gr.Row(elem_classes="pair-row"):
            image_a = gr.Image(label="Left version", type="pil", format="png", interactive=False,
                               elem_id="compare-a", elem_classes="pair-img")
            image_b = gr.Image(label="Right version", type="pil", format="png", interactive=False,
                               elem_id="compare-b", elem_classes="pair-img")

        gr.Markdown("### Blind A/B\nBase vs. the live adapter in random order, for the prompt above. These "
                    "choices measure the adapter; they are not used for training.")
        blind_btn = gr.Button("New blind trial", elem_id="blind-start")
        with gr.Row(elem_classes="pair-row"):
            blind_left = gr.Image(label="Left (1)", type="pil", format="png", interactive=False,
                                  elem_id="blind-left", elem_classes="pair-img")
            blind_right = gr.Image(label="Right (2)", type="pil", format="png", interactive=False,
                                   elem_id="blind-right", elem_classes="pair-img")
        with gr.Row():
            blind_buttons = {choice: gr.Button(text, elem_id=elem_id) for choice, text, elem_id in BLIND_BUTTONS}
        rate = gr.Markdown(elem_id="blind-rate")

    def refresh(state: dict, request: gr.Request):
        choices = version_choices(studio)
        live = studio.status()["live_adapter_version"]
        default_b = version_label(live) if live is not None else choices[-1]
        text = "" if live is None else win_rate_text(studio.win_rate(live, annotator_of(state, request)))
        return (gr.update(choices=choices), gr.update(choices=choices, value=default_b), text)

    @user_errors
    def compare(prompt_text: str, seed_value, label_a: str, label_b: str, state: dict, request: gr.Request,
                progress=gr.Progress()):
        progress(0.1, desc="rendering both versions…")
        return studio.compare(prompt_text, seed_value, parse_version(label_a), parse_version(label_b),
                              annotator=annotator_of(state, request))

    @user_errors
    def start_blind(prompt_text: str, state: dict, request: gr.Request, progress=gr.Progress()):
        progress(0.1, desc="rendering base and live adapter…")
        trial = studio.blind_trial(prompt_text, annotator=annotator_of(state, request))
        return trial.left, trial.right, {**state, "blind": trial}

    @user_errors
    def choose(choice: str, state: dict, request: gr.Request):
        w = studio.record_blind(state.get("blind"), choice, annotator=annotator_of(state, request))
        return win_rate_text(w), {**state, "blind": None}

    tab.select(refresh, [session], [version_a, version_b, rate], **PRIVATE)
    compare_btn.click(compare, [prompt, seed, version_a, version_b, session], [image_a, image_b], **PRIVATE, **GPU)
    blind_btn.click(start_blind, [prompt, session], [blind_left, blind_right, session], **PRIVATE, **GPU)
    for choice, button in blind_buttons.items():
        button.click(bind_choice(choose, choice), [session], [rate, session], **PRIVATE
                     ).success(start_blind, [prompt, session], [blind_left, blind_right, session], **PRIVATE, **GPU)
