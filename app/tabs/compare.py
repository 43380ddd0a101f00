"""The Compare tab: any two versions (base, v1 … vN) from one prompt and seed, a before/after grid of them, the
version strip, and the blind A/B mode.

The grid (`app.gallery`) shows the two versions at several consecutive seeds from the seed field, one row per
version; the strip shows the grid's first seed across the base and every version in order (the newest
`STRIP_VERSIONS`). Both reuse cached images and count only what they render. A grid whose right version (B) is the
live one follows it while *Follow the live version* is on: a timer, active only then, asks `Gallery.refresh_due`
every `GRID_EVERY_S` (a shared read of the live version, no rendering), and only when it says yes does a second
event, in the "gpu" group, render the grid and the strip again with B at the new live version.

Blind A/B shows base and the live adapter from the same seed in random order; which side is the adapter stays in
the session state on the server until the person chooses. Choices go to `Repository.record_ab_trial` (never into
the training votes) and the person's running win rate of the adapter over the base is shown with its 95 % Wilson
interval. All events are private; generation shares the "gpu" concurrency group. Knows Gradio, `Studio` and
`app.gallery`.
"""

from __future__ import annotations

import itertools

import gradio as gr

from app.errors import RateLimitedError
from app.gallery import DEFAULT_GRID_SEEDS, MAX_GRID_SEEDS, Grid, GridRequest, Strip
from app.session import actor_of, annotator_of, user_errors
from app.studio import Studio, StudioError
from app.tabs.label import GPU, PRIVATE, bind_choice

BASE = "base"
BLIND_BUTTONS = [("left", "Left is better (1)", "ab-left"), ("right", "Right is better (2)", "ab-right"),
                 ("tie", "Tie (3)", "ab-tie")]
GRID_EVERY_S = 3.0  # how often a page whose grid follows the live version asks whether it moved
_renders = itertools.count(1)  # tells every rendered grid apart, so that a due refresh is signalled once per grid
GALLERY = dict(rows=1, height="auto", object_fit="contain", format="png", interactive=False, allow_preview=True,
               elem_classes="grid-gallery")  # the grid's rows and the strip


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


def grid_text(grid: Grid, live: int | None) -> str:
    """What `#grid-version` says the grid shows, e.g. "Showing A: base · B: v3 (live) · seeds 0, 1, 2, 3"."""
    r = grid.request
    b = version_label(r.version_b) + (" (live)" if r.version_b == live else "")
    cached = 2 * len(r.seeds) - grid.rendered
    return (f"Showing A: **{version_label(r.version_a)}** · B: **{b}** · seeds {', '.join(map(str, r.seeds))} "
            f"({grid.rendered} rendered, {cached} from the cache)")


def follow_text(request: GridRequest, follows: bool, live: int | None, moved_from: str | None = None) -> str:
    """What `#grid-refresh-note` says about following the live version; `moved_from`: B's label before a refresh."""
    b = version_label(request.version_b)
    if follows:
        text = "B is the live version: the grid renders again by itself when another version goes live."
        return f"**{b}** went live: B moved from {moved_from} to it by itself. {text}" if moved_from else text
    if request.version_b == live:
        return f"B stays at {b}: *Follow the live version* is off."
    return (f"B is {b}, not the live version ({version_label(live)}), and stays. Choose {version_label(live)} "
            "as the right version and render the grid to follow the live one.")


def strip_text(strip: Strip) -> str:
    """What `#strip-note` says: the seed, which versions, and whether older ones were left out."""
    if not strip.total:
        return f"Seed {strip.seed} at the base; every version trained from here on joins it."
    if strip.capped:
        shown = len(strip.versions) - 1
        return (f"Seed {strip.seed} across the base and the newest {shown} of {strip.total} versions "
                f"({version_label(strip.versions[1])} … {version_label(strip.versions[-1])}), oldest first; "
                "older versions are left out.")
    return f"Seed {strip.seed} across the base and all {strip.total} versions, oldest first."


def grid_row(name: str, version: int | None, images, seeds) -> dict:
    """One row of the grid, labelled with its version: an image per seed, captioned with its seed."""
    return gr.update(value=[(image, f"seed {seed}") for image, seed in zip(images, seeds)], columns=len(seeds),
                     label=f"{name}: {version_label(version)}")


