"""The before/after grid, the version strip and their image cache (`app.gallery`), on the embedded model: a second
look renders nothing, a new seed or version renders only itself, the cache is bounded, the strip runs from the
base through every version and is capped, bad input is a clear error before anything is counted, rate limits
count rendered images only, and a grid that follows the live version renders again only once that version
changed, in the Studio and through the Compare tab's events as its page runs them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alignment.serving.live import PinnedVersion
from app.access import Actor, RateLimits
from app.errors import RateLimitedError, StudioError
from app.gallery import Gallery, ImageCache
from app.tabs.compare import follow_text, strip_text
from storage import UnknownAdapterError
from tests.support.lora import random_lora
from tests.support.studio import RawSession, free_port, register_adapter

PROMPT = "a large red circle on a blue background"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def renders(monkeypatch) -> list[tuple[int | None, tuple[int, ...]]]:
    """(version, seeds) of every call of the generator a grid, a strip or a compare goes through."""
    calls = []
    generate = PinnedVersion.generate

    def counted(self, prompt, seeds, config=None):
        calls.append((self.version, tuple(seeds)))
        return generate(self, prompt, seeds, config)

    monkeypatch.setattr(PinnedVersion, "generate", counted)
    return calls


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_second_look_renders_nothing_and_a_new_seed_renders_only_itself(studio, renders):
    gallery = studio.gallery
    first = gallery.grid(PROMPT, 10, 4, None, None, annotator="ann")
    assert first.request.seeds == (10, 11, 12, 13) and first.rendered == 4
    assert renders == [(None, (10, 11, 12, 13))]  # A and B are the same version: one batch for both rows
    assert first.images_a == first.images_b
    again = gallery.grid(f"  {PROMPT} ", 10.0, "4", None, None, annotator="ann")  # the same, written otherwise
    assert again.rendered == 0 and len(renders) == 1
    assert all(a is b for a, b in zip(again.images_a, first.images_a))
    shifted = gallery.grid(PROMPT, 12, 4, None, None, annotator="ann")
    assert renders[1:] == [(None, (14, 15))] and shifted.rendered == 2
    assert shifted.images_a[:2] == first.images_a[2:]
    # the same image a compare of that seed makes
    base, _ = studio.compare(PROMPT, 11, None, None, annotator="ann")
    assert np.array_equal(pixels(base), pixels(first.images_a[1]))


def test_another_version_renders_its_row_and_the_strip_runs_from_the_base_through_every_version(swap_studio,
                                                                                                 renders):
    repo, live = swap_studio.repo, swap_studio.live
    v1 = register_adapter(repo, random_lora(1))
    v2 = register_adapter(repo, random_lora(2))
    assert live.sync() and live.adapter_version == v2
    gallery = swap_studio.gallery
    grid = gallery.grid(PROMPT, 3, 2, None, v1, annotator="ann")
    assert renders == [(None, (3, 4)), (v1, (3, 4))] and grid.rendered == 4
    assert not np.array_equal(pixels(grid.images_a[0]), pixels(grid.images_b[0]))
    same_batch = swap_studio.live.at(v1).generate(PROMPT, [3, 4])  # what the grid's B row is
    assert all(np.array_equal(pixels(g.image), pixels(image)) for g, image in zip(same_batch, grid.images_b))
    del renders[:]
    newer = gallery.grid(PROMPT, 3, 2, None, v2, annotator="ann")
    assert renders == [(v2, (3, 4))] and newer.images_a == grid.images_a  # the base row came from the cache
    assert live.adapter_version == v2 and live.prepared_version is None  # what is live stays live

    del renders[:]
    strip = gallery.strip(PROMPT, 3, annotator="ann")
    assert strip.versions == (None, v1, v2) and strip.total == 2 and not strip.capped
    assert renders == []  # every image of seed 3 was in the cache already
    assert strip.images == (grid.images_a[0], grid.images_b[0], newer.images_b[0])
    assert "all 2 versions, oldest first" in strip_text(strip)

    v3 = register_adapter(repo, random_lora(3), live=False)  # not live (e.g. rejected): still on the strip
    capped = Gallery(swap_studio, strip_cap=2).strip(PROMPT, 3, annotator="ann")
    assert capped.versions == (None, v2, v3) and capped.total == 3 and capped.capped
    assert "newest 2 of 3 versions (v2 … v3)" in strip_text(capped) and "left out" in strip_text(capped)


def test_the_cache_keeps_the_most_recently_used_images_only(studio, renders):
    cache = ImageCache(2)
    red, green, blue = (Image.new("RGB", (2, 2), c) for c in ("red", "green", "blue"))
    cache.put("r", red), cache.put("g", green)
    assert cache.get("r") is red  # now the most recently used
    cache.put("b", blue)
    assert len(cache) == 2 and "g" not in cache and cache.get("r") is red and cache.get("b") is blue
    with pytest.raises(ValueError):
        ImageCache(0)

    small = Gallery(studio, capacity=3)
    small.grid(PROMPT, 0, 4, None, None, annotator="ann")
    assert len(small.cache) == 3 and renders == [(None, (0, 1, 2, 3))]
    small.grid(PROMPT, 0, 4, None, None, annotator="ann")
    assert renders[1:] == [(None, (0,))] and len(small.cache) == 3  # seed 0 went first; 1, 2, 3 were kept


@pytest.mark.parametrize("args, message", [
    (("", 0, 4, None, None), "prompt is empty"),
    (("   ", 0, 4, None, None), "prompt is empty"),
    ((PROMPT, 0, 0, None, None), "from 1 to 8"),
    ((PROMPT, 0, 100, None, None), "from 1 to 8"),
    ((PROMPT, 0, 2.5, None, None), "from 1 to 8"),
    ((PROMPT, 0, True, None, None), "from 1 to 8"),
    ((PROMPT, -1, 4, None, None), "out of range"),
    ((PROMPT, 2**63 - 2, 4, None, None), "out of range"),  # the last seed would pass the limit
    ((PROMPT, "x", 4, None, None), "not a whole number"),
    ((PROMPT, 0, 4, "v1", None), "base or a whole number"),
])
def test_bad_input_is_refused_before_anything_is_counted(studio, renders, args, message):
    studio.limits = RateLimits.per_minute(1, 1)
    with pytest.raises(StudioError, match=message):
        studio.gallery.grid(*args, annotator="ann")
    assert renders == [] and len(studio.gallery.cache) == 0
    studio.limits.check_pair("ann", None)  # the one render a minute was not used


def test_an_unknown_version_is_refused_before_anything_is_counted(studio, renders):
    studio.limits = RateLimits.per_minute(1, 1)
    with pytest.raises(UnknownAdapterError, match="no adapter version 7"):
        studio.gallery.grid(PROMPT, 0, 4, None, 7, annotator="ann")
    with pytest.raises(UnknownAdapterError):
        studio.compare(PROMPT, 0, None, 7, annotator="ann")  # the message compare gives
    assert renders == []
    studio.limits.check_pair("ann", None)


def test_rate_limits_count_rendered_images_two_at_a_time(studio, renders):
    studio.limits = RateLimits.per_minute(3, 10, clock=Clock())  # the clock stands still: a count never expires
    gallery = studio.gallery
    gallery.grid(PROMPT, 0, 4, None, None, annotator="ann")  # 4 images: 2 counts
    gallery.grid(PROMPT, 0, 4, None, None, annotator="ann")  # all cached: nothing counted
    with pytest.raises(RateLimitedError):  # 4 new images need 2 counts; 1 is left
        gallery.grid(PROMPT, 4, 4, None, None, annotator="ann")
    assert renders[1:] == [(None, (4, 5))]  # what the last count paid for is rendered and kept
    assert gallery.grid(PROMPT, 4, 2, None, None, annotator="bob").rendered == 0
    with pytest.raises(RateLimitedError):
        gallery.grid(PROMPT, 6, 1, None, None, annotator="ann")
    assert len(renders) == 2


def test_a_following_grid_renders_again_only_when_the_live_version_changed(swap_studio, renders, monkeypatch):
    repo, clock = swap_studio.repo, Clock()
    v1 = register_adapter(repo, random_lora(1))
    gallery = Gallery(swap_studio, clock=clock)
    reads = []
    live_adapter = repo.live_adapter
    monkeypatch.setattr(repo, "live_adapter", lambda: reads.append(1) or live_adapter())

    grid = gallery.grid(PROMPT, 0, 2, None, v1, annotator="ann")
    assert not gallery.refresh_due(grid.request) and gallery.follow(grid.request, annotator="ann") is None
    assert len(renders) == 2  # the grid's two rows; the checks rendered nothing
    reads.clear()
    for _ in range(20):  # many pages polling within a second: one read of storage for all of them
        assert not gallery.refresh_due(grid.request)
    assert len(reads) == 0

    v2 = register_adapter(repo, random_lora(2))
    reads.clear()
    assert not gallery.refresh_due(grid.request) and not reads  # the shared read is at most a second old
    clock.now += 1.5
    assert gallery.refresh_due(grid.request) and len(reads) == 1
    followed = gallery.follow(grid.request, annotator="ann")
    assert followed.request.version_b == v2 and followed.request.version_a is None
    assert renders[2:] == [(v2, (0, 1))] and followed.images_a == grid.images_a  # only B's new row
    assert not gallery.refresh_due(followed.request)
    assert gallery.follow(followed.request, annotator="ann") is None and len(renders) == 3

    swap_studio.rollback(actor=Actor("ann"))  # back to v1: B follows there too, from the cache
    back = gallery.follow(followed.request, annotator="ann")
    assert back.request.version_b == v1 and back.rendered == 0 and len(renders) == 3
    assert "v1** went live: B moved from v2" in follow_text(back.request, True, v1, "v2")
    assert "not the live version (v1)" in follow_text(followed.request, False, v1)


# ---- the Compare tab's events, as its page runs them -----------------------------------------------------------
@pytest.fixture
def page(swap_studio):
    """The swap studio served in this process, and one page session that has loaded."""
    from app.ui import build_ui, launch

    demo = build_ui(swap_studio, browser_secret="gallery tests secret")
    port = free_port()
    launch(demo, swap_studio, port=port, prevent_thread_lock=True, quiet=True)
    session = RawSession(f"http://127.0.0.1:{port}", demo)
    fns = {(fn.fn.__module__, fn.name): index for index, fn in demo.fns.items() if fn.fn is not None}
    fns = {name: index for (module, name), index in fns.items() if module in ("app.tabs.compare", "app.ui")}
    assert session.call(fns["start_session"], [None, None])["success"]
    yield swap_studio, session, fns
    session.close()
    demo.close()


def data(answer: dict) -> list:
    assert answer["success"], answer
    return answer["output"]["data"]


def value(update) -> object:
    return update.get("value") if isinstance(update, dict) else update


def test_the_compare_tab_grid_follows_the_live_version_and_is_quiet_otherwise(page, renders):
    studio, session, fns = page
    studio.gallery.live_max_age_s = 0.0  # every tick reads storage: no waiting in the test
    v1 = register_adapter(studio.repo, random_lora(1))
    assert value(data(session.call(fns["refresh"], [None]))[1]) == "v1"  # the tab opens with B at the live one
    shown = data(session.call(fns["render_grid"], [PROMPT, 5, 2, "base", "v1", True, None]))
    grid_a, grid_b, grid_version, note, strip, strip_note, _, timer = shown[:8]
    grid_version = grid_version.replace("**", "")  # as the page shows it
    assert len(value(grid_a)) == 2 and len(value(grid_b)) == 2 and len(value(strip)) == 2
    assert "A: base · B: v1 (live) · seeds 5, 6" in grid_version
    assert "renders again by itself" in note and "base and all 1 versions" in strip_note
    assert timer.get("active") is True
    assert renders == [(None, (5, 6)), (v1, (5, 6))]  # the strip's seed 5 came from the cache
    tick = session.call(fns["check_live"], [None])
    assert tick["success"] and not tick["output"].get("changed_state_ids")  # nothing changed: nothing to render

    v2 = register_adapter(studio.repo, random_lora(2))
    tick = session.call(fns["check_live"], [None])
    assert tick["success"] and tick["output"].get("changed_state_ids")  # the page now runs follow_live
    followed = data(session.call(fns["follow_live"], [None, None]))
    assert "B: v2 (live)" in followed[2].replace("**", "") and "v2** went live: B moved from v1" in followed[3]
    assert value(followed[9]) == "v2"  # the right version field moved with it
    assert renders[2:] == [(v2, (5, 6))]  # B's row; the strip's v2 at seed 5 came from the cache
    assert len(value(followed[4])) == 3
    tick = session.call(fns["check_live"], [None])
    assert not tick["output"].get("changed_state_ids") and len(renders) == 3

    pinned = data(session.call(fns["render_grid"], [PROMPT, 5, 2, "base", "v1", True, None]))  # B is not live
    assert "not the live version (v2)" in pinned[3] and pinned[7].get("active") is False
    register_adapter(studio.repo, random_lora(3))
    assert not session.call(fns["check_live"], [None])["output"].get("changed_state_ids")
    assert len(renders) == 3  # every image of that grid and its strip was cached; a pinned grid does not follow
