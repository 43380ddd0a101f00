"""Fuzzing every public and admin API endpoint of a running studio with hostile input (hypothesis).

The studio runs as its own process, bound to loopback (so every caller is an admin and the admin endpoints do
their work instead of refusing the caller). Each example sends one endpoint a list of generated values straight
over Gradio's REST protocol (`/gradio_api/call/<name>`), as a hand-written client could, with wrong types, wrong
arity, huge and unicode strings, NaN, infinities, huge numbers, nested objects and file references to server
paths. Each answer must be a result or an error with a message; a refused input must leave every table and the
blob store as they were; the server must stay up. `STUDIO_FUZZ_EXAMPLES` sets the examples per endpoint (50 in
the suite; the campaign in docs/reliability.md runs 200).
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Repository
from tests.support.fuzz import FUZZ_EXAMPLES, footprint, hostile_values
from tests.support.studio import free_port, start_studio, stop_studio

# name -> how many inputs the endpoint takes (the fuzzer also sends fewer and more)
ENDPOINTS = {"new_pair": 3, "vote": 3, "status": 1, "whoami": 2, "identity": 0, "train_now": 1,
             "update_settings": 2, "make_live": 2, "rollback": 1, "import_votes": 2, "blind_trial": 3,
             "blind_choice": 3}
# Where an endpoint takes the identity `/identity` issued: the fuzzer puts a valid one there half of the time, so
# that the other inputs are judged too, not only the missing identity.
IDENTITY_SLOT = {"new_pair": 2, "vote": 2, "whoami": 1, "blind_trial": 2, "blind_choice": 2}
FILE_REFERENCES = st.fixed_dictionaries({"path": st.sampled_from(["/etc/passwd", "../../studio.db", "", "x" * 5000,
                                                                  "/proc/self/environ", "studio-data/studio.db"]),
                                         "meta": st.just({"_type": "gradio.FileData"})})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    proc = start_studio(root / "data", port, "--train-every", "1000000", log=root / "studio.log")
    repo = Repository(root / "data")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    yield http, repo, proc
    http.close()
    repo.close()
    stop_studio(proc)


def _json_safe(value):
    """What a JSON body can carry: NaN and infinities become the strings a hostile client would send instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _refused_by_gradio(name: str, data: list) -> bool:
    """Inputs that Gradio itself refuses before the studio's handler runs (the wrong number of inputs, a file
    reference to a path nobody uploaded); its error event then carries no message, by Gradio's design."""
    files = [v for v in data if isinstance(v, dict) and "path" in v]
    return len(data) != ENDPOINTS[name] or bool(files)


def call(http: httpx.Client, name: str, data: list) -> tuple[str, object]:
    """("complete", output) or ("error", message) for one REST call; ("refused", status) when the HTTP layer
    rejects the request itself (e.g. 422 for a body it cannot parse)."""
    r = http.post(f"/gradio_api/call/{name}", content=json.dumps({"data": data}),
                  headers={"content-type": "application/json"})
    if r.status_code != 200:
        assert r.status_code in (400, 413, 422), (r.status_code, r.text[:300])
        return "refused", r.status_code
    event_id = r.json()["event_id"]
    event = None
    with http.stream("GET", f"/gradio_api/call/{name}/{event_id}") as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line[5:])
                if event == "error":
                    return "error", (payload or {}).get("error") if isinstance(payload, dict) else payload
                return "complete", payload
    raise AssertionError(f"no final event from {name}")


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_answers_hostile_input_clearly_and_writes_nothing_when_it_refuses(server, name):
    http, repo, proc = server
    arity = ENDPOINTS[name]
    value = hostile_values() | (FILE_REFERENCES if name == "import_votes" else hostile_values())
    inputs = st.lists(value, min_size=max(0, arity - 1), max_size=arity + 1) | st.lists(value, min_size=arity,
                                                                                      max_size=arity)
    if name in IDENTITY_SLOT:
        slot, token = IDENTITY_SLOT[name], call(http, "identity", [])[1][0]["identity"]
        inputs = st.tuples(inputs, st.booleans()).map(
            lambda drawn: [token if i == slot and drawn[1] else v for i, v in enumerate(drawn[0])])
    outcomes: dict[str, int] = {}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=inputs)
    def probe(data):
        before = footprint(repo)
        outcome, answer = call(http, name, _json_safe(data))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "error" and not _refused_by_gradio(name, data):
            assert isinstance(answer, str) and answer.strip(), f"{name}{data!r:.200} gave an error without a message"
            assert "Traceback" not in answer
        if outcome != "complete":
            assert footprint(repo) == before, f"{name} refused {data!r:.200} but wrote something"
        assert proc.poll() is None, "the studio died"

    probe()
    assert sum(outcomes.values()) >= FUZZ_EXAMPLES // 2 and proc.poll() is None
    assert call(http, "status", [""])[0] == "complete"  # still serving
