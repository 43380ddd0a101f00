"""Worker kill campaign: `python -m alignment.worker --once` SIGKILLed at random moments of its run, again and again.

    python -m benchmarks.worker_kills [--kills 20] [--pairs 12] [--train-steps 30] [--json FILE]

A data directory gets `--pairs` labeled pairs with real trajectories from the embedded model (the "larger"
labeler votes), and one adapter is trained and made live first. Then, `--kills` times: a worker process starts a
run and is killed with SIGKILL at a random moment of one of its phases, each phase in turn: loading, training,
and the guard with saving, registering and promoting. The phases' boundaries come from a measured run's log
(when the worker was ready, how long training took, when the run ended).
After every kill the campaign checks: exactly one adapter is live, it is a complete version whose blob
verifies against its SHA-256 (the one live before, or the one this run finished promoting), no row points at a
missing blob; and the next worker closes the killed run as `interrupted`. A last run without a kill must
succeed. The next worker takes a killed one's lease over at once (its process is gone from this machine).

Prints a table (one row per kill: delay, phase, live version after, blob verified) and the totals; exits 1 when
any check failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a large red circle", "a small blue square on a yellow background", "a large green triangle",
           "a small white circle on a black background", "a purple square", "a large orange circle on a blue "
           "background")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


def _worker_cmd(data_dir: Path, train_steps: int, lease_ttl_s: float) -> list[str]:
    return [sys.executable, "-m", "alignment.worker", "--data-dir", str(data_dir), "--once", "--min-votes", "1",
            "--train-steps", str(train_steps), "--checkpoint-every", "10", *GUARD, "--lease-ttl-s", str(lease_ttl_s)]


# A guard of 8 + 8 seeds (one image each): the phases to kill in, at a few seconds each, not the statistics.
GUARD = ("--fidelity-seeds", ",".join(str(1000 + i) for i in range(8)),
         "--fidelity-confirm-seeds", ",".join(str(2000 + i) for i in range(8)), "--fidelity-prompts", "1")


def prepare(data_dir: Path, pairs: int) -> None:
    """Labeled pairs with trajectories from the embedded model, voted by the 'larger' labeler."""
    from alignment.eval.labelers import load_labeler
    from alignment.eval.simulate import collect_round
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from storage import Repository

    sampler = Sampler(load_pipeline("embedded"))
    with Repository(data_dir) as repo:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(pairs)]
        collect_round(sampler, repo, load_labeler("alignment.eval.labelers:larger"), prompts, 0, "campaign")


def phase_bounds(log: str, started: float) -> list[tuple[float, str]]:
    """(end in seconds after the start, phase) of a finished run's phases, from its log: loading until the
    worker said it was watching, training for `train_seconds`, then guard + saving + registering + promoting
    until the run's summary line, then exiting."""
    stamps = {}
    for line in log.splitlines():
        for key, marker in (("ready", " watching "), ("done", " INFO run: ")):
            if marker in line and key not in stamps:
                stamps[key] = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - started
    train_s = float(log.split("'train_seconds': ", 1)[1].split(",", 1)[0])
    return [(stamps["ready"], "loading"), (stamps["ready"] + train_s, "training"),
            (stamps["done"], "guard/register"), (float("inf"), "exiting")]


def _phase(delay: float, bounds: list[tuple[float, str]]) -> str:
    return next(name for end, name in bounds if delay < end)


def check_store(data_dir: Path) -> dict:
    """One live adapter at most, its blob verifying; every adapter row's blob present and intact."""
    from storage import Repository, StorageError

    with Repository(data_dir) as repo:
        adapters = repo.list_adapters()
        live = [a for a in adapters if a.status == "live"]
        broken = []
        for a in adapters:
            try:
                repo.read_blob(a.file_hash)
            except StorageError as e:
                broken.append(f"v{a.version}: {e}")
        runs = repo.list_training_runs(limit=1000)
    return {"live": live[0].version if len(live) == 1 else None, "live_count": len(live), "broken": broken,
            "runs": {s: sum(r.status == s for r in runs) for s in {r.status for r in runs}},
            "versions": len(adapters)}


