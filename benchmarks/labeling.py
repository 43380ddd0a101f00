"""Labeling benchmark: from a vote to the next pair, with the ready queue and without it, idle and while the worker
trains, with sampling first and without it, in one run.

    python -m benchmarks.labeling --votes 30 --think-s 0.4 1.2 --depths 0 2
    python -m benchmarks.labeling --votes 40 --think-s 0.3 1.5 --depths 2 --while-training
    python -m benchmarks.labeling --votes 40 --think-s 0.3 1.5 --depths 2 --batches 1 2 --while-training

A scripted person labels one prompt on the embedded model through the `Studio` the Label tab calls: they wait a
think time drawn uniformly from `--think-s`, vote, and the clock runs from the vote until the next pair is in
hand: the vote committed and a ready pair taken (`Studio.ready.take`), or, when none waits, one made now
(`ReadyQueue.pair`), which is what the Label tab's handlers do. Each `--depths` value (and each `--batches`
value: the queue's pairs per generation) runs on a fresh data directory, one after the other in the same process (same machine load, same model). Browser rendering
and Gradio's round trip are not included: they add the same to both. Prints one line per depth (p50, p95, max,
share of votes that found a pair ready, labels per minute sustained, how long making a pair took) and a JSON summary.

`--while-training` adds, for each depth, two sessions with a worker in the same process that trains all the time (8
votes first, then a new run asked for as soon as one ends): one with sampling first (`sampling_wait_s` at its
default) and one with it off (`sampling_wait_s=0`); only votes cast while a run was under way are counted there.
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


def keep_training(worker, stop) -> None:
    """Ask the worker for a run whenever it is idle, until `stop` is set."""
    while not stop.is_set():
        if worker.state()["state"] == "idle":
            worker.request_training()
        stop.wait(0.2)


def label_session(depth: int, votes: int, think_s: tuple[float, float], data_dir: Path, seed: int = 0,
                  sampling_wait_s: float | None = None, batch: int = 1) -> dict:
    """One scripted person's `votes` votes at `depth`; the vote-to-next-pair times in ms. With `sampling_wait_s`
    (not None), a worker in the process trains all the time with that setting, and only votes cast during a run
    count."""
    import threading

    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.worker import Worker
    from app.studio import Studio
    from settings import WorkerConfig
    from storage import Repository

    rng = random.Random(seed)
    repo = Repository(data_dir)
    worker = None if sampling_wait_s is None else Worker(repo, config=WorkerConfig(
        sampling_wait_s=sampling_wait_s, train_every=10 ** 6, min_votes=8))
    studio = Studio(Sampler(load_pipeline("embedded")), repo, worker, ready_depth=depth, ready_batch=batch)
    made_ms, steps = [], [0]
    real_new_pairs = studio.new_pairs

    def timed_new_pairs(*args, **kwargs):  # every generation, by the ready queue or on demand: its time per pair
        t0 = time.perf_counter()
        views = real_new_pairs(*args, **kwargs)
        made_ms.extend([1000 * (time.perf_counter() - t0) / len(views)] * len(views))
        return views

    studio.new_pairs = timed_new_pairs
    if worker is not None:
        real_progress = worker.report_progress

        def counted(step, total):
            steps[0] += 1
            real_progress(step, total)

        worker.report_progress = counted
    studio.start()
    stop = threading.Event()
    try:
        view = studio.ready.pair(PROMPT, annotator="bench")
        if worker is not None:  # the data the runs train on, then runs back to back
            for _ in range(8):
                studio.vote(view.id, rng.choice(("left", "right")), annotator="bench")
                view = studio.ready.take("bench", PROMPT) or studio.ready.pair(PROMPT, annotator="bench")
            threading.Thread(target=keep_training, args=(worker, stop), daemon=True).start()
            while worker.state()["state"] != "training":
                time.sleep(0.05)
        times, ready_hits, counted = [], 0, 0
        started_all = time.perf_counter()
        while counted < votes:
            time.sleep(rng.uniform(*think_s))
            during_run = worker is None or worker.state()["state"] == "training"
            started = time.perf_counter()
            studio.vote(view.id, rng.choice(("left", "right")), annotator="bench")
            nxt = studio.ready.take("bench", PROMPT)
            view = nxt or studio.ready.pair(PROMPT, annotator="bench")
            if during_run:
                counted += 1
                ready_hits += nxt is not None
                times.append(1000 * (time.perf_counter() - started))
        minutes = (time.perf_counter() - started_all) / 60
        out = {"depth": depth, "batch": batch, "votes": votes, "p50_ms": round(statistics.median(times), 1),
               "p95_ms": round(percentile(times, 0.95), 1), "max_ms": round(max(times), 1),
               "ready_share": round(ready_hits / votes, 3), "labels_per_minute": round(votes / minutes, 1),
               "pairs_stored": studio.counts()["pairs"], "training": worker is not None}
        made = made_ms[-votes:]  # the pairs made while these votes were cast
        out.update(make_pair_p50_ms=round(statistics.median(made), 1), make_pair_p95_ms=round(percentile(made, 0.95), 1))
        if worker is not None:
            out.update(sampling_wait_s=sampling_wait_s, train_steps_done=steps[0],
                       training_waited_s=round(studio.live.priority.waited_s, 1))
        return out
    finally:
        stop.set()
        studio.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.labeling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=30, help="votes per depth")
    parser.add_argument("--think-s", type=float, nargs=2, default=(0.4, 1.2), help="think time range, seconds")
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 2], help="ready-queue depths to compare")
    parser.add_argument("--batches", type=int, nargs="+", default=[1],
                        help="the ready queue's pairs per generation to compare (at each depth)")
    parser.add_argument("--while-training", action="store_true",
                        help="also label while a worker trains, with sampling first and without")
    args = parser.parse_args(argv)
    from settings import WorkerConfig

    sessions = [("idle", None)]
    if args.while_training:
        sessions += [("training, sampling first", WorkerConfig().sampling_wait_s), ("training, no priority", 0.0)]
    results = []
    with tempfile.TemporaryDirectory(prefix="labeling-bench-") as tmp:
        for depth, batch in [(d, b) for d in args.depths for b in args.batches]:
            for i, (name, wait) in enumerate(sessions):
                r = label_session(depth, args.votes, tuple(args.think_s), Path(tmp) / f"depth-{depth}-{batch}-{i}",
                                  sampling_wait_s=wait, batch=batch)
                results.append({"session": name, **r})
                print(f"depth {depth}, batch {batch}, {name}: vote to next pair p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, max "
                      f"{r['max_ms']} ms; a pair was ready for {100 * r['ready_share']:.0f} % of votes; "
                      f"{r['labels_per_minute']} labels/min; {r['pairs_stored']} pairs stored; making a pair (its share of a "
                      f"generation) p50 "
                      f"{r['make_pair_p50_ms']} ms, p95 {r['make_pair_p95_ms']} ms"
                      + (f"; {r['train_steps_done']} training steps done, training waited "
                         f"{r['training_waited_s']} s" if wait is not None else ""))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
