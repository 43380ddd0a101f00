"""Keeping the live sampler on the adapter that the database says is live.

The worker (a thread here, or a process on another machine) only writes adapters and statuses to storage; whoever
owns a sampler calls `sync_live_adapter` before generating, and the swap happens under the sampler's lock between two
generations. A `LiveFollower` thread does better than waiting for the next request: it polls storage, does the heavy
part of the swap beside generation (`Sampler.prepare`) and holds the lock only for the commit, so a new adapter goes
live within a poll interval and a request never waits for more than that commit. The adapter bytes come from the
content-addressed blob store, which checks their SHA-256 against the hash recorded in the database before they are
loaded.
"""

from __future__ import annotations

import logging
import threading

from alignment.sampler import AdapterLoadError, Sampler

log = logging.getLogger(__name__)
MAX_RETRY_S = 60.0


def sync_live_adapter(sampler: Sampler, repo) -> bool:
    """Hot-swap `sampler` to the live adapter (or the base when none is live); True when it swapped."""
    live = repo.live_adapter()
    version = live.version if live is not None else None
    if version == sampler.adapter_version:
        return False
    load_version(sampler, repo, version)
    return True


def load_version(sampler: Sampler, repo, version: int | None) -> float:
    """Swap `sampler` to any stored adapter version (None = base); returns the seconds the swap held the lock."""
    if version is None:
        return sampler.set_adapter(None)
    record = repo.get_adapter(version)
    return sampler.set_adapter(record.version, repo.read_blob(record.file_hash))


def follow_live_adapter(sampler: Sampler, repo) -> bool:
    """One step of `LiveFollower`: bring `sampler` to the live version, preparing beside generation when it can;
    True when it swapped. A request's `sync_live_adapter` that comes in between finds the work prepared."""
    live = repo.live_adapter()
    if live is None or live.version == sampler.adapter_version:
        if live is None and sampler.adapter_version is not None:
            with sampler.lock:
                return sync_live_adapter(sampler, repo)
        return False
    data = repo.read_blob(live.file_hash)
    try:
        sampler.prepare(live.version, data)
    except AdapterLoadError as e:  # the swap under the lock below tries again and reports it
        log.warning("could not prepare adapter version %s beside generation: %s", live.version, e)
    with sampler.lock:
        if sampler.adapter_version == live.version:  # a request swapped meanwhile
            return False
        sampler.set_adapter(live.version, data)  # a commit when prepared; the whole swap otherwise
    log.info("adapter version %s is live in the sampler", live.version)
    return True


class LiveFollower:
    """A daemon thread that runs `follow_live_adapter` every `interval_s` seconds until `stop()`."""

    def __init__(self, sampler: Sampler, repo, interval_s: float = 1.0):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.sampler, self.repo, self.interval_s = sampler, repo, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="live-adapter-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        delay = self.interval_s
        while not self._stop.is_set():
            try:
                follow_live_adapter(self.sampler, self.repo)
                delay = self.interval_s
            except Exception:  # storage hiccup or a bad adapter: keep serving what is live, retry less and less often
                log.exception("following the live adapter failed; the sampler keeps its current version")
                delay = min(MAX_RETRY_S, 2 * delay)
            self._stop.wait(delay)
