"""`build_ui(studio) -> gr.Blocks`: the four tabs, the status bar, who is acting, admin unlock, and the API.

Public endpoints (for `gradio_client`): `/new_pair` (the Label tab's New pair button) and the `gr.api` endpoints
of `app.api` (`/vote`, `/status`, `/whoami` and the admin actions). Everything else (timers, page load, tab
helpers, the vote buttons) is private. On a Space the header has Hugging Face's sign-in button (built only there:
it cannot be built offline). Admin controls are shown read-only, with a message, to whoever `Studio` would refuse;
the refusal itself happens in `Studio`. `launch` sets the queue (generation events share one "gpu" slot, the rest
`concurrency` slots; at most `queue_size` events wait, and direct REST calls that would skip the queue are
closed), puts `app.guard.StudioGuard` in front of every route (same-origin requests only, a bound on each
address's waiting events, upload limits, `SameSite=Lax` cookies off a Space), caps uploads and deletes old ones,
and passes the CSS (crisp, enlarged images) and the keyboard-shortcut script, which Gradio 6 takes in `launch()`.
Knows Gradio and `Studio`, nothing below them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from app import api
from app.access import Actor, AnonymousIds
from app.guard import GuardPolicy, StudioGuard
from app.session import actor_of, address_of, new_session, signed_in_name, user_errors
from app.studio import Studio, StudioError
from app.tabs import compare, data, label, train
from app.tabs.compare import version_label

log = logging.getLogger(__name__)

STATUS_EVERY_S = 2.0
BROWSER_KEY = "alignment-studio-annotator"
UPLOAD_TTL_S = 3600  # uploads (and Gradio's other cached files) are deleted after an hour

# Keys 1-5 click the visible button with that key (Label tab: votes; Compare tab: blind A/B), unless the person
# is typing in a field. The page sends at most one vote for the pair on screen: a vote click or key while no pair
# is shown, or for the pair a vote was just sent for (a double press, a click before the answer came), is dropped,
# unless 5 s passed and the acknowledgement never changed (that vote was refused, e.g. by a rate limit). A vote
# puts the slot's pair (`app.tabs.label`: hidden, its images already loaded) on screen at once, unless the slot is
# empty or its pair was shown already; the same choice again within 0.25 s of such a swap is taken for the same
# press (a double click, a bouncing key), another choice is a vote on the pair now on screen. The vote event's
# own script (`label.READ_VOTE_JS`) sends the pair voted on and the pair swapped in.
HEAD = """
<script>
(() => {
  const keys = {"1": ["vote-left", "ab-left"], "2": ["vote-right", "ab-right"], "3": ["vote-tie", "ab-tie"],
                "4": ["vote-both-bad"], "5": ["vote-skip"]};
  const votes = ["vote-left", "vote-right", "vote-tie", "vote-both-bad", "vote-skip"];
  const text = (sel) => { const el = document.querySelector(sel); return el ? (el.value ?? el.textContent) : ""; };
  const img = (id) => document.querySelector("#" + id + " img");
  let last = null;  // {pair, ack, at} of the vote last sent
  let swapped = {at: 0, vote: null};  // when the last swap happened, and for which vote button
  const shown = new Set();  // slot pairs already put on screen, and any held when New pair was pressed
  const voteAllowed = (vote) => {
    const pair = text("#pair-id input"), ack = text("#vote-ack");
    if (!pair || (vote === swapped.vote && Date.now() - swapped.at < 250)) return false;
    if (last && last.pair === pair && (ack !== last.ack || Date.now() - last.at < 5000)) return false;
    last = {pair, ack, at: Date.now()};
    return true;
  };
  const swapIn = (pair, vote) => {
    const next = text("#next-pair-id input");
    const l = img("left-img"), r = img("right-img"), nl = img("next-left-img"), nr = img("next-right-img");
    if (!next || next === pair || shown.has(next) || !l || !r || !nl || !nr || !nl.src || !nr.src) return null;
    shown.add(next);
    l.src = nl.src; r.src = nr.src;
    document.querySelector("#pair-id input").value = next;
    swapped = {at: Date.now(), vote};
    return Number(next);
  };
  document.addEventListener("click", (e) => {
    const el = e.target && e.target.closest ? e.target.closest("[id]") : null;
    if (el && el.closest("#new-pair")) { const next = text("#next-pair-id input"); if (next) shown.add(next); }
    const vote = el && votes.find((id) => el.id === id || el.closest("#" + id));
    if (!vote) return;
    if (!voteAllowed(vote)) { e.stopImmediatePropagation(); e.preventDefault(); return; }
    const pair = Number(last.pair);
    window.__studioVote = {voted: pair, swapped: swapIn(last.pair, vote)};
  }, true);
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
.grid-gallery img {{ {rendering} }}
.pair-img {{ min-height: 300px; }}
#status-bar {{ padding: 6px 12px; border-radius: 8px; background: var(--block-background-fill); }}
"""


def status_markdown(s: dict) -> str:
    parts = [f"Live adapter: **{version_label(s['live_adapter_version'])}**",
             f"Votes: **{s['votes']}**", f"Worker: {train.progress_text(s)}"]
    release = s.get("last_release")
    if release and s.get("training_phase") in (None, "waiting for votes"):
        parts.append(train.release_text(release))
    text = " · ".join(parts)
    if s.get("worker_error"):
        text += f" · ⚠️ last run: {s['worker_error']}"
    return text


def identity_markdown(studio: Studio, actor: Actor) -> str:
    """Who the votes are recorded under, and whether admin controls are unlocked."""
    if actor.authenticated:
        text = f"Signed in as **{actor.name}**"
    elif not actor.name:
        text = "Too many new visitors from your address just now: reload the page in a minute to vote"
    else:
        text = f"Voting anonymously as **{actor.name}** (kept by this browser)"
        if studio.access.on_spaces:
            text += "; sign in with Hugging Face to vote under your name"
    if studio.is_admin(actor) and not studio.access.everyone_admin:
        text += " · admin"
    return text


def access_notice(studio: Studio, actor: Actor) -> str:
    """The message above admin controls: empty for admins, else why they are read-only and what to do."""
    if studio.is_admin(actor):
        return ""
    return f"🔒 Read-only: these controls are for admins. {studio.access.how_to_unlock()}"


def build_ui(studio: Studio, *, browser_secret: str | None = None) -> gr.Blocks:
    """The studio's Blocks. `browser_secret` (private) keeps anonymous annotator ids valid across restarts."""
    ids = AnonymousIds(browser_secret)
    with gr.Blocks(title="Alignment Studio", delete_cache=(UPLOAD_TTL_S, UPLOAD_TTL_S)) as demo:
        session = gr.State(new_session())
        browser_id = gr.BrowserState(None, storage_key=BROWSER_KEY, secret=ids.browser_key)
        with gr.Row(equal_height=True):
            gr.Markdown("## Alignment Studio")
            status = gr.Markdown(elem_id="status-bar")
        with gr.Row(equal_height=True):
            identity = gr.Markdown(elem_id="identity")
            if studio.access.on_spaces:  # only on a real Space: elsewhere Gradio would mount mocked sign-in routes
                gr.LoginButton(scale=0, min_width=240)

        def refresh_status(state: dict | None = None, request: gr.Request = None):
            admin = state is not None and studio.is_admin(actor_of(state, request))
            return status_markdown(studio.status(max_age_s=STATUS_EVERY_S / 2, admin=admin))

        with gr.Tabs():
            label.build(studio, session, status, refresh_status, ids)
            compare.build(studio, session)
            areas = [train.build(studio, session), data.build(studio, session)]
        unlock_parts = unlock_panel() if studio.access.admin_token is not None else None

        notices = [area.notice for area in areas]
        controls = [c for area in areas for c in area.controls]

        def access_updates(actor: Actor) -> list:
            admin = studio.is_admin(actor)
            return ([access_notice(studio, actor)] * len(notices)
                    + [gr.update(interactive=admin) for _ in controls])

        def start_session(stored_id, state: dict, request: gr.Request, profile: gr.OAuthProfile | None):
            name = signed_in_name(request, profile)
            anonymous = ids.verify(stored_id)
            if anonymous is None and name is None:  # first visit, an id from before signing, or a made-up one
                try:
                    studio.limits.identities.check(address_of(request) or "unknown")
                except StudioError:  # this address has had too many new ids: it acts as nobody for now
                    stored_id = None
                else:
                    stored_id = ids.mint()
                    anonymous = ids.verify(stored_id)
            state = {**state, "annotator": name or anonymous, "authenticated": name is not None}
            actor = actor_of(state, request)
            return (state, stored_id, refresh_status(state, request), identity_markdown(studio, actor),
                    *access_updates(actor))

        demo.load(start_session, [browser_id, session], [session, browser_id, status, identity, *notices, *controls],
                  api_visibility="private")
        gr.Timer(STATUS_EVERY_S).tick(refresh_status, session, status, api_visibility="private",
                                      concurrency_limit=None, show_progress="hidden")

        if unlock_parts is not None:
            token_box, unlock_btn, unlock_msg = unlock_parts

            @user_errors
            def unlock(token: str, state: dict, request: gr.Request):
                actor = actor_of(state, request, token=(token or "").strip() or None)
                if actor.token is None or studio.checked_token(actor).token is None:  # logged and throttled
                    raise StudioError("that is not the admin token")
                state = {**state, "admin_token": token.strip()}
                actor = actor_of(state, request)
                return (state, "", "Admin controls unlocked for this tab.", identity_markdown(studio, actor),
                        *access_updates(actor))

            unlock_btn.click(unlock, [token_box, session],
                             [session, token_box, unlock_msg, identity, *notices, *controls], api_visibility="private")
        api.register(studio, ids)
    return demo


def unlock_panel():
    """The admin-token field (only when a token is configured): token box, Unlock button, message."""
    with gr.Accordion("Admin", open=False, elem_id="admin-panel"):
        with gr.Row(equal_height=True):
            token = gr.Textbox(label="Admin token", type="password", elem_id="admin-token", scale=4)
            button = gr.Button("Unlock", elem_id="admin-unlock", scale=1)
        message = gr.Markdown(elem_id="admin-message")
    return token, button, message


def pending_events(demo: gr.Blocks, address: str) -> int:
    """Events from `address` waiting in `demo`'s queue (not yet running)."""
    queue = getattr(demo, "_queue", None)
    count = 0
    for event_queue in list(getattr(queue, "event_queue_per_concurrency_id", {}).values()):
        for event in list(event_queue.queue):
            client = getattr(getattr(event, "request", None), "client", None)
            count += getattr(client, "host", None) == address
    return count


def launch(demo: gr.Blocks, studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 8,
           auth: list[tuple[str, str]] | None = None, queue_size: int = 64, guard: GuardPolicy | None = None,
           **kwargs):
    """Queue and launch behind `StudioGuard`; `auth` is Gradio's password login; `guard` defaults to the policy of
    `GuardPolicy()` (own origin only) with the studio's proxies; `kwargs` go to `Blocks.launch` (tests pass
    prevent_thread_lock, quiet)."""
    guard = guard or GuardPolicy(forwarded_hops=studio.access.forwarded_hops, lax_cookies=not studio.access.on_spaces)
    if guard.upload_dir is None:
        guard.upload_dir = Path(get_upload_folder())
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size, api_open=False)
    pixelated = min(studio.live.config.width, studio.live.config.height) < 256
    middleware = [Middleware(StudioGuard, policy=guard, pending=lambda address: pending_events(demo, address))]
    return demo.launch(server_name=host, server_port=port, head=HEAD, css=css(pixelated), auth=auth or None,
                       auth_message="Alignment Studio: log in to vote under your name" if auth else None,
                       max_file_size=guard.max_upload_bytes, app_kwargs={"middleware": middleware}, **kwargs)
