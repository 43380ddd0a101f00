"""Who may do what: the acting identity, the admin rule, per-annotator rate limits, signed anonymous ids.

`Studio` enforces all of this on the server, for the UI and the API alike; the UI only mirrors it (read-only
controls and a message). The rules:

- An `Actor` is whoever the server says is acting: a name from Gradio's password login or the Spaces sign-in
  (`authenticated`), or an anonymous id. A client never names itself; an admin token is the one thing it may bring.
- Admins are the `--admins` names (signed-in names only: an anonymous id is never one) and whoever shows the
  `--admin-token` (compared in constant time; wrong tokens are logged and throttled per client address). Nobody
  else, whatever their address: "everyone is an admin" only with `--local-admin`, which a public studio refuses.
- Rate limits count events per annotator and per client address in a sliding window, in this process. The client
  address is the peer's, or the one `forwarded_hops` trusted proxies put in X-Forwarded-For.

This module knows no Gradio, no model and no database.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from app.errors import AdminRequiredError, RateLimitedError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16  # an admin token is the whole password of a public studio
MAX_USER_CHARS = 100  # storage keeps annotator names up to this length
ANON_PREFIX = "anon-"
CONFIGURE_HINT = ("start it with --admins NAME[,NAME] (signed-in names) or --admin-token TOKEN "
                  "(STUDIO_ADMINS / STUDIO_ADMIN_TOKEN)")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass(frozen=True)
class Actor:
    """Whoever acts in one request, as the server determined it; `token` is an admin token they presented."""

    name: str
    authenticated: bool = False
    token: str | None = None
    address: str | None = None  # the client address, where the request had one


@dataclass(frozen=True)
class AccessPolicy:
    """Who is an admin (see the module docstring)."""

    admins: frozenset[str] = frozenset()
    admin_token: str | None = None
    public: bool = False
    on_spaces: bool = False
    local_admin: bool = False
    forwarded_hops: int = 0  # trusted reverse proxies in front of the studio (X-Forwarded-For)

    def __post_init__(self):
        if self.admin_token is not None and len(self.admin_token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the admin token must be at least {MIN_TOKEN_CHARS} characters "
                             f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        bad = [name for name in self.admins if not name.strip() or name.startswith(ANON_PREFIX)]
        if bad:
            raise ValueError(f"admin names must be signed-in user names, not empty or anonymous ids: {bad}")
        if self.local_admin and self.public:
            raise ValueError("local_admin makes everyone who reaches the studio an admin, so it needs a loopback "
                             "host (127.0.0.1) and no Space; use --admins or --admin-token on a public studio")

    @classmethod
    def for_host(cls, host: str, *, admins: Iterable[str] = (), admin_token: str | None = None,
                 on_spaces: bool = False, local_admin: bool = False,
                 forwarded_hops: int | None = None) -> AccessPolicy:
        hops = (1 if on_spaces else 0) if forwarded_hops is None else forwarded_hops
        return cls(frozenset(admins), admin_token or None, public=on_spaces or not is_loopback(host),
                   on_spaces=on_spaces, local_admin=local_admin, forwarded_hops=hops)

    @property
    def everyone_admin(self) -> bool:
        return self.local_admin

    def is_admin(self, actor: Actor | None) -> bool:
        if actor is None:
            return False
        if self.everyone_admin:
            return True
        if actor.authenticated and actor.name in self.admins:
            return True
        return self.token_matches(actor.token)

    def token_matches(self, token: str | None) -> bool:
        if not token or self.admin_token is None:
            return False
        return hmac.compare_digest(token.encode(), self.admin_token.encode())

    def require_admin(self, actor: Actor | None, action: str) -> None:
        """AdminRequiredError (logged) unless `actor` is an admin."""
        if self.is_admin(actor):
            return
        who = "an unknown caller" if actor is None else repr(actor.name)
        log.warning("refused %s for %s: not an admin", action, who)
        raise AdminRequiredError(f"{action} is for admins only, and {who} is not one. {self.how_to_unlock()}")

    def describe(self) -> str:
        """One line for the start-up log."""
        where = ("public (a Space)" if self.on_spaces else "public") if self.public else "local"
        if self.everyone_admin:
            return f"{where}: everyone who reaches this port is an admin (--local-admin)"
        who = [f"admins {', '.join(sorted(self.admins))}"] if self.admins else []
        who += ["anyone with the admin token"] if self.admin_token is not None else []
        return f"{where}: admin controls for {' and '.join(who) or 'nobody (no admin configured)'}"

    def how_to_unlock(self) -> str:
        """What a person can do to become an admin here (shown with every refusal and on read-only tabs)."""
        ways = []
        if self.admins:
            sign_in = "sign in with Hugging Face" if self.on_spaces else "log in"
            ways.append(f"{sign_in} as one of the admins ({', '.join(sorted(self.admins))})")
        if self.admin_token is not None:
            ways.append("enter the admin token in the Admin panel (API: pass admin_token)")
        if ways:
            return "To act as an admin, " + " or ".join(ways) + "."
        if not self.public:
            return ("This studio has no admin configured: restart it with --local-admin (you alone on this machine) "
                    f"or {CONFIGURE_HINT.removeprefix('start it with ')}.")
        return f"This studio is public and has no admin configured: {CONFIGURE_HINT}."


class RateLimiter:
    """At most `limit` events per key in any `window_s` seconds (a sliding window of timestamps); 0 = no limit."""

    def __init__(self, limit: int, window_s: float = 60.0, what: str = "requests",
                 clock: Callable[[], float] = time.monotonic, per: str = "annotator"):
        if limit < 0 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 0 and a positive window")
        self.limit, self.window_s, self.what, self.clock, self.per = int(limit), float(window_s), what, clock, per
        self._events: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def blocked(self, key: str) -> bool:
        """True when `key`'s window is full (counts nothing)."""
        if self.limit == 0:
            return False
        with self._lock:
            now = self.clock()
            return sum(1 for t in self._events.get(key, ()) if t > now - self.window_s) >= self.limit

    @property
    def tracked_keys(self) -> int:
        """How many keys the limiter holds events for (idle keys are forgotten every 256 events)."""
        with self._lock:
            return len(self._events)

    def check(self, key: str) -> None:
        """Count one event for `key`, or raise RateLimitedError (counting nothing) when the window is full."""
        if self.limit == 0:
            return
        with self._lock:
            now = self.clock()
            events = self._events.setdefault(key, collections.deque())
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.limit:
                wait = max(1, math.ceil(events[0] + self.window_s - now))
                log.warning("rate limit: %s for %r (%d per %g s)", self.what, key, self.limit, self.window_s)
                raise RateLimitedError(f"rate limit: try again in {wait} s (at most {self.limit} {self.what} "
                                       f"per {self.window_s:g} s per {self.per})")
            events.append(now)
            self._calls += 1
            if self._calls % 256 == 0:  # forget idle keys, so that many one-off clients cost no memory
                for k in [k for k, q in self._events.items() if not q or q[-1] <= now - self.window_s]:
                    del self._events[k]


