"""The live model: the one owner of the pipeline that serves images, and of which adapter version it serves.

How a new adapter becomes what the sampler serves:

1. The worker (a thread here, or a process on another machine) registers the adapter and marks it live in
   storage; an admin's make-live or roll-back writes storage the same way. Storage is the only thing that says
   which version is live, and nothing else tells the live model anything.
2. `LiveModel` asks storage (`_read_live`): which version is live, and the adapter's bytes when the swap slot
   does not hold that version yet. The bytes come from the content-addressed blob store, which checks their
   SHA-256 against the hash recorded in the database. Every answer carries a ticket, taken before the query.
3. The follower thread (`follow_once`, every `interval_s`) prepares that version beside generation
   (`SwapSlot.prepare`: new A and B, new fused weights in spare buffers), asks storage again (a version made live
   meanwhile, e.g. a roll-back, wins), and commits under the generation lock: a pointer swap per layer.
4. A request for images at the live version (`generate`, `generate_pair`) asks storage itself and applies the
   answer under the lock before it generates, so it never serves a version older than what storage said when it
   asked; usually the follower has swapped already and there is nothing to do.
5. Under the lock an answer is applied only when no answer with a later ticket was applied before it: a slow
   reader never swaps back to a version that a newer answer already replaced.

Storage is read only outside the generation lock; under it there are only swaps and generation. Compare, blind
A/B and the simulation ask for images at a given version (`at(version).generate(...)`): under the lock the slot
shows that version only for the call (`SwapSlot.temporarily`), so the live weights and a prepared swap stay as they
were. `LiveModel` holds the only generation lock; callers never take a lock. It knows storage only through the
repository's `live_adapter`, `get_adapter` and `read_blob`, and nothing about the UI.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, replace

from alignment.core.limits import validate_prompt, validate_seeds
from alignment.core.lora_files import AdapterLoadError
from alignment.serving.priority import SamplingFirst
from alignment.serving.sampler import Generation, Sampler
from alignment.serving.swap import SwapSlot
from settings import SamplerConfig

log = logging.getLogger(__name__)
MAX_RETRY_S = 60.0


@dataclass(frozen=True)
class _Answer:
    """What storage said is live: the version, its bytes when they were fetched, and when it was asked."""

    ticket: int
    version: int | None
    lora: bytes | None = None


class _Pairs:
    """`generate_pair` for anything with `generate(prompt, seeds, config)`: the two images of one pair."""

    def generate_pair(self, prompt: str, seeds=(0, 1), config: SamplerConfig | None = None
                      ) -> tuple[Generation, Generation]:
        seeds = list(seeds)
        if len(seeds) != 2:
            raise ValueError(f"a pair needs two seeds, got {len(seeds)}")
        a, b = self.generate(prompt, seeds, config)
        return a, b


class LiveModel(_Pairs):
    """The sampler at the version storage says is live, for every thread; the follower of storage belongs to it."""

    def __init__(self, sampler: Sampler, repo, *, slot: SwapSlot | None = None, interval_s: float = 1.0,
                 priority: SamplingFirst | None = None):
        """`slot` defaults to a fusing `SwapSlot` on the sampler's pipeline (which it then owns). Every generation
        is marked on `priority` (a worker in this process yields to it)."""
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._sampler = sampler
        self._slot = slot or SwapSlot(sampler.pipe)
        self._repo = repo
        self.interval_s = interval_s
        self.priority = priority or SamplingFirst()
        # called with the new version after the weights changed (under the generation lock: keep them short)
        self.on_swap: list = []
        self._lock = threading.RLock()  # the generation lock: generation and every change of the weights
        self._tickets = itertools.count(1)
        self._applied = 0  # the ticket of the latest answer applied
        self._failed: int | None = None  # a live version that could not be loaded: not retried while it is live
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model(self):
        return self._sampler.model

    @property
    def config(self) -> SamplerConfig:
        return self._sampler.config

    @property
    def adapter_version(self) -> int | None:
        """The version the weights serve now (None = the base)."""
        return self._slot.version

    @property
    def prepared_version(self) -> int | None:
        """A version prepared beside generation and not committed yet (None: none)."""
        return self._slot.prepared_version

    # ---- images -------------------------------------------------------------------------------------------------
    def generate(self, prompt: str, seeds, config: SamplerConfig | None = None) -> list[Generation]:
        """Images of `prompt` at the version storage says is live now, one per seed, as one batch."""
        prompt, seeds = validate_prompt(prompt), validate_seeds(seeds)
        with self.priority.sampling():
            _, images = self._serve(self._read_live(), lambda: self._sampler.generate(
                prompt, seeds, config, adapter_version=self._slot.version))
        return images


    def at(self, version: int | None) -> PinnedVersion:
        """A view that generates at `version` (None = the base) whatever is live; the adapter is read from storage
        now (UnknownAdapterError, or a blob error for a file that does not match its hash)."""
        if version is None:
            return PinnedVersion(self, None, None)
        record = self._repo.get_adapter(version)
        return PinnedVersion(self, record.version, self._repo.read_blob(record.file_hash))

    def _generate_at(self, version: int | None, lora: bytes | None, prompt: str, seeds,
                     config: SamplerConfig | None) -> list[Generation]:
        prompt, seeds = validate_prompt(prompt), validate_seeds(seeds)
        with self.priority.sampling(), self._lock, self._slot.temporarily(version, lora):
            return self._sampler.generate(prompt, seeds, config, adapter_version=version)

    # ---- following storage ----------------------------------------------------------------------------------------
    def sync(self) -> bool:
        """Bring the weights to the version storage says is live now (the whole swap, or a commit when it was
        prepared); True when they changed. AdapterLoadError when that version cannot be loaded."""
        swapped, _ = self._serve(self._read_live())
        return swapped

    def follow_once(self) -> bool:
        """Bring the weights to the live version, preparing beside generation when the slot can; True when this
        call swapped them. A version that cannot be loaded is logged once and skipped until another version is live
        (requests at the live version still report it)."""
        answer = self._read_live()
        if answer.version == self._slot.version or (answer.version is not None and answer.version == self._failed):
            return False
        try:
            if answer.lora is not None:
                self._slot.prepare(answer.version, answer.lora)  # beside generation; False: the commit does it all
            again = self._read_live()  # a version made live during the prepare wins
            answer = replace(again, lora=answer.lora) if again.version == answer.version else again
            swapped, _ = self._serve(answer)
        except AdapterLoadError as e:
            self._failed = answer.version
            log.error("adapter version %s cannot be loaded (%s); the sampler keeps serving %s", answer.version, e,
                      _label(self._slot.version))
            return False
        self._failed = None
        return swapped

    def start(self) -> None:
        """Start the follower thread (a daemon): `follow_once` every `interval_s` seconds."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="live-adapter-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- internals ----------------------------------------------------------------------------------------------
    def _read_live(self, fetch: bool = False) -> _Answer:
        """Ask storage which version is live (outside the lock), with its bytes unless the slot holds or has
        prepared that version already (or `fetch`)."""
        ticket = next(self._tickets)
        record = self._repo.live_adapter()
        if record is None:
            return _Answer(ticket, None)
        held = record.version in (self._slot.version, self._slot.prepared_version)  # a hint; the lock decides
        return _Answer(ticket, record.version, None if held and not fetch else self._repo.read_blob(record.file_hash))

    def _serve(self, answer: _Answer, then=None):
        """Under the lock: apply `answer`, then call `then`; returns (whether the weights changed, its result).
        An answer without the bytes a swap needs is asked again, with them, outside the lock."""
        while True:
            with self._lock:
                before = self._slot.version
                if self._apply(answer):
                    return before != self._slot.version, None if then is None else then()
            answer = self._read_live(fetch=True)

    def _apply(self, answer: _Answer) -> bool:
        """Make the weights hold `answer.version` unless a later answer was applied; False when that needs the
        adapter's bytes and the answer lacks them. Runs under the lock and reads no storage."""
        if answer.ticket < self._applied:
            return True  # older news: what is served came from a later answer
        if answer.version != self._slot.version:
            if answer.version is None:
                self._slot.load(None)
            elif not self._slot.commit(answer.version):
                if answer.lora is None:
                    return False
                self._slot.load(answer.version, answer.lora)
            log.info("the sampler now serves %s", _label(self._slot.version))
            for listener in self.on_swap:
                try:
                    listener(self._slot.version)
                except Exception:  # a listener never stops a swap
                    log.exception("a swap listener failed")
        self._applied = answer.ticket
        return True

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


class PinnedVersion(_Pairs):
    """Images at one adapter version (None = the base) through the live model's lock: `generate` and
    `generate_pair`, as a `Sampler` has them (so evaluation code that takes a sampler takes this too)."""

    def __init__(self, live: LiveModel, version: int | None, lora: bytes | None):
        self._live, self.version, self._lora = live, version, lora

    @property
    def config(self) -> SamplerConfig:
        return self._live.config

    @property
    def model(self):
        return self._live.model

    def generate(self, prompt: str, seeds, config: SamplerConfig | None = None) -> list[Generation]:
        return self._live._generate_at(self.version, self._lora, prompt, seeds, config)



def _label(version: int | None) -> str:
    return "the base" if version is None else f"adapter version {version}"
