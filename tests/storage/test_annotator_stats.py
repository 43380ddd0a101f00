"""`Repository.annotator_stats`: votes per annotator and choice, and agreement where annotators judged the same
pair, on SQLite and PostgreSQL, checked against counts worked out by hand; and that it is GROUP BY in the database
(the statements it runs return aggregates, not one row per vote)."""

from __future__ import annotations

from sqlalchemy import event


def test_counts_and_agreement_by_hand(repo, make_pair):
    p = [make_pair() for _ in range(4)]
    votes = [
        (p[0], "alice", "left"), (p[0], "bob", "left"), (p[0], "carol", "right"),  # a=b, a!=c, b!=c
        (p[1], "alice", "tie"), (p[1], "bob", "tie"),  # a=b
        (p[2], "alice", "both_bad"), (p[2], "bob", "skip"),  # skip is never compared
        (p[3], "carol", "left"),  # nobody else judged p3
    ]
    for pair, annotator, choice in votes:
        repo.record_vote(pair.id, annotator, choice)
    stats = repo.annotator_stats()
    rows = {r["annotator"]: r for r in stats["annotators"]}
    assert list(rows) == ["alice", "bob", "carol"]
    assert rows["alice"]["votes"] == 3 and rows["bob"]["votes"] == 3 and rows["carol"]["votes"] == 2
    assert rows["alice"]["per_choice"] == {"left": 1, "right": 0, "tie": 1, "both_bad": 1, "skip": 0}
    assert rows["bob"]["per_choice"]["skip"] == 1 and rows["carol"]["per_choice"]["left"] == 1
    # alice: p0 with bob (agree) and carol (disagree), p1 with bob (agree); p2 is not shared (bob skipped)
    assert (rows["alice"]["shared_pairs"], rows["alice"]["comparisons"], rows["alice"]["agreements"]) == (2, 3, 2)
    assert (rows["bob"]["shared_pairs"], rows["bob"]["comparisons"], rows["bob"]["agreements"]) == (2, 3, 2)
    assert (rows["carol"]["shared_pairs"], rows["carol"]["comparisons"], rows["carol"]["agreements"]) == (1, 2, 0)
    assert stats["pairs"] == [
        {"annotator_a": "alice", "annotator_b": "bob", "shared_pairs": 2, "agreements": 2},
        {"annotator_a": "alice", "annotator_b": "carol", "shared_pairs": 1, "agreements": 0},
        {"annotator_a": "bob", "annotator_b": "carol", "shared_pairs": 1, "agreements": 0},
    ]


def test_empty_database(repo):
    assert repo.annotator_stats() == {"annotators": [], "pairs": []}


def test_every_query_aggregates_in_the_database(repo, make_pair):
    """Many votes by two annotators: every SELECT it runs is a GROUP BY (no vote rows come back to Python)."""
    pairs = [make_pair() for _ in range(12)]
    for pair in pairs:
        repo.record_vote(pair.id, "alice", "left")
        repo.record_vote(pair.id, "bob", "left" if pair.id % 3 else "right")
    statements = []

    @event.listens_for(repo.engine, "after_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    try:
        stats = repo.annotator_stats()
    finally:
        event.remove(repo.engine, "after_cursor_execute", record)
    selects = [st for st in statements if st.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3 and all("GROUP BY" in st for st in selects), selects
    assert [r["votes"] for r in stats["annotators"]] == [12, 12]
    assert stats["pairs"] == [{"annotator_a": "alice", "annotator_b": "bob", "shared_pairs": 12, "agreements": 8}]


def test_400_votes_on_one_pair_cost_rows_in_proportion_not_squared(repo, make_pair):
    """k votes on one pair: per-annotator agreement from the pair's counts per choice (checked against the
    definition, vote by vote), and the couples table limited to the busiest annotators."""
    pair = make_pair()
    choices = ["left", "right", "tie", "skip"]
    votes = {f"annotator-{i:03d}": choices[(i * 7) % 4] for i in range(400)}
    for annotator, choice in votes.items():
        repo.record_vote(pair.id, annotator, choice)
    stats = repo.annotator_stats(top_couples=20)
    judged = [c for c in votes.values() if c != "skip"]
    for row in stats["annotators"]:
        mine = votes[row["annotator"]]
        if mine == "skip":
            assert (row["comparisons"], row["agreements"], row["shared_pairs"]) == (0, 0, 0)
        else:
            assert row["comparisons"] == len(judged) - 1 and row["shared_pairs"] == 1
            assert row["agreements"] == judged.count(mine) - 1
    assert len(stats["annotators"]) == 400 and len(stats["pairs"]) <= 20 * 19 // 2