@dataclass
class RateLimits:
    """The studio's limits per annotator and per client address: generated pairs (compare and blind A/B count too),
    votes, new anonymous identities and wrong admin tokens."""

    pairs: RateLimiter
    votes: RateLimiter
    address_pairs: RateLimiter = None
    address_votes: RateLimiter = None
    identities: RateLimiter = None
    token_failures: RateLimiter = None

    def __post_init__(self):
        clock = self.pairs.clock
        self.address_pairs = self.address_pairs or RateLimiter(0, 60.0, "pairs", clock, per="client address")
        self.address_votes = self.address_votes or RateLimiter(0, 60.0, "votes", clock, per="client address")
        self.identities = self.identities or RateLimiter(0, 60.0, "new identities", clock, per="client address")
        self.token_failures = self.token_failures or RateLimiter(5, 60.0, "wrong admin tokens", clock,
                                                                 per="client address")

    @classmethod
    def per_minute(cls, pairs: int, votes: int, clock: Callable[[], float] = time.monotonic, *,
                   address_pairs: int = 0, address_votes: int = 0, identities: int = 0,
                   token_failures: int = 5) -> RateLimits:
        def minute(limit: int, what: str, per: str) -> RateLimiter:
            return RateLimiter(limit, 60.0, what, clock, per=per)

        return cls(minute(pairs, "pairs", "annotator"), minute(votes, "votes", "annotator"),
                   minute(address_pairs, "pairs", "client address"), minute(address_votes, "votes", "client address"),
                   minute(identities, "new identities", "client address"),
                   minute(token_failures, "wrong admin tokens", "client address"))

    @classmethod
    def off(cls) -> RateLimits:
        return cls.per_minute(0, 0)

    def check_pair(self, annotator: str, address: str | None) -> None:
        """Count one generated pair (or render) for `annotator` and their address; RateLimitedError when over."""
        if address is not None:
            self.address_pairs.check(address)
        self.pairs.check(annotator)

    def check_vote(self, annotator: str, address: str | None) -> None:
        if address is not None:
            self.address_votes.check(address)
        self.votes.check(annotator)


