"""A shared studio over HTTP: password logins, every admin endpoint called as a non-admin (refused, nothing changed)
and as an admin (works), the admin token in the API and in the UI, read-only controls for non-admins, votes that
only the server attributes (a client that forges a name in the API or in its browser state still votes as
itself), uploads as the only import source, and rate limits as API errors."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.access import AccessPolicy, Actor, RateLimits
from app.studio import Studio
from app.ui import build_ui, launch
from tests.support.lora import random_lora
from tests.support.studio import RawSession, api_identity, free_port, register_adapter, stored_votes

PROMPT = "a small green circle on an orange background"
TOKEN = "token-for-the-sharing-tests"
LOGINS = [("alice", "pw-alice"), ("bob", "pw-bob")]
ADMIN_ENDPOINTS = ("/update_settings", "/train_now", "/make_live", "/rollback", "/import_votes")


def serve(studio: Studio, **launch_kwargs):
    demo = build_ui(studio, browser_secret="test secret")
    port = free_port()
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture
def shared(swap_studio):
    """A studio with two logins, alice an admin, an admin token; yields (demo, url, studio)."""
    swap_studio.access = AccessPolicy.for_host("127.0.0.1", admins=["alice"], admin_token=TOKEN)
    swap_studio.limits = RateLimits.per_minute(0, 0, token_failures=100)  # wrong tokens are tried on purpose
    demo, url = serve(swap_studio, auth=LOGINS)
    yield demo, url, swap_studio
    demo.close()


def state_of(studio) -> dict:
    return {"settings": studio.settings(), "live": studio.repo.live_adapter().version,
            "serving": studio.live.adapter_version, "counts": studio.counts(),
            "statuses": [(a.version, a.status) for a in studio.repo.list_adapters()],
            "requested": studio.worker.train_requested}


def test_every_admin_endpoint_refuses_non_admins_and_works_for_admins(shared, embedded):
    demo, url, studio = shared
    v1 = register_adapter(studio.repo, random_lora(1))
    v2 = register_adapter(studio.repo, random_lora(2))
    studio.make_live(v2, actor=Actor("alice", authenticated=True))
    stored_votes(studio.repo, [("ann", "left")] * 5)
    export, _ = studio.export(actor=Actor("alice", authenticated=True))
    calls = {
        "/update_settings": lambda c, token: c.predict({"gamma": 0.5}, token, api_name="/update_settings"),
        "/train_now": lambda c, token: c.predict(token, api_name="/train_now"),
        "/make_live": lambda c, token: c.predict("v1", token, api_name="/make_live"),
        "/rollback": lambda c, token: c.predict(token, api_name="/rollback"),
        "/import_votes": lambda c, token: c.predict(handle_file(str(export)), token, api_name="/import_votes"),
    }
    assert set(calls) == set(ADMIN_ENDPOINTS)
    bob = Client(url, auth=("bob", "pw-bob"), verbose=False)
    before = state_of(studio)
    for token in ("", "not-the-token-not-the-token"):
        for name, call in calls.items():
            with pytest.raises(AppError, match=r"is for admins only, and 'bob' is not one.*log in as one of the "
                                               r"admins \(alice\) or enter the admin token"):
                call(bob, token)
            assert state_of(studio) == before, name

    alice = Client(url, auth=("alice", "pw-alice"), verbose=False)
    assert calls["/update_settings"](alice, "")["gamma"] == 0.5 and studio.worker.trainer_config.gamma == 0.5
    assert calls["/train_now"](alice, "") == {"started": True} and studio.worker.train_requested
    assert calls["/make_live"](alice, "") == {"live_adapter_version": v1, "live": f"v{v1}"}
    assert studio.repo.live_adapter().version == v1 and studio.live.adapter_version == v1
    assert calls["/rollback"](alice, "")["live"] == "base" and studio.live.adapter_version is None
    assert calls["/import_votes"](alice, "") == {"imported": 5} and studio.counts()["votes"] == 10
    # bob with the token is an admin too
    assert bob.predict(f"v{v2}", TOKEN, api_name="/make_live")["live_adapter_version"] == v2
    assert studio.live.adapter_version == v2


def test_votes_are_recorded_under_the_login(shared):
    _, url, studio = shared
    bob = Client(url, auth=("bob", "pw-bob"), verbose=False)
    _, _, pair_id = bob.predict(PROMPT, "1, 2", api_name="/new_pair")
    assert studio.repo.get_pair(pair_id).served_to == "bob"
    assert bob.predict(pair_id, "left", api_name="/vote")["annotator"] == "bob"
    assert bob.predict(api_name="/whoami") == {"annotator": "bob", "signed_in": True, "admin": False}
    assert bob.predict(TOKEN, api_name="/whoami")["admin"] is True
    alice = Client(url, auth=("alice", "pw-alice"), verbose=False)
    assert alice.predict(api_name="/whoami") == {"annotator": "alice", "signed_in": True, "admin": True}
    with pytest.raises(AppError, match=f"pair {pair_id} was not shown to you"):  # bob's pair, not alice's
        alice.predict(pair_id, "right", api_name="/vote")
    _, _, own = alice.predict(PROMPT, "3, 4", api_name="/new_pair")
    assert alice.predict(own, "right", api_name="/vote")["annotator"] == "alice"
    assert studio.counts()["per_annotator"] == {"alice": 1, "bob": 1}


def test_ui_controls_are_read_only_for_non_admins_until_unlocked(shared):
    demo, url, studio = shared
    stored_votes(studio.repo, [("ann", "left")] * 4)
    bob = RawSession(url, demo, auth=("bob", "pw-bob"))
    loaded = bob.call("start_session", ["", None])["output"]["data"]
    assert loaded[3] == "Signed in as **bob**"
    notices, controls = loaded[4:6], loaded[6:]
    assert all(n.startswith("🔒 Read-only") and "admin token" in n for n in notices)
    assert controls and all(c == {"interactive": False, "__type__": "update"} for c in controls)
    refused = bob.call("ask_training", [None])  # what a click on the disabled Train now would send
    assert not refused["success"] and "is for admins only" in refused["output"]["error"]
    wrong = bob.call("unlock", ["not-the-token-at-all", None])
    assert not wrong["success"] and "not the admin token" in wrong["output"]["error"]
    unlocked = bob.call("unlock", [TOKEN, None])["output"]["data"]
    assert unlocked[3] == "Signed in as **bob** · admin" and all(c["interactive"] for c in unlocked[6:])
    assert bob.call("ask_training", [None])["output"]["data"] == ["Training requested."]
    bob.close()
    alice = RawSession(url, demo, auth=("alice", "pw-alice"))
    loaded = alice.call("start_session", ["", None])["output"]["data"]
    assert loaded[4:6] == ["", ""] and all(c["interactive"] for c in loaded[6:])
    alice.close()


def test_imports_read_uploads_only(shared, tmp_path):
    _, url, studio = shared
    alice = Client(url, auth=("alice", "pw-alice"), verbose=False)
    db = studio.repo.data_dir / "studio.db"
    for path in (str(db), "/etc/passwd", str(tmp_path)):
        with pytest.raises(AppError, match="must be an upload"):
            alice.predict({"path": path}, "", api_name="/import_votes")
    with pytest.raises(AppError, match="must be an upload"):
        alice.predict({"path": "/tmp/gradio/../../etc/passwd"}, "", api_name="/import_votes")
    assert studio.counts()["votes"] == 0


@pytest.fixture
def anonymous(studio):
    """A studio without logins (annotators are anonymous), 2 pairs and 3 votes a minute per annotator."""
    studio.limits = RateLimits.per_minute(pairs=2, votes=3)
    demo, url = serve(studio)
    yield demo, url, studio
    demo.close()


def test_a_client_cannot_choose_the_annotator_it_votes_as(anonymous):
    demo, url, studio = anonymous
    page = RawSession(url, demo)
    # A page that sends a made-up browser id ("alice") gets a fresh anonymous id instead.
    loaded = page.call("start_session", ["alice", None])["output"]["data"]
    stored, identity = loaded[1], loaded[3]
    me = stored.split(".")[0]
    assert me.startswith("anon-") and identity == f"Voting anonymously as **{me}** (kept by this browser)"
    assert page.call("new_pair", [PROMPT, "1, 2", "", None])["success"]
    # the first vote button (left) naming no pair (as a page's click that skipped its script): the session's pair
    assert page.call("handler", [None, None, None])["success"]
    # The vote endpoint given a name as its identity: refused; the server names the voter, from what it signed.
    forged = page.call("vote", [1, "right", "alice"])
    assert not forged["success"] and "not issued by this studio" in forged["output"]["error"]
    # A signed id from this server is honoured after a reload; an edited one is not.
    again = RawSession(url, demo)
    assert again.call("start_session", [stored, None])["output"]["data"][1] == stored
    assert again.call("start_session", [stored.replace(me, "anon-000000000000"), None])["output"]["data"][1] != stored
    assert studio.counts()["per_annotator"] == {me: 1}
    page.close(), again.close()
    # gradio_client sessions are nobody until they ask for an identity; each gets its own.
    assert Client(url, verbose=False).predict(api_name="/whoami")["annotator"] is None
    names = set()
    for _ in range(2):
        client = Client(url, verbose=False)
        names.add(client.predict("", api_identity(client), api_name="/whoami")["annotator"])
    assert len(names) == 2 and all(n.startswith("anon-") for n in names)


def test_rate_limits_reach_api_clients_as_errors(anonymous):
    _, url, studio = anonymous
    client = Client(url, verbose=False)
    me = api_identity(client)
    for seeds in ("1, 2", "3, 4"):
        client.predict(PROMPT, seeds, me, api_name="/new_pair")
    with pytest.raises(AppError, match=r"rate limit: try again in \d+ s"):
        client.predict(PROMPT, "5, 6", me, api_name="/new_pair")
    assert studio.counts()["pairs"] == 2
    other = Client(url, verbose=False)
    other.predict(PROMPT, "5, 6", api_identity(other), api_name="/new_pair")  # another annotator
    studio.limits.pairs.limit = 0  # no more pair limit: the vote limit is next
    for seeds in ("7, 8", "9, 10"):
        client.predict(PROMPT, seeds, me, api_name="/new_pair")
    for pair_id in (1, 2, 4):
        client.predict(pair_id, "left", me, api_name="/vote")
    with pytest.raises(AppError, match="rate limit: try again in"):
        client.predict(5, "right", me, api_name="/vote")
    assert studio.counts()["votes"] == 3
