"""The Label tab as its page drives it (each event over Gradio's HTTP queue): the next pair comes in the vote's own
answer when one is ready, and a vote with no pair, or the same vote arriving twice at once, changes nothing and
raises no error. (That the page sends one vote for a pair on screen is checked in tests/app/test_browser.py.)"""

from __future__ import annotations

import threading

import pytest

from app.access import Actor
from app.tabs.label import NO_PAIR_TEXT, VotedPairs
from app.ui import build_ui, launch
from tests.support.studio import RawSession, free_port

PROMPT = "a large red circle on a blue background"


@pytest.fixture
def page(embedded, tmp_path):
    """A served studio with a ready queue of depth 2, and one page session that has loaded (so has an annotator)."""
    from alignment.serving.sampler import Sampler
    from app.studio import Studio
    from storage import Repository

    studio = Studio(Sampler(embedded), Repository(tmp_path / "data"), ready_depth=2)
    studio.ready.start()
    demo = build_ui(studio, browser_secret="label tests secret")
    port = free_port()
    launch(demo, studio, port=port, prevent_thread_lock=True, quiet=True)
    session = RawSession(f"http://127.0.0.1:{port}", demo)
    events = Events(demo, session)
    assert events.run("load", None)["success"]
    yield studio, events
    session.close()
    demo.close()
    studio.close()


class Events:
    """The page's events found by what triggers them: `run("load", None)`, `run("vote-left")`."""

    def __init__(self, demo, session: RawSession):
        self.session = session
        session.demo_components = demo.config["components"]
        ids = {c["id"]: c.get("props", {}).get("elem_id") for c in demo.config["components"]}
        self.by_trigger: dict[str, list[int]] = {}
        for index, dep in enumerate(demo.config["dependencies"]):
            for target, event in dep["targets"]:
                name = "load" if event == "load" else ids.get(target)
                self.by_trigger.setdefault(name, []).append(index)
        self.chained = {index for index, dep in enumerate(demo.config["dependencies"])
                        if dep.get("trigger_after") is not None}

    def run(self, trigger: str, *data) -> dict:
        first = next(i for i in self.by_trigger[trigger] if i not in self.chained)
        return self.session.call(first, [*data, None])  # State inputs come from the server's session

    def tick(self) -> dict:
        """One tick of the slot's timer (the timer event whose outputs hold the slot's pair id)."""
        slot_id = next(c["id"] for c in self.session.demo_components if c.get("props", {}).get("elem_id")
                       == "next-pair-id")
        index = next(i for i, dep in enumerate(self.session.dependencies)
                     if dep["targets"] and dep["targets"][0][1] == "tick" and slot_id in dep["outputs"])
        return self.session.call(index, [None])

    def vote(self, trigger: str, voted=None, swapped=None) -> dict:
        """A vote as the page sends it: the pair on screen at the press and the slot's pair it swapped in (both
        None: what a page sends for a click that did not pass its listener)."""
        return self.run(trigger, voted, swapped)

    def after_vote(self) -> dict:
        """The event a vote's success chains: the next pair made now, unless the vote's answer brought one."""
        dep = next(i for i in self.chained if self.session.dependencies[i].get("trigger_after")
                   in self.by_trigger["vote-left"] and self.session.dependencies[i].get("trigger_only_on_success"))
        return self.session.call(dep, [None])


def outputs(answer: dict) -> list:
    assert answer["success"], answer
    return answer["output"]["data"]


def text_of(value) -> str | None:
    return value.get("value") if isinstance(value, dict) else value


def test_a_vote_with_no_pair_on_screen_changes_nothing_and_raises_no_error(page):
    studio, events = page
    ack = outputs(events.vote("vote-left"))[0]
    assert text_of(ack) == NO_PAIR_TEXT
    assert studio.counts()["votes"] == 0 and studio.counts()["pairs"] == 0


def test_the_next_pair_comes_in_the_votes_answer_without_waiting_on_generation(page):
    studio, events = page
    first = outputs(events.run("new-pair", PROMPT, "", ""))
    assert first[2] == 1
    assert studio.ready.wait_idle(60) and studio.ready.ready(studio.repo.get_pair(1).served_to, PROMPT) == 2
    ack, _, left, right, shown, _, slot_left, slot_right, slot_id, _ = outputs(events.vote("vote-left"))
    assert "Recorded **Left is better** for pair 1" in text_of(ack)
    assert shown == 2 and left and right  # a ready pair, in the same answer
    assert slot_id == 3 and slot_left and slot_right  # and the one after it, for the page to hold
    after = outputs(events.after_vote())  # the chained event makes nothing when a pair was shown
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in after[:3])
    assert studio.ready.wait_idle(60) and studio.counts()["pairs"] == 5  # two refills behind them, nothing else
    answer = outputs(events.vote("vote-skip"))
    assert answer[4] == 3 and answer[8] == 4  # no swap in the page: the slot's pair comes in the answer
    votes = studio.repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
    assert [(v.pair_id, v.choice) for v in votes] == [(1, "left"), (2, "skip")]


