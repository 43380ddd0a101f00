"""The studio in a real browser (Playwright driving Debian's Chromium): label by clicking and by keyboard, see the
first training run go live, compare base and the adapter, run a blind A/B trial, see bad input refused with a
clear message, and save a screenshot of each tab: to a temporary folder, or with STUDIO_SCREENSHOTS=docs/screenshots
to refresh the README's (a plain test run leaves the working tree clean).

The tests are the steps of one browser session on one studio process, in file order: a training run is too
expensive to repeat per test.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from settings import ServerConfig
from storage import Repository
from tests.support.processes import SMALL_GUARD
from tests.support.studio import CHROMIUM, CHROMIUM_ARGS, free_port, start_studio, stop_studio

pytestmark = pytest.mark.browser
expect = playwright.expect

SHOTS = Path(os.environ.get("STUDIO_SCREENSHOTS") or Path(tempfile.gettempdir()) / "alignment-studio-screenshots")
PROMPT = "a large red circle on a blue background"
# Playwright timeouts, generous for a loaded 2-core machine (on an idle one the whole file takes ~60 s).
GENERATION_MS = 120_000  # generation queues behind the training run
TRAINING_MS = 400_000  # the first run: load the trainer's model, 4 steps, the fidelity guard


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    data = tmp_path_factory.mktemp("browser") / "data"
    port = free_port()
    # Four preference votes start a short run; the tiny learning rate keeps the adapter near the base, so the
    # fidelity guard (4 + 4 seeds: the page is tested here, not the guard's statistics) lets it go live.
    proc = start_studio(data, port, "--train-every", "4", "--min-votes", "4", "--train-steps", "4", "--lr", "1e-5",
                        *SMALL_GUARD, "--local-admin")  # one person on their own machine: the admin controls are theirs
    yield f"http://127.0.0.1:{port}/", data
    stop_studio(proc)


@pytest.fixture(scope="module")
def page(studio_url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.goto(studio_url[0])
        yield pg
        browser.close()


def shot(page, tab: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.wait_for_timeout(1000)  # let plots and images finish drawing; nothing is asserted on this
    page.screenshot(path=str(SHOTS / f"{tab}.png"), full_page=True)


def set_prompt(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(text)
    box.press("Enter")


def fill_until_kept(box, text: str, tries: int = 3) -> None:
    """Fill a field that an accordion has just rendered: the component may set its initial value after a fill
    that came within milliseconds of the click, so fill again until the text stays."""
    for attempt in range(tries):
        box.fill(text)
        try:
            expect(box).to_have_value(text, timeout=1000)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def expect_error(page, text: str) -> None:
    expect(page.locator(".toast-body").filter(has_text=text).first).to_be_visible(timeout=GENERATION_MS)


def pair_id(page):
    return page.locator("#pair-id input")


def test_label_by_click_and_keyboard_until_the_first_adapter_goes_live(page, studio_url):
    _, data = studio_url
    expect(page.locator("#status-bar")).to_contain_text("Live adapter: base", timeout=GENERATION_MS)
    set_prompt(page, "label-prompt", PROMPT)
    page.get_by_role("button", name="New pair").click()
    expect(pair_id(page)).to_have_value("1", timeout=GENERATION_MS)
    expect(page.locator("#left-img img")).to_be_visible()
    expect(page.locator("#right-img img")).to_be_visible()

    shown = ["1"]
    page.get_by_role("button", name="Left is better (1)").click()
    expect(page.locator("#vote-ack")).to_contain_text("Recorded Left is better for pair 1", timeout=GENERATION_MS)
    shown.append(next_pair(page, shown[-1]))  # the next pair follows the vote (made ahead, or made now)
    for key, choice in (("2", "Right is better"), ("3", "Tie"), ("5", "Skip"), ("1", "Left is better")):
        press_twice(page, key)  # a double press: one vote
        expect(page.locator("#vote-ack")).to_contain_text(f"Recorded {choice} for pair {shown[-1]}",
                                                          timeout=GENERATION_MS)
        shown.append(next_pair(page, shown[-1]))
    shot(page, "label")

    with Repository(data) as repo:
        votes = repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
        assert [(v.pair_id, v.choice) for v in votes] == list(zip(map(int, shown), ["left", "right", "tie", "skip",
                                                                                    "left"]))
        assert len({v.annotator for v in votes}) == 1 and votes[0].annotator.startswith("anon-")

    # Four preference votes: the worker trains, the adapter goes live, the status bar says so.
    expect(page.locator("#status-bar")).to_contain_text("Live adapter: v1", timeout=TRAINING_MS)
    page.locator("body").press("4")  # both bad; pairs made from now on come from the new adapter
    next_pair(page, shown[-1])  # the slot's pair is swapped in at the press, before the vote reaches the server
    expect(page.locator("#vote-ack")).to_contain_text(f"Recorded Both bad for pair {shown[-1]}",
                                                      timeout=GENERATION_MS)
    deadline = time.monotonic() + GENERATION_MS / 1000
    with Repository(data) as repo:
        while time.monotonic() < deadline and repo.get_pair(repo.counts()["pairs"]).left.adapter_version != 1:
            time.sleep(0.5)  # the ready queue's refill after that vote
        assert repo.get_pair(repo.counts()["pairs"]).left.adapter_version == 1
        assert repo.counts()["votes"] == 6


def press_twice(page, key: str) -> None:
    """Two presses of `key` before the page can have had an answer (in one JavaScript task)."""
    page.evaluate("""(key) => { for (const _ of [1, 2]) document.body.dispatchEvent(
        new KeyboardEvent("keydown", {key, bubbles: true})); }""", key)


def next_pair(page, previous: str) -> str:
    """The pair id on screen once it is no longer `previous`."""
    expect(pair_id(page)).not_to_have_value(previous, timeout=GENERATION_MS)
    return pair_id(page).input_value()


def test_compare_and_blind_ab(page, studio_url):
    _, data = studio_url
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#version-b input")).to_have_value("v1", timeout=GENERATION_MS)  # the live one
    set_prompt(page, "compare-prompt", PROMPT)
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#compare-a img")).to_be_visible(timeout=GENERATION_MS)
    expect(page.locator("#compare-b img")).to_be_visible(timeout=GENERATION_MS)

    page.get_by_role("button", name="New blind trial").click()
    expect(page.locator("#blind-left img")).to_be_visible(timeout=GENERATION_MS)
    page.locator("body").press("1")
    expect(page.locator("#blind-rate")).to_contain_text(re.compile(r"n = 1: [01] adapter, [01] base, 0 tie"),
                                                        timeout=GENERATION_MS)
    expect(page.get_by_text("rendering base and live adapter")).to_have_count(0, timeout=GENERATION_MS)
    expect(page.locator("#blind-left img")).to_be_visible()  # the next trial is ready
    page.locator("#grid-btn").click()  # the before/after grid: base against the live v1 at 4 seeds, and the strip
    expect(page.locator("#grid-version")).to_contain_text("B: v1", timeout=GENERATION_MS)
    expect(page.locator("#grid-b img")).to_have_count(4, timeout=GENERATION_MS)
    expect(page.locator("#version-strip img")).to_have_count(2, timeout=GENERATION_MS)  # base, v1
    shot(page, "compare")
    with Repository(data) as repo:
        assert sum(repo.ab_results(adapter_version=1).values()) == 1
        assert repo.counts()["votes"] == 6  # blind choices are not training votes


def test_train_and_data_tabs(page, studio_url):
    page.get_by_role("tab", name="Train").click()
    history = page.locator("#adapter-history")
    expect(history).to_contain_text("live", timeout=GENERATION_MS)
    expect(history).to_contain_text("discounted")
    expect(page.locator("#run-info")).to_contain_text("live adapter: v1")
    expect(page.locator("#loss-plot canvas, #loss-plot svg").first).to_be_visible(timeout=GENERATION_MS)
    shot(page, "train")

    page.get_by_role("tab", name="Data").click()
    # 7 pairs shown, and made ahead for the next votes (the one the page holds in its slot, and the ready queue's
    # at its default depth: base pairs, then v1's once it went live): the tab counts pairs, not votes. The tab
    # counts when it is opened; the database may have a refill more by the time it is read.
    depth = ServerConfig().ready_depth
    counts = page.locator("#data-counts")
    expect(counts).to_contain_text(re.compile(r"6 votes on \d+ pairs from 1 annotator"), timeout=GENERATION_MS)
    pairs = int(re.search(r"6 votes on (\d+) pairs", counts.inner_text()).group(1))
    with Repository(studio_url[1]) as repo:
        assert pairs <= repo.counts()["pairs"]
    assert 9 <= pairs <= 8 + 2 * depth
    page.get_by_role("button", name="Export Parquet").click()
    expect(page.locator("#data-message")).to_contain_text("Exported 4 preference votes", timeout=GENERATION_MS)
    expect(page.locator("#export-file")).to_contain_text(".parquet")
    shot(page, "data")


def test_bad_input_in_the_ui_shows_a_message_and_writes_nothing(page, studio_url):
    _, data = studio_url
    page.get_by_role("tab", name="Label").click()
    with Repository(data) as repo:
        before = repo.counts()
    set_prompt(page, "label-prompt", "x" * 501)
    page.get_by_role("button", name="New pair").click()
    expect_error(page, "the prompt has 501 characters; the limit is 500")
    set_prompt(page, "label-prompt", PROMPT)
    page.get_by_text("Seeds (optional)").click()
    fill_until_kept(page.locator("#label-seeds textarea"), "5, 5")
    page.get_by_role("button", name="New pair").click()
    expect_error(page, "the two seeds are equal")
    page.locator("#label-seeds textarea").fill("")

    page.get_by_role("tab", name="Train").click()
    page.get_by_label("γ (gamma)").fill("1.5")
    page.get_by_role("button", name="Apply settings").click()
    expect_error(page, "gamma must be in (0, 1]")
    page.get_by_label("γ (gamma)").fill("0.9")
    with Repository(data) as repo:
        after = repo.counts()
    assert (after["pairs"], after["votes"]) == (before["pairs"], before["votes"])


def test_another_choice_right_after_a_swap_is_a_vote_on_the_pair_swapped_in(page, studio_url):
    """A double press of one key is one vote; a different key 60 ms after the swap is a vote on the new pair."""
    _, data = studio_url
    page.get_by_role("tab", name="Label").click()
    slot = page.locator("#next-pair-id input")
    held = slot.input_value()  # a pair held before New pair is never swapped in
    shown = pair_id(page).input_value()  # read before the click: a ready pair can be on screen within a poll
    page.get_by_role("button", name="New pair").click()
    expect(pair_id(page)).not_to_have_value(re.compile("^$|^" + re.escape(shown) + "$"), timeout=GENERATION_MS)
    first = pair_id(page).input_value()
    expect(slot).not_to_have_value(re.compile(f"^({re.escape(held)}|{first}|)$"), timeout=GENERATION_MS)
    first, second = int(first), int(slot.input_value())  # the page holds the pair after the one on screen
    with Repository(data) as repo:
        votes_before = repo.counts()["votes"]
    page.evaluate("""() => {
        const press = (key) => document.body.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true}));
        press("2"); press("2"); setTimeout(() => press("3"), 60); }""")
    expect(page.locator("#vote-ack")).to_contain_text(f"Recorded Tie for pair {second}", timeout=GENERATION_MS)
    with Repository(data) as repo:
        assert repo.counts()["votes"] == votes_before + 2
        votes = {v.pair_id: v.choice for v in repo.labeled_pairs(choices=("right", "tie"))}
    assert (votes.get(first), votes.get(second)) == ("right", "tie")
