"""Scale-out on a real PostgreSQL server (issue 7, item 6), with every part a real process.

- Two studio processes (`python -m app --database-url ... --no-worker`) and one worker process
  (`python -m alignment.worker --database-url ...`) share one database and one blob directory; clients vote through
  both studios from several threads at once. Every acknowledged vote is stored exactly once, the worker trains and
  makes an adapter live, and BOTH studios' samplers generate their next pairs with it.
- A second worker process starts while a first one trains and is refused the lease; the first is killed with
  SIGKILL mid-run (after a heartbeat), the lease it never released blocks the second only until it expires, the
  killed run registers nothing, and the second worker then trains and registers its adapter.
- The worker pointed at a database that cannot be reached says so in one line.

`tests/deploy/test_worker_lease.py` covers the lease wiring with a stand-in run; these tests run the real thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client

from alignment.training.worker import LEASE_NAME
from storage import VOTE_CHOICES, Repository
from tests.support.studio import api_identity, free_port, start_studio, stop_studio
from tests.support.processes import REPO_ROOT, SMALL_GUARD, env, start_worker, stop_all, tail, wait_for

PROMPTS = ("a large red circle on a blue background", "a small green square", "a yellow triangle")
CHOICES = ("left", "right", "tie", "left", "skip", "right", "both_bad")
BUSY = "another worker holds the training lease"


def start_studios(shared, pg_url, tmp_path, n: int = 2) -> list[tuple[str, subprocess.Popen]]:
    """`n` studio processes on `shared` and `pg_url`, started at once; [(url, process)]."""
    ports = [free_port() for _ in range(n)]
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(start_studio, shared, port, "--database-url", pg_url, "--no-worker",
                               log=tmp_path / f"studio-{i}.log") for i, port in enumerate(ports)]
        started, errors = [], []
        for future in futures:
            try:
                started.append(future.result())
            except Exception as e:  # noqa: BLE001 - the started ones are stopped before re-raising
                errors.append(e)
    if errors:
        stop_all(started)
        raise errors[0]
    return [(f"http://127.0.0.1:{port}/", proc) for port, proc in zip(ports, started)]


def test_two_studios_and_a_worker_process_share_one_postgres_database(pg_url, tmp_path, monkeypatch):
    shared = tmp_path / "shared"  # the blob directory every process uses
    # Replicas share the key of the browser-stored annotator id (else each writes app-secret into the shared dir).
    monkeypatch.setenv("STUDIO_SECRET", "scale-out-test")
    worker_log = tmp_path / "worker.log"
    # A tiny learning rate keeps the adapter close to the base, so the fidelity guard lets it go live.
    worker = start_worker(shared, "--database-url", pg_url, "--train-every", "4", "--min-votes", "4",
                          "--train-steps", "3", "--lr", "1e-5", *SMALL_GUARD, "--lease-ttl", "60",
                          log=worker_log)
    studios: list[tuple[str, subprocess.Popen]] = []
    repo = Repository(tmp_path / "observer", pg_url)  # the test's own view of the database (no blobs needed)
    acks: list[dict] = []
    pairs_by_studio: dict[int, list[int]] = {0: [], 1: []}
    failures: list[BaseException] = []

    def client_rounds(client: Client, studio: int, i: int, rounds: int) -> None:
        try:
            me = api_identity(client)
            for n in range(rounds):
                _, _, pair_id = client.predict(PROMPTS[(i + n) % len(PROMPTS)], "", me, api_name="/new_pair")
                pairs_by_studio[studio].append(pair_id)
                acks.append(client.predict(pair_id, CHOICES[(i + 2 * n) % len(CHOICES)], me, api_name="/vote"))
        except BaseException as e:  # collected: an exception in a thread would not fail the test
            failures.append(e)

    def all_clients(clients, rounds: int) -> None:
        """Every client runs `rounds` rounds of new pair + vote, all clients at once."""
        threads = [threading.Thread(target=client_rounds, args=(client, studio, i, rounds))
                   for i, (studio, client) in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not failures, failures

    try:
        studios = start_studios(shared, pg_url, tmp_path)
        clients = [(studio, Client(studios[studio][0], verbose=False)) for studio in (0, 1) for _ in range(2)]
        all_clients(clients, rounds=3)  # 12 votes through both studios at once: enough for a run
        everyone = [("the worker", worker), ("studio 0", studios[0][1]), ("studio 1", studios[1][1])]
        live = wait_for(repo.live_adapter, timeout=300, what="the worker making an adapter live", procs=everyone)
        before = {studio: list(pairs) for studio, pairs in pairs_by_studio.items()}
        all_clients(clients, rounds=1)  # the next pair of every client comes from the live adapter
        stop_studio(worker)  # no further runs: the live adapter stays put while the studios are asked
        statuses = [Client(url, verbose=False).predict(api_name="/status") for url, _ in studios]
    finally:
        stop_all([worker, *(proc for _, proc in studios)])

    # Every acknowledged vote is stored exactly once, as acknowledged, and nothing else is.
    stored = repo.labeled_pairs(choices=VOTE_CHOICES)
    acked_ids = [a["vote_id"] for a in acks]
    assert len(set(acked_ids)) == len(acked_ids) == len(stored) == 16
    assert sorted(v.vote_id for v in stored) == sorted(acked_ids)
    assert {(v.pair_id, v.annotator, v.choice) for v in stored} == {
        (a["pair_id"], a["annotator"], a["choice"]) for a in acks}
    assert {v.pair_id for v in stored} == set(pairs_by_studio[0]) | set(pairs_by_studio[1])

    # The worker process trained and made the adapter live; both studios' samplers then generated with it.
    made_live = {r.adapter_version for r in repo.list_training_runs() if r.status == "succeeded"}
    assert live.version in made_live, f"{repo.list_training_runs()}\n{tail(worker_log)}"
    final = repo.live_adapter()
    for studio in (0, 1):
        first = [repo.get_pair(pid) for pid in before[studio]]
        after = [repo.get_pair(pid) for pid in pairs_by_studio[studio][len(before[studio]):]]
        assert len(after) == 2 and first[0].left.adapter_version is None  # the first pairs came from the base
        for pair in after:
            assert pair.left.adapter_version == pair.right.adapter_version  # both images from one model
            assert pair.left.adapter_version in made_live and pair.left.adapter_version >= live.version
        assert statuses[studio]["live_adapter_version"] == final.version
    repo.close()


def voted_pairs(repo, embedded, n: int = 6) -> None:
    """`n` pairs with real trajectories, each voted on by the "larger shape" labeler."""
    from alignment.eval.labelers import larger
    from alignment.serving.sampler import Sampler
    from alignment.eval.simulate import collect_round

    prompts = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
               "a purple circle on a white background", "a blue square", "an orange triangle"]
    assert collect_round(Sampler(embedded), repo, larger, prompts[:n], 0, "tester") == n


def test_a_worker_killed_mid_run_is_taken_over_by_another_on_its_machine(pg_url, tmp_path, embedded):
    shared = tmp_path / "shared"
    # The lease is renewed from the training steps, so it must outlast loading the model (slow on a busy machine).
    ttl = 20.0
    repo = Repository(shared, pg_url)
    voted_pairs(repo, embedded)
    args = ("--database-url", pg_url, "--train-every", "1", "--min-votes", "2", *SMALL_GUARD,
            "--lease-ttl", str(ttl))
    logs = {"a": tmp_path / "worker-a.log", "b": tmp_path / "worker-b.log"}
    # Worker a gets a run long enough never to end before it is killed; worker b's run is short.
    a = start_worker(shared, *args, "--train-steps", "500", log=logs["a"])
    workers = [("worker a", a)]
    try:
        holder, first_expiry = wait_for(lambda: repo.lease_holder(LEASE_NAME), timeout=180,
                                        what="worker a taking the training lease", procs=workers)
        assert holder.split(":")[1] == str(a.pid)
        b = start_worker(shared, *args, "--train-steps", "2", log=logs["b"])
        workers.append(("worker b", b))
        wait_for(lambda: f"{BUSY}: ('{holder}'" in logs["b"].read_text(), timeout=120,
                 what="worker b being refused the lease", procs=workers)
        # A heartbeat (the lease's expiry moved on) shows worker a is inside its training loop.
        wait_for(lambda: (held := repo.lease_holder(LEASE_NAME)) and held[0] == holder and held[1] > first_expiry,
                 timeout=120, what="a lease heartbeat from worker a", procs=workers)
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
        dead_holder, dead_expiry = repo.lease_holder(LEASE_NAME)
        assert dead_holder == holder  # never released: it only expires
        [killed_run] = repo.list_training_runs()
        assert killed_run.status == "running" and killed_run.adapter_version is None
        assert repo.live_adapter() is None

        finished = wait_for(lambda: [r for r in repo.list_training_runs() if r.adapter_version is not None],
                            timeout=ttl + 240, what="worker b's run", procs=workers[1:])
    finally:
        stop_all([proc for _, proc in workers])
    [run] = finished
    assert run.id != killed_run.id and run.status in ("succeeded", "rejected")
    # worker b, on the same machine, sees that the holder's process is gone and takes the lease over at once
    # instead of waiting out its ttl (a holder on another machine is waited for: tests/deploy/test_worker_lease.py)
    assert run.started_at < dead_expiry
    assert f"took the training lease over from {holder}" in logs["b"].read_text()
    adapter = repo.get_adapter(run.adapter_version)
    assert adapter.status == ("live" if run.status == "succeeded" else "rejected")
    assert repo.lease_holder(LEASE_NAME) is None  # released at the end of the run
    closed = next(r for r in repo.list_training_runs() if r.id == killed_run.id)
    assert closed.status == "interrupted" and "stopped" in closed.error  # the dead worker's run does not stay 'running'
    repo.close()


def test_the_worker_refuses_an_unreachable_database_in_one_line(tmp_path):
    url = f"postgresql+psycopg://studio:s3cret-pw@127.0.0.1:{free_port()}/studio"
    done = subprocess.run([sys.executable, "-m", "alignment.worker", "--database-url", url,
                           "--data-dir", str(tmp_path / "data"), "--once"],
                          cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in done.stderr, done.stderr  # one line, the last, no traceback
    assert "cannot connect to the database" in errors[0] and "127.0.0.1" in errors[0]
    assert done.stdout == ""
    assert "s3cret-pw" not in done.stderr + done.stdout
