"""The Label tab: a prompt, two images side by side, five vote buttons; the next pair follows every vote.

The New pair button is the public `/new_pair` endpoint (prompt, seeds, identity → left image, right image, pair
id; `identity` is what `/identity` issued an API client, empty in a browser, whose page holds its own). The vote
buttons are private events that all call one `record_vote(choice, ...)`; keyboard keys 1-5 click them, and the
page sends at most one vote for the pair on screen (see `app.ui.HEAD`). The vote's own answer brings the next pair when the studio's ready queue
(`app.ready`) holds one for this annotator and prompt; otherwise a chained event makes it. A vote with no pair,
or the same vote arriving twice at once, changes nothing and shows no error. Generation events share
the "gpu" concurrency group, so requests from many sessions queue instead of failing. Knows Gradio and `Studio`,
nothing below.
"""

from __future__ import annotations

import collections
import threading

import gradio as gr

from app.access import AnonymousIds
from app.session import actor_of, annotator_of, new_session, user_errors, with_identity
from app.inputs import parse_seeds
from app.studio import Studio

GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
PRIVATE = {"api_visibility": "private"}
# (choice, button label, elem_id); the number in a label is its keyboard key.
VOTE_BUTTONS = [
    ("left", "Left is better (1)", "vote-left"),
    ("right", "Right is better (2)", "vote-right"),
    ("tie", "Tie (3)", "vote-tie"),
    ("both_bad", "Both bad (4)", "vote-both-bad"),
    ("skip", "Skip (5)", "vote-skip"),
]
CHOICE_TEXT = {choice: label.split(" (")[0] for choice, label, _ in VOTE_BUTTONS}
NO_PAIR_TEXT = "No pair on screen yet: press **New pair** first."


