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
    ack = outputs(events.run("vote-left"))[0]
    assert text_of(ack) == NO_PAIR_TEXT
    assert studio.counts()["votes"] == 0 and studio.counts()["pairs"] == 0


def test_the_next_pair_comes_in_the_votes_answer_without_waiting_on_generation(page):
    studio, events = page
    first = outputs(events.run("new-pair", PROMPT, "", ""))
    assert first[2] == 1
    assert studio.ready.wait_idle(60) and studio.ready.ready(studio.repo.get_pair(1).served_to, PROMPT) == 2
    ack, _, left, right, shown, _ = outputs(events.run("vote-left"))
    assert "Recorded **Left is better** for pair 1" in text_of(ack)
    assert shown == 2 and left and right  # a ready pair, in the same answer
    pairs_now = studio.counts()["pairs"]
    after = outputs(events.after_vote())  # the chained event makes nothing when a pair was shown
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in after[:3])
    assert studio.ready.wait_idle(60) and studio.counts()["pairs"] == pairs_now + 1  # one refill, nothing else
    assert outputs(events.run("vote-skip"))[4] == 3
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
    ack, _, _, _, _, prompt = outputs(events.run("vote-left"))
    assert "Recorded" in text_of(ack) and text_of(prompt) == other  # PROMPT has a vote now, `other` none
    shown = outputs(events.after_vote())[2]
    assert studio.repo.get_pair(shown).prompt == other
