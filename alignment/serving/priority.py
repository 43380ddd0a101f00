"""Sampling first: image generation keeps its latency when training shares the machine (and the process).

The studio's worker is a thread of the app process by default; its training steps and its fidelity guard's renders
would take the same CPU cores (or GPU) as the images a person is waiting for, and both slow down several-fold.
`SamplingFirst` is the scheduler between the two: the live model marks every generation (`sampling()`, from the
moment it is asked for, so waiting for the generation lock counts), and the worker calls `yield_to_sampling()`
before each training step and each guard render, which waits while a generation is running or ended less than
`grace_s` ago (a vote's answer and the ready queue's refill behind it come back to back), for at most `max_wait_s`
(so training still advances on a studio that never stops generating). The step under way when a generation starts
is not interrupted: a generation waits for at most one training step's share of the machine. A `WaitBudget` bounds
what one run waits in all: a person who votes without pause would otherwise hold a run back for as long as they
vote, and the effect of their votes would come later the faster they label.

A worker in another process (`python -m alignment.worker`) shares no such object: give it its own cores, or a lower
priority (`nice`) and fewer threads (`OMP_NUM_THREADS`). Knows nothing about models or storage.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager


class SamplingFirst:
    def __init__(self, max_wait_s: float = 2.0, grace_s: float = 0.1):
        if max_wait_s < 0 or grace_s < 0:
            raise ValueError(f"max_wait_s and grace_s must be >= 0, got {max_wait_s} and {grace_s}")
        self.max_wait_s, self.grace_s = float(max_wait_s), float(grace_s)
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = -float("inf")
        self.waited_s = 0.0  # total time training waited, for the worker's metrics
        self.generations = 0

    @contextmanager
    def sampling(self):
        """Around one generation request (the lock wait included)."""
        with self._cond:
            self._active += 1
            self.generations += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_end = time.monotonic()
                self._cond.notify_all()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy(time.monotonic())

    def _busy(self, now: float) -> bool:
        return self._active > 0 or now - self._last_end < self.grace_s

    def yield_to_sampling(self, max_wait_s: float | None = None) -> float:
        """Wait while images are being made (at most `max_wait_s`, default the one given at construction); the
        seconds waited."""
        start = time.monotonic()
        deadline = start + (self.max_wait_s if max_wait_s is None else max_wait_s)
        with self._cond:
            while True:
                now = time.monotonic()
                if not self._busy(now) or now >= deadline:
                    break
                # woken by the end of a generation; otherwise when the grace period after the last one is over
                until_quiet = self._last_end + self.grace_s - now if self._active == 0 else deadline - now
                self._cond.wait(max(0.001, min(deadline - now, until_quiet)))
            waited = time.monotonic() - start
            self.waited_s += waited
        return waited


class WaitBudget:
    """One run's waits: each at most `per_wait_s`, and at most `total_s` in all (`math.inf`: no bound); once spent,
    the run goes on without yielding."""

    def __init__(self, priority: SamplingFirst, per_wait_s: float, total_s: float = math.inf):
        if per_wait_s < 0 or total_s < 0:
            raise ValueError(f"per_wait_s and total_s must be >= 0, got {per_wait_s} and {total_s}")
        self.priority, self.per_wait_s, self.total_s = priority, float(per_wait_s), float(total_s)
        self.waited_s = 0.0

    @property
    def spent(self) -> bool:
        return self.waited_s >= self.total_s

    def wait(self) -> float:
        """Yield to sampling within what is left; the seconds waited."""
        allowed = min(self.per_wait_s, self.total_s - self.waited_s)
        if allowed <= 0:
            return 0.0
        waited = self.priority.yield_to_sampling(allowed)
        self.waited_s += waited
        return waited


class YieldingSampler:
    """A sampler whose every `generate` first yields to the live model's generations (the guard renders with it),
    within `budget`."""

    def __init__(self, sampler, budget: WaitBudget):
        self._sampler, self._budget = sampler, budget

    def generate(self, *args, **kwargs):
        self._budget.wait()
        return self._sampler.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._sampler, name)
