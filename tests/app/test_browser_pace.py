"""Labeling at a person's pace in a real browser (Playwright driving Debian's Chromium) while the worker trains: 40
votes by keyboard at 0.3-1.5 s think times, every one stored, no error toast, the time from each key press to the
next pair on screen measured in the page; then the Compare tab's before/after grid follows the version that goes
live by itself.

The studio runs with the worker's default trigger (a run after 8 votes) and the default thread count, so the run
shares the cores with the labeling for most of the 40 votes; its learning rate is tiny so that the guard lets it go live
within the test's time. The latency figures are printed (`-s`); the page probe and the person are
`benchmarks.browser_pace`'s, whose command reports them (docs/labeling.md). p50 and p95 are asserted under bounds
loose enough for a loaded CI machine, not the 150 ms target. A vote that finds the next pair in the page's slot
shows it before any answer; the probe counts those.
"""

from __future__ import annotations

import random
import re

import pytest
from playwright import sync_api as playwright

from benchmarks.browser_pace import PROMPT, STUDIO_ARGS, open_label_tab, page_figures, vote_by_keyboard
from storage import Repository
from tests.support.processes import SMALL_GUARD
from tests.support.studio import CHROMIUM, CHROMIUM_ARGS, free_port, start_studio, stop_studio

pytestmark = pytest.mark.browser
expect = playwright.expect

VOTES = 40
WAIT_MS = 120_000
TRAINING_MS = 600_000


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("pace") / "data"
    port = free_port()
    # the first run (on the 8 or 9 votes there are when it starts) takes about 60 steps, long enough to overlap
    # most of the 40 votes; a guard of 4 + 4 seeds, so that v1 goes live soon after the last vote
    proc = start_studio(data, port, *STUDIO_ARGS, *SMALL_GUARD, threads=None)
    yield f"http://127.0.0.1:{port}/", data
    stop_studio(proc)


def test_forty_votes_by_keyboard_while_training_all_stored_and_the_grid_follows_the_live_version(studio):
    url, data = studio
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        open_label_tab(page, url)
        cast = vote_by_keyboard(page, VOTES, random.Random(7), (0.3, 1.5))
        shown, choices, during_run = cast["shown"], cast["choices"], cast["during_run"]
        figures = page_figures(page, VOTES)
        p50, p95, swaps, toasts = figures["p50_ms"], figures["p95_ms"], figures["from_slot"], figures["toasts"]
        print(f"\nkey to next pair on screen over {VOTES} votes ({during_run} while the status bar said training): "
              f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {figures['max_ms']:.0f} ms; {swaps} shown from the page's slot")

        assert toasts == []
        assert swaps >= VOTES // 5  # the page's slot held the next pair for many votes (21-27 of 40 measured here)
        with Repository(data) as repo:
            votes = repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
            assert [(v.pair_id, v.choice) for v in votes] == list(zip(shown, choices))  # 40 stored, each once
        assert during_run >= VOTES // 2  # the run went on while most of the votes were cast
        # bounds for a loaded 2-core CI machine, where quick votes drain the ready queue and the slot while the run
        # trains (p95 2.2-2.7 s measured here); the benchmark reports the figures against the 150 ms target
        assert p50 < 1000 and p95 < 5000

        page.get_by_role("tab", name="Compare").click()
        box = page.locator("#compare-prompt input")
        box.click()
        box.fill(PROMPT)
        box.press("Enter")
        page.locator("#grid-btn").click()
        version = page.locator("#grid-version")
        expect(version).to_contain_text(re.compile(r"B: (base|v1)"), timeout=WAIT_MS)
        rendered_at_base = "B: base" in version.inner_text()  # v1 can go live before the grid is drawn
        expect(page.locator("#status-bar")).to_contain_text("Live adapter: v1", timeout=TRAINING_MS)
        expect(version).to_contain_text("B: v1", timeout=WAIT_MS)  # refreshed by itself
        if rendered_at_base:
            expect(page.locator("#grid-refresh-note")).to_contain_text("v1 went live")
        expect(page.locator("#grid-b img").first).to_be_visible(timeout=WAIT_MS)
        browser.close()
