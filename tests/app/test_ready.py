"""The ready queue: pairs made ahead per annotator and prompt, stored and served to that annotator, bounded, within
the rate limits, and still valid after the version that made them was replaced."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from contextlib import contextmanager

import pytest

from app.access import RateLimits
from app.errors import RateLimitedError, StudioError
from app.ready import ReadyQueue
from storage import PairNotServedError
from tests.support.lora import random_lora
from tests.support.studio import register_adapter

PROMPT = "a large red circle on a blue background"
OTHER = "a small green square"
View = namedtuple("View", "id annotator prompt")  # equal to the plain tuple (id, annotator, prompt)


class FakeStudio:
    """`new_pair` as the queue sees it: numbered views, optionally slow, refusing after `limit` pairs."""

    def __init__(self, delay_s: float = 0.0, limit: int | None = None):
        self.delay_s, self.limit, self.made, self.batches = delay_s, limit, [], []
        self.lock = threading.Lock()

    def new_pairs(self, prompt, count=1, seeds=None, *, annotator, address=None):
        """Up to `count` pairs in one call, as `Studio.new_pairs`: the first refusal raises, later ones stop."""
        self.batches.append(count)
        views = []
        for _ in range(count):
            try:
                views.append(self.new_pair(prompt, annotator=annotator, address=address))
            except RateLimitedError:
                if not views:
                    raise
                break
        return views

    def new_pair(self, prompt, seeds=None, *, annotator, address=None):
        with self.lock:
            if self.limit is not None and len(self.made) >= self.limit:
                raise RateLimitedError("rate limit: try again in 60 s")
            self.made.append((annotator, prompt, address))
            view = View(len(self.made), annotator, prompt)
        time.sleep(self.delay_s)
        return view


@contextmanager
def running(studio, **settings):
    """A started ReadyQueue over `studio`, stopped afterwards."""
    queue = ReadyQueue(studio, **settings)
    queue.start()
    try:
        yield queue
    finally:
        queue.stop()


@pytest.fixture
def fake():
    studio = FakeStudio()
    with running(studio, depth=2, cap=5) as queue:
        yield studio, queue


def test_a_pair_made_on_demand_is_followed_by_depth_pairs_made_ahead(fake):
    studio, queue = fake
    first = queue.pair(PROMPT, annotator="ann", address="1.2.3.4")
    assert first == (1, "ann", PROMPT)
    assert queue.wait_idle() and queue.ready("ann", PROMPT) == 2
    assert studio.made[1:] == [("ann", PROMPT, "1.2.3.4")] * 2  # made for the same annotator and address
    assert queue.take("ann", PROMPT) == (2, "ann", PROMPT)  # oldest first, then topped up again
    assert queue.wait_idle() and queue.ready("ann", PROMPT) == 2 and len(studio.made) == 4
    assert queue.take("bob", PROMPT) is None  # one annotator's pairs are never another's


def test_queues_are_bounded_per_annotator_in_all_and_by_idleness():
    studio, now = FakeStudio(), [0.0]
    with running(studio, depth=2, cap=5, prompts_per_annotator=1, idle_s=100, clock=lambda: now[0]) as queue:
        queue.pair(PROMPT, annotator="ann")
        queue.pair(OTHER, annotator="ann")  # a new prompt: the old prompt's queue is dropped
        assert queue.wait_idle()
        assert (queue.ready("ann", PROMPT), queue.ready("ann", OTHER)) == (0, 2)
        for name in ("bob", "cy", "dee"):
            queue.pair(PROMPT, annotator=name)
            assert queue.wait_idle()
        assert queue.queued() == 5  # the global cap
        now[0] = 150.0
        queue.prefetch("eve", PROMPT)  # wakes the thread, which drops the four idle annotators first
        assert queue.wait_idle() and queue.queued() == 2 and queue.ready("eve", PROMPT) == 2


def test_a_refused_refill_is_dropped_quietly_and_the_person_meets_the_limit_only_on_demand():
    studio = FakeStudio(limit=2)
    with running(studio, depth=2) as queue:
        queue.pair(PROMPT, annotator="ann")
        assert queue.wait_idle() and queue.ready("ann", PROMPT) == 1 and queue.refused == 1
        assert queue.take("ann", PROMPT) == (2, "ann", PROMPT)
        assert queue.wait_idle()
        with pytest.raises(RateLimitedError):
            queue.pair(PROMPT, annotator="ann")
        assert len(studio.made) == 2


def wait_until_making(queue, key, timeout_s: float = 10.0) -> None:
    """Until the queue's thread is making a pair for `key` (annotator, prompt)."""
    deadline = time.monotonic() + timeout_s
    while queue._making != key:
        assert time.monotonic() < deadline, f"the ready thread never started on {key}"
        time.sleep(0.005)