def build(studio: Studio, session: gr.State, status: gr.Markdown, refresh_status, ids: AnonymousIds) -> None:
    """The tab's components and events (inside a `gr.Tabs`)."""
    with gr.Tab("Label", id="label"):
        with gr.Row(equal_height=True):
            prompt_box = gr.Dropdown(choices=studio.suggestions, value=studio.suggestions[0], allow_custom_value=True,
                                 label="Prompt", info="pick a suggestion or type your own", scale=5,
                                 elem_id="label-prompt")
            new_btn = gr.Button("New pair", variant="primary", scale=1, elem_id="new-pair")
        with gr.Accordion("Seeds (optional)", open=False):
            seeds_box = gr.Textbox(label="Seeds", value="", elem_id="label-seeds",
                                   placeholder="two whole numbers, e.g. 12, 34; empty = random")
        with gr.Row(elem_classes="pair-row"):
            left = gr.Image(label="Left (1)", type="pil", format="png", interactive=False, elem_id="left-img",
                            elem_classes="pair-img", buttons=["download"])
            right = gr.Image(label="Right (2)", type="pil", format="png", interactive=False, elem_id="right-img",
                             elem_classes="pair-img", buttons=["download"])
        with gr.Row():
            buttons = {choice: gr.Button(text, elem_id=elem_id, variant="secondary" if choice in ("both_bad", "skip")
                                         else "primary") for choice, text, elem_id in VOTE_BUTTONS}
        with gr.Row(equal_height=True):
            pair_id = gr.Number(label="Pair", precision=0, interactive=False, elem_id="pair-id", scale=1)
            ack = gr.Markdown("Press **New pair**, then vote with the buttons or the keys 1-5.", elem_id="vote-ack")
        identity = gr.Textbox("", visible=False, label="identity")  # API clients only (see the module docstring)

    voted = VotedPairs()

    def show_pair(prompt: str, seeds, state: dict, request: gr.Request, profile=None, acting: dict | None = None):
        """A new pair for whoever `acting` (default: `state`) says; `state` keeps the pair on screen (an API
        client's identity is not kept in it: it presents that with every call). A page session without seeds
        gets a ready pair when one waits (`Studio.ready`); seeds, or a presented identity, always generate."""
        acting = acting or state
        annotator = annotator_of(acting, request, profile)
        address = actor_of(acting, request, profile).address
        if acting is state and parse_seeds(seeds, 2) is None:
            view = studio.ready.pair(prompt, annotator=annotator, address=address)
        else:
            view = studio.new_pair(prompt, seeds, annotator=annotator, address=address)
        return view.left, view.right, view.id, {**state, "pair_id": view.id, "prompt": view.prompt}

    @user_errors
    def make_pair(prompt: str, seeds: str = "", identity_token: str | None = None, state: dict | None = None,
                  request: gr.Request = None, profile: gr.OAuthProfile | None = None, progress=gr.Progress()):
        state = state or new_session()
        progress(0.1, desc="generating two images…")
        return show_pair(prompt, seeds, state, request, profile, acting=with_identity(state, identity_token, ids))

    @user_errors
    def record_vote(choice: str, state: dict, request: gr.Request):
        """The one vote handler behind all five buttons, on the session's pair. With no pair (none yet, or the
        next one still being made), or for the same pair arriving twice at once, it changes nothing and shows no
        error; the page itself sends no second vote for a pair on screen (`app.ui.HEAD`). The next pair comes in
        the same answer when one is ready."""
        unchanged = (gr.update(),) * 4
        pid = state.get("pair_id")
        if pid is None:
            return (NO_PAIR_TEXT if state.get("prompt") is None else gr.update(), state, *unchanged)
        annotator, address = annotator_of(state, request), actor_of(state, request).address
        if not voted.claim(annotator, pid):
            return (gr.update(), state, *unchanged)
        try:
            receipt = studio.vote(pid, choice, annotator=annotator, address=address)
        except Exception:
            voted.release(annotator, pid)  # refused (e.g. a rate limit): the person may press again
            raise
        text = f"Recorded **{CHOICE_TEXT[choice]}** for pair {receipt['pair_id']}"
        prompt = studio.next_prompt(state.get("prompt")) or ""  # a campaign's least-voted prompt, or the same
        shown_prompt = gr.update() if prompt == state.get("prompt") else gr.update(value=prompt)
        view = studio.ready.take(annotator, prompt, address)
        order = studio.campaign.order()
        if len(order) > 1:  # the campaign prompt probably offered after this one
            studio.ready.prefetch(annotator, order[1], address)
        if view is None:
            return (f"{text}; the next pair is coming.", {**state, "pair_id": None, "prompt": prompt},
                    *unchanged[:3], shown_prompt)
        return (f"{text}.", {**state, "pair_id": view.id, "prompt": view.prompt}, view.left, view.right, view.id,
                shown_prompt)

    @user_errors
    def next_pair(state: dict, request: gr.Request, progress=gr.Progress()):
        """After a vote: a pair made now, unless the vote's answer already showed a ready one."""
        if state.get("pair_id") is not None:
            return gr.update(), gr.update(), gr.update(), state
        progress(0.1, desc="generating the next pair…")
        return show_pair(state.get("prompt") or "", None, state, request)

    pair_outputs = [left, right, pair_id, session]
    new_btn.click(make_pair, [prompt_box, seeds_box, identity, session], pair_outputs, api_name="new_pair",
                  api_description="Two images of a prompt (optional seeds 'a, b'; the identity from /identity) "
                                  "stored as a pair served to you; returns left image, right image, pair id.", **GPU
                  ).then(refresh_status, session, status, **PRIVATE)
    for choice, button in buttons.items():
        button.click(bind_choice(record_vote, choice), [session], [ack, session, left, right, pair_id, prompt_box],
                     **PRIVATE).success(next_pair, [session], pair_outputs, **PRIVATE, **GPU
                                        ).then(refresh_status, session, status, **PRIVATE)


class VotedPairs:
    """(annotator, pair id) of votes being or lately recorded in this process, so that one press arriving twice at
    once is recorded once (the second would otherwise be refused with an error); the newest `keep` only."""

    def __init__(self, keep: int = 4096):
        self.keep, self._seen, self._lock = keep, collections.OrderedDict(), threading.Lock()

    def claim(self, annotator: str, pair_id: int) -> bool:
        """True for the first claim of (annotator, pair_id)."""
        with self._lock:
            if (annotator, pair_id) in self._seen:
                return False
            self._seen[(annotator, pair_id)] = True
            while len(self._seen) > self.keep:
                self._seen.popitem(last=False)
            return True

    def release(self, annotator: str, pair_id: int) -> None:
        with self._lock:
            self._seen.pop((annotator, pair_id), None)


def bind_choice(fn, choice: str):
    """`fn(choice, state, request)` with its choice fixed, typed so that Gradio still passes the request."""

    def handler(state: dict, request: gr.Request):
        return fn(choice, state, request)

    return handler
