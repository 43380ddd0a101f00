"""What durable votes cost: vote latency with SQLite `synchronous=FULL` (the studio's setting) vs `NORMAL`.

    python -m benchmarks.durability [--votes 300] [--json runs/durability.json]

Two repositories on this machine's disk, one per setting, each with the same pairs; votes are recorded
alternately into one and the other (so machine load affects both alike), each call timed from the request to the
committed row, as `Studio.vote` sees it. Prints the median and p95 latency of each and their ratio. Under FULL,
SQLite fsyncs the write-ahead log at every commit, so an acknowledged vote survives power loss; under NORMAL a
killed process loses nothing but an OS crash may lose the last commits.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image
from sqlalchemy import event, text

from storage import NewGeneration, Repository


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _repository(root: Path, synchronous: str) -> Repository:
    repo = Repository(root)
    if synchronous != "FULL":  # the studio's own connect hook sets FULL; this one runs after it
        event.listen(repo.engine, "connect", lambda conn, _record: conn.execute(f"PRAGMA synchronous={synchronous}"))
        repo.engine.dispose()  # connections made so far reconnect with the override
    with repo.engine.connect() as conn:
        got = conn.execute(text("PRAGMA synchronous")).scalar_one()
    expected = {"NORMAL": 1, "FULL": 2}[synchronous]
    if got != expected:
        raise RuntimeError(f"PRAGMA synchronous is {got}, expected {expected} ({synchronous})")
    return repo


def _pairs(repo: Repository, n: int) -> list[int]:
    png = _png()
    gen = [NewGeneration(seed=s, model_id="bench", adapter_version=None, sampler_settings={}, image_png=png,
                         trajectory=None) for s in (0, 1)]
    return [repo.create_pair(f"prompt {i}", *gen, served_to="bench").id for i in range(n)]


def measure(votes: int) -> dict:
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # on the project's disk, not a RAM-backed /tmp
        repos = {mode: _repository(Path(tmp) / mode, mode) for mode in ("FULL", "NORMAL")}
        pair_ids = {mode: _pairs(repo, votes) for mode, repo in repos.items()}
        times: dict[str, list[float]] = {mode: [] for mode in repos}
        for i in range(votes):
            for mode, repo in repos.items():
                t0 = time.perf_counter()
                repo.record_vote(pair_ids[mode][i], "bench", "left")
                times[mode].append(time.perf_counter() - t0)
        for repo in repos.values():
            repo.close()
    out = {"votes": votes}
    for mode, ts in times.items():
        ts.sort()
        out[f"{mode.lower()}_p50_ms"] = 1000 * statistics.median(ts)
        out[f"{mode.lower()}_p95_ms"] = 1000 * ts[int(0.95 * (len(ts) - 1))]
    out["full_vs_normal_p50"] = out["full_p50_ms"] / out["normal_p50_ms"]
    out["full_vs_normal_p95"] = out["full_p95_ms"] / out["normal_p95_ms"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--votes", type=int, default=300, help="votes per setting")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.votes < 1:
        raise SystemExit("error: --votes must be at least 1")
    out = measure(args.votes)
    for k, v in out.items():
        print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
