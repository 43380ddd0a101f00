"""Keeping the live sampler on the adapter that the database says is live.

The worker (a thread here, or a process on another machine) only writes adapters and statuses to storage; whoever
owns a sampler calls `sync_live_adapter` before generating, and the swap happens under the sampler's lock between two
generations. A `LiveFollower` thread does better than waiting for the next request: it polls storage, does the heavy
part of the swap beside generation (`Sampler.prepare`) and holds the lock only for the commit, so a new adapter goes
live within a poll interval plus the prepare, and generation pauses only for the commit. A request that comes in
before that commit still syncs (it must not serve a retired version): it then waits for the prepare in progress.
The adapter bytes come from the content-addressed blob store, which checks their SHA-256 against the hash recorded
in the database before they are loaded.
"""

from __future__ import annotations

import logging
import threading

from alignment.core.lora_files import AdapterLoadError
from alignment.serving.sampler import Sampler

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


class LiveFollower:
    """A daemon thread that keeps `sampler` on the live adapter: every `interval_s` seconds `follow_once`."""

    def __init__(self, sampler: Sampler, repo, interval_s: float = 1.0):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.sampler, self.repo, self.interval_s = sampler, repo, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: int | None = None  # a live version that could not be loaded: not retried while it is live

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def follow_once(self) -> bool:
        """Bring the sampler to the live version, preparing beside generation when it can; True when it swapped.
        A version that cannot be loaded is logged once and skipped until another version is live (requests that
        sync themselves still report it)."""
        live = self.repo.live_adapter()
        version = live.version if live is not None else None
        if version == self.sampler.adapter_version or (version is not None and version == self._failed):
            return False
        try:
            if live is not None:
                data = self.repo.read_blob(live.file_hash)
                self.sampler.prepare(live.version, data)
            with self.sampler.lock:
                now = self.repo.live_adapter()  # an admin may have made another version live meanwhile
                if live is not None and now is not None and now.version == live.version:
                    swapped = self.sampler.adapter_version != live.version  # unless a request swapped meanwhile
                    if swapped:
                        self.sampler.set_adapter(live.version, data)  # a commit when prepared, else the whole swap
                else:
                    swapped = sync_live_adapter(self.sampler, self.repo)
        except AdapterLoadError as e:
            self._failed = version
            log.error("adapter version %s cannot be loaded (%s); the sampler keeps serving %s", version, e,
                      "the base" if self.sampler.adapter_version is None else f"v{self.sampler.adapter_version}")
            return False
        self._failed = None
        if swapped:
            log.info("the sampler now serves %s", "the base" if version is None else f"adapter version {version}")
        return swapped

    def start(self) -> None:
        if self.running:
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
                self.follow_once()
                delay = self.interval_s
            except Exception:  # storage hiccup: keep serving what is live, retry less and less often
                log.exception("following the live adapter failed; the sampler keeps its current version")
                delay = min(MAX_RETRY_S, 2 * delay)
            self._stop.wait(delay)
