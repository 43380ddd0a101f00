"""The access rules on their own: who is an admin where, sliding-window rate limits (with a fake clock), signed
anonymous ids, login parsing, and the sharing settings of `StudioConfig` (public defaults, the model allow-list)."""

from __future__ import annotations

import logging

import pytest

from app.access import (
    AccessPolicy,
    Actor,
    AdminRequiredError,
    AnonymousIds,
    RateLimitedError,
    RateLimiter,
    is_loopback,
    parse_auth_entry,
    read_auth_file,
)
from app.config import StudioConfig
from app.errors import StudioError

TOKEN = "a-long-enough-admin-token"


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "studio.example.org"))


def test_a_loopback_address_alone_makes_nobody_an_admin():
    """Behind a reverse proxy, a tunnel or ssh -R every visitor comes from loopback."""
    policy = AccessPolicy.for_host("127.0.0.1")
    assert not policy.public and not policy.everyone_admin
    assert not policy.is_admin(Actor("anon-123")) and not policy.is_admin(Actor("alice", authenticated=True))
    with pytest.raises(AdminRequiredError, match="restart it with --local-admin"):
        policy.require_admin(Actor("anon-123"), "train now")


def test_local_admin_is_explicit_and_refused_on_a_public_studio():
    policy = AccessPolicy.for_host("127.0.0.1", local_admin=True)
    assert policy.everyone_admin and policy.is_admin(Actor("anon-123"))
    assert not policy.is_admin(None)
    for host, on_spaces in (("0.0.0.0", False), ("127.0.0.1", True)):
        with pytest.raises(ValueError, match="local_admin .* needs a loopback host"):
            AccessPolicy.for_host(host, on_spaces=on_spaces, local_admin=True)
    with pytest.raises(ValueError, match="local_admin"):
        StudioConfig(host="0.0.0.0", local_admin=True)


@pytest.mark.parametrize("host, on_spaces", [("0.0.0.0", False), ("127.0.0.1", True), ("10.0.0.7", False)])
def test_public_studio_without_admins_has_none_and_says_how_to_configure(host, on_spaces, caplog):
    policy = AccessPolicy.for_host(host, on_spaces=on_spaces)
    assert policy.public and not policy.everyone_admin
    assert not policy.is_admin(Actor("alice", authenticated=True))
    with caplog.at_level(logging.WARNING, logger="app.access"):
        with pytest.raises(AdminRequiredError, match="no admin configured: start it with --admins") as refused:
            policy.require_admin(Actor("alice", authenticated=True), "train now")
    assert isinstance(refused.value, PermissionError) and isinstance(refused.value, StudioError)
    assert "refused train now for 'alice'" in caplog.text


def test_admins_by_signed_in_name_or_by_token():
    policy = AccessPolicy.for_host("127.0.0.1", admins=["alice"], admin_token=TOKEN)
    assert not policy.everyone_admin  # configured admins apply on localhost too
    assert policy.is_admin(Actor("alice", authenticated=True))
    assert not policy.is_admin(Actor("alice", authenticated=False))  # a name alone proves nothing
    assert not policy.is_admin(Actor("bob", authenticated=True))
    assert policy.is_admin(Actor("bob", authenticated=True, token=TOKEN))
    assert policy.is_admin(Actor("client-1", token=TOKEN))
    assert not policy.is_admin(Actor("client-1", token=TOKEN[:-1]))
    with pytest.raises(AdminRequiredError, match=r"log in as one of the admins \(alice\) or enter the admin token"):
        policy.require_admin(Actor("bob", authenticated=True), "make live")
    spaces = AccessPolicy.for_host("0.0.0.0", admins=["alice"], on_spaces=True)
    assert "sign in with Hugging Face as one of the admins" in spaces.how_to_unlock()


def test_bad_admin_settings_are_refused():
    with pytest.raises(ValueError, match="at least 16 characters"):
        AccessPolicy.for_host("0.0.0.0", admin_token="short")
    with pytest.raises(ValueError, match="not empty or anonymous ids"):
        AccessPolicy.for_host("0.0.0.0", admins=["anon-1234"])


def test_sliding_window_rate_limit():
    now = [0.0]
    limiter = RateLimiter(3, window_s=60, what="pairs", clock=lambda: now[0])
    for t in (0, 10, 20):
        now[0] = t
        limiter.check("ann")
    now[0] = 30
    with pytest.raises(RateLimitedError, match=r"^rate limit: try again in 30 s \(at most 3 pairs per 60 s"):
        limiter.check("ann")
    limiter.check("other")  # per annotator
    now[0] = 60.5  # the event at t=0 left the window; the refused one was never counted
    limiter.check("ann")
    with pytest.raises(RateLimitedError, match="try again in 10 s"):
        limiter.check("ann")
    unlimited = RateLimiter(0)
    for _ in range(1000):
        unlimited.check("ann")


