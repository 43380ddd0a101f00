"""Load and fault campaign: concurrent API clients vote while the studio is killed with SIGKILL and restarted.

    python -m benchmarks.load [--clients 16] [--votes 2000] [--kills 3] [--database-url URL] [--json FILE]

The studio runs as its own process (`python -m app`, the worker training as a thread every `--train-every`
votes). `--clients` threads each ask for an identity (`/identity`, again after each reconnect), then loop: ask for a pair
(`/new_pair`), vote on it (`/vote`), and count the vote as
acknowledged only when the answer says it was recorded. A killer thread SIGKILLs the studio's process group
`--kills` times at random moments spread over the run and restarts it on the same data. Afterwards every
acknowledged vote is looked up in the database. Printed (and written as JSON): votes acknowledged, stored, lost
(acknowledged but not stored, or stored with another pair/choice), duplicated, stored without an acknowledgement
(committed, then the answer was cut by a kill: not lost), requests that failed while the server was up (a request
that started after the server answered its health check and ended before the next kill), p50/p95 vote latency,
and SQLite's `PRAGMA integrity_check`. The target is 0 lost, 0 duplicated, 0 failed while up.

Only loopback traffic; every loop is bounded by `--votes` and `--max-seconds`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a large red circle on a blue background", "a small green square", "a large yellow triangle",
           "a small blue circle on a white background", "a purple square on an orange background")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioProcess:
    """`python -m app` on a data directory and port, restartable; knows when it is up."""

    def __init__(self, data_dir: Path, port: int, args: list[str], log: Path, threads: int | None = 1):
        """`threads` sets OMP_NUM_THREADS (None: torch's default, every core)."""
        self.data_dir, self.port, self.args, self.log, self.threads = data_dir, port, args, log, threads
        self.proc: subprocess.Popen | None = None
        self.up = threading.Event()
        self.up_since = 0.0  # monotonic time of the last successful health check after a start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 300.0) -> float:
        """Start and wait until it answers HTTP 200; returns the seconds that took."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("OMP_NUM_THREADS", None)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.args],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the studio exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        self.up_since = time.monotonic()
                        self.up.set()
                        return self.up_since - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the studio did not answer within {timeout_s} s; see {self.log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.up.clear()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)


@dataclass
class Tally:
    """What the clients saw; shared by the client threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[dict] = field(default_factory=list)
    vote_latency_s: list[float] = field(default_factory=list)
    failed_while_up: list[str] = field(default_factory=list)
    failed_during_kill: int = 0
    requests: int = 0


def _client_loop(studio: StudioProcess, tally: Tally, kills: list[float], stop: threading.Event, votes: int,
                 rng: random.Random) -> None:
    from gradio_client import Client

    client = None
    while not stop.is_set():
        with tally.lock:
            if len(tally.acked) >= votes:
                return
        if not studio.up.wait(timeout=1.0):
            continue
        started = time.monotonic()
        step = "connect"
        try:
            if client is None:
                client = Client(studio.url, verbose=False)
                step = "identity"
                me = client.predict(api_name="/identity")["identity"]
            step = "new_pair"
            _, _, pair_id = client.predict(rng.choice(PROMPTS), "", me, api_name="/new_pair")
            step = "vote"
            t0 = time.monotonic()
            ack = client.predict(int(pair_id), rng.choice(("left", "right", "tie", "both_bad")), me,
                                 api_name="/vote")
            latency = time.monotonic() - t0
            if not (isinstance(ack, dict) and ack.get("recorded") is True):
                raise RuntimeError(f"vote not acknowledged: {ack!r:.200}")
            with tally.lock:
                tally.requests += 3
                tally.acked.append(ack)
                tally.vote_latency_s.append(latency)
        except Exception as e:  # a killed server answers with any of several connection errors
            ended = time.monotonic()
            client = None  # reconnect: the old session died with the server
            with tally.lock:
                tally.requests += 1
                overlapped_kill = any(started - 1.0 <= k <= ended + 1.0 for k in kills)
                if started < studio.up_since or overlapped_kill or not studio.up.is_set():
                    tally.failed_during_kill += 1
                else:
                    tally.failed_while_up.append(f"{step}: {type(e).__name__}: {str(e)[:200]}")
            time.sleep(0.2)


def _killer(studio: StudioProcess, tally: Tally, kills: list[float], restarts: list[float], n_kills: int,
            votes: int, rng: random.Random, stop: threading.Event) -> None:
    """Kill at random vote counts spread over the run (each between 10 % and 90 % of the target)."""
    marks = sorted(rng.uniform(0.1, 0.9) * votes for _ in range(n_kills))
    for mark in marks:
        while not stop.is_set():
            with tally.lock:
                if len(tally.acked) >= mark:
                    break
            time.sleep(0.05)
        if stop.is_set():
            return
        time.sleep(rng.uniform(0.0, 0.5))  # land anywhere in a request, not just after an acknowledgement
        kills.append(time.monotonic())
        studio.kill()
        restarts.append(studio.start())


def _stored_votes(data_dir: Path, database_url: str | None) -> tuple[list[tuple], str | None]:
    from sqlalchemy import text

    from storage import Repository

    with Repository(data_dir, database_url) as repo:
        with repo.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text("SELECT id, pair_id, annotator, choice FROM vote"))]
            integrity = None
            if repo.engine.dialect.name == "sqlite":
                integrity = ", ".join(r[0] for r in conn.execute(text("PRAGMA integrity_check")))
    return rows, integrity