def strip_items(strip: Strip, live: int | None) -> dict:
    return gr.update(value=[(image, version_label(v) + (" · live" if v == live else ""))
                            for image, v in zip(strip.images, strip.versions)], columns=len(strip.versions))


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

        gr.Markdown("### Before / after\nThe left (A) and right (B) versions above at several seeds from the seed "
                    "above, one row each; below them, the first of those seeds across every version.")
        with gr.Row(equal_height=True):
            grid_seeds = gr.Number(value=DEFAULT_GRID_SEEDS, precision=0, minimum=1, maximum=MAX_GRID_SEEDS,
                                   label="Seeds", info=f"1 to {MAX_GRID_SEEDS}, from the seed above on",
                                   elem_id="grid-seeds")
            follow = gr.Checkbox(value=True, label="Follow the live version", elem_id="grid-follow",
                                 info="when B is the live version, the grid renders again as another goes live")
            grid_btn = gr.Button("Render grid", variant="primary", elem_id="grid-btn")
        grid_version = gr.Markdown(elem_id="grid-version")
        grid_a = gr.Gallery(label="A", columns=DEFAULT_GRID_SEEDS, elem_id="grid-a", **GALLERY)
        grid_b = gr.Gallery(label="B", columns=DEFAULT_GRID_SEEDS, elem_id="grid-b", **GALLERY)
        grid_note = gr.Markdown(elem_id="grid-refresh-note")
        strip = gr.Gallery(label="Version strip: one seed, base to newest", elem_id="version-strip", columns=8,
                           **GALLERY)
        strip_note = gr.Markdown(elem_id="strip-note")
        timer = gr.Timer(GRID_EVERY_S, active=False)  # on only while the grid on screen follows the live version
        shown_grid = gr.State(None)  # {"request": GridRequest, "follow": bool, "serial": int} of the grid shown
        due = gr.State(None)  # (serial, live version): set once the live version moved away from a followed grid

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
                              annotator=annotator_of(state, request), address=actor_of(state, request).address)

    @user_errors
    def start_blind(prompt_text: str, state: dict, request: gr.Request, progress=gr.Progress()):
        progress(0.1, desc="rendering base and live adapter…")
        trial = studio.blind_trial(prompt_text, annotator=annotator_of(state, request),
                                   address=actor_of(state, request).address)
        return trial.left, trial.right, {**state, "blind": trial}

    @user_errors
    def choose(choice: str, state: dict, request: gr.Request):
        w = studio.record_blind(state.get("blind"), choice, annotator=annotator_of(state, request),
                                address=actor_of(state, request).address)
        return win_rate_text(w), {**state, "blind": None}

    def shown(grid: Grid, annotator: str, address: str | None, follows: bool, live: int | None,
              moved_from: str | None = None, versions=(gr.skip(), gr.skip())) -> tuple:
        """The grid's outputs: both rows, what they show, the note on following, the strip, the page's grid
        state and the timer (on only while the grid `follows` the live version, `live`)."""
        try:
            strip_shown = studio.gallery.strip(grid.request.prompt, grid.request.seeds[0], annotator=annotator,
                                               address=address)
        except RateLimitedError as e:  # the grid stands; the strip waits for the limit
            strip_update, strip_note_text = gr.skip(), f"The version strip is not rendered: {e}"
        else:
            strip_update, strip_note_text = strip_items(strip_shown, live), strip_text(strip_shown)
        r = grid.request
        return (grid_row("A", r.version_a, grid.images_a, r.seeds), grid_row("B", r.version_b, grid.images_b, r.seeds),
                grid_text(grid, live), follow_text(r, follows, live, moved_from), strip_update, strip_note_text,
                {"request": r, "follow": follows, "serial": next(_renders)}, gr.Timer(active=follows), *versions)

    @user_errors
    def render_grid(prompt_text: str, seed_value, count, label_a: str, label_b: str, follow_on: bool, state: dict,
                    request: gr.Request, progress=gr.Progress()):
        progress(0.1, desc="rendering the grid and the version strip…")
        annotator, address = annotator_of(state, request), actor_of(state, request).address
        grid = studio.gallery.grid(prompt_text, seed_value, count, parse_version(label_a), parse_version(label_b),
                                   annotator=annotator, address=address)
        live = studio.gallery.live_version(max_age_s=0)
        return shown(grid, annotator, address, bool(follow_on) and grid.request.version_b == live, live)

    def check_live(grid_state: dict | None):
        """Every tick of a following page: a new `due` only when the live version moved away from its B. Reads
        one shared, recent answer of storage and renders nothing."""
        if not grid_state or not grid_state["follow"] or not studio.gallery.refresh_due(grid_state["request"]):
            return gr.skip()
        return grid_state["serial"], studio.gallery.live_version()

    @user_errors
    def follow_live(grid_state: dict | None, state: dict, request: gr.Request):
        """Once `due` changed: the grid and the strip again with B at the live version, the version fields too."""
        if not grid_state or not grid_state["follow"]:
            return gr.skip()
        annotator, address = annotator_of(state, request), actor_of(state, request).address
        before = grid_state["request"]
        grid = studio.gallery.follow(before, annotator=annotator, address=address)
        if grid is None:
            return gr.skip()
        choices = version_choices(studio)
        versions = gr.update(choices=choices), gr.update(choices=choices, value=version_label(grid.request.version_b))
        live = grid.request.version_b  # the version `follow` found live; should it move on, the next tick tells
        return shown(grid, annotator, address, True, live, version_label(before.version_b), versions)

    def set_follow(follow_on: bool, grid_state: dict | None):
        """The checkbox: the grid on screen follows the live version (when B is that) or stops following it."""
        if not grid_state:
            return gr.skip()
        request_shown = grid_state["request"]
        live = studio.gallery.live_version(max_age_s=0)
        follows = bool(follow_on) and request_shown.version_b == live
        note = follow_text(request_shown, follows, live)
        return {**grid_state, "follow": follows}, gr.Timer(active=follows), note

    tab.select(refresh, [session], [version_a, version_b, rate], **PRIVATE)
    grid_outputs = [grid_a, grid_b, grid_version, grid_note, strip, strip_note, shown_grid, timer, version_a,
                    version_b]
    grid_btn.click(render_grid, [prompt, seed, grid_seeds, version_a, version_b, follow, session], grid_outputs,
                   **PRIVATE, **GPU)
    timer.tick(check_live, shown_grid, due, **PRIVATE, concurrency_limit=None, show_progress="hidden")
    due.change(follow_live, [shown_grid, session], grid_outputs, **PRIVATE, **GPU)
    follow.input(set_follow, [follow, shown_grid], [shown_grid, timer, grid_note], **PRIVATE)
    compare_btn.click(compare, [prompt, seed, version_a, version_b, session], [image_a, image_b], **PRIVATE, **GPU)
    blind_btn.click(start_blind, [prompt, session], [blind_left, blind_right, session], **PRIVATE, **GPU)
    for choice, button in blind_buttons.items():
        button.click(bind_choice(choose, choice), [session], [rate, session], **PRIVATE
                     ).success(start_blind, [prompt, session], [blind_left, blind_right, session], **PRIVATE, **GPU)
