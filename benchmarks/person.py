"""A simulated person through the real server: votes at a human pace, then blind A/B of what the studio serves.

    python -m benchmarks.person --labeler alignment.eval.labelers:larger alignment.eval.labelers:smaller \\
        --checkpoints 32 64 128 --blind-trials 64 --out runs/person/results.json --work-dir runs/person
    python -m benchmarks.person --labeler larger --connect http://127.0.0.1:7860/ --data-dir studio-data
    python -m benchmarks.person --labeler larger --checkpoints 8 -- --train-steps 10   # flags after -- go to the studio

For each labeler, a studio process (`python -m app` on the embedded model, a data dir of its own, the worker's
default settings plus whatever follows `--`) is started with `benchmarks.load.StudioProcess`, or `--connect` names
one that runs. The person asks `/identity` once, then for each vote: `/new_pair` on a training prompt (grammar
prompts outside the held-out combinations, seeds from the run seed's training range: `alignment.eval.splits`),
looks at the two images for a think time drawn uniformly from `--think-s`, and sends the labeler's verdict
(`module:function`, called as `alignment.eval.labelers` labelers are: left, right or tie) to `/vote`. The worker
trains whenever its own trigger says so.

At each checkpoint (votes cast) the person stops voting and waits for the worker (`/status`) until it is quiet
(`--wait quiet`, the default): while it trains, and while it is idle with votes it has not seen (`votes_pending`),
for at most `--grace-s` (its trigger may not fire for them). The adapter live then is the guard's verdict on the
votes so far, and no new version goes live during the blind trials. `--wait run` waits for the run in progress
only (or the first to start within `--grace-s`); the worker then starts a run on the newest votes at once, and the
version it makes may go live during the trials (only the trials of the version live at the first one count for
the checkpoint). Then `--blind-trials` blind A/B trials through `/blind_trial` and `/blind_choice`, on the evaluation
prompts of `alignment.eval.splits` (never the guard's prompts or seeds) at the run seed's evaluation seeds from
j = 500 on, the same trials at every checkpoint, judged by the same labeler at the same pace. Reported: the
adapter's win rate over the base (ties count half) with its 95 % Wilson interval, as the studio answers it (the
person's running figure for that version, which pools the checkpoints that version was live at) and for this
checkpoint's trials alone, the version and the votes it was trained on, and the prompt fidelity of
base and adapter on the blind images (`alignment.embedded.evaluate.score`), on the trials whose outcome names the
adapter's side (a tie does not). Then the offline check: the same live adapter, read from the studio's repository
(`--data-dir`, `--database-url`), judged by `alignment.eval.simulate.served_figures` on the evaluation prompts at
the seeds j < `--offline-seeds`, in this process; the studio's figure agrees with it when the two intervals
overlap. Without the repository (`--connect` and no `--data-dir`) the offline check is skipped and says so.

Printed: one table row per labeler and checkpoint; written (`--out`): the settings, every checkpoint's figures and
trials, and the votes cast, acknowledged and stored (looked up in the database, or counted by `/status`). The exit
status is 1 when a vote went missing or a studio figure disagrees with its offline check. The studio must serve
the embedded model: the offline check and the fidelity read its images.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load import StudioProcess, _stored_votes, free_port

BLIND_SEED_OFFSET = 500  # blind trials use evaluation seeds j >= 500, the offline check j < 500: no image shared
CHOICES = {0: "left", 1: "right", None: "tie"}
POLL_S = 0.5


@dataclass
class Person:
    """One simulated person: a labeler, an identity on a studio, and a pace."""

    client: object  # gradio_client.Client
    identity: str
    annotator: str
    labeler: object
    think_s: tuple[float, float]
    rng: random.Random
    acks: list[dict] = field(default_factory=list)
    vote_latency_s: list[float] = field(default_factory=list)

    def call(self, api_name: str, *args, attempts: int = 10):
        """One API call; a rate limit (a public studio's) is waited out as its message says, like a person would."""
        from gradio_client.exceptions import AppError

        tried = 0
        while True:
            try:
                return self.client.predict(*args, api_name=api_name)
            except AppError as e:
                wait, tried = re.search(r"rate limit: try again in (\d+) s", str(e)), tried + 1
                if wait is None or tried >= attempts:
                    raise
            time.sleep(int(wait.group(1)))

    def think(self) -> None:
        lo, hi = self.think_s
        if hi > 0:
            time.sleep(self.rng.uniform(lo, hi))

    def choose(self, left_path: str, right_path: str, prompt: str) -> str:
        from alignment.eval.labelers import judge

        left, right = open_image(left_path), open_image(right_path)
        return CHOICES[judge(self.labeler, left, right, prompt)]

    def vote_once(self, prompt: str, seeds: tuple[int, int]) -> dict:
        """One pair, a think, one vote; the acknowledgement (recorded only after the commit)."""
        left, right, pair_id = self.call("/new_pair", prompt, f"{seeds[0]}, {seeds[1]}", self.identity)
        choice = self.choose(left, right, prompt)
        self.think()
        t0 = time.monotonic()
        ack = self.call("/vote", int(pair_id), choice, self.identity)
        self.vote_latency_s.append(time.monotonic() - t0)
        if not (isinstance(ack, dict) and ack.get("recorded") is True):
            raise RuntimeError(f"vote not acknowledged: {ack!r:.200}")
        self.acks.append(ack)
        return ack


def open_image(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def status(client) -> dict:
    return client.predict("", api_name="/status")


def wait_for_worker(client, mode: str, grace_s: float, max_s: float) -> dict:
    """Poll `/status` until the worker is done for this checkpoint (see the module docstring for `mode`): while it
    trains, and while it is idle with votes it has not seen, for at most `grace_s` (its trigger may not fire for
    them, or it is busy starting up); returns how long that took and how many runs finished meanwhile."""
    t0 = time.monotonic()
    idle_since, training, finished = t0, False, 0
    timed_out = True
    while time.monotonic() - t0 < max_s:
        now_status = status(client)
        state, now = now_status.get("worker_state"), time.monotonic()
        if state == "training":
            training, idle_since = True, None
        else:
            if training:
                training, finished, idle_since = False, finished + 1, now
                if mode == "run":
                    timed_out = False
                    break
            idle_since = idle_since or now
            if state in ("off", "stopped") or not now_status.get("votes_pending") or now - idle_since >= grace_s:
                timed_out = False
                break
        time.sleep(POLL_S)
    return {"waited_s": round(time.monotonic() - t0, 1), "runs_finished": finished, "timed_out": timed_out}


def blind_cases(n: int, run_seed: int) -> list[tuple[object, int]]:
    """(evaluation case, seed) of the `n` blind trials: the prompts in turn, seeds j = 500, 501, ... of the run
    seed's evaluation seeds."""
    from alignment.eval.splits import EVAL_SEEDS_PER_RUN, eval_cases, eval_seeds

    cases = eval_cases()
    rounds = -(-n // len(cases))
    if BLIND_SEED_OFFSET + rounds > EVAL_SEEDS_PER_RUN:
        raise ValueError(f"at most {(EVAL_SEEDS_PER_RUN - BLIND_SEED_OFFSET) * len(cases)} blind trials")
    seeds = eval_seeds(run_seed, BLIND_SEED_OFFSET + rounds)[BLIND_SEED_OFFSET:]
    return [(cases[k % len(cases)], seeds[k // len(cases)]) for k in range(n)]


def interval(wins: int, ties: int, n: int) -> dict:
    from alignment.core.objective import paired_win_rate

    rate, lo, hi = paired_win_rate(wins, ties, n)
    return {"rate": None if n == 0 else round(rate, 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": n,
            "wins": wins, "ties": ties}


def blind_ab(person: Person, n: int, run_seed: int) -> dict:
    """`n` blind trials through the API, judged by the person's labeler; the studio's answer and this run's tally."""
    from alignment.embedded.evaluate import score

    trials, answers = [], {}  # answers: the studio's last answer per adapter version
    images = {"base": [], "adapter": []}
    cases_seen = []
    for case, seed in blind_cases(n, run_seed):
        trial = person.call("/blind_trial", case.prompt, str(seed), person.identity)
        choice = person.choose(trial["left"], trial["right"], case.prompt)
        person.think()
        answer = person.call("/blind_choice", trial["trial"], choice, person.identity)
        answers[answer["version"]] = answer
        trials.append({"prompt": case.prompt, "seed": seed, "version": trial["adapter_version"], "choice": choice,
                       "outcome": answer["outcome"]})
        if trials[-1]["version"] != trials[0]["version"]:
            continue  # another version went live meanwhile: it is not the one this checkpoint measures
        if answer["outcome"] != "tie":  # the outcome names the adapter's side only when the person took one
            adapter_side = choice if answer["outcome"] == "adapter" else ("right" if choice == "left" else "left")
            other = "left" if adapter_side == "right" else "right"
            images["adapter"].append(open_image(trial[adapter_side]))
            images["base"].append(open_image(trial[other]))
            cases_seen.append(case)
    version = trials[0]["version"]
    mine = [t for t in trials if t["version"] == version]
    tally = interval(sum(t["outcome"] == "adapter" for t in mine), sum(t["outcome"] == "tie" for t in mine),
                     len(mine))
    studio = {k: answers[version][k] for k in ("version", "n", "adapter", "base", "tie", "rate", "lo", "hi")}
    fidelity = {"trials": len(cases_seen)}
    if cases_seen:
        fidelity.update(base=round(score(images["base"], cases_seen)["fidelity"], 4),
                        adapter=round(score(images["adapter"], cases_seen)["fidelity"], 4))
    return {"version": version, "versions_seen": sorted({t["version"] for t in trials}), "checkpoint": tally,
            "studio": studio, "fidelity": fidelity, "trials": trials}


class OfflineCheck:
    """The offline evaluation of what the studio serves, on this process' own copy of the embedded model, with the
    adapters read from the studio's repository."""

    def __init__(self, data_dir: Path, database_url: str | None, labeler, run_seed: int, seeds: int):
        from diffusers.utils import logging as diffusers_logging

        from alignment.eval.splits import eval_cases, eval_seeds
        from alignment.families.loader import load_pipeline
        from alignment.serving.live import LiveModel
        from alignment.serving.sampler import Sampler
        from storage import Repository

        diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder" at every adapter swap
        self.repo = Repository(data_dir, database_url)
        self.live = LiveModel(Sampler(load_pipeline("embedded")), self.repo)  # never started: no follower
        self.labeler, self.prompts = labeler, [c.prompt for c in eval_cases()]
        self.seeds = eval_seeds(run_seed, seeds)

    def evaluate(self, version: int | None) -> dict:
        from alignment.eval.simulate import served_figures

        t0 = time.monotonic()
        r = served_figures(self.live, version, self.labeler, self.prompts, self.seeds, fidelity=True)
        return {"version": version, **interval(r["wins"], r["ties"], r["comparisons"]),
                "fidelity": {"base": round(r["fidelity_base"], 4), "adapter": round(r["fidelity_aligned"], 4)},
                "seconds": round(time.monotonic() - t0, 1)}

    def close(self) -> None:
        self.repo.close()


def overlap(a: dict, b: dict) -> bool:
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def checkpoint(person: Person, votes: int, args, offline: OfflineCheck | None) -> dict:
    waited = wait_for_worker(person.client, args.wait, args.grace_s, args.wait_max_s)
    now = status(person.client)
    live, release = now["live_adapter_version"], now.get("last_release") or {}
    out = {"votes": votes, **waited, "live_version": live,
           "adapter_votes_used": release.get("votes_used") if release.get("version") == live else None,
           "newest_version": release.get("version"), "newest_status": release.get("status")}
    if live is None:
        out["blind"] = {"skipped": "no adapter is live: the guard has promoted none yet, the base is served"}
        return out
    if offline is not None:  # the repository knows it also when a newer version was rejected
        out["adapter_votes_used"] = offline.repo.get_adapter(live).votes_used
    t0 = time.monotonic()
    out["blind"] = blind_ab(person, args.blind_trials, args.seed)
    out["blind"]["seconds"] = round(time.monotonic() - t0, 1)
    if offline is None:
        out["offline"] = {"skipped": "no repository to read the adapter from: pass --data-dir"}
    else:
        out["offline"] = offline.evaluate(out["blind"]["version"])
        out["agree"] = overlap(out["blind"]["studio"], out["offline"])
    return out


def run_person(url: str, labeler_spec: str, args, data_dir: Path | None) -> dict:
    """One person on the studio at `url`: votes to the last checkpoint, a checkpoint at each."""
    from gradio_client import Client

    from alignment.eval.labelers import load_labeler
    from alignment.eval.simulate import training_prompts
    from alignment.eval.splits import training_seed0

    labeler = load_labeler(labeler_spec)
    client = Client(url, verbose=False)
    given = client.predict(api_name="/identity")
    rng = random.Random(args.seed)
    person = Person(client, given["identity"], given["annotator"], labeler, tuple(args.think_s), rng)
    marks = sorted(set(args.checkpoints))
    prompts = training_prompts(random.Random(args.seed), marks[-1])
    seed0 = training_seed0(args.seed)
    votes_before = status(client)["votes"]
    offline = (OfflineCheck(data_dir, args.database_url, labeler, args.seed, args.offline_seeds)
               if data_dir is not None else None)
    t0 = time.monotonic()
    checkpoints = []
    try:
        for i, prompt in enumerate(prompts):
            person.vote_once(prompt, (seed0 + 2 * i, seed0 + 2 * i + 1))
            if i + 1 in marks:
                checkpoints.append(checkpoint(person, i + 1, args, offline))
                print(row(labeler_spec, checkpoints[-1]), flush=True)
    finally:
        if offline is not None:
            offline.close()
    wall = time.monotonic() - t0
    acked = [(a["vote_id"], a["pair_id"], a["annotator"], a["choice"]) for a in person.acks]
    if data_dir is not None:
        rows, _ = _stored_votes(data_dir, args.database_url)
        stored = [tuple(r) for r in rows if r[2] == person.annotator]
        missing = len(set(acked) - set(stored))
        counted_by = "database"
    else:
        stored = [None] * (status(client)["votes"] - votes_before)  # every annotator's: exact on a studio of one
        missing = max(0, len(acked) - len(stored))
        counted_by = "/status"
    lat = sorted(person.vote_latency_s)
    return {"labeler": labeler_spec, "annotator": person.annotator, "votes_cast": len(prompts),
            "votes_acknowledged": len(acked), "votes_stored": len(stored), "votes_missing": missing,
            "votes_counted_by": counted_by, "vote_p50_ms": round(1000 * statistics.median(lat), 1),
            "wall_s": round(wall, 1), "checkpoints": checkpoints}


def start_studio(data_dir: Path, log: Path, studio_args: list[str]) -> StudioProcess:
    """`python -m app` on the embedded model and `data_dir` (a port of its own), started and answering."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    studio = StudioProcess(data_dir, free_port(), ["--model", "embedded", *studio_args], log)
    studio.start()
    return studio


# ---- report -----------------------------------------------------------------------------------------------------
HEADER = ("| labeler | votes | live (votes used) | studio blind A/B [95 %] (n) | this checkpoint (n) | "
          "blind fidelity base → adapter (n) | offline [95 %] (n) | offline fidelity base → adapter | agree |\n"
          + "|" + "---|" * 9)


def fmt(w: dict) -> str:
    return "–" if w.get("rate") is None else f"{w['rate']:.3f} [{w['lo']:.3f}, {w['hi']:.3f}] ({w['n']})"


def row(labeler_spec: str, c: dict) -> str:
    name = labeler_spec.rpartition(":")[2]
    live = "base" if c["live_version"] is None else f"v{c['live_version']} ({c['adapter_votes_used']})"
    blind, offline = c["blind"], c.get("offline", {})
    if "skipped" in blind:
        return f"| {name} | {c['votes']} | {live} | {blind['skipped']} | | | | | |"
    f = blind["fidelity"]
    blind_fid = f"{f['base']:.3f} → {f['adapter']:.3f} ({f['trials']})" if f["trials"] else "–"
    if "skipped" in offline:
        off, off_fid, agree = offline["skipped"], "", ""
    else:
        off = fmt(offline)
        off_fid = f"{offline['fidelity']['base']:.3f} → {offline['fidelity']['adapter']:.3f}"
        agree = "yes" if c["agree"] else "**no**"
    return (f"| {name} | {c['votes']} | {live} | {fmt(blind['studio'])} | {fmt(blind['checkpoint'])} | "
            f"{blind_fid} | {off} | {off_fid} | {agree} |")


def table(runs: list[dict]) -> str:
    return "\n".join([HEADER, *(row(r["labeler"], c) for r in runs for c in r["checkpoints"])])


def labeler_spec(name: str) -> str:
    return name if ":" in name else f"alignment.eval.labelers:{name}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    studio_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.person", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labeler", nargs="+", required=True, help="module:function (or a name in "
                   "alignment.eval.labelers); several run one after another, each on a fresh studio")
    p.add_argument("--checkpoints", type=int, nargs="+", default=[32, 64, 128], help="votes cast at each checkpoint")
    p.add_argument("--blind-trials", type=int, default=64, help="blind A/B trials per checkpoint")
    p.add_argument("--offline-seeds", type=int, default=16, help="seeds per evaluation prompt of the offline check")
    p.add_argument("--think-s", type=float, nargs=2, default=[0.8, 2.0], metavar=("LO", "HI"),
                   help="think time before each choice, uniform in [LO, HI] seconds")
    p.add_argument("--wait", choices=("run", "quiet"), default="quiet",
                   help="at a checkpoint, wait until the worker starts no more runs (quiet: the last one has seen "
                        "every vote) or only for the run in progress (run)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="at most this long, wait for an idle worker to start a run on votes it has not seen")
    p.add_argument("--wait-max-s", type=float, default=3600.0, help="wait for the worker at most this long")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts, pair seeds, think times, eval seeds")
    p.add_argument("--connect", default=None, metavar="URL", help="a running studio instead of starting one")
    p.add_argument("--data-dir", type=Path, default=None, help="with --connect: its data dir, for the offline check")
    p.add_argument("--database-url", default=None, help="with --connect: its database URL, if not SQLite")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="started studios keep their data and log here (default: a temporary directory, removed)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    a.studio_args = studio_args
    a.labeler = [labeler_spec(x) for x in a.labeler]
    if min(a.checkpoints) < 1 or a.blind_trials < 1 or not 1 <= a.offline_seeds <= BLIND_SEED_OFFSET:
        p.error(f"--checkpoints and --blind-trials must be >= 1, --offline-seeds in 1..{BLIND_SEED_OFFSET}")
    if not 0 <= a.think_s[0] <= a.think_s[1]:
        p.error("--think-s needs 0 <= LO <= HI")
    if a.connect and (len(a.labeler) > 1 or studio_args):
        p.error("--connect takes one --labeler and no studio flags (the studio runs already)")
    if not a.connect and (a.data_dir or a.database_url):
        p.error("--data-dir and --database-url name a connected studio's storage; a started one uses --work-dir")
    try:
        blind_cases(a.blind_trials, a.seed)
    except ValueError as e:
        p.error(str(e))
    return a


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    runs = []
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="studio-person-") as tmp:
        root = args.work_dir or Path(tmp)
        for spec in args.labeler:
            if args.connect:
                runs.append(run_person(args.connect, spec, args, args.data_dir))
                continue
            here = root / spec.rpartition(":")[2]
            studio = start_studio(here / "data", here / "studio.log", args.studio_args)
            try:
                runs.append({**run_person(studio.url, spec, args, here / "data"), "studio_log": str(here / "studio.log")
                             if args.work_dir else None})
            finally:
                studio.kill(signal.SIGTERM)
    out = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "runs": runs}
    print("\n" + table(runs))
    for r in runs:
        print(f"{r['labeler']}: {r['votes_cast']} votes cast, {r['votes_acknowledged']} acknowledged, "
              f"{r['votes_stored']} stored ({r['votes_counted_by']}), {r['votes_missing']} missing; "
              f"vote p50 {r['vote_p50_ms']} ms; {r['wall_s']} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    failed = [r["labeler"] for r in runs if r["votes_missing"] or r["votes_stored"] != r["votes_cast"]
              or any(c.get("agree") is False for c in r["checkpoints"])]
    if failed:
        print(f"checks failed for {', '.join(failed)}: missing votes or a studio figure outside its offline check",
              file=sys.stderr)
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
