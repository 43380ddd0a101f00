"""`StudioGuard`: the checks a request meets before Gradio sees it, as one ASGI middleware.

Gradio's routes answer anyone who reaches the port, echo any `Origin` with credentials when the host is not
localhost, and set `SameSite=None` cookies, so a page on another site, opened by a signed-in admin, could act as
that admin. In order, for each HTTP request:

1. **Client address.** Behind `forwarded_hops` trusted reverse proxies, the address the outermost of them saw
   (X-Forwarded-For) replaces the peer's in the request, so Gradio, the rate limits and the logs all see the
   client's (`access.client_address`).
2. **Same origin.** A request to Gradio's API (`/gradio_api/...`, `/config`) or any POST is refused (403) when it
   comes from another site: its `Origin` is not the studio's own (the `Host` it was sent to, or the trusted
   proxy's `X-Forwarded-Host`) nor in `allowed_origins`, or the browser marks it `Sec-Fetch-Site: cross-site` or
   `same-site` without an allowed `Origin`. Clients that are not browsers send neither header and are not
   affected.
3. **Busy.** A queue join (or REST call) is refused (429, "busy") while its address already has
   `pending_per_address` events waiting (0 = no bound), so that one client cannot fill the queue ahead of
   everyone else; the queue as a whole is bounded by Gradio's `max_size`.
4. **Uploads.** An upload needs a `Content-Length` of at most `max_upload_bytes` (413 otherwise, before a byte of
   the body is read), counts against `uploads_per_minute` per address, and is refused (507) while the upload
   folder holds more than `upload_cache_bytes`; files in it older than `upload_ttl_s` are deleted.
5. **Cookies.** Off a Space, the cookies Gradio sets are rewritten to `SameSite=Lax` (on a Space the studio runs
   in an iframe of huggingface.co, where cookies need `SameSite=None`; the origin check protects it there).

Refusals are logged with the address and change nothing. This module knows ASGI and the access rules; it reaches
Gradio only through the `pending(address)` callable and the upload folder it is given.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from app.access import RateLimiter, client_address
from app.errors import RateLimitedError

log = logging.getLogger(__name__)

API_PREFIXES = ("/gradio_api/", "/config")
QUEUED_PATHS = ("/gradio_api/queue/join", "/gradio_api/call/")
UPLOAD_PATH = "/gradio_api/upload"
SAMESITE_NONE = re.compile(rb"samesite=none", re.IGNORECASE)


@dataclass
class GuardPolicy:
    """What `StudioGuard` enforces (see the module docstring)."""

    allowed_origins: tuple[str, ...] = ()
    forwarded_hops: int = 0
    pending_per_address: int = 8
    max_upload_bytes: int = 64 << 20
    uploads_per_minute: int = 10
    upload_cache_bytes: int = 1 << 30
    upload_dir: Path | None = None
    upload_ttl_s: float = 3600.0
    lax_cookies: bool = True
    uploads: RateLimiter = field(init=False, repr=False)

    def __post_init__(self):
        self.allowed_origins = tuple(o.rstrip("/").lower() for o in self.allowed_origins)
        self.uploads = RateLimiter(self.uploads_per_minute, 60.0, "uploads", per="client address")


def origin_host(origin: str) -> str | None:
    """`host[:port]` of an origin like `https://example.org:8443`, lower-cased; None for `null` or garbage."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower()


class StudioGuard:
    """ASGI middleware; `pending(address)` counts the events that address has waiting in Gradio's queue."""

    def __init__(self, app, policy: GuardPolicy, pending: Callable[[str], int] = lambda address: 0):
        self.app, self.policy, self.pending = app, policy, pending

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        peer = (scope.get("client") or (None, 0))[0]
        address = client_address(peer, headers.get("x-forwarded-for"), self.policy.forwarded_hops)
        if address != peer:
            scope = {**scope, "client": (address, 0)}
        path, method = scope.get("path", ""), scope.get("method", "GET")
        refusal = self._refusal(path, method, headers, address)
        if refusal is not None:
            status, message = refusal
            log.warning("refused %s %s from %s: %s", method, path, address, message)
            await _send_json(send, status, {"detail": message, "error": message})
            return
        if self.policy.lax_cookies:
            send = self._lax_cookies(send)
        await self.app(scope, receive, send)

    def _refusal(self, path: str, method: str, headers: dict, address: str) -> tuple[int, str] | None:
        sensitive = method == "POST" or path.startswith(API_PREFIXES)
        if sensitive and not self._same_origin(headers):
            return 403, "cross-site request refused: this studio answers only pages of its own origin"
        if method == "POST" and path.startswith(QUEUED_PATHS) and self.policy.pending_per_address > 0:
            waiting = self.pending(address)
            if waiting >= self.policy.pending_per_address:
                return 429, (f"busy: {waiting} of your requests are already waiting; try again when they are "
                             "answered")
        if method == "POST" and path.rstrip("/") == UPLOAD_PATH:
            return self._upload_refusal(headers, address)
        return None

    def _same_origin(self, headers: dict) -> bool:
        origin = headers.get("origin")
        if origin is not None:
            if origin.rstrip("/").lower() in self.policy.allowed_origins:
                return True
            own = {headers.get("host", "").lower()}
            if self.policy.forwarded_hops > 0 and headers.get("x-forwarded-host"):
                own.add(headers["x-forwarded-host"].split(",")[-1].strip().lower())
            host = origin_host(origin)
            return host is not None and host in own
        # No Origin: a client that is not a browser, or a browser's plain GET; browsers still say where it came from.
        return headers.get("sec-fetch-site", "none") in ("same-origin", "none")

    def _upload_refusal(self, headers: dict, address: str) -> tuple[int, str] | None:
        limit = self.policy.max_upload_bytes
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            return 411, "an upload must say its size (Content-Length)"
        if length > limit:
            return 413, f"the upload is {length / 1e6:.1f} MB; at most {limit / 1e6:.1f} MB are accepted"
        try:
            self.policy.uploads.check(address)
        except RateLimitedError as e:
            return 429, str(e)
        held = self._clean_uploads()
        if held + length > self.policy.upload_cache_bytes:
            return 507, "the studio's upload space is full; try again later"
        return None

    def _clean_uploads(self) -> int:
        """Delete uploads older than the TTL; the bytes the upload folder still holds."""
        folder = self.policy.upload_dir
        if folder is None or not folder.is_dir():
            return 0
        cutoff, held = time.time() - self.policy.upload_ttl_s, 0
        for root, _, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                try:
                    stat = path.stat()
                    if stat.st_mtime < cutoff:
                        path.unlink()
                    else:
                        held += stat.st_size
                except OSError:
                    continue  # removed meanwhile
        return held

    @staticmethod
    def _lax_cookies(send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    (k, SAMESITE_NONE.sub(b"SameSite=Lax", v) if k.lower() == b"set-cookie" else v)
                    for k, v in message.get("headers", [])]}
            await send(message)

        return wrapped


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
