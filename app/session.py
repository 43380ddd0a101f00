"""Per-session state, who is acting (taken from the server side of each request), and Gradio errors.

Each browser tab (and each `gradio_client.Client`) has its own `gr.State` dict: the annotator, the pair on screen
and its prompt, an open blind trial, and an admin token once the person unlocked with it. `gr.State` lives on the
server; a client cannot write it.

Who acts, in this order: the name of Gradio's password login (`launch(auth=...)`, `request.username`); the
Hugging Face account signed in on a Space (`gr.OAuthProfile`); the anonymous id that this browser keeps, signed by
the server (`AnonymousIds`), checked at page load; for API clients, the signed identity the server issued them
with `/identity` and that they present with each call. Without one of these nobody is acting, and generating or
voting is refused. Gradio's session hash is never an identity: a client chooses it. A client never names the
annotator: no endpoint takes one. This module knows Gradio, the access rules and the error classes of the lower
layers, nothing else.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from alignment.core.lora_files import AdapterLoadError
from app.access import Actor
from app.studio import StudioError
from storage import StorageError

USER_ERRORS = (StudioError, StorageError, AdapterLoadError)


def new_session() -> dict:
    return {"annotator": None, "authenticated": False, "admin_token": None, "pair_id": None, "prompt": None,
            "blind": None}


def signed_in_name(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
    """The password-login name, else the Spaces sign-in name, else None."""
    if request is not None and getattr(request, "username", None):
        return str(request.username)
    if profile is not None and getattr(profile, "username", None):
        return str(profile.username)
    return None


NO_IDENTITY = ("nobody is acting: API clients ask /identity for an identity once and pass it with each call "
               "(or log in); a browser gets one when the page loads")


def address_of(request: gr.Request | None) -> str | None:
    """The client address of a request, None without one. `app.guard` has already replaced a trusted proxy's
    address by the client's (`access.client_address`)."""
    client = getattr(request, "client", None) if request is not None else None
    return getattr(client, "host", None)


def with_identity(session: dict | None, identity, ids) -> dict:
    """`session`, or for an API client without page state, one acting as the signed `identity` it presented
    (issued by `/identity`; `ids` is the server's `AnonymousIds`). A made-up or edited identity is refused."""
    if session and session.get("annotator"):
        return session
    if identity in (None, ""):
        return session or new_session()
    name = ids.verify(identity)
    if name is None:
        raise StudioError("that identity was not issued by this studio: ask /identity for one")
    return {**(session or new_session()), "annotator": name, "authenticated": False}


def annotator_of(session: dict | None, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """Who is acting in this request (see the module docstring for the order); StudioError when nobody is."""
    name = actor_of(session, request, profile).name
    if not name:
        raise StudioError(NO_IDENTITY)
    return name


def actor_of(session: dict | None, request: gr.Request | None, profile: gr.OAuthProfile | None = None,
             token: str | None = None) -> Actor:
    """The acting `Actor` (name "" when nobody is); `token` is an admin token passed with an API call (else the
    session's unlocked one)."""
    token = token or (session or {}).get("admin_token") or None
    address = address_of(request)
    name = signed_in_name(request, profile)
    if name is not None:
        return Actor(name, authenticated=True, token=token, address=address)
    if session and session.get("annotator"):
        return Actor(session["annotator"], authenticated=bool(session.get("authenticated")), token=token,
                     address=address)
    return Actor("", token=token, address=address)


def uploaded_file(value) -> str:
    """The path of a file that Gradio received as an upload (a `gr.File` value or an API `FileData`), and only
    such a path: a client cannot name a file on the server."""
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", value)
    if not path:
        raise StudioError("choose a .parquet file to import first")
    if not isinstance(path, str):
        raise StudioError("the file must be an upload (gradio_client: handle_file(path))")
    resolved, uploads = Path(path).resolve(), Path(get_upload_folder()).resolve()
    if not resolved.is_relative_to(uploads) or not resolved.is_file():
        raise StudioError("the file must be an upload (gradio_client: handle_file(path)); server paths are refused")
    return str(resolved)


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