def client_address(peer: str | None, forwarded_for: str | None, hops: int) -> str:
    """The client's address: the peer's, or, behind `hops` trusted reverse proxies, the address the outermost of
    them saw (the `hops`-th entry from the right of X-Forwarded-For; entries further left are the client's say)."""
    if hops > 0 and forwarded_for:
        entries = [e.strip() for e in forwarded_for.split(",") if e.strip()]
        if len(entries) >= hops:
            return entries[-hops]
    return peer or "unknown"


class AnonymousIds:
    """Anonymous annotator ids signed with a server key, so that a browser can keep its id but not choose one.

    The browser stores `anon-<hex>.<signature>`; only the part before the dot is the annotator. Gradio's
    `BrowserState` alone would not do: its encryption key is sent to every page."""

    def __init__(self, secret: str | None = None):
        master = (secret or secrets.token_urlsafe(24)).encode()
        self._key = hmac.new(master, b"anonymous-annotator-id", hashlib.sha256).digest()
        # The BrowserState key is public (it is in the page config): derive it so that `secret` stays private.
        self.browser_key = hmac.new(master, b"browser-state", hashlib.sha256).hexdigest()

    def _sign(self, name: str) -> str:
        return hmac.new(self._key, name.encode(), hashlib.sha256).hexdigest()[:32]

    def mint(self) -> str:
        name = f"{ANON_PREFIX}{secrets.token_hex(6)}"
        return f"{name}.{self._sign(name)}"

    def verify(self, stored) -> str | None:
        """The annotator name in a stored value, or None when it was not signed by this server."""
        if not isinstance(stored, str) or stored.count(".") != 1:
            return None
        name, signature = stored.split(".")
        if not name.startswith(ANON_PREFIX) or not hmac.compare_digest(signature, self._sign(name)):
            return None
        return name


def parse_auth_entry(entry: str, where: str = "--auth") -> tuple[str, str]:
    """`user:password` → (user, password); ValueError naming `where` when it is not one."""
    user, sep, password = entry.partition(":")
    user = user.strip()
    if not sep:  # the line is not echoed: it may be a password
        raise ValueError(f"{where}: expected user:password (no ':' found)")
    if not user or not password:
        raise ValueError(f"{where}: the user name and the password must not be empty")
    if len(user) > MAX_USER_CHARS:
        raise ValueError(f"{where}: the user name is longer than {MAX_USER_CHARS} characters")
    if user.startswith(ANON_PREFIX) or user.startswith("client-"):
        raise ValueError(f"{where}: user name {user!r} is reserved for anonymous annotators")
    return user, password


def read_auth_file(path) -> list[tuple[str, str]]:
    """One `user:password` per line (surrounding whitespace is dropped); blank lines and `#` comments are skipped.
    ValueError names a malformed line without echoing it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read the auth file {path}: {e.strerror or e}") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            entries.append(parse_auth_entry(line.strip(), where=f"{path} line {number}"))
    return entries
