"""`ReadyQueue`: pairs generated ahead for each annotator and prompt, so the next pair is on screen the moment a vote
is committed.

The queue owns one background thread (`ready-queue`). After a pair is taken (or made on demand) for an annotator
and prompt, that thread tops the annotator's queue for the prompt up to `depth` pairs, made by `Studio.new_pairs`:
up to `batch` pairs in one generation when the queue lacks that many (on a CPU two pairs in one batch take little
longer than one), each stored, `served_to` the annotator and counted against their rate limits exactly like a pair
made on demand. A pair made on demand (none was ready) comes with the pairs after it in the same generation, up to
`batch` in all, so the next one is ready the moment it is shown. A queued pair made by a version that has since
been replaced stays valid data (its trajectories record the version that made it), but pairs of the version the
live model serves go first: when a new version goes live (`refresh`, called by the live model after a swap) every
queue is topped up with pairs of it, and an older pair is handed out only while none of the new version is ready,
so a vote's effect shows on the next pair. A refill the rate limits (or anything else) refuse is dropped quietly:
the person only meets the limit, as before, when they ask for a pair and none is ready.

Bounds: `depth` pairs per annotator and prompt, `prompts_per_annotator` prompts per annotator (the least recently
used is dropped), `cap` pairs in all, and an annotator who takes nothing for `idle_s` loses their queues. A
dropped pair stays stored, unvoted, like any pair a person skipped by closing the tab. `depth` 0 turns the queue
off: `pair()` then only generates on demand. Knows `Studio`'s `new_pair(s)`, no Gradio, no SQL, no tensors.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.errors import StudioError

log = logging.getLogger(__name__)


@dataclass
class _Line:
    """One annotator's queued pairs by prompt (most recently used prompt last), their address and last activity."""

    pairs: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # prompt -> deque[PairView]
    address: str | None = None
    active_at: float = 0.0


