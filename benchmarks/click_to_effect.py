"""Click-to-effect: from the vote that starts a training run to the first pair the new version serves.

    python -m benchmarks.click_to_effect                              # the defaults, embedded model
    python -m benchmarks.click_to_effect --config train_steps=60 --config train_steps=120,checkpoint_every=20

A scripted person labels on the embedded model through the `Studio` the Label tab calls (ready queue at the
default depth, the worker in the same process with its default trigger policy), at a think time drawn from
`--think-s`, with a labeler (`module:function`, default `larger`). The clock starts when the vote that makes the
worker's pending count reach `train_every` is committed; the person keeps labeling while the run goes on, and the
clock stops at the first pair handed to them that the new version made. The worker's own phase times
(`Worker.run_phases`) and a thread that watches the live model every 10 ms split the time into: to the run's
start (the worker's poll, and the rest of its rendering of the guard's base images if it is still at it), training,
the fidelity guard, saving (the adapter registered and marked live), the swap (the live model serving it) and the
first served pair (the ready queue's pairs made before the swap are still handed out, and are valid data). Each `--config` (comma-separated
`name=value` of the trainer's and the worker's settings over the defaults) runs on a fresh data directory, one
after the other in one process. Prints one line per config and a JSON summary; a run whose guard rejects the
adapter reports it and has no served time. `--restarted` measures a studio started before on its data directory:
the guard's base images are then read back from disk (`alignment.training.guard_cache`) instead of rendered.
Torch's threads per task and the ready queue are set as the app sets them (`--cpu-threads`: half the cores unless
OMP_NUM_THREADS is set; `--ready-depth`, `--ready-batch`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

from alignment.eval.labelers import load_labeler
from settings import ServerConfig, TrainerConfig, WorkerConfig

CHOICES = {0: "left", 1: "right", None: "tie"}
PHASE_NAMES = ("to the run's start", "training", "guard", "saving", "swap", "first served pair")


def parse_config(text: str) -> tuple[dict, dict]:
    """'train_steps=60,fidelity_seeds=16' -> (trainer overrides, worker overrides), values typed by the field."""
    trainer, worker = {}, {}
    if not text.strip():
        return trainer, worker
    fields = {**{f.name: ("t", f) for f in dataclasses.fields(TrainerConfig)},
              **{f.name: ("w", f) for f in dataclasses.fields(WorkerConfig)}}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in fields:
            raise SystemExit(f"unknown setting {name!r}")
        kind, f = fields[name]
        if name == "fidelity_seeds":  # a count: that many seeds from the default selection range
            start = WorkerConfig().fidelity_seeds[0]
            typed = tuple(range(start, start + int(value)))
        elif isinstance(getattr(TrainerConfig() if kind == "t" else WorkerConfig(), name), bool):
            if value.strip().lower() not in ("true", "false"):
                raise SystemExit(f"{name} takes true or false, got {value!r}")
            typed = value.strip().lower() == "true"
        else:
            typed = type(getattr(TrainerConfig() if kind == "t" else WorkerConfig(), name))(value)
        (trainer if kind == "t" else worker)[name] = typed
    return trainer, worker


def watch_swap(studio, stop: threading.Event, seen: dict) -> None:
    """The first time (perf_counter) the live model serves an adapter, sampled every 10 ms."""
    while not stop.is_set() and "swapped" not in seen:
        if studio.live.adapter_version is not None:
            seen["swapped"] = time.perf_counter()
        time.sleep(0.01)


def one_config(label: str, trainer_overrides: dict, worker_overrides: dict, labeler_name: str,
               think_s: tuple[float, float], data_dir: Path, max_s: float, seed: int = 0,
               restarted: bool = False) -> dict:
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.worker import Worker
    from app.studio import Studio
    from storage import Repository

    rng = random.Random(seed)
    labeler = load_labeler(labeler_name)
    tcfg = dataclasses.replace(TrainerConfig(), **trainer_overrides)
    wcfg = dataclasses.replace(WorkerConfig(), **worker_overrides)
    repo = Repository(data_dir)
    if restarted:  # a studio ran on this data directory before: its guard's base images are on disk
        if not Worker(repo, "embedded", tcfg, wcfg).warm_guard():
            raise SystemExit("could not render the guard's base images ahead")
    worker = Worker(repo, "embedded", tcfg, wcfg)
    server = ServerConfig()  # the ready queue as the app sets it up for the embedded model
    studio = Studio(Sampler(load_pipeline("embedded")), repo, worker, tcfg, ready_depth=server.ready_depth,
                    ready_batch=server.ready_batch_for(True))
    prompt = studio.suggestions[0]  # one prompt, as a person labels: the ready queue keeps its pairs coming
    studio.start()
    try:
        view = studio.ready.pair(prompt, annotator="person")
        triggered = None
        votes = 0
        served_by_new = None
        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_swap, args=(studio, stop, seen), daemon=True)
        watcher.start()
        deadline = time.perf_counter() + max_s
        while time.perf_counter() < deadline:
            time.sleep(rng.uniform(*think_s))
            studio.vote(view.id, CHOICES[labeler(view.left, view.right, view.prompt)], annotator="person")
            votes += 1
            if triggered is None and worker.votes_pending() >= wcfg.train_every:
                triggered = (time.perf_counter(), time.monotonic())
            view = studio.ready.take("person", prompt) or studio.ready.pair(prompt, annotator="person")
            if view.adapter_version is not None:
                served_by_new = time.perf_counter()
                break
            run = worker._last_run
            if run is not None and run.get("status") != "live":
                break  # rejected, failed or a candidate: nothing new will be served
        stop.set()
        watcher.join()
        run = worker._last_run or {}
        metrics = run.get("metrics", {})
        out = {"config": label, "status": run.get("status"), "votes": votes, "reason": run.get("reason"),
               "votes_used": run.get("votes_used"), "pairs_trained": metrics.get("pairs"),
               "steps": metrics.get("steps"),
               "checkpoints_checked": metrics.get("checkpoints_checked"),
               "checkpoint_step": metrics.get("checkpoint_step"), "training_waited_s":
               round(studio.live.priority.waited_s, 1)}
        if triggered is None:
            return {**out, "error": "no run was triggered in time"}
        if served_by_new is None or "swapped" not in seen:
            return {**out, "error": "no pair of the new version was served in time"}
        # the worker's phases (monotonic) on the benchmark's clock (perf_counter), through the trigger's two readings
        t = next((r for r in worker.run_phases if r["version"] == view.adapter_version), None)
        if t is None:
            return {**out, "error": "the worker recorded no phases for the version served"}
        to_perf = triggered[0] - triggered[1]
        marks = [triggered[0]] + [t[k] + to_perf for k in ("training", "checking fidelity", "going live", "done")]
        marks += [seen["swapped"], served_by_new]
        out["phases_s"] = {name: round(b - a, 2) for name, a, b in zip(PHASE_NAMES, marks, marks[1:])}
        out["click_to_effect_s"] = round(served_by_new - triggered[0], 2)
        return out
    finally:
        studio.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.click_to_effect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=None,
                        help="settings over the defaults, e.g. train_steps=60,fidelity_seeds=32 (repeatable; "
                             "none = the defaults)")
    parser.add_argument("--labeler", default="alignment.eval.labelers:larger")
    parser.add_argument("--think-s", type=float, nargs=2, default=(0.8, 2.0))
    parser.add_argument("--max-s", type=float, default=900.0, help="give up on a config after this long")
    parser.add_argument("--restarted", action="store_true",
                        help="measure a restarted studio: the guard's base images rendered on its data directory "
                             "before (by another worker), as every start after the first finds them")
    parser.add_argument("--out", type=Path, help="write the JSON summary here")
    args = parser.parse_args(argv)
    from alignment.families.loader import use_threads

    use_threads(ServerConfig().torch_threads(os.environ, os.cpu_count()))  # as the app sets them (`--cpu-threads`)
    results = []
    with tempfile.TemporaryDirectory(prefix="click-to-effect-") as tmp:
        for i, text in enumerate(args.config or [""]):
            trainer, worker = parse_config(text)
            r = one_config(text or "defaults", trainer, worker, args.labeler, tuple(args.think_s),
                           Path(tmp) / f"c{i}", args.max_s, restarted=args.restarted)
            r["restarted"] = args.restarted
            results.append(r)
            print(json.dumps(r), flush=True)
            parts = ", ".join(f"{k} {v} s" for k, v in r.get("phases_s", {}).items())
            print(f"{r['config']}: click-to-effect {r.get('click_to_effect_s', 'n/a')} s ({parts}); run "
                  f"{r['status']} on {r.get('pairs_trained')} pairs, {r.get('steps')} steps, "
                  f"{r.get('checkpoints_checked')} checkpoint(s) checked; {r.get('error', '')}", flush=True)
    print(json.dumps(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
