"""`python -m app` killed with SIGKILL while clients vote, then restarted on the same data dir: every acknowledged
vote and the live adapter are still there, and the restarted sampler generates with that adapter. SIGTERM shuts
it down cleanly."""

from __future__ import annotations

import signal
import threading

from gradio_client import Client

from storage import VOTE_CHOICES, Repository
from tests.support.lora import random_lora
from tests.support.studio import api_identity, free_port, register_adapter, start_studio, stop_studio

PROMPT = "a large blue square on a yellow background"


def test_votes_and_live_adapter_survive_sigkill(embedded, tmp_path):
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # The worker thread runs but never trains here (the threshold is out of reach).
    proc = start_studio(data, port, "--train-every", "1000")
    acks: list[dict] = []
    enough = threading.Event()
    try:
        client = Client(url, verbose=False)
        me = api_identity(client)
        _, _, first = client.predict(PROMPT, "1, 2", me, api_name="/new_pair")
        acks.append(client.predict(first, "left", me, api_name="/vote"))

        # The adapter is registered by another process, as `python -m alignment.worker` would do it.
        repo = Repository(data)
        version = register_adapter(repo, random_lora(0))
        _, _, swapped = client.predict(PROMPT, "1, 2", me, api_name="/new_pair")
        assert repo.get_pair(swapped).left.adapter_version == version  # hot-swapped from the database

        def vote_until_killed():
            voter = Client(url, verbose=False)
            try:
                voter_id = api_identity(voter)
                for n in range(1000):
                    _, _, pair_id = voter.predict(PROMPT, "", voter_id, api_name="/new_pair")
                    acks.append(voter.predict(pair_id, VOTE_CHOICES[n % 5], voter_id, api_name="/vote"))
                    if len(acks) >= 4:
                        enough.set()
            except Exception:  # the kill cuts the request in flight; what counts is what was acknowledged
                enough.set()

        thread = threading.Thread(target=vote_until_killed)
        thread.start()
        assert enough.wait(120)
        proc.send_signal(signal.SIGKILL)  # mid-request, most likely
        proc.wait(timeout=20)
        thread.join(timeout=60)
    finally:
        stop_studio(proc)

    acked = {a["vote_id"] for a in acks}
    proc = start_studio(data, port, "--train-every", "1000")
    try:
        client = Client(url, verbose=False)
        status = client.predict(api_name="/status")
        assert status["live_adapter_version"] == version
        stored = {v.vote_id for v in repo.labeled_pairs(choices=VOTE_CHOICES)}
        assert acked <= stored and len(stored) - len(acked) <= 1  # at most the one cut off before its answer
        assert status["votes"] == len(stored)
        # The identity from before the kill: signed with the key kept in the data dir, still valid.
        _, _, after = client.predict(PROMPT, "1, 2", me, api_name="/new_pair")
        assert repo.get_pair(after).left.adapter_version == version
        assert repo.missing_blobs() == []
        stop_studio(proc)  # SIGTERM (what `docker stop` sends): a clean shutdown, worker thread included
        assert proc.returncode == 0
    finally:
        stop_studio(proc)
        repo.close()
