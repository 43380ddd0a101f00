"""Labeling benchmark: from a vote to the next pair, with the ready queue and without it, in one run.

    python -m benchmarks.labeling --votes 30 --think-s 0.4 1.2 --depths 0 2

A scripted person labels one prompt on the embedded model through the `Studio` the Label tab calls: they wait a
think time drawn uniformly from `--think-s`, vote, and the clock runs from the vote until the next pair is in
hand: the vote committed and a ready pair taken (`Studio.ready.take`), or, when none waits, one made now
(`ReadyQueue.pair`), which is what the Label tab's handlers do. Each `--depths` value runs on a fresh data
directory, the depths one after the other in the same process (same machine load, same model). Browser rendering
and Gradio's round trip are not included: they add the same to both. Prints one line per depth (p50, p95, max,
share of votes that found a pair ready) and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

PROMPT = "a large red circle on a blue background"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def label_session(depth: int, votes: int, think_s: tuple[float, float], data_dir: Path, seed: int = 0) -> dict:
    """One scripted person's `votes` votes at `depth`; the vote-to-next-pair times in ms."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from app.studio import Studio
    from storage import Repository

    rng = random.Random(seed)
    studio = Studio(Sampler(load_pipeline("embedded")), Repository(data_dir), ready_depth=depth)
    studio.start()
    try:
        view = studio.ready.pair(PROMPT, annotator="bench")
        times, ready_hits = [], 0
        for _ in range(votes):
            time.sleep(rng.uniform(*think_s))
            started = time.perf_counter()
            studio.vote(view.id, rng.choice(("left", "right")), annotator="bench")
            nxt = studio.ready.take("bench", PROMPT)
            ready_hits += nxt is not None
            view = nxt or studio.ready.pair(PROMPT, annotator="bench")
            times.append(1000 * (time.perf_counter() - started))
        return {"depth": depth, "votes": votes, "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(percentile(times, 0.95), 1), "max_ms": round(max(times), 1),
                "ready_share": round(ready_hits / votes, 3), "pairs_stored": studio.counts()["pairs"]}
    finally:
        studio.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.labeling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=30, help="votes per depth")
    parser.add_argument("--think-s", type=float, nargs=2, default=(0.4, 1.2), help="think time range, seconds")
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 2], help="ready-queue depths to compare")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="labeling-bench-") as tmp:
        for depth in args.depths:
            r = label_session(depth, args.votes, tuple(args.think_s), Path(tmp) / f"depth-{depth}")
            results.append(r)
            print(f"depth {depth}: vote to next pair p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, max {r['max_ms']} ms; "
                  f"a pair was ready for {100 * r['ready_share']:.0f} % of votes; {r['pairs_stored']} pairs stored")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