def test_taking_a_ready_pair_never_waits_on_generation():
    studio = FakeStudio(delay_s=0.5)
    with running(studio, depth=1) as queue:
        queue.pair(PROMPT, annotator="ann")
        assert queue.wait_idle()
        queue.take("ann", PROMPT)  # its refill now takes 0.5 s in the background...
        wait_until_making(queue, ("ann", PROMPT))
        queue.prefetch("ann", PROMPT)
        assert queue.take("ann", PROMPT) is None  # ...and a take meanwhile answers empty-handed,
        assert queue._making == ("ann", PROMPT)  # without waiting for the refill under way


def test_asking_while_the_next_pair_is_being_made_waits_for_it_instead_of_making_another():
    studio = FakeStudio(delay_s=0.4)
    with running(studio, depth=1) as queue:
        queue.pair(PROMPT, annotator="ann")
        wait_until_making(queue, ("ann", PROMPT))  # the thread has started on pair 2
        assert queue.pair(PROMPT, annotator="ann") == (2, "ann", PROMPT)
        assert queue.wait_idle() and len(studio.made) == 3  # and pair 3 was made ahead behind it


def test_an_off_queue_only_makes_pairs_on_demand():
    studio = FakeStudio()
    with running(studio, depth=0) as queue:
        assert queue.pair(PROMPT, annotator="ann") == (1, "ann", PROMPT)
        assert queue.take("ann", PROMPT) is None and not queue.enabled and len(studio.made) == 1


def test_a_queue_lacking_two_pairs_makes_both_in_one_generation_within_its_bounds():
    studio = FakeStudio()
    with running(studio, depth=3, batch=2) as queue:
        assert queue.pair(PROMPT, annotator="ann") == (1, "ann", PROMPT)  # made on demand with the pair after it
        assert queue.ready("ann", PROMPT) == 1 and studio.batches == [2]  # ready the moment pair 1 is shown
        assert queue.wait_idle() and queue.ready("ann", PROMPT) == 3 and studio.batches == [2, 2]  # two lacked
        queue.take("ann", PROMPT)
        assert queue.wait_idle() and studio.batches == [2, 2, 1]  # one lacking: one pair
    capped = FakeStudio()
    with running(capped, depth=2, batch=2, cap=1) as queue:
        queue.pair(PROMPT, annotator="ann")
        assert queue.wait_idle() and queue.queued() == 1 and capped.batches == [2]  # the cap leaves room for one
    limited = FakeStudio(limit=2)
    with running(limited, depth=3, batch=3) as queue:
        queue.pair(PROMPT, annotator="ann")  # the limit lets two of three through
        assert queue.wait_idle() and queue.ready("ann", PROMPT) == 1
        assert limited.batches == [3, 2] and queue.refused == 1  # the rest asked once more, refused, dropped
    off = FakeStudio()
    with running(off, depth=0, batch=2) as queue:
        queue.pair(PROMPT, annotator="ann")
        assert off.batches == [1]  # no queue to hold a second pair: one is made


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="depth >= 0"):
        ReadyQueue(FakeStudio(), depth=-1)
    with pytest.raises(ValueError, match="batch >= 1"):
        ReadyQueue(FakeStudio(), batch=0)