def test_a_vote_claimed_twice_at_once_is_recorded_once():
    voted, wins = VotedPairs(keep=2), []
    barrier = threading.Barrier(8)

    def press():
        barrier.wait()
        wins.append(voted.claim("ann", 7))

    threads = [threading.Thread(target=press) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    voted.release("ann", 7)
    assert voted.claim("ann", 7)  # a refused vote may be pressed again
    voted.claim("ann", 8), voted.claim("ann", 9)
    assert voted.claim("ann", 7)  # only the newest `keep` are remembered


def test_in_a_campaign_the_vote_moves_the_person_to_the_least_voted_prompt(page):
    studio, events = page
    other = "a small green square"
    studio.set_campaign([PROMPT, other], actor=Actor("admin"))  # a local studio: everyone is an admin
    assert outputs(events.run("new-pair", PROMPT, "", ""))[2] == 1
    ack, _, _, _, _, prompt, *_ = outputs(events.vote("vote-left"))
    assert "Recorded" in text_of(ack) and text_of(prompt) == other  # PROMPT has a vote now, `other` none
    shown = outputs(events.after_vote())[2]
    assert studio.repo.get_pair(shown).prompt == other


def is_update(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def first_vote(studio, events) -> None:
    """New pair (pair 1), the queue topped up, a vote on it: pair 2 on screen, pair 3 in the slot."""
    assert outputs(events.run("new-pair", PROMPT, "", ""))[2] == 1
    assert studio.ready.wait_idle(60)
    answer = outputs(events.vote("vote-left", 1))
    assert answer[4] == 2 and answer[8] == 3


def test_a_vote_that_swapped_the_slots_pair_in_moves_the_session_to_it_and_refills_the_slot(page):
    studio, events = page
    first_vote(studio, events)
    assert studio.ready.wait_idle(60)
    ack, _, left, right, shown, _, slot_left, _, slot_id, _ = outputs(events.vote("vote-right", 2, 3))
    assert "for pair 2" in text_of(ack)
    assert is_update(left) and is_update(right)  # the page shows pair 3 already: no images sent again
    assert shown == 3 and slot_id == 4 and slot_left
    assert "for pair 3" in text_of(outputs(events.vote("vote-tie", 3))[0])  # the session's pair is 3 now
    votes = studio.repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
    assert [(v.pair_id, v.choice) for v in votes] == [(1, "left"), (2, "right"), (3, "tie")]


def test_a_vote_for_a_pair_not_on_screen_or_naming_a_foreign_swap_records_only_what_was_shown(page):
    studio, events = page
    first_vote(studio, events)
    for foreign in (99, -1, 10**18):
        ack = outputs(events.vote("vote-left", foreign, 3))[0]
        assert "not recorded" in text_of(ack) and studio.counts()["votes"] == 1
    ack, _, left, _, shown, *_ = outputs(events.vote("vote-left", 2, 999))  # 999 was never in this page's slot
    assert "for pair 2" in text_of(ack)
    assert shown == 3 and not is_update(left)  # so the answer brings the slot's pair itself
    votes = studio.repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
    assert [(v.pair_id, v.choice) for v in votes] == [(1, "left"), (2, "left")]


def test_a_refused_vote_after_a_swap_warns_and_follows_the_page_without_one_it_is_an_error(page):
    studio, events = page
    first_vote(studio, events)
    annotator = studio.repo.get_pair(2).served_to
    studio.vote(2, "tie", annotator=annotator)  # pair 2 has a vote already: the page's vote on it is refused
    answer = events.vote("vote-left", 2, 3)
    ack, _, _, _, shown, *_ = outputs(answer)
    assert "Not recorded for pair 2" in text_of(ack) and shown == 3
    studio.vote(3, "tie", annotator=annotator)
    refused = events.vote("vote-left", 3)  # no swap: the person still sees pair 3 and gets the error
    assert not refused["success"] and "already has your vote" in str(refused["output"])
    votes = studio.repo.labeled_pairs(choices=("left", "right", "tie", "both_bad", "skip"))
    assert [(v.pair_id, v.choice) for v in votes] == [(1, "left"), (2, "tie"), (3, "tie")]


def test_an_empty_slot_is_filled_by_its_timer_which_stops_when_full_or_after_its_tries(page, monkeypatch):
    from app.tabs import label

    studio, events = page
    assert outputs(events.run("new-pair", PROMPT, "", ""))[2] == 1
    assert studio.ready.wait_idle(60)
    _, _, _, slot_id, timer = outputs(events.tick())  # session, slot left, slot right, slot id, timer
    assert slot_id == 2 and timer["active"] is False  # a ready pair: held, and the timer stops
    monkeypatch.setattr(label, "SLOT_TRIES", 3)
    monkeypatch.setattr(studio.ready, "take", lambda *a, **k: None)  # from now on nothing is ready
    answer = outputs(events.vote("vote-left", 1, 2))  # the page swapped pair 2 in
    assert answer[4] == 2 and answer[8] is None and answer[9]["active"] is True  # an empty slot: its timer runs
    keep_going = [outputs(events.tick())[-1] for _ in range(3)]
    assert [is_update(t) and "active" not in t for t in keep_going[:2]] == [True, True]
    assert keep_going[2]["active"] is False  # three ticks without a pair: it waits for the next vote
