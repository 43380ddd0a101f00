"""`build_ui(studio) -> gr.Blocks`: the four tabs, the status bar, the session, and the public API.

Public endpoints (for `gradio_client`): `/new_pair` (the Label tab's New pair button), `/vote` and `/status`
(`gr.api`, no widgets of their own). Everything else (timers, page load, tab helpers, the vote buttons) is
private. `launch` sets the queue (generation events share one "gpu" slot, the rest `concurrency` slots) and
passes the CSS (crisp, enlarged images) and the keyboard-shortcut script, which Gradio 6 takes in `launch()`.
Knows Gradio and `Studio`, nothing below them.
"""

from __future__ import annotations

import gradio as gr

from app.session import annotator_of, anonymous_id, new_session, user_errors
from app.studio import Studio
from app.tabs import compare, data, label, train
from app.tabs.compare import version_label

STATUS_EVERY_S = 2.0
BROWSER_KEY = "alignment-studio-annotator"

# Keys 1-5 click the visible button with that key (Label tab: votes; Compare tab: blind A/B), unless the person
# is typing in a field.
HEAD = """
<script>
(() => {
  const keys = {"1": ["vote-left", "ab-left"], "2": ["vote-right", "ab-right"], "3": ["vote-tie", "ab-tie"],
                "4": ["vote-both-bad"], "5": ["vote-skip"]};
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    for (const id of keys[e.key] || []) {
      const el = document.getElementById(id);
      const button = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
      if (button && button.offsetParent !== null && !button.disabled) { e.preventDefault(); button.click(); return; }
    }
  });
})();
</script>
"""


def css(pixelated: bool) -> str:
    """Images shown at 256 px; small ones (the embedded model's 32 px) scaled up with hard pixel edges."""
    rendering = "image-rendering: pixelated;" if pixelated else ""
    return f"""
.pair-img img {{ width: 256px !important; height: 256px !important; object-fit: contain; {rendering} }}
.pair-img {{ min-height: 300px; }}
#status-bar {{ padding: 6px 12px; border-radius: 8px; background: var(--block-background-fill); }}
"""


def status_markdown(s: dict) -> str:
    parts = [f"Live adapter: **{version_label(s['live_adapter_version'])}**",
             f"Votes: **{s['votes']}**", f"Worker: **{s['worker_state']}**"]
    if s.get("training_progress"):
        parts[-1] += " (step {}/{})".format(*s["training_progress"])
    if s.get("votes_pending") is not None:
        parts.append(f"{s['votes_pending']} new since last run")
    text = " · ".join(parts)
    if s.get("worker_error"):
        text += f" · ⚠️ last run: {s['worker_error']}"
    return text


def build_ui(studio: Studio, *, browser_secret: str | None = None) -> gr.Blocks:
    """The studio's Blocks. `browser_secret` keeps anonymous annotator ids valid across restarts."""
    with gr.Blocks(title="Alignment Studio") as demo:
        session = gr.State(new_session())
        browser_id = gr.BrowserState(None, storage_key=BROWSER_KEY, secret=browser_secret)
        with gr.Row(equal_height=True):
            gr.Markdown("## Alignment Studio")
            status = gr.Markdown(elem_id="status-bar")

        def refresh_status():
            return status_markdown(studio.status(max_age_s=STATUS_EVERY_S / 2))

        with gr.Tabs():
            label.build(studio, session, status, refresh_status)
            compare.build(studio, session)
            train.build(studio)
            data.build(studio)

        def start_session(stored_id, state: dict, request: gr.Request):
            annotator = request.username or stored_id or anonymous_id()
            return {**state, "annotator": annotator}, stored_id or annotator, refresh_status()

        demo.load(start_session, [browser_id, session], [session, browser_id, status], api_visibility="private")
        gr.Timer(STATUS_EVERY_S).tick(refresh_status, None, status, api_visibility="private",
                                      concurrency_limit=None, show_progress="hidden")

        @user_errors
        def vote(pair_id: int, choice: str, request: gr.Request) -> dict:
            """Record a vote (left, right, tie, both_bad, skip) on a pair; answers after the vote is committed."""
            return studio.vote(pair_id, choice, annotator=annotator_of(None, request))

        def status_api() -> dict:
            """Votes, live adapter version, worker state."""
            return studio.status()

        gr.api(vote, api_name="vote")
        gr.api(status_api, api_name="status", concurrency_limit=None)
    return demo


def launch(demo: gr.Blocks, studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 8,
           **kwargs):
    """Queue and launch; `kwargs` go to `Blocks.launch` (tests pass prevent_thread_lock, quiet)."""
    demo.queue(default_concurrency_limit=concurrency)
    pixelated = min(studio.sampler.config.width, studio.sampler.config.height) < 256
    return demo.launch(server_name=host, server_port=port, head=HEAD, css=css(pixelated), **kwargs)
