"""One module per tab of the studio; each has `build(...)` that adds its components and events to the Blocks.

Tabs with admin controls return an `AdminArea`, so that `app.ui` can show them read-only, with the notice, to
whoever `Studio` would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr


@dataclass
class AdminArea:
    """A tab's admin-only inputs and buttons, and the Markdown that says why they are read-only."""

    notice: gr.Markdown
    controls: list = field(default_factory=list)
