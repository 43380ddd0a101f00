"""The load and fault campaign's short version (`benchmarks.load`): concurrent API clients vote while the studio
is SIGKILLed and restarted, on SQLite and on PostgreSQL; nothing acknowledged is lost or duplicated, and no
request fails while the server is up."""

from __future__ import annotations

import pytest

from benchmarks.load import run
from tests.support.processes import SMALL_GUARD


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_votes_survive_sigkills_under_concurrent_clients(database, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    url = request.getfixturevalue("pg_url") if database == "postgres" else None
    votes, kills = (60, 2) if database == "sqlite" else (40, 1)
    out = run(clients=8, votes=votes, kills=kills, train_every=25, database_url=url, seed=1, max_seconds=900,
              studio_args=SMALL_GUARD)
    assert out["kills"] == kills and out["votes_acknowledged"] >= votes
    assert out["votes_lost"] == 0 and out["votes_duplicated"] == 0, out
    assert out["requests_failed_while_up"] == 0, out["failed_while_up_examples"]
    assert out["votes_stored"] == out["votes_acknowledged"] + out["stored_without_ack"]
    if database == "sqlite":
        assert out["integrity_check"] == "ok"
