"""The Label tab: a prompt, two images side by side, five vote buttons; the next pair follows every vote.

The New pair button is the public `/new_pair` endpoint (prompt, seeds, identity → left image, right image, pair
id; `identity` is what `/identity` issued an API client, empty in a browser, whose page holds its own). The vote
buttons are private events that all call one `record_vote(choice, ...)`; keyboard keys 1-5 click them, and the
page sends at most one vote for the pair on screen (see `app.ui.HEAD`).

The page holds the pair after the one on screen (the *slot*: hidden images, id `next-pair-id`, loaded by the
browser in advance). A vote swaps the slot's pair onto the screen in the page itself, before the vote reaches the
server, and tells the server which pair it voted on and which it swapped in; the vote's answer refills the slot
from the studio's ready queue (`app.ready`). With no pair in the slot the vote's answer brings the next pair when
one is ready, otherwise a chained event makes it. So the server always knows the pair on screen, and a vote is
bound to the pair the person saw when they pressed. A vote with no pair, or the same vote arriving twice at once,
changes nothing and shows no error. Votes of all sessions run one at a time (the "vote" concurrency group: a vote
is a database write and no generation), so one session's votes are handled in the order they were cast.
Generation events share the "gpu" concurrency group, so requests from many sessions queue instead of failing.
Knows Gradio and `Studio`, nothing below.
"""

from __future__ import annotations

import collections
import threading

import gradio as gr

from app.access import AnonymousIds
from app.session import USER_ERRORS, actor_of, annotator_of, new_session, user_errors, with_identity
from app.inputs import parse_seeds
from app.studio import Studio

GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
VOTE = {"concurrency_id": "vote", "concurrency_limit": 1, "trigger_mode": "multiple"}
PRIVATE = {"api_visibility": "private"}
SLOT_EVERY_S = 0.25  # how often an empty slot asks the ready queue for a pair
SLOT_TRIES = 40  # then (10 s without a ready pair: refills refused, say) it waits for the next vote
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
# The vote events' page-side step: the pair voted on and the pair swapped in, as `app.ui.HEAD`'s click listener
# left them for this click (none when the click came some other way: the server then takes the pair it showed).
READ_VOTE_JS = """(voted, swapped, state) => {
  const v = window.__studioVote || null; window.__studioVote = null;
  return [v ? v.voted : null, v ? v.swapped : null, state];
}"""


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
        with gr.Row(visible="hidden"):  # the slot: in the page (so the browser loads its images), never shown
            slot = [gr.Image(type="pil", format="png", interactive=False, elem_id="next-left-img"),
                    gr.Image(type="pil", format="png", interactive=False, elem_id="next-right-img"),
                    gr.Number(None, precision=0, interactive=False, elem_id="next-pair-id")]
        slot_timer = gr.Timer(SLOT_EVERY_S, active=False)  # ticks only while the slot is empty
        identity = gr.Textbox("", visible=False, label="identity")  # API clients only (see the module docstring)
        voted_box = gr.Number(visible=False, precision=0)  # filled by READ_VOTE_JS
        swapped_box = gr.Number(visible=False, precision=0)

    voted = VotedPairs()

    def show_pair(prompt: str, seeds, state: dict, request: gr.Request, profile=None, acting: dict | None = None):
        """A new pair for whoever `acting` (default: `state`) says; `state` keeps the pair on screen (an API
        client's identity is not kept in it: it presents that with every call) and forgets the slot (the page
        does not swap in a pair it held before New pair). A page session without seeds gets a ready pair when
        one waits (`Studio.ready`); seeds, or a presented identity, always generate."""
        acting = acting or state
        annotator = annotator_of(acting, request, profile)
        address = actor_of(acting, request, profile).address
        if acting is state and parse_seeds(seeds, 2) is None:
            view = studio.ready.pair(prompt, annotator=annotator, address=address)
        else:
            view = studio.new_pair(prompt, seeds, annotator=annotator, address=address)
        keep(state, pair_id=view.id, prompt=view.prompt, slot=None, slot_tries=0)
        return view.left, view.right, view.id, gr.update()

    @user_errors
    def make_pair(prompt: str, seeds: str = "", identity_token: str | None = None, state: dict | None = None,
                  request: gr.Request = None, profile: gr.OAuthProfile | None = None, progress=gr.Progress()):
        fresh = state is None  # a direct call without a session: its new state is the answer's
        state = new_session() if fresh else state
        progress(0.1, desc="generating two images…")
        *shown, kept = show_pair(prompt, seeds, state, request, profile,
                                 acting=with_identity(state, identity_token, ids))
        return *shown, state if fresh else kept

    def slot_prompt(shown: str, order: list[str]) -> str:
        """The prompt of the pair to hold after one of `shown`: in a campaign (`order`, the campaign's prompts
        fewest votes first) the least-voted prompt once `shown` has its vote, else `shown`."""
        if not order:
            return shown
        return order[1] if order[0] == shown and len(order) > 1 else order[0]

    @user_errors
    def record_vote(choice: str, voted_id, swapped_id, state: dict, request: gr.Request):
        """The one vote handler behind all five buttons. `voted_id` is the pair on screen when the person pressed,
        `swapped_id` the slot's pair the page then put on screen (both None when the page sent neither: the
        session's pair is meant). A vote with no pair, or for the same pair arriving twice at once, changes nothing
        and shows no error; a vote for a pair this session does not show is not recorded and says so."""
        unchanged = (gr.update(),) * 8  # left, right, pair id, prompt box, the slot's three, its timer
        pid, held = state.get("pair_id"), state.get("slot")
        if pid is None:
            return (NO_PAIR_TEXT if state.get("prompt") is None else gr.update(), gr.update(), *unchanged)
        voted_id = pid if voted_id is None else whole_or_none(voted_id)
        if voted_id != pid:
            return ("That vote names a pair that is not on screen here: it was not recorded.", gr.update(),
                    *unchanged)
        swapped = held is not None and whole_or_none(swapped_id) == held.id
        annotator, address = annotator_of(state, request), actor_of(state, request).address
        if not voted.claim(annotator, pid):
            return (gr.update(), gr.update(), *unchanged)
        try:
            receipt = studio.vote(pid, choice, annotator=annotator, address=address)
            text = f"Recorded **{CHOICE_TEXT[choice]}** for pair {receipt['pair_id']}"
        except USER_ERRORS as e:
            voted.release(annotator, pid)  # refused (e.g. a rate limit): the person may press again
            if not swapped:
                raise
            gr.Warning(f"Your vote on pair {pid} was not recorded: {e}")  # the page shows the next pair already
            text = f"Not recorded for pair {pid}: {e}"
        order = studio.campaign.order()  # one query per vote: every choice below reads it
        prompt = studio.next_prompt(state.get("prompt"), order) or ""  # the least-voted campaign prompt, or the same
        view = held if swapped or (held is not None and held.prompt == prompt) else None
        view = view or studio.ready.take(annotator, prompt, address)
        if view is None:
            shown_prompt = gr.update() if prompt == state.get("prompt") else gr.update(value=prompt)
            keep(state, pair_id=None, prompt=prompt, slot=None, slot_tries=0)
            return (f"{text}; the next pair is coming.", gr.update(), *unchanged[:3], shown_prompt, None, None, None,
                    gr.Timer(active=True))
        following = studio.ready.take(annotator, slot_prompt(view.prompt, order), address)
        if len(order) > 1:  # the campaign prompt probably offered after the slot's
            studio.ready.prefetch(annotator, order[-1] if following is None else slot_prompt(following.prompt, order),
                                  address)
        shown_prompt = gr.update() if view.prompt == state.get("prompt") else gr.update(value=view.prompt)
        keep(state, pair_id=view.id, prompt=view.prompt, slot=following, slot_tries=0)
        return (f"{text}.", gr.update(),
                gr.update() if swapped else view.left, gr.update() if swapped else view.right, view.id,
                shown_prompt, *slot_values(following), gr.Timer(active=following is None))

    def fill_slot(state: dict, request: gr.Request):
        """While the slot is empty: the ready pair that should follow the one on screen, once there is one (the
        vote found none ready). The timer stops once the slot holds a pair, while no pair is on screen (New pair
        and every vote start it again), and after `SLOT_TRIES` ticks without a ready pair."""
        unchanged, stop = (gr.update(),) * 4, gr.Timer(active=False)
        actor, pid = actor_of(state, request), state.get("pair_id")
        if state.get("slot") is not None or pid is None or not actor.name:  # full, or nothing on screen to follow
            return *unchanged, stop
        following = studio.ready.take(actor.name, slot_prompt(state.get("prompt") or "", studio.campaign.order()),
                                      actor.address)
        if following is None or not keep(state, slot=following, unless_moved_from=pid):
            tries = state.get("slot_tries", 0) + 1  # none ready, or New pair put another pair on screen meanwhile
            keep(state, slot_tries=tries)
            return *unchanged, stop if tries >= SLOT_TRIES else gr.update()
        return gr.update(), *slot_values(following), stop

    @user_errors
    def next_pair(state: dict, request: gr.Request, progress=gr.Progress()):
        """After a vote: a pair made now, unless the vote's answer already showed one."""
        if state.get("pair_id") is not None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        progress(0.1, desc="generating the next pair…")
        return show_pair(state.get("prompt") or "", None, state, request)

    pair_outputs = [left, right, pair_id, session]
    new_btn.click(make_pair, [prompt_box, seeds_box, identity, session], pair_outputs, api_name="new_pair",
                  api_description="Two images of a prompt (optional seeds 'a, b'; the identity from /identity) "
                                  "stored as a pair served to you; returns left image, right image, pair id.", **GPU
                  ).then(refresh_status, session, status, **PRIVATE
                         ).then(start_timer, None, slot_timer, **PRIVATE)  # a slot for the new pair
    for choice, button in buttons.items():
        vote = button.click(bind_vote(record_vote, choice), [voted_box, swapped_box, session],
                            [ack, session, left, right, pair_id, prompt_box, *slot, slot_timer], js=READ_VOTE_JS,
                            show_progress="hidden", **PRIVATE, **VOTE)
        made = vote.success(next_pair, [session], pair_outputs, **PRIVATE, **GPU)
        made.then(refresh_status, session, status, **PRIVATE).then(start_timer, None, slot_timer, **PRIVATE)
    slot_timer.tick(fill_slot, [session], [session, *slot, slot_timer], show_progress="hidden", **PRIVATE,
                    concurrency_id="vote", concurrency_limit=1)


