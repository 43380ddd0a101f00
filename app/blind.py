"""Blind A/B trials handed out through the API and not answered yet: who owns each, and how long it stays open.

A browser's open trial lives in its `gr.State`; an API client has no page state, so `/blind_trial` keeps the trial
here under an unguessable id and `/blind_choice` takes it back. What the store promises, whatever a client sends:

- a trial belongs to the annotator who asked for it: another annotator cannot answer it (and cannot close it);
- a trial is answered once: taking it removes it, and two answers arriving at once get one trial between them;
  an answer that fails (a bad choice, a rate limit) leaves the trial open for a corrected one;
- an id that was never issued, has expired or was answered is a `StudioError` that says which (the ids of the
  newest `remember` closed trials are kept for that message, nothing else);
- memory is bounded: at most `per_annotator` open trials per annotator and `capacity` in all, each open for
  `ttl_s` seconds. A full store refuses new trials before anything is rendered (`check_room`) instead of dropping
  someone's open ones.

The store keeps whatever trial object it is given; `app.api` gives it the trial without its images. It knows no
Gradio, no model and no storage.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.errors import StudioError

T = TypeVar("T")

PER_ANNOTATOR = 8  # open trials per annotator
CAPACITY = 4096  # open trials in all
TTL_S = 600.0  # seconds a trial stays open
REMEMBER = 4096  # closed trial ids kept to say "answered" or "expired" instead of "unknown"
MAX_ID_CHARS = 64


@dataclass
class _Open(Generic[T]):
    owner: str
    trial: T
    expires: float
    answering: bool = False


class PendingTrials(Generic[T]):
    """Open trials by id, each owned by one annotator, bounded per annotator and in all, expiring after `ttl_s`."""

    def __init__(self, per_annotator: int = PER_ANNOTATOR, capacity: int = CAPACITY, ttl_s: float = TTL_S,
                 remember: int = REMEMBER, clock: Callable[[], float] = time.monotonic):
        if min(per_annotator, capacity, remember) < 1 or ttl_s <= 0:
            raise ValueError("per_annotator, capacity and remember must be >= 1 and ttl_s positive")
        self.per_annotator, self.capacity, self.ttl_s, self.remember = per_annotator, capacity, ttl_s, remember
        self.clock = clock
        self._open: OrderedDict[str, _Open[T]] = OrderedDict()  # oldest first: expiry order, one ttl for all
        self._owned: dict[str, int] = {}  # annotator -> open trials; no entry at zero
        self._closed: OrderedDict[str, str] = OrderedDict()  # id -> "answered" | "expired", the newest only
        self._lock = threading.Lock()

    # ---- what a client may ask ---------------------------------------------------------------------------------
    def check_room(self, annotator: str) -> None:
        """StudioError when `annotator` could not open another trial now (call it before rendering one)."""
        with self._lock:
            self._expire()
            self._refuse_when_full(annotator)

    def add(self, trial: T, annotator: str) -> str:
        """Keep `trial` for `annotator`; returns its id. StudioError (nothing kept) when there is no room."""
        with self._lock:
            self._expire()
            self._refuse_when_full(annotator)
            trial_id = secrets.token_urlsafe(16)
            self._open[trial_id] = _Open(annotator, trial, self.clock() + self.ttl_s)
            self._owned[annotator] = self._owned.get(annotator, 0) + 1
            return trial_id

    @contextmanager
    def answering(self, trial_id, annotator: str) -> Iterator[T]:
        """The trial `trial_id` of `annotator`, closed as answered when the block ends without an exception and
        left open when it raises. StudioError when the id is not one of `annotator`'s open trials."""
        key = checked_id(trial_id)
        with self._lock:
            self._expire()
            entry = self._open.get(key)
            if entry is None:
                raise StudioError(self._why_closed(key))
            if entry.owner != annotator:
                raise StudioError("that blind trial was given to another annotator: ask /blind_trial for your own")
            if entry.answering:
                raise StudioError("that blind trial is being answered already; it is answered once")
            entry.answering = True
        try:
            yield entry.trial
        except BaseException:
            with self._lock:
                entry.answering = False  # still open (unless it expired meanwhile): a corrected answer may follow
            raise
        with self._lock:
            if self._open.pop(key, None) is not None:
                self._release(entry.owner)
            self._close(key, "answered")

    def open_count(self, annotator: str | None = None) -> int:
        """Open trials of `annotator`, or in all (expired ones are dropped first)."""
        with self._lock:
            self._expire()
            return len(self._open) if annotator is None else self._owned.get(annotator, 0)

    # ---- bookkeeping, under the lock ----------------------------------------------------------------------------
    def _refuse_when_full(self, annotator: str) -> None:
        minutes = f"{self.ttl_s / 60:g} min"
        if self._owned.get(annotator, 0) >= self.per_annotator:
            raise StudioError(f"you have {self.per_annotator} blind trials open, the most allowed: answer one with "
                              f"/blind_choice, or wait until they expire ({minutes} after each was given)")
        if len(self._open) >= self.capacity:
            raise StudioError(f"the studio holds {self.capacity} open blind trials, the most it keeps: try again "
                              f"in a few minutes (an unanswered trial expires after {minutes})")

    def _expire(self) -> None:
        now = self.clock()
        while self._open:
            key, entry = next(iter(self._open.items()))
            if entry.expires > now:
                break
            del self._open[key]
            self._release(entry.owner)
            self._close(key, "expired")

    def _release(self, owner: str) -> None:
        left = self._owned.get(owner, 0) - 1
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)

    def _close(self, key: str, why: str) -> None:
        self._closed[key] = why
        self._closed.move_to_end(key)
        while len(self._closed) > self.remember:
            self._closed.popitem(last=False)

    def _why_closed(self, key: str) -> str:
        why = self._closed.get(key)
        if why == "answered":
            return "that blind trial was answered already; it is answered once (ask /blind_trial for a new one)"
        if why == "expired":
            return (f"that blind trial expired ({self.ttl_s / 60:g} min after it was given); ask /blind_trial for "
                    f"a new one")
        return "no blind trial has that id: use the trial id /blind_trial gave you"


def checked_id(trial_id) -> str:
    """A trial id as the store keys it; StudioError for anything that cannot be one."""
    if isinstance(trial_id, str) and 0 < len(trial_id.strip()) <= MAX_ID_CHARS:
        return trial_id.strip()
    if trial_id is None or trial_id == "":
        raise StudioError("no blind trial given: pass the trial id /blind_trial gave you")
    raise StudioError(f"a blind trial id is the text /blind_trial gave you, got {trial_id!r:.40}")
