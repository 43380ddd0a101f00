"""Labeling at a person's pace in a real browser (Playwright driving Debian's Chromium) while the worker trains: 40
votes by keyboard at 0.3-1.5 s think times, every one stored, no error toast, the time from each key press to the
next pair on screen measured in the page; then the Compare tab's before/after grid follows the version that goes
live by itself.

The studio runs with the worker's default trigger (a run after 8 votes) and the default thread count, so the run
shares the cores with the labeling for most of the 40 votes; its learning rate is tiny so that the guard lets it go live
within the test's time. The latency figures are printed (`-s`); the benchmark
for them is `python -m benchmarks.labeling --while-training` (docs/benchmarks.md). p50 and p95 are asserted under
bounds loose enough for a loaded CI machine, not the 150 ms target.
"""

from __future__ import annotations

import random
import statistics
import time

import pytest
from playwright import sync_api as playwright

from storage import Repository
from tests.support.studio import CHROMIUM, CHROMIUM_ARGS, free_port, start_studio, stop_studio

pytestmark = pytest.mark.browser
expect = playwright.expect

PROMPT = "a small green triangle on a white background"
VOTES = 40
KEYS = ("1", "2", "3")  # left, right, tie
WAIT_MS = 120_000
TRAINING_MS = 600_000

# Records, in the page, the time from a vote key to the next pair on screen (its id changed and its left image
# loaded), and every toast that appears.
PROBE = """
(() => {
  window.__latencies = []; window.__toasts = [];
  let pending = null;
  const id = () => { const el = document.querySelector("#pair-id input"); return el ? el.value : ""; };
  const img = () => document.querySelector("#left-img img");
  document.addEventListener("keydown", (e) => {
    if ("12345".includes(e.key) && !pending) pending = {t: performance.now(), id: id(), src: img() && img().src};
  }, true);
  const tick = () => {
    const im = img();
    if (pending && id() !== pending.id && im && im.src !== pending.src && im.complete && im.naturalWidth > 0) {
      window.__latencies.push(performance.now() - pending.t); pending = null;
    }
    requestAnimationFrame(tick);
  };
  tick();
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType !== 1) continue;
      for (const t of [n, ...n.querySelectorAll(".toast-body")]) {
        if (t.classList && t.classList.contains("toast-body")) window.__toasts.push(t.textContent.trim());
      }
    }
  }).observe(document.body, {childList: true, subtree: true});
})();
"""


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("pace") / "data"
    port = free_port()
    # the first run (on the 8 or 9 votes there are when it starts) takes about 60 steps, long enough to overlap
    # most of the 40 votes
    proc = start_studio(data, port, "--pair-epochs", "60", "--lr", "1e-5", "--local-admin", threads=None)
    yield f"http://127.0.0.1:{port}/", data
    stop_studio(proc)


def test_forty_votes_by_keyboard_while_training_all_stored_and_the_grid_follows_the_live_version(studio):
    url, data = studio
    rng = random.Random(7)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.evaluate(PROBE)
        expect(page.locator("#status-bar")).to_contain_text("Live adapter: base", timeout=WAIT_MS)
        box = page.locator("#label-prompt input")
        box.click()
        box.fill(PROMPT)
        box.press("Enter")
        page.get_by_role("button", name="New pair").click()
        pair = page.locator("#pair-id input")
        expect(pair).to_have_value("1", timeout=WAIT_MS)
        page.mouse.click(5, 5)  # focus off the prompt box: keys vote
        shown, choices, during_run = [], [], 0
        for i in range(VOTES):
            expect(page.locator("#left-img img")).to_be_visible(timeout=WAIT_MS)
            time.sleep(rng.uniform(0.3, 1.5))
            shown.append(int(pair.input_value()))
            key = rng.choice(KEYS)
            choices.append({"1": "left", "2": "right", "3": "tie"}[key])
            page.keyboard.press(key)
            expect(pair).not_to_have_value(str(shown[-1]), timeout=WAIT_MS)  # the next pair is on screen
            status = page.locator("#status-bar").inner_text()
            during_run += any(phase in status for phase in ("training", "checking fidelity", "going live"))
        page.wait_for_function("window.__latencies.length >= %d" % VOTES, timeout=WAIT_MS)
        latencies = page.evaluate("window.__latencies")
        toasts = page.evaluate("window.__toasts")
        p50 = statistics.median(latencies)
        p95 = sorted(latencies)[round(0.95 * (len(latencies) - 1))]
        print(f"\nkey to next pair on screen over {VOTES} votes ({during_run} while the status bar said training): "
              f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(latencies):.0f} ms")

        assert toasts == []
        with Repository(data) as repo:
            votes = repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
            assert [(v.pair_id, v.choice) for v in votes] == list(zip(shown, choices))  # 40 stored, each once
        assert during_run >= VOTES // 2  # the run went on while most of the votes were cast
        # bounds for a loaded 2-core CI machine, where a burst of quick votes can drain the ready queue while the run
        # trains (p95 2.4 s measured once here); the benchmark reports the figures against the 150 ms target
        assert p50 < 1000 and p95 < 5000

        page.get_by_role("tab", name="Compare").click()
        box = page.locator("#compare-prompt input")
        box.click()
        box.fill(PROMPT)
        box.press("Enter")
        page.locator("#grid-btn").click()
        expect(page.locator("#grid-version")).to_contain_text("B: base", timeout=WAIT_MS)
        expect(page.locator("#status-bar")).to_contain_text("Live adapter: v1", timeout=TRAINING_MS)
        expect(page.locator("#grid-version")).to_contain_text("B: v1", timeout=WAIT_MS)  # refreshed by itself
        expect(page.locator("#grid-refresh-note")).to_contain_text("v1 went live")
        expect(page.locator("#grid-b img").first).to_be_visible(timeout=WAIT_MS)
        browser.close()