def test_pairs_made_in_one_generation_are_each_stored_served_and_counted(studio):
    studio.limits = RateLimits.per_minute(3, 0)
    made = studio.new_pairs(PROMPT, 2, annotator="ann")
    assert len(made) == 2 and made[0].id != made[1].id
    assert len({seed for view in made for seed in view.seeds}) == 4  # four different images
    for view in made:
        pair = studio.repo.get_pair(view.id)
        assert (pair.prompt, pair.served_to, view.left.size) == (PROMPT, "ann", (32, 32))
        assert (pair.left.seed, pair.right.seed) == view.seeds and pair.left.trajectory_hash
    assert len(studio.new_pairs(PROMPT, 2, annotator="ann")) == 1  # the third pair in a minute is the last
    with pytest.raises(RateLimitedError):
        studio.new_pairs(PROMPT, 2, annotator="ann")
    with pytest.raises(ValueError, match="1 with seeds"):
        studio.new_pairs(PROMPT, 2, "1, 2", annotator="ann")
    assert studio.counts()["pairs"] == 3


def test_queued_pairs_are_stored_served_to_the_annotator_and_vote_only_for_them(studio):
    studio.limits = RateLimits.per_minute(3, 0)
    with running(studio, depth=2) as queue:
        first = queue.pair(f"  {PROMPT} ", annotator="ann")
        assert queue.wait_idle(60) and queue.ready("ann", PROMPT) == 2
        ready = queue.take("ann", PROMPT)
        assert queue.wait_idle(60) and queue.refused == 1  # the 4th pair in a minute: refused in the background
        pair = studio.repo.get_pair(ready.id)
        assert ready.id != first.id and (pair.prompt, pair.served_to) == (PROMPT, "ann")
        assert pair.left.trajectory_hash and ready.left.size == (32, 32)
        with pytest.raises(PairNotServedError):
            studio.vote(ready.id, "left", annotator="bob")
        assert studio.vote(ready.id, "left", annotator="ann")["recorded"]
        assert studio.counts()["pairs"] == 3
        with pytest.raises(StudioError, match="rate limit"):
            queue.pair(OTHER, annotator="ann")


def test_a_pair_made_before_a_new_version_went_live_stays_valid(swap_studio):
    with running(swap_studio, depth=1) as queue:
        queue.pair(PROMPT, annotator="ann")
        assert queue.wait_idle(60)
        version = register_adapter(swap_studio.repo, random_lora(0))
        made_before = queue.take("ann", PROMPT)
        assert made_before.adapter_version is None  # made by the base, and its trajectories say so
        assert swap_studio.repo.get_pair(made_before.id).left.adapter_version is None
        assert swap_studio.vote(made_before.id, "right", annotator="ann")["recorded"]
        assert queue.wait_idle(60)
        assert queue.take("ann", PROMPT).adapter_version == version  # the refill comes from the new version


def test_pairs_of_a_version_that_just_went_live_go_first(swap_studio):
    with running(swap_studio, depth=2) as queue:
        assert swap_studio.ready.refresh in swap_studio.live.on_swap  # the Studio wires its own queue
        swap_studio.live.on_swap.append(queue.refresh)  # and this one the same way
        queue.pair(PROMPT, annotator="ann")
        assert queue.wait_idle(60) and queue.ready("ann", PROMPT) == 2  # two base pairs waiting
        version = register_adapter(swap_studio.repo, random_lora(0))
        assert swap_studio.live.sync()  # the swap tops every queue up with the new version's pairs
        assert queue.wait_idle(60) and queue.ready("ann", PROMPT) == 4  # 2 new ones, 2 base ones behind them
        taken = [queue.take("ann", PROMPT) for _ in range(2)]
        assert [v.adapter_version for v in taken] == [version, version]
        assert queue.wait_idle(60)
        assert queue.ready("ann", PROMPT) == 4  # refills of the new version; the base's stay as a fallback
        register_adapter(swap_studio.repo, random_lora(1))
        assert swap_studio.live.sync() and queue.wait_idle(60)
        assert queue.ready("ann", PROMPT) == 4  # at most depth older pairs are kept
        assert {v.adapter_version for v in queue._lines["ann"].pairs[PROMPT]} == {version, version + 1}
