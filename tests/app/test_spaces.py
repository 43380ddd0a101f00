"""On a Hugging Face Space: the sign-in button is rendered there (and only there), and a signed-in visitor votes
under their Hugging Face name and is an admin when listed in --admins.

The Space is simulated in this process: the environment variables Spaces sets for an app with `hf_oauth: true`,
and a session cookie signed the way Gradio's session middleware signs it after a real sign-in (the key derives
from OAUTH_CLIENT_SECRET). Nothing talks to huggingface.co.
"""

from __future__ import annotations

import hashlib
import json
import time
from base64 import b64encode

import gradio as gr
import gradio.oauth
import itsdangerous
import pytest
from gradio_client import Client

from app.access import AccessPolicy
from app.ui import build_ui, launch
from tests.support.studio import RawSession, free_port

PROMPT = "a large red circle on a blue background"
CLIENT_SECRET = "space-oauth-secret"


def login_buttons(demo: gr.Blocks) -> list:
    return [b for b in demo.blocks.values() if isinstance(b, gr.LoginButton)]


@pytest.fixture
def space_env(monkeypatch):
    """What Spaces sets for an app with `hf_oauth: true`."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/alignment-studio")
    for name, value in {"OAUTH_CLIENT_ID": "client-id", "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
                        "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": "https://huggingface.co"}.items():
        monkeypatch.setattr(gradio.oauth, name, value)  # read by gradio at import time


def test_the_sign_in_button_is_built_off_spaces_never(studio):
    assert not login_buttons(build_ui(studio))  # offline, Blocks with a LoginButton raise when they close


def test_the_sign_in_button_is_built_on_spaces(studio, space_env):
    studio.access = AccessPolicy.for_host("0.0.0.0", on_spaces=True)
    assert len(login_buttons(build_ui(studio))) == 1


def session_cookie(username: str) -> str:
    """The cookie Gradio's SessionMiddleware would set after `username` signed in with Hugging Face."""
    info = {"access_token": "hf_test", "scope": "openid profile", "expires_at": int(time.time()) + 3600,
            "userinfo": {"preferred_username": username, "name": username.title(),
                         "profile": f"https://huggingface.co/{username}", "picture": ""}}
    key = hashlib.sha256((CLIENT_SECRET + "-v4").encode()).hexdigest()
    return itsdangerous.TimestampSigner(key).sign(b64encode(json.dumps({"oauth_info": info}).encode())).decode()


@pytest.fixture
def space(studio, space_env):
    """The studio launched as a Space with sign-in, 'alice' an admin; yields (url, studio, demo)."""
    studio.access = AccessPolicy.for_host("0.0.0.0", admins=["alice"], on_spaces=True)
    demo = build_ui(studio)
    port = free_port()
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", studio, demo
    demo.close()


def test_signed_in_visitors_vote_under_their_hugging_face_name(space):
    url, studio, _ = space
    bob = Client(url, headers={"Cookie": f"session={session_cookie('bob')}"}, verbose=False)
    assert bob.predict(api_name="/whoami") == {"annotator": "bob", "signed_in": True, "admin": False}
    _, _, pair_id = bob.predict(PROMPT, "1, 2", api_name="/new_pair")
    assert studio.repo.get_pair(pair_id).served_to == "bob"
    assert bob.predict(pair_id, "left", api_name="/vote")["annotator"] == "bob"
    alice = Client(url, headers={"Cookie": f"session={session_cookie('alice')}"}, verbose=False)
    assert alice.predict(api_name="/whoami") == {"annotator": "alice", "signed_in": True, "admin": True}
    assert alice.predict({"gamma": 0.8}, api_name="/update_settings")["gamma"] == 0.8  # an admin here
    visitor = Client(url, verbose=False)  # not signed in: anonymous, and not an admin on a public studio
    whoami = visitor.predict(api_name="/whoami")
    assert whoami["annotator"] is None and not whoami["signed_in"] and not whoami["admin"]
    assert studio.counts()["per_annotator"] == {"bob": 1}


def test_the_page_shows_who_is_signed_in(space):
    url, studio, demo = space
    page = RawSession(url, demo)
    page.http.cookies.set("session", session_cookie("bob"))
    loaded = page.call("start_session", ["", None])["output"]["data"]
    assert loaded[3] == "Signed in as **bob**" and loaded[4].startswith("🔒 Read-only")
    assert "sign in with Hugging Face as one of the admins (alice)" in loaded[4]
    page.close()
    visitor = RawSession(url, demo)
    loaded = visitor.call("start_session", ["", None])["output"]["data"]
    assert loaded[3].endswith("sign in with Hugging Face to vote under your name")
    visitor.close()
