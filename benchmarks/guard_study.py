"""Guard study: how often does the studio serve an adapter that has drifted off the prompt on seeds it never saw?

    python -m benchmarks.guard_study --labelers larger smaller moderate --seeds 0 1 2 3 --out runs/guard-study
    python -m benchmarks.guard_study --report-only --out runs/guard-study          # table.md again

One run per (labeler, seed): the benchmark's pool of base pairs for that seed (`benchmarks.alignment`), the
labeler's verdicts on its first `--labels` pairs, one training run at the `TrainerConfig` defaults (or `--variant`),
and the worker's own guard (`FidelityGuard.from_config(WorkerConfig())`: selection latest first, then
confirmation). What it serves (the confirmed checkpoint, or the base when nothing passes) is then judged on the
independent evaluation set (`alignment.eval.splits`: other prompts, `--eval-seeds` seeds from 10^6, nothing the
guard or training used): the labeler's win rate over the base, and prompt fidelity of base and served model with
the 90 % lower bound of their per-seed difference. A **false accept** is a served adapter (not the base) whose
evaluation fidelity is more than 5 points below the base's. Each run appends one line to `results.jsonl` as soon as
it finishes; finished runs are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from alignment.core.objective import paired_win_rate
from benchmarks.alignment import Variant, labeler_spec, label_pool, load_or_sample_pool, training_pairs

FALSE_ACCEPT_DROP = 0.05


def evaluate_served(labeler, base_images: list, served_images: list, cases, seeds: list[int], alpha: float) -> dict:
    """Win rate and fidelity of the served model against the base on the evaluation set (images in case-major
    order, `len(seeds)` per case); the fidelity difference is paired by seed."""
    from alignment.embedded.evaluate import score
    from alignment.eval.simulate import judge_against_base
    from alignment.training.fidelity import paired_lower_bound

    prompts = [c.prompt for c in cases for _ in seeds]
    result = judge_against_base(labeler, base_images, served_images, prompts)
    per_seed = {"base": [], "served": []}
    for j in range(len(seeds)):
        idx = [i * len(seeds) + j for i in range(len(cases))]
        for key, images in (("base", base_images), ("served", served_images)):
            per_seed[key].append(score([images[i] for i in idx], list(cases))["fidelity"])
    bound = paired_lower_bound(per_seed["served"], per_seed["base"], alpha)
    fb, fs = sum(per_seed["base"]) / len(seeds), sum(per_seed["served"]) / len(seeds)
    return {**result, "eval_fidelity_base": round(fb, 4), "eval_fidelity_served": round(fs, 4),
            "eval_fidelity_change": round(fs - fb, 4), "eval_fidelity_lower_bound": round(bound.lower, 4),
            "eval_images": len(prompts), "eval_seeds": len(seeds)}


def run_study(args) -> list[dict]:
    from alignment.eval.labelers import load_labeler
    from alignment.eval.splits import eval_cases, eval_seeds
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.fidelity import FidelityGuard
    from alignment.training.scorers import embedded_fidelity
    from alignment.training.trainer import Trainer
    from settings import GUARD_SELECTION_SEED_BASE, SamplerConfig, WorkerConfig

    out = Path(args.out)
    (out / "pools").mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = [json.loads(x) for x in results_file.read_text().splitlines()] if results_file.exists() else []
    finished = {(r["labeler"], r["seed"]) for r in done}
    variant = Variant(args.variant)
    loaded = load_pipeline("embedded", dtype="fp32")
    trainer = Trainer(loaded)
    sampler = Sampler(loaded, SamplerConfig.from_defaults(loaded.sampler_defaults), fuse=False)
    wcfg = WorkerConfig(**({"fidelity_seeds": tuple(range(GUARD_SELECTION_SEED_BASE,
                                                          GUARD_SELECTION_SEED_BASE + args.guard_seeds))}
                           if args.guard_seeds else {}))
    guard = FidelityGuard.from_config(wcfg, embedded=True, scorer=embedded_fidelity)  # the worker's guard
    cases = eval_cases()
    base_eval: dict[int, list] = {}
    for seed in args.seeds:
        for lab_name in map(labeler_spec, args.labelers):
            if (lab_name, seed) in finished:
                continue
            labeler = load_labeler(lab_name)
            if getattr(trainer.unet, "peft_config", None):
                trainer.set_adapter_enabled(False)
            pool = load_or_sample_pool(out / "pools" / f"seed-{seed}.pt", sampler, seed, max(args.pool, args.labels))
            seeds = eval_seeds(seed, args.eval_seeds)
            if seed not in base_eval:
                base_eval[seed] = [g.image for c in cases for g in sampler.generate(c.prompt, seeds)]
            cfg = variant.trainer_config(seed)
            trainer.config = cfg
            t0 = time.perf_counter()
            result = trainer.train(training_pairs(label_pool(pool, labeler))[: args.labels])
            t1 = time.perf_counter()
            decision = guard.decide(sampler, trainer, result.checkpoints)
            t2 = time.perf_counter()
            served = decision.verdict.passed
            if served:
                trainer.set_adapter_enabled(True)
                images = [g.image for c in cases for g in sampler.generate(c.prompt, seeds)]
                trainer.set_adapter_enabled(False)
            else:
                images = base_eval[seed]
            ev = evaluate_served(labeler, base_eval[seed], images, cases, seeds, wcfg.fidelity_alpha)
            conf = decision.confirmation
            r = {"labeler": lab_name, "seed": seed, "variant": variant.spec, "labels": args.labels,
                 "served": served, "served_step": decision.step if served else None,
                 "selected_step": decision.step, "final_step": result.checkpoints[-1][0],
                 "checkpoints_checked": len(decision.selection),
                 "guard_selection": [[rep.candidate and round(rep.candidate, 3), rep.lower_bound and
                                      round(rep.lower_bound, 3), rep.passed] for rep in decision.selection],
                 "guard_selection_base": decision.selection[0].base,
                 "confirm_base": conf.base, "confirm_candidate": conf.candidate,
                 "confirm_lower_bound": conf.lower_bound, "confirm_passed": conf.passed,
                 "reason": decision.verdict.reason, "guard_images_per_check": guard.images_per_check,
                 "train_seconds": round(t1 - t0, 1), "guard_seconds": round(t2 - t1, 1),
                 "train_accuracy": round(result.metrics["accuracy"], 3), **ev,
                 "false_accept": bool(served and ev["eval_fidelity_change"] < -FALSE_ACCEPT_DROP)}
            print(json.dumps(r), flush=True)
            with results_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
            done.append(r)
    return done


def table(results: list[dict]) -> str:
    lines = ["| labeler | seed | served (step) | win rate [95 %] | eval fidelity base → served (change, 90 % LB) | "
             "false accept | guard s | train s |", "|" + "---|" * 8]
    for r in sorted(results, key=lambda r: (r["labeler"], r["seed"])):
        step = f"step {r['served_step']}" if r["served"] else "base kept"
        lines.append(f"| {r['labeler'].split(':')[-1]} | {r['seed']} | {step} | {r['win_rate']:.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['eval_fidelity_base']:.3f} → "
                     f"{r['eval_fidelity_served']:.3f} ({100 * r['eval_fidelity_change']:+.1f} pts, "
                     f"{100 * r['eval_fidelity_lower_bound']:+.1f}) | {'**yes**' if r['false_accept'] else 'no'} | "
                     f"{r['guard_seconds']:.0f} | {r['train_seconds']:.0f} |")
    by_lab = defaultdict(list)
    for r in results:
        by_lab[r["labeler"].split(":")[-1]].append(r)
    lines += ["", "| labeler | runs | served | served win rate, pooled [95 %] | false accepts |", "|" + "---|" * 5]
    for lab, rs in sorted(by_lab.items()):
        rate, lo, hi = paired_win_rate(sum(r["wins"] for r in rs), sum(r["ties"] for r in rs),
                                       sum(r["comparisons"] for r in rs))
        lines.append(f"| {lab} | {len(rs)} | {sum(r['served'] for r in rs)} | {rate:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{sum(r['false_accept'] for r in rs)} |")
    n_fa, n = sum(r["false_accept"] for r in results), len(results)
    lines.append(f"\nfalse accepts: {n_fa} of {n} runs ({sum(r['served'] for r in results)} served adapters)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", nargs="+", default=["larger", "smaller", "moderate"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--labels", type=int, default=128)
    p.add_argument("--pool", type=int, default=128, help="pairs sampled per seed (shared with benchmarks.alignment)")
    p.add_argument("--eval-seeds", type=int, default=32, help="evaluation seeds per run (x 8 evaluation prompts)")
    p.add_argument("--guard-seeds", type=int, default=0, help="selection seeds of the guard (0 = the worker's)")
    p.add_argument("--variant", default="discounted", help="objective[:key=value,...] as in benchmarks.alignment")
    p.add_argument("--out", default="runs/guard-study")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    results = ([json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] if a.report_only
               else run_study(a))
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
