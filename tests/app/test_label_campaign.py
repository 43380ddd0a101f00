"""Labeling campaigns: an admin's list of prompts, offered fewest votes first, and the votes per prompt behind it."""

from __future__ import annotations

import pytest

from app.access import AccessPolicy, Actor
from app.errors import AdminRequiredError, StudioError

A, B, C = "a large red circle", "a small green square", "a blue triangle on white"
ALICE, BOB = Actor("alice", authenticated=True), Actor("bob", authenticated=True)


def vote_on(studio, prompt: str, annotator: str = "bob", seeds=(1, 2)) -> None:
    view = studio.new_pair(prompt, list(seeds), annotator=annotator)
    studio.vote(view.id, "left", annotator=annotator)


def test_votes_per_prompt_counts_every_choice_and_names_asked_prompts_in_order(studio):
    vote_on(studio, A)
    vote_on(studio, A, "cy")
    vote_on(studio, B)
    studio.new_pair(C, [3, 4], annotator="bob")  # a pair without a vote
    assert studio.repo.votes_per_prompt() == {A: 2, B: 1}
    assert studio.repo.votes_per_prompt([C, B, "never stored"]) == {C: 0, B: 1, "never stored": 0}


def test_a_campaign_offers_the_prompt_with_the_fewest_votes_and_only_admins_set_it(studio):
    studio.access = AccessPolicy.for_host("127.0.0.1", admins=["alice"])
    with pytest.raises(AdminRequiredError):
        studio.set_campaign(f"{A}\n{B}", actor=BOB)
    with pytest.raises(StudioError, match="limit is 500"):
        studio.set_campaign(f"{A}\n{'x' * 501}", actor=ALICE)
    assert studio.next_prompt("mine") == "mine"  # no campaign: the annotator keeps their prompt
    assert studio.set_campaign(f" {A} \n\n{B}\n{C}\n{A}", actor=ALICE) == [A, B, C]
    assert studio.next_prompt("mine") == A  # all at 0: the admin's order
    vote_on(studio, A)
    assert studio.next_prompt(A) == B
    vote_on(studio, B)
    vote_on(studio, C)
    vote_on(studio, C, "cy")
    assert studio.next_prompt(C) == A
    vote_on(studio, "something else")
    assert studio.prompt_rows(BOB) == [{"prompt": A, "votes": 1, "campaign": "yes"},
                                       {"prompt": B, "votes": 1, "campaign": "yes"},
                                       {"prompt": C, "votes": 2, "campaign": "yes"}]
    assert {"prompt": "something else", "votes": 1, "campaign": ""} in studio.prompt_rows(ALICE)
    assert studio.set_campaign("", actor=ALICE) == [] and studio.next_prompt(C) == C