def run(clients: int = 16, votes: int = 2000, kills: int = 3, train_every: int = 50, database_url: str | None = None,
        data_dir: Path | None = None, seed: int = 0, max_seconds: float = 3600.0,
        studio_args: tuple[str, ...] = ()) -> dict:
    """The campaign's figures; `studio_args` go to `python -m app` after the campaign's own (e.g. a smaller
    guard, so that a short run spends its time on votes and kills rather than on the guard's renders)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="studio-load-") as tmp:
        root = Path(data_dir) if data_dir is not None else Path(tmp)
        args = ["--train-every", str(train_every)]
        if database_url:
            args += ["--database-url", database_url]
        args += list(studio_args)
        studio = StudioProcess(root / "data", free_port(), args, root / "studio.log")
        first_start = studio.start()
        tally, kill_times, restarts, stop = Tally(), [], [], threading.Event()
        threads = [threading.Thread(target=_client_loop, daemon=True,
                                    args=(studio, tally, kill_times, stop, votes, random.Random(seed * 1000 + i)))
                   for i in range(clients)]
        killer = threading.Thread(target=_killer, daemon=True,
                                  args=(studio, tally, kill_times, restarts, kills, votes, rng, stop))
        t0 = time.monotonic()
        for t in [*threads, killer]:
            t.start()
        deadline = t0 + max_seconds
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stop.set()
        killer.join(timeout=600)
        wall = time.monotonic() - t0
        studio.kill(signal.SIGTERM)
        stored, integrity = _stored_votes(studio.data_dir, database_url)
    by_id = {row[0]: row for row in stored}
    lost = [a for a in tally.acked
            if a["vote_id"] not in by_id or by_id[a["vote_id"]][1:] != (a["pair_id"], a["annotator"], a["choice"])]
    acked_ids = [a["vote_id"] for a in tally.acked]
    keys = [(row[1], row[2]) for row in stored]
    lat = sorted(tally.vote_latency_s)
    return {
        "clients": clients, "target_votes": votes, "kills": len(kill_times), "wall_s": round(wall, 1),
        "database": "postgresql" if database_url else "sqlite",
        "votes_acknowledged": len(tally.acked), "votes_stored": len(stored), "votes_lost": len(lost),
        "votes_duplicated": (len(keys) - len(set(keys))) + (len(acked_ids) - len(set(acked_ids))),
        "stored_without_ack": len(set(by_id) - set(acked_ids)),
        "requests": tally.requests, "requests_failed_while_up": len(tally.failed_while_up),
        "requests_failed_around_kills": tally.failed_during_kill,
        "failed_while_up_examples": tally.failed_while_up[:5],
        "vote_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "vote_p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
        "first_start_s": round(first_start, 1), "restart_s": [round(r, 1) for r in restarts],
        "integrity_check": integrity,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent API clients")
    p.add_argument("--votes", type=int, default=2000, help="acknowledged votes to collect in all")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs of the studio during the run")
    p.add_argument("--train-every", type=int, default=50, help="the studio's worker trains every N new votes")
    p.add_argument("--database-url", default=None, help="e.g. a PostgreSQL URL (default: SQLite in the data dir)")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="stop the clients after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if min(args.clients, args.votes, args.train_every) < 1 or args.kills < 0:
        raise SystemExit("error: --clients, --votes and --train-every must be >= 1, --kills >= 0")
    out = run(args.clients, args.votes, args.kills, args.train_every, args.database_url, seed=args.seed,
              max_seconds=args.max_seconds)
    for k, v in out.items():
        print(f"{k:28s} {v}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if out["votes_lost"] or out["votes_duplicated"] or out["requests_failed_while_up"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