def _run_worker(cmd: list[str], log_path: Path, kill_after_s: float | None, lease_ttl_s: float
                ) -> tuple[int, float, float]:
    """(exit code, wall-clock start, seconds it ran); waits out a killed worker's lease before returning."""
    started = time.time()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=kill_after_s) if kill_after_s is not None else proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=60)  # the next worker takes the dead one's lease over (same machine)
    return code, started, time.monotonic() - t0


def run(kills: int = 20, pairs: int = 12, train_steps: int = 30, lease_ttl_s: float = 120.0, seed: int = 0,
        work_dir: Path | None = None) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="worker-kills-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        data_dir = root / "data"
        prepare(data_dir, pairs)
        cmd = _worker_cmd(data_dir, train_steps, lease_ttl_s)
        code, started, full_s = _run_worker(cmd, root / "first.log", None, lease_ttl_s)  # times a whole run
        first, first_log = check_store(data_dir), (root / "first.log").read_text(errors="replace")
        if code != 0 or first["live"] is None:
            raise RuntimeError(f"the first run did not make an adapter live (exit {code}): {first_log[-1500:]}")
        bounds = phase_bounds(first_log, started)
        rows, failures = [], []
        windows = [(start, end) for start, (end, _) in zip([0.5] + [e for e, _ in bounds[:-1]], bounds[:-1])]
        for i in range(kills):
            before = check_store(data_dir)
            start, end = windows[i % len(windows)]  # every phase in turn, a random moment within it
            delay = rng.uniform(start, end)
            code, _, _ = _run_worker(cmd, root / f"kill-{i}.log", delay, lease_ttl_s)
            phase = _phase(delay, bounds)
            after = check_store(data_dir)
            ok = (after["live_count"] == 1 and not after["broken"]
                  and after["live"] in (before["live"], before["versions"] + 1))
            rows.append({"kill": i + 1, "delay_s": round(delay, 1), "phase": phase, "exit": code,
                         "live_before": before["live"], "live_after": after["live"], "verified": ok})
            if not ok:
                failures.append(f"kill {i + 1} in {phase}: {after}")
        before_last = check_store(data_dir)
        code, _, _ = _run_worker(cmd, root / "last.log", None, lease_ttl_s)
        last = check_store(data_dir)
        if code != 0 or last["runs"].get("succeeded", 0) != before_last["runs"].get("succeeded", 0) + 1:
            failures.append(f"the run after the kills failed (exit {code}): "
                            f"{(root / 'last.log').read_text(errors='replace')[-1500:]}")
        killed_with_run = sum(r["exit"] != 0 for r in rows)
        interrupted = last["runs"].get("interrupted", 0)
        if interrupted > killed_with_run:
            failures.append(f"{interrupted} runs interrupted but only {killed_with_run} workers were killed")
        if last["runs"].get("running", 0):
            failures.append(f"{last['runs']['running']} run(s) still marked running after the last run")
    return {"kills": len(rows), "full_run_s": round(full_s, 1),
            "phase_ends_s": {name: round(end, 1) for end, name in bounds[:-1]}, "rows": rows, "runs": last["runs"],
            "phases": {p: sum(r["phase"] == p for r in rows) for p in {r["phase"] for r in rows}},
            "live_after_all": last["live"], "versions": last["versions"], "failures": failures}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--pairs", type=int, default=12, help="labeled pairs in the data directory")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--lease-ttl-s", type=float, default=120.0, help="the workers' lease TTL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.kills < 0 or args.pairs < 2 or args.train_steps < 1 or args.lease_ttl_s <= 0:
        raise SystemExit("error: --kills >= 0, --pairs >= 2, --train-steps >= 1 and --lease-ttl-s > 0")
    out = run(args.kills, args.pairs, args.train_steps, args.lease_ttl_s, args.seed)
    print(f"{'kill':>4} {'delay_s':>8} {'phase':>12} {'exit':>5} {'live before':>12} {'live after':>11} verified")
    for r in out["rows"]:
        print(f"{r['kill']:>4} {r['delay_s']:>8} {r['phase']:>12} {r['exit']:>5} {str(r['live_before']):>12} "
              f"{str(r['live_after']):>11} {r['verified']}")
    for k in ("kills", "full_run_s", "phase_ends_s", "phases", "runs", "live_after_all", "versions", "failures"):
        print(f"{k:16s} {out[k]}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if out["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