def test_rate_limiter_forgets_idle_annotators():
    now = [0.0]
    limiter = RateLimiter(5, window_s=1, clock=lambda: now[0])
    for i in range(300):
        now[0] = i * 2.0  # every key is idle again by the next call
        limiter.check(f"client-{i}")
    assert 0 < limiter.tracked_keys < 256


def test_anonymous_ids_are_signed_by_the_server():
    ids = AnonymousIds("server secret")
    stored = ids.mint()
    name = ids.verify(stored)
    assert name is not None and name.startswith("anon-") and stored.startswith(name + ".")
    assert AnonymousIds("server secret").verify(stored) == name  # the same secret after a restart
    assert AnonymousIds("another secret").verify(stored) is None
    for forged in ("alice", "anon-123", f"alice.{stored.split('.')[1]}", f"anon-000000000000.{stored.split('.')[1]}",
                   None, 42, {"annotator": "alice"}, stored + ".x"):
        assert ids.verify(forged) is None
    assert "server secret" not in ids.browser_key  # the BrowserState key is sent to every page


def test_login_entries_and_files(tmp_path):
    assert parse_auth_entry("alice:s3cret:with:colons") == ("alice", "s3cret:with:colons")
    for bad, message in [("alice", "expected user:password"), (":pw", "must not be empty"),
                         ("alice:", "must not be empty"), ("anon-1:pw", "reserved")]:
        with pytest.raises(ValueError, match=message):
            parse_auth_entry(bad)
    good = tmp_path / "logins.txt"
    good.write_text("# annotators\n\nalice:one\n  bob:two  \n")
    assert read_auth_file(good) == [("alice", "one"), ("bob", "two")]
    bad = tmp_path / "bad.txt"
    bad.write_text("alice:one\n# fine\nbob-without-password\n")
    with pytest.raises(ValueError, match=r"bad.txt line 3: expected user:password") as error:
        read_auth_file(bad)
    assert "bob-without-password" not in str(error.value)  # a malformed line may hold a password: not echoed
    with pytest.raises(ValueError, match="cannot read the auth file"):
        read_auth_file(tmp_path / "missing.txt")


def test_config_public_defaults_and_model_allow_list():
    local = StudioConfig()
    assert not local.public and local.allowed_models() is None
    assert (local.rate_limits().pairs.limit, local.rate_limits().votes.limit) == (0, 0)
    public = StudioConfig(host="0.0.0.0")
    assert public.public and public.allowed_models() == ("embedded",)
    assert (public.rate_limits().pairs.limit, public.rate_limits().votes.limit) == (30, 120)
    tuned = StudioConfig(host="0.0.0.0", pairs_per_minute=0, votes_per_minute=10)
    assert (tuned.rate_limits().pairs.limit, tuned.rate_limits().votes.limit) == (0, 10)
    with pytest.raises(ValueError, match="model 'org/sd' is not allowed.*--allow-models"):
        StudioConfig(host="0.0.0.0", model="org/sd")
    with pytest.raises(ValueError, match="model '/srv/models/x' is not allowed: this studio is bound to a Space"):
        StudioConfig(on_spaces=True, model="/srv/models/x")
    assert StudioConfig(host="0.0.0.0", model="org/sd", allow_models="embedded, org/sd").allow_models == (
        "embedded", "org/sd")
    assert StudioConfig(model="/srv/models/x").model == "/srv/models/x"  # any model on localhost


def test_config_sharing_checks():
    with pytest.raises(ValueError, match="nobody can sign in here"):
        StudioConfig(admins=("alice",))
    assert StudioConfig(admins="alice, bob", auth=[("alice", "pw"), ("bob", "pw")]).admins == ("alice", "bob")
    assert StudioConfig(admins=("alice",), on_spaces=True).access_policy().admins == {"alice"}
    with pytest.raises(ValueError, match="user 'alice' is given twice"):
        StudioConfig(auth=[("alice", "a"), ("alice", "b")])
    with pytest.raises(ValueError, match="at least 16 characters"):
        StudioConfig(admin_token="1234")
    with pytest.raises(ValueError, match="pairs_per_minute must be a whole number at least 0"):
        StudioConfig(pairs_per_minute=-1)
    assert StudioConfig(train_annotators="alice,,bob, alice").train_annotators == ("alice", "bob")
    assert StudioConfig(train_annotators="").train_annotators is None