class ReadyQueue:
    """Pairs made ahead per (annotator, prompt) by the live version, topped up by one background thread."""

    def __init__(self, studio, depth: int = 2, cap: int = 64, *, batch: int = 1, prompts_per_annotator: int = 2,
                 idle_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        if depth < 0 or cap < 0 or batch < 1 or prompts_per_annotator < 1 or idle_s <= 0:
            raise ValueError("a ready queue needs depth >= 0, cap >= 0, batch >= 1, prompts_per_annotator >= 1 "
                             "and idle_s > 0")
        self.studio, self.depth, self.cap, self.batch = studio, int(depth), int(cap), int(batch)
        self.prompts_per_annotator, self.idle_s, self.clock = prompts_per_annotator, idle_s, clock
        self._lines: dict[str, _Line] = {}
        self._todo: collections.deque[tuple[str, str]] = collections.deque()  # (annotator, prompt) to top up
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._busy = False  # the thread is making a pair
        self._making: tuple[str, str] | None = None  # for whom and which prompt
        self.refused = 0  # refills refused (rate limits, a bad prompt): counted, never shown

    @property
    def enabled(self) -> bool:
        return self.depth > 0 and self.cap > 0

    # ---- what the Label tab calls ------------------------------------------------------------------------------
    def take(self, annotator: str, prompt: str, address: str | None = None):
        """A ready pair of `prompt` for `annotator` and a top-up of their queue behind it; None when none is ready
        (and no top-up yet: the caller makes its pair first, then calls `prefetch`, so the person's pair is not
        kept waiting behind one made ahead)."""
        if not self.enabled or not annotator:
            return None
        with self._cond:
            line = self._touch(annotator, address)
            queue = line.pairs.get(prompt)
            if not queue:
                return None
            view = self._pop(queue)
            self._want(annotator, prompt, line)
            return view

    def pair(self, prompt: str, *, annotator: str, address: str | None = None):
        """A ready pair of `prompt` for `annotator`, else one made now (`Studio.new_pairs`: its errors, rate limits
        included, reach the caller), in one generation with up to `batch` - 1 pairs more that wait in the queue
        (so the pair after it is ready as soon as it is shown); either way their queue is topped up behind it."""
        view = self.take(annotator, self.studio_prompt(prompt), address) or self._made_now(annotator, prompt)
        if view is not None:
            return view
        queued = self.enabled and bool(annotator)
        with self._cond:
            room = min(self.depth, self.cap - self._total()) if queued else 0
        view, *more = self.studio.new_pairs(prompt, max(1, min(self.batch, 1 + room)), annotator=annotator,
                                            address=address)
        if queued:
            with self._cond:
                line = self._touch(annotator, address)
                line.pairs.setdefault(view.prompt, collections.deque())
                for extra in more:
                    self._store(annotator, view.prompt, extra)
                self._want(annotator, view.prompt, line)
        return view

    def _made_now(self, annotator: str, prompt: str, timeout_s: float = 60.0):
        """The pair the thread is making for (annotator, prompt) right now, once it is made (None when it is
        making none for them, or that one failed): waiting for it is never slower than starting another."""
        key = (annotator, self.studio_prompt(prompt))
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._making == key and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            line = self._lines.get(annotator)
            queue = line.pairs.get(key[1]) if line else None
            if not queue:
                return None
            self._want(annotator, key[1], line)
            return self._pop(queue)

    def prefetch(self, annotator: str, prompt: str, address: str | None = None) -> None:
        """Top up `annotator`'s queue for `prompt` (a prompt they will probably be shown next), taking nothing."""
        if not self.enabled or not annotator:
            return
        with self._cond:
            self._want(annotator, self.studio_prompt(prompt), self._touch(annotator, address))

    def refresh(self, version: int | None = None) -> None:
        """A new version went live: top every queue up with its pairs (the older ones stay, behind them)."""
        if not self.enabled:
            return
        with self._cond:
            for annotator, line in self._lines.items():
                for prompt in line.pairs:
                    if (annotator, prompt) not in self._todo:
                        self._todo.append((annotator, prompt))
            self._cond.notify_all()

    def ready(self, annotator: str, prompt: str) -> int:
        """How many pairs of `prompt` wait for `annotator`."""
        with self._cond:
            line = self._lines.get(annotator)
            return len(line.pairs.get(prompt, ())) if line else 0

    def queued(self) -> int:
        """Pairs waiting in all queues."""
        with self._cond:
            return self._total()

    @staticmethod
    def studio_prompt(prompt) -> str:
        """The prompt as the studio stores it (so " a cat " and "a cat" share a queue); a bad one stays as given,
        for `Studio.new_pair` to refuse."""
        return " ".join(prompt.split()) if isinstance(prompt, str) else prompt

    # ---- the thread --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return
        with self._cond:
            self._stop = False
        self._thread = threading.Thread(target=self._serve, name="ready-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no top-up is pending (tests and benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._todo or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._todo:
                    self._cond.wait()
                if self._stop:
                    return
                job = self._next_job()
                self._busy = job is not None
                self._making = job[:2] if job else None
                self._cond.notify_all()  # `wait_idle` may be waiting for the jobs just found needless
            if job is None:
                continue
            annotator, prompt, address, count = job
            try:
                views = self.studio.new_pairs(prompt, count, annotator=annotator, address=address)
            except StudioError as e:  # rate limits, a refused prompt: the person meets them only on demand
                log.info("ready queue: no pair made ahead for %r: %s", annotator, e)
                views = []
            except Exception:  # the thread must survive anything (a database hiccup); the person just waits
                log.exception("ready queue: making a pair ahead failed")
                views = []
            with self._cond:
                self._busy, self._making = False, None
                if not views:
                    self.refused += 1
                    self._discard_jobs(annotator, prompt)  # no retry until the queue is used again
                for view in views:
                    self._store(annotator, prompt, view)
                self._cond.notify_all()

    def _next_job(self) -> tuple[str, str, str | None, int] | None:
        """The first (annotator, prompt) that still needs a pair, with the address to count it against and how many
        pairs to make in one generation (up to `batch`, no more than the queue and the cap lack), under the lock;
        the job stays queued until its queue is full."""
        self._drop_idle()
        while self._todo:
            annotator, prompt = self._todo[0]
            line = self._lines.get(annotator)
            queue = line.pairs.get(prompt) if line else None
            if queue is None or self._fresh(queue) >= self.depth or self._total() >= self.cap:
                self._todo.popleft()
                continue
            lacking = min(self.depth - self._fresh(queue), self.cap - self._total())
            return annotator, prompt, line.address, max(1, min(self.batch, lacking))
        return None

    # ---- bookkeeping, under the lock ---------------------------------------------------------------------------
    def _touch(self, annotator: str, address: str | None) -> _Line:
        line = self._lines.setdefault(annotator, _Line())
        line.address, line.active_at = address, self.clock()
        return line

    def _want(self, annotator: str, prompt: str, line: _Line) -> None:
        line.pairs.setdefault(prompt, collections.deque())
        line.pairs.move_to_end(prompt)
        while len(line.pairs) > self.prompts_per_annotator:
            line.pairs.popitem(last=False)
        if (annotator, prompt) not in self._todo:
            self._todo.append((annotator, prompt))
        self._cond.notify_all()

    def _store(self, annotator: str, prompt: str, view) -> None:
        line = self._lines.get(annotator)
        queue = line.pairs.get(prompt) if line else None
        if queue is None or self._fresh(queue) >= self.depth:  # dropped meanwhile (idle, another prompt): stays
            return                                               # stored only
        queue.append(view)
        while len(queue) > 2 * self.depth:  # older versions' pairs beyond `depth` go (they stay stored, unvoted)
            serving = self._serving()
            del queue[next(i for i, v in enumerate(queue) if _version(v) != serving)]

    def _serving(self) -> int | None:
        return getattr(getattr(self.studio, "live", None), "adapter_version", None)

    def _fresh(self, queue) -> int:
        """Pairs in `queue` made by the version the live model serves (at most `depth`; older ones at most
        `depth` more)."""
        serving = self._serving()
        return sum(1 for v in queue if _version(v) == serving)

    def _pop(self, queue):
        """The oldest pair of the version served now, else the oldest pair."""
        serving = self._serving()
        for i, view in enumerate(queue):
            if _version(view) == serving:
                del queue[i]
                return view
        return queue.popleft()

    def _discard_jobs(self, annotator: str, prompt: str) -> None:
        self._todo = collections.deque(job for job in self._todo if job != (annotator, prompt))

    def _drop_idle(self) -> None:
        now = self.clock()
        for annotator in [a for a, line in self._lines.items() if now - line.active_at > self.idle_s]:
            del self._lines[annotator]

    def _total(self) -> int:
        return sum(len(q) for line in self._lines.values() for q in line.pairs.values())


def _version(view) -> int | None:
    return getattr(view, "adapter_version", None)
