"""Per-session state, the annotator's identity, and turning user errors into Gradio errors.

Each browser tab (and each `gradio_client.Client`) has its own `gr.State` dict: the annotator, the pair on screen
and its prompt, and an open blind trial. The blind trial's order lives only here, on the server.

Who votes: a logged-in user's name when the app runs with `auth` (a later issue adds the Spaces login), else an
anonymous id the browser keeps in `localStorage` (`gr.BrowserState`), else, for API clients, one derived from the
Gradio session. This module knows Gradio and the error classes of the lower layers, nothing else.
"""

from __future__ import annotations

import functools
import html
import secrets

import gradio as gr

from alignment.sampler import AdapterLoadError
from app.studio import StudioError
from storage import StorageError

USER_ERRORS = (StudioError, StorageError, AdapterLoadError)


def new_session() -> dict:
    return {"annotator": None, "pair_id": None, "prompt": None, "blind": None}


def anonymous_id() -> str:
    return f"anon-{secrets.token_hex(6)}"


def annotator_of(session: dict | None, request: gr.Request | None) -> str:
    """Who is acting in this request (see the module docstring for the order)."""
    if request is not None and getattr(request, "username", None):
        return str(request.username)
    if session and session.get("annotator"):
        return session["annotator"]
    session_hash = getattr(request, "session_hash", None) if request is not None else None
    return f"client-{session_hash[:16]}" if session_hash else "anonymous"


def user_errors(fn):
    """Show a lower layer's message for bad input as a `gr.Error` (a toast in the UI, an error for API clients).

    Escaped, because Gradio renders error messages as HTML and they may quote what a client sent."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise gr.Error(html.escape(str(e), quote=False), print_exception=False) from e

    return wrapper
