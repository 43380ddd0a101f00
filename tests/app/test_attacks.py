"""Attacks on a served studio, each written as the attacker would run it: a foreign page with an admin's cookie,
a forged mock sign-in, a client that takes another's session hash, a vote on someone else's pair, many identities
from one address, a flood of queue joins, a huge upload, and every private handler called by index as an anonymous
client. Each must be refused, change nothing in the database or on disk, and leave honest clients served (an
honest client here comes from another loopback address, 127.0.0.2)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from gradio.utils import get_upload_folder

from app.__main__ import on_a_space, parse_args
from app.access import AccessPolicy, Actor, RateLimits
from app.guard import GuardPolicy
from app.ui import build_ui, launch
from tests.support.lora import random_lora
from tests.support.studio import RawSession, free_port, register_adapter, stored_votes

PROMPT = "a small green circle on an orange background"
TOKEN = "token-for-the-attack-tests"
LOGINS = [("alice", "pw-alice"), ("bob", "pw-bob")]
SECRET_NAME = "private-annotator-name"
HONEST = "127.0.0.2"
EVIL = "https://evil.example"


def snapshot(studio) -> dict:
    return {"counts": studio.counts(), "settings": studio.settings(),
            "adapters": [(a.version, a.status, a.status_reason) for a in studio.repo.list_adapters()],
            "requested": studio.worker.train_requested if studio.worker is not None else None,
            "uploads": sorted(p.name for p in Path(get_upload_folder()).rglob("*") if p.is_file())}


def serve(studio, logins=None):
    """`studio` with an admin token (and alice an admin when `logins`), limits of a public studio; returns
    (demo, url)."""
    studio.access = AccessPolicy.for_host("127.0.0.1", admins=["alice"] if logins else (), admin_token=TOKEN)
    studio.limits = RateLimits.per_minute(30, 120, address_pairs=12, address_votes=480, identities=10,
                                          token_failures=3)
    register_adapter(studio.repo, random_lora(1))
    studio.make_live(1, actor=Actor("setup", token=TOKEN))
    stored_votes(studio.repo, [(SECRET_NAME, "left"), ("bob", "right")])
    demo = build_ui(studio, browser_secret="attack tests secret")
    port = free_port()
    guard = GuardPolicy(pending_per_address=3, max_upload_bytes=1 << 20, uploads_per_minute=5,
                        lax_cookies=True)
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True, auth=logins, queue_size=64, guard=guard)
    return demo, f"http://127.0.0.1:{port}"


@pytest.fixture
def served(swap_studio):
    """Anonymous visitors and an admin token; yields (demo, url, studio)."""
    demo, url = serve(swap_studio)
    yield demo, url, swap_studio
    demo.close()


@pytest.fixture
def with_logins(swap_studio):
    """alice (an admin) and bob log in with passwords; yields (demo, url, studio)."""
    demo, url = serve(swap_studio, LOGINS)
    yield demo, url, swap_studio
    demo.close()


def identity(session: RawSession) -> str:
    return session.call("identity", [])["output"]["data"][0]["identity"]


def test_a_foreign_origin_with_an_admin_cookie_is_refused(with_logins):
    demo, url, studio = with_logins
    admin = RawSession(url, demo, auth=("alice", "pw-alice"))
    cookies = admin.http.cookies
    before = snapshot(studio)
    admin.http.headers["Origin"] = EVIL
    for name, data in (("make_live", ["base", ""]), ("rollback", [""]), ("update_settings", [{"gamma": 0.5}, ""]),
                       ("train_now", [""]), ("whoami", ["", ""])):
        answer = admin.join(admin.index_of(name), data)
        assert answer.status_code == 403 and "cross-site" in answer.json()["detail"], name
    for path in ("/config", "/gradio_api/info"):
        assert admin.http.get(path).status_code == 403
    # A browser's no-cors GET carries no Origin, but says it is cross-site.
    admin.http.headers.pop("Origin")
    assert admin.http.get("/gradio_api/queue/data", params={"session_hash": admin.session_hash},
                          headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert snapshot(studio) == before
    # The same cookie from the studio's own page works: the refusal was the origin, not the cookie.
    admin.http.headers["Origin"] = url
    assert admin.call("whoami", ["", ""])["output"]["data"][0] == {"annotator": "alice", "signed_in": True,
                                                                   "admin": True}
    assert any(c for c in cookies.jar)
    login = admin.http.post("/login", data={"username": "alice", "password": "pw-alice"})
    set_cookies = login.headers.get_list("set-cookie")
    assert set_cookies and all("samesite=lax" in c.lower() for c in set_cookies)
    admin.close()


def test_the_mock_sign_in_is_never_mounted_off_a_space(served, monkeypatch, caplog):
    demo, url, studio = served
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    monkeypatch.delenv("SYSTEM", raising=False)
    with caplog.at_level(logging.WARNING, logger="app"):
        config = parse_args(["--admin-token", TOKEN])
    assert not config.on_spaces and "not a Hugging Face Space" in caplog.text
    assert on_a_space({"SPACE_ID": "someone/studio", "SYSTEM": "spaces"})
    # The served studio was built the same way: no sign-in button, so Gradio mounted no OAuth routes at all.
    page = RawSession(url, demo)
    assert page.http.get("/login/huggingface", follow_redirects=False).status_code == 404
    # A session cookie signed with the key Gradio derives from an empty OAuth secret, naming alice (an admin).
    from itsdangerous import TimestampSigner
    key = hashlib.sha256(b"-v4").hexdigest()
    payload = base64.b64encode(json.dumps({"oauth_info": {"userinfo": {"preferred_username": "alice",
                                                                       "name": "alice"}}}).encode())
    page.http.cookies.set("session", TimestampSigner(key).sign(payload).decode())
    who = page.call("whoami", ["", ""])["output"]["data"][0]
    assert who == {"annotator": None, "signed_in": False, "admin": False}
    page.close()


def test_a_client_that_takes_another_clients_session_hash_cannot_act_as_it(served):
    demo, url, studio = served
    victim = RawSession(url, demo)
    token = identity(victim)
    me = token.split(".")[0]
    shown = victim.call("new_pair", [PROMPT, "1, 2", token, None])
    pair_id = shown["output"]["data"][2]
    assert studio.repo.get_pair(pair_id).served_to == me
    before = snapshot(studio)
    thief = RawSession(url, demo, session_hash=victim.session_hash)
    refused = thief.call("new_pair", [PROMPT, "3, 4", "", None])
    assert not refused["success"] and "nobody is acting" in refused["output"]["error"]
    for forged in ("", token.replace(me, "anon-000000000000"), me, "alice"):
        answer = thief.call("vote", [pair_id, "left", forged])
        assert not answer["success"], forged
    assert thief.call("whoami", ["", ""])["output"]["data"][0]["annotator"] is None
    # With an identity of its own, the pair is still not its to vote on.
    answer = thief.call("vote", [pair_id, "left", identity(thief)])
    assert not answer["success"] and f"pair {pair_id} was not shown to you" in answer["output"]["error"]
    assert snapshot(studio)["counts"] == before["counts"]
    ack = victim.call("vote", [pair_id, "right", token])["output"]["data"][0]
    assert ack["recorded"] and ack["annotator"] == me
    victim.close(), thief.close()


def test_many_identities_from_one_address_are_held_by_the_address_limits(served):
    demo, url, studio = served
    attacker = RawSession(url, demo)
    tokens, refused = [], 0
    for _ in range(200):
        answer = attacker.call("identity", [])
        if answer["success"]:
            tokens.append(answer["output"]["data"][0]["identity"])
        else:
            refused += 1
            assert "rate limit" in answer["output"]["error"]
    assert len(tokens) == 10 and refused == 190
    pairs_before = studio.counts()["pairs"]
    made = sum(attacker.call("new_pair", [PROMPT, "", token, None])["success"] for token in tokens * 2)
    assert made == 12 and studio.counts()["pairs"] == pairs_before + 12  # 12 pairs a minute per address
    honest = RawSession(url, demo, local_address=HONEST)
    assert honest.call("new_pair", [PROMPT, "", identity(honest), None])["success"]
    attacker.close(), honest.close()


def test_a_flood_of_queue_joins_is_told_busy_and_an_honest_client_is_served(served):
    demo, url, studio = served
    studio.limits = RateLimits.off()
    attacker = RawSession(url, demo)
    token, index = identity(attacker), attacker.index_of("new_pair")
    pairs_before = studio.counts()["pairs"]
    answers: list[int] = []

    def flood():
        for _ in range(10):
            answers.append(attacker.join(index, [PROMPT, "", token, None]).status_code)

    threads = [threading.Thread(target=flood) for _ in range(6)]
    for t in threads:
        t.start()
    honest = RawSession(url, demo, local_address=HONEST)
    started = time.monotonic()
    assert honest.call("new_pair", [PROMPT, "", identity(honest), None])["success"]
    waited = time.monotonic() - started
    for t in threads:
        t.join()
    busy, accepted = answers.count(429), answers.count(200)
    assert busy > 0 and busy + accepted == 60
    deadline = time.monotonic() + 120
    while studio.counts()["pairs"] < pairs_before + accepted + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert studio.counts()["pairs"] == pairs_before + accepted + 1  # refused joins made nothing
    assert waited < 60
    attacker.close(), honest.close()


def raw_upload(url: str, declared: int, body: bytes = b"x" * 1024, *, chunked: bool = False) -> int:
    """Send an upload whose headers declare `declared` bytes (or none, chunked) and return the status code."""
    host, port = url.removeprefix("http://").split(":")
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared}"
    head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}:{port}\r\n{length}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + (b"400\r\n" + body + b"\r\n" if chunked else body))
        answer = s.recv(4096).decode("latin-1")
    return int(answer.split()[1])


def test_a_256_mb_upload_is_refused_before_it_is_read(served):
    _, url, studio = served
    before = snapshot(studio)
    started = time.monotonic()
    assert raw_upload(url, 256 << 20) == 413
    assert time.monotonic() - started < 10  # answered from the headers, not after 256 MB
    assert raw_upload(url, 0, chunked=True) == 411
    assert snapshot(studio) == before


def test_every_private_handler_called_by_index_as_an_anonymous_client_changes_and_tells_nothing(served):
    demo, url, studio = served
    before = snapshot(studio)
    values = {c["id"]: c.get("props", {}).get("value") for c in demo.config["components"]}
    stranger = RawSession(url, demo)
    told = []
    for index, dependency in enumerate(stranger.dependencies):
        if dependency.get("api_name") == "import_votes":
            continue  # takes an upload; refused to non-admins in tests/app/test_sharing.py
        data = [values.get(i) for i in dependency["inputs"]]
        answer = stranger.call(index, data)
        told.append(json.dumps(answer, default=str))
    text = "\n".join(told)
    assert SECRET_NAME not in text and "by alice" not in text and "Traceback" not in text
    assert snapshot(studio)["counts"] == before["counts"]
    assert snapshot(studio)["adapters"] == before["adapters"]
    assert snapshot(studio)["settings"] == before["settings"]
    stranger.close()


def test_admin_token_guesses_are_throttled_and_logged(served, caplog):
    demo, url, studio = served
    guesser = RawSession(url, demo)
    with caplog.at_level(logging.WARNING, logger="app"):
        answers = [guesser.call("whoami", [f"wrong-guess-number-{i:04d}", ""]) for i in range(5)]
        right = guesser.call("whoami", [TOKEN, ""])
    assert [a["success"] for a in answers] == [True, True, True, False, False]
    assert "rate limit" in answers[-1]["output"]["error"]
    assert not right["success"]  # the right token too, while the address is throttled
    assert caplog.text.count("wrong admin token from 127.0.0.1") == 3
    honest = RawSession(url, demo, local_address=HONEST)
    assert honest.call("whoami", [TOKEN, ""])["output"]["data"][0]["admin"] is True
    guesser.close(), honest.close()
