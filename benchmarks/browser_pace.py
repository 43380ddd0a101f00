"""Key press to the next pair on screen in a real browser (Playwright driving Debian's Chromium).

A scripted person labels one prompt by keyboard (keys 1-3) at a think time drawn from a range, on the embedded
model, and the page measures, with its own clock, the time from each vote key to the next pair on screen (its id
changed and its left image loaded); it also counts the votes whose next pair the page's slot held (on screen
before any answer came), why the others found none (the slot empty, or still holding a pair already shown because
the last vote's answer had not come back) and every error toast.

    python -m benchmarks.browser_pace --votes 20 --no-worker      # nothing trains
    python -m benchmarks.browser_pace --votes 40                  # the first run trains meanwhile (after 8 votes)
    python -m benchmarks.browser_pace --votes 40 --ready-batches 1 2   # one studio per value, one after the other

The studio runs with its own thread setting (`--cpu-threads`: half the cores) and `--pair-epochs 60 --lr 1e-5`,
so that the first run overlaps most of the votes, as in `tests/app/test_browser_pace.py`, which uses the same page
probe and person. `--ready-batches` compares the ready queue's pairs per generation (`--ready-batch`) in one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
PROMPT = "a small green triangle on a white background"
KEYS = {"1": "left", "2": "right", "3": "tie"}
WAIT_MS = 120_000
STUDIO_ARGS = ["--pair-epochs", "60", "--lr", "1e-5", "--local-admin"]

# Records, in the page, the time from a vote key to the next pair on screen (its id changed and its left image
# loaded), the votes whose next pair was on screen before the key's handling ended (the slot's), and every toast.
PROBE = """
(() => {
  window.__latencies = []; window.__toasts = []; window.__swaps = 0; window.__misses = [];
  let pending = null, lastKey = null;
  const seen = new Set();  // pair ids that were on screen
  const id = () => { const el = document.querySelector("#pair-id input"); return el ? el.value : ""; };
  const next = () => { const el = document.querySelector("#next-pair-id input"); return el ? el.value : ""; };
  const img = () => document.querySelector("#left-img img");
  document.addEventListener("keydown", (e) => {
    if (!"12345".includes(e.key) || pending) return;
    const before = id(), held = next(), now = performance.now();
    seen.add(before);
    const since = lastKey === null ? null : Math.round(now - lastKey);
    lastKey = now;
    pending = {t: now, id: before, src: img() && img().src};
    setTimeout(() => {
      if (id() !== before) { window.__swaps += 1; return; }
      // the slot was empty (no pair ready when the last answer came), or still held a pair already shown (the
      // last vote's answer, which refills it, had not come back)
      window.__misses.push({slot: !held ? "empty" : seen.has(held) ? "not refilled yet" : "held", since_key_ms: since});
    }, 0);
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


def open_label_tab(page, url: str, prompt: str = PROMPT) -> None:
    """Load the studio with the probe, ask for the first pair of `prompt`, and leave the keys to vote."""
    from playwright.sync_api import expect

    page.goto(url)
    page.evaluate(PROBE)
    expect(page.locator("#status-bar")).to_contain_text("Live adapter: base", timeout=WAIT_MS)
    box = page.locator("#label-prompt input")
    box.click()
    box.fill(prompt)
    box.press("Enter")
    page.get_by_role("button", name="New pair").click()
    expect(page.locator("#pair-id input")).to_have_value("1", timeout=WAIT_MS)
    page.mouse.click(5, 5)  # focus off the prompt box: keys vote


def vote_by_keyboard(page, votes: int, rng: random.Random, think_s: tuple[float, float]) -> dict:
    """`votes` key presses, each after the next pair is on screen and a think time; the pairs shown, the choices,
    and how many votes were cast while the status bar said a run was under way."""
    from playwright.sync_api import expect

    pair = page.locator("#pair-id input")
    shown, choices, during_run = [], [], 0
    for _ in range(votes):
        expect(page.locator("#left-img img")).to_be_visible(timeout=WAIT_MS)
        time.sleep(rng.uniform(*think_s))
        shown.append(int(pair.input_value()))
        key = rng.choice(sorted(KEYS))
        choices.append(KEYS[key])
        page.keyboard.press(key)
        expect(pair).not_to_have_value(str(shown[-1]), timeout=WAIT_MS)  # the next pair is on screen
        status = page.locator("#status-bar").inner_text()
        during_run += any(phase in status for phase in ("training", "checking fidelity", "going live"))
    return {"shown": shown, "choices": choices, "during_run": during_run}


def page_figures(page, votes: int) -> dict:
    """The probe's figures once it has measured `votes` key presses."""
    page.wait_for_function("window.__latencies.length >= %d" % votes, timeout=WAIT_MS)
    latencies = page.evaluate("window.__latencies")
    ordered = sorted(latencies)
    return {"latencies_ms": [round(x, 1) for x in latencies], "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(ordered[round(0.95 * (len(ordered) - 1))], 1), "max_ms": round(ordered[-1], 1),
            "from_slot": page.evaluate("window.__swaps"), "misses": page.evaluate("window.__misses"),
            "toasts": page.evaluate("window.__toasts")}


def run(votes: int, think_s: tuple[float, float], worker: bool, seed: int, extra: tuple[str, ...] = ()) -> dict:
    from playwright.sync_api import sync_playwright

    from benchmarks.load import StudioProcess, free_port

    root = Path(tempfile.mkdtemp(prefix="browser-pace-"))
    studio = StudioProcess(root / "data", free_port(), STUDIO_ARGS + ([] if worker else ["--no-worker"]) + list(extra),
                           root / "studio.log", threads=None)
    studio.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            open_label_tab(page, studio.url)
            cast = vote_by_keyboard(page, votes, random.Random(seed), think_s)
            figures = page_figures(page, votes)
            browser.close()
    finally:
        studio.kill()
    return {"votes": votes, "think_s": list(think_s), "worker": worker, "studio_args": list(extra),
            "during_run": cast["during_run"], **figures}


def miss_kinds(misses: list[dict]) -> str:
    """How many votes found the slot empty, and how many found it still holding a pair already shown."""
    kinds = collections.Counter(m["slot"] for m in misses)
    return ", ".join(f"{n} with the slot {kind}" for kind, n in sorted(kinds.items())) or "none"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--votes", type=int, default=40)
    p.add_argument("--think-s", type=float, nargs=2, default=(0.3, 1.5), metavar=("MIN", "MAX"))
    p.add_argument("--no-worker", action="store_true", help="nothing trains (the studio's --no-worker)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ready-batches", type=int, nargs="+", metavar="N",
                   help="one studio per value of its --ready-batch, one after the other (default: its default)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.votes < 1 or not 0 <= a.think_s[0] <= a.think_s[1]:
        p.error("--votes must be >= 1 and --think-s MIN MAX with 0 <= MIN <= MAX")
    results = []
    for extra in [()] if not a.ready_batches else [("--ready-batch", str(n)) for n in a.ready_batches]:
        result = run(a.votes, tuple(a.think_s), not a.no_worker, a.seed, extra)
        print(f"{' '.join(extra) or 'defaults'}: key to next pair on screen over {a.votes} votes "
              f"({result['during_run']} while a run was under way): p50 {result['p50_ms']:.0f} ms, "
              f"p95 {result['p95_ms']:.0f} ms, max {result['max_ms']:.0f} ms; {result['from_slot']} shown from the "
              f"page's slot; {len(result['toasts'])} error toasts; the others: {miss_kinds(result['misses'])}",
              flush=True)
        results.append(result)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return results

if __name__ == "__main__":
    main()