STATE_LOCK = threading.Lock()


def keep(state: dict, *, unless_moved_from=..., **changes) -> bool:
    """Write the tab's keys into the session's own state dict, in place: events of one session run in different
    concurrency groups (a vote, the slot's timer, New pair), and each answering with a copy of the dict it read
    would undo what another wrote meanwhile. So they change the dict Gradio keeps and answer `gr.update()` for it.
    With `unless_moved_from`, only while the pair on screen is still that one; False when nothing was written."""
    with STATE_LOCK:
        if unless_moved_from is not ... and state.get("pair_id") != unless_moved_from:
            return False
        state.update(changes)
        return True


def start_timer():
    """The slot's timer, started (it stops itself once the slot is full)."""
    return gr.Timer(active=True)


def whole_or_none(value) -> int | None:
    """A pair id the page sent as a number; None for anything else (NaN, infinity, text)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def slot_values(view) -> tuple:
    """The slot's left image, right image and pair id for `view` (all None: an empty slot)."""
    return (None, None, None) if view is None else (view.left, view.right, view.id)


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


def bind_vote(fn, choice: str):
    """`fn(choice, voted, swapped, state, request)` with its choice fixed, typed as `bind_choice`."""

    def handler(voted_id, swapped_id, state: dict, request: gr.Request):
        return fn(choice, voted_id, swapped_id, state, request)

    return handler
