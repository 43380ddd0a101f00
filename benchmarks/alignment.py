"""Alignment benchmark: win rate over the base after N labels, per objective variant, labeler and training seed.

    python -m benchmarks.alignment --labelers larger lower saturated --seeds 0 1 2 --labels 32 64 128 256 \\
        --variants discounted trajectory diffusion-dpo --out runs/alignment
    python -m benchmarks.alignment --labels 128 --variants discounted:gamma=0.8 discounted:lr=3e-3,eps=0.05 \\
        discounted:targets=to_q+to_k+to_v+to_out.0+conv1+conv2+time_emb_proj --out runs/alignment
    python -m benchmarks.alignment --report-only --out runs/alignment      # table.md and win_rate.png again

A *variant* is an objective with optional `TrainerConfig` overrides: `objective[:key=value,...]` (keys: gamma, beta,
lr, eps, steps, m, ckpt, rank, targets with '+' between module names).

With `--guard`, each point also yields a `VARIANT+guard` point: what the worker would serve. The worker's own
fidelity guard (`FidelityGuard.from_config(WorkerConfig())`, `--guard-seeds` selection seeds; its prompts and
seeds are disjoint from the evaluation's, `alignment.eval.splits`) checks the run's checkpoints latest first (every
`ckpt` steps, default 10), keeps the first that passes and confirms it on its second seed set; that one is
evaluated. If none passes, the studio keeps serving the base, which scores 0.5 by construction. The guard's own
figures are recorded as `guard_*`.

Paired design. For each seed one pool of pairs is sampled from the base model with trajectories and images (seeded
prompts that avoid the held-out attribute combinations) and cached on disk; each labeler judges that same pool once,
and every variant and label count N then trains a fresh LoRA on the first N labeled pairs, so differences between
variants (and between labelers) are not differences in data. Each trained adapter is judged on held-out prompts at
seeds from 10^6 (never used in training): the labeler compares aligned vs base at equal prompt and seed, positions
alternating (ties count half; 95 % Wilson interval). Prompt fidelity (colour, background, shape accuracy) is scored
on the same eval images, base vs aligned, and the fidelity guard's rule is applied to it: an adapter is "promoted"
only if its fidelity is no more than 5 points below the base's. Results are appended to results.jsonl as they finish;
finished points are skipped on a re-run. This is off-policy (one round from the base); the studio's on-policy
rounds are `python -m alignment.simulate --rounds R`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from alignment.core.objective import paired_win_rate
from settings import TrainerConfig

MAX_DROP = 0.05
GUARDED = "+guard"
OVERRIDES = {"gamma": ("gamma", float), "beta": ("beta", float), "lr": ("lr", float),
             "eps": ("log_ratio_clip", float), "steps": ("train_steps", int), "m": ("steps_per_pair", int),
             "ckpt": ("checkpoint_every", int), "order": ("pair_order", str),
             "rank": ("lora_rank", int), "targets": ("target_modules", lambda s: tuple(s.split("+")))}


@dataclass(frozen=True)
class Variant:
    """`objective[:key=value,...]`, e.g. `discounted:gamma=0.8,lr=3e-3`."""

    spec: str

    def overrides(self) -> dict:
        _, _, rest = self.spec.partition(":")
        out = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in OVERRIDES:
                raise ValueError(f"bad variant item {item!r} in {self.spec!r}; keys: {', '.join(OVERRIDES)}")
            field_name, cast = OVERRIDES[key]
            out[field_name] = cast(value)
        return out

    def trainer_config(self, seed: int) -> TrainerConfig:
        return TrainerConfig(objective=self.spec.partition(":")[0], seed=seed, **self.overrides())


def labeler_spec(name: str) -> str:
    return name if ":" in name else f"alignment.eval.labelers:{name}"


# ---- the pool ---------------------------------------------------------------------------------------------------
def sample_pool(sampler, seed: int, n: int) -> list[dict]:
    """n pairs sampled from the base: {prompt, a, b (trajectory bytes), image_a, image_b (PNG bytes)}. Unlabeled,
    so that every labeler judges the same pairs (one sampling per seed, however many labelers)."""
    from alignment.eval.simulate import png as png_bytes, training_prompts
    from alignment.eval.splits import training_seed0

    rng = random.Random(seed)
    pool = []
    for i, prompt in enumerate(training_prompts(rng, n)):
        a, b = sampler.generate_pair(prompt, (training_seed0(seed) + 2 * i, training_seed0(seed) + 2 * i + 1))
        pool.append({"prompt": prompt, "a": a.trajectory.to_bytes(), "b": b.trajectory.to_bytes(),
                     "image_a": png_bytes(a.image), "image_b": png_bytes(b.image)})
    return pool


def label_pool(pool: list[dict], labeler) -> list[dict]:
    """The labeler's verdict on each pair: {prompt, w, l (trajectory bytes), target (1, or 0.5 for a tie)}."""
    from PIL import Image

    from alignment.eval.labelers import judge

    out = []
    for p in pool:
        image_a, image_b = (Image.open(io.BytesIO(p[k])).convert("RGB") for k in ("image_a", "image_b"))
        choice = judge(labeler, image_a, image_b, p["prompt"])
        w, l = (p["b"], p["a"]) if choice == 1 else (p["a"], p["b"])
        out.append({"prompt": p["prompt"], "w": w, "l": l, "target": 0.5 if choice is None else 1.0})
    return out


def load_or_sample_pool(path: Path, sampler, seed: int, n: int) -> list[dict]:
    import torch

    if path.exists():
        pool = torch.load(path, weights_only=True)
        if len(pool) >= n:
            return pool
    pool = sample_pool(sampler, seed, n)
    tmp = path.with_suffix(".tmp")
    torch.save(pool, tmp)
    tmp.replace(path)
    return pool


def training_pairs(pool: list[dict]):
    from alignment.core.trajectory import Trajectory
    from alignment.training.trainer import TrainingPair

    return [TrainingPair(p["prompt"], Trajectory.from_bytes(p["w"]), Trajectory.from_bytes(p["l"]), p["target"])
            for p in pool]


# ---- evaluation -------------------------------------------------------------------------------------------------
def render_eval(sampler, cases, seeds: list[int]) -> list:
    return [g.image for c in cases for g in sampler.generate(c.prompt, seeds)]


def judge_eval(labeler, base: list, aligned: list, cases, seeds: list[int]) -> dict:
    from alignment.embedded.evaluate import score
    from alignment.eval.simulate import judge_against_base

    result = judge_against_base(labeler, base, aligned, [c.prompt for c in cases for _ in seeds])
    flat_cases = [c for c in cases for _ in seeds]
    sb, sa = score(base, flat_cases), score(aligned, flat_cases)
    fb, fa = sb["fidelity"], sa["fidelity"]
    return {**result, "fidelity_base": fb, "fidelity_aligned": fa, "promoted": fa >= fb - MAX_DROP,
            "attributes": {k: [round(sb[k], 3), round(sa[k], 3)] for k in ("colour", "background", "shape")}}


def guarded_point(final: dict, guard, sampler, trainer, result, base_images, labeler, cases, seeds) -> dict:
    """The point for what the worker would serve after this run (see `--guard`)."""
    decision = guard.decide(sampler, trainer, result.checkpoints)
    served = decision.verdict.passed
    if not served:  # nothing promoted: the base stays live
        aligned = base_images
    elif decision.step == result.checkpoints[-1][0]:
        aligned = None  # the final weights: the point already judged
    else:
        trainer.set_adapter_enabled(True)
        aligned = render_eval(sampler, cases, seeds)
    trainer.set_adapter_enabled(False)
    judged = {} if aligned is None else judge_eval(labeler, base_images, aligned, cases, seeds)
    return {**final, **judged, "variant": final["variant"] + GUARDED,
            "checkpoint_step": decision.step if served else None,
            "guard_selection_fidelity": [None if r.candidate is None else round(r.candidate, 3)
                                         for r in decision.selection],
            "guard_selection_fidelity_base": decision.selection[0].base,
            "guard_confirmation": [decision.confirmation.base, decision.confirmation.candidate,
                                   decision.confirmation.lower_bound],
            "guard_images": guard.images_per_check}


# ---- the grid ---------------------------------------------------------------------------------------------------
def point_key(r: dict) -> tuple:
    return r["labeler"], r["variant"], r["labels"], r["seed"]


def run_grid(args) -> list[dict]:
    from alignment.eval.splits import eval_cases, eval_seeds as eval_seed_set
    from alignment.training.fidelity import FidelityGuard
    from alignment.training.scorers import embedded_fidelity
    from settings import GUARD_SELECTION_SEED_BASE, WorkerConfig
    from alignment.eval.labelers import load_labeler
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from settings import SamplerConfig
    from alignment.training.trainer import Trainer

    out = Path(args.out)
    (out / "pools").mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = [json.loads(x) for x in results_file.read_text().splitlines()] if results_file.exists() else []
    finished = {point_key(r) for r in done}
    variants = [Variant(v) for v in args.variants]
    for v in variants:
        v.trainer_config(0)  # refuse a bad variant before hours of work
    loaded = load_pipeline(args.model, dtype="fp32")
    trainer = Trainer(loaded)
    sampler = Sampler(loaded, SamplerConfig.from_defaults(loaded.sampler_defaults), fuse=False)
    cases = eval_cases()[: args.eval_prompts]
    seeds_cfg = WorkerConfig(fidelity_seeds=tuple(range(GUARD_SELECTION_SEED_BASE,
                                                        GUARD_SELECTION_SEED_BASE + args.guard_seeds)))
    guard = FidelityGuard.from_config(seeds_cfg, embedded=True, scorer=embedded_fidelity)
    base_cache: dict[int, list] = {}
    for lab_name in map(labeler_spec, args.labelers):
        labeler = load_labeler(lab_name)
        for seed in args.seeds:
            todo = [(v, n) for v in variants for n in args.labels
                    if (lab_name, v.spec, n, seed) not in finished
                    or (args.guard and (lab_name, v.spec + GUARDED, n, seed) not in finished)]
            if not todo:
                continue
            eval_seeds = eval_seed_set(seed, args.eval_seeds)
            if getattr(trainer.unet, "peft_config", None):
                trainer.unet.disable_adapters()  # base images come from the base
            samples = load_or_sample_pool(out / "pools" / f"seed-{seed}.pt", sampler, seed,
                                          max(args.pool, *args.labels))
            if args.pools_only:
                continue
            pool = label_pool(samples, labeler)
            if seed not in base_cache:
                base_cache[seed] = render_eval(sampler, cases, eval_seeds)
            base_images = base_cache[seed]
            pairs = training_pairs(pool)  # decoded once per pool; every point trains on a prefix
            for variant, n in todo:
                cfg = variant.trainer_config(seed)
                trainer.config = cfg
                t0 = time.perf_counter()
                try:
                    result = trainer.train(pairs[:n])
                except Exception as e:  # a diverged or impossible point is a result too, not the end of the grid
                    r = {"labeler": lab_name, "variant": variant.spec, "labels": n, "seed": seed,
                         "error": f"{type(e).__name__}: {e}"}
                else:
                    train_s = time.perf_counter() - t0
                    trainer.unet.enable_adapters()
                    aligned = render_eval(sampler, cases, eval_seeds)
                    trainer.unet.disable_adapters()
                    r = {"labeler": lab_name, "variant": variant.spec, "labels": n, "seed": seed,
                         "device": loaded.device.type, "objective": cfg.objective, "gamma": cfg.effective_gamma,
                         "beta": cfg.effective_beta,
                         "lr": cfg.lr, "eps": cfg.log_ratio_clip, "train_steps": cfg.train_steps,
                         "steps": result.metrics.get("steps"), "train_seconds": round(train_s, 1),
                         "ties_in_pool": sum(p["target"] == 0.5 for p in pool[:n]),
                         "train_accuracy": round(result.metrics["accuracy"], 3),
                         "clipped_fraction": round(result.metrics["clipped_fraction"], 3),
                         **judge_eval(labeler, base_images, aligned, cases, eval_seeds)}
                records = [r]
                if args.guard and "error" not in r:
                    records.append(guarded_point(r, guard, sampler, trainer, result, base_images, labeler, cases,
                                                 eval_seeds))
                for rec in records:
                    if point_key(rec) in finished:  # re-run only for its guarded twin
                        continue
                    print(json.dumps(rec), flush=True)
                    with results_file.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    done.append(rec)
    return done


# ---- report -----------------------------------------------------------------------------------------------------
def pooled(rs: list[dict]) -> tuple[float, float, float]:
    return paired_win_rate(sum(r["wins"] for r in rs), sum(r["ties"] for r in rs), sum(r["comparisons"] for r in rs))


def table(results: list[dict]) -> str:
    groups = defaultdict(list)
    for r in results:
        if "error" not in r:
            groups[(r["labeler"].split(":")[-1], r["variant"], r["labels"])].append(r)
    lines = ["| labeler | variant | labels | seeds | win rate (pooled) | 95 % CI | per seed | "
             "fidelity base → aligned | within 5 pts |", "|" + "---|" * 9]
    for (lab, variant, labels), rs in sorted(groups.items()):
        rate, lo, hi = pooled(rs)
        fb = sum(r["fidelity_base"] for r in rs) / len(rs)
        fa = sum(r["fidelity_aligned"] for r in rs) / len(rs)
        per_seed = " ".join(f"{r['win_rate']:.2f}" for r in sorted(rs, key=lambda r: r["seed"]))
        promoted = sum(bool(r["promoted"]) for r in rs)
        lines.append(f"| {lab} | {variant} | {labels} | {len(rs)} | {rate:.3f} | [{lo:.3f}, {hi:.3f}] | {per_seed} | "
                     f"{fb:.3f} → {fa:.3f} | {promoted}/{len(rs)} |")
    failed = [r for r in results if "error" in r]
    for r in failed:
        lines.append(f"\nfailed: {r['labeler']} {r['variant']} {r['labels']} labels seed {r['seed']}: {r['error']}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, variants: list[str] | None = None) -> None:
    """Win rate vs labels, one panel per labeler, one line per variant measured at more than one label count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    counts = defaultdict(set)
    for r in ok:
        counts[(r["labeler"], r["variant"])].add(r["labels"])
    labelers = sorted({lab for (lab, _), ns in counts.items() if len(ns) > 1}) or sorted({r["labeler"] for r in ok})
    fig, axes = plt.subplots(1, len(labelers), figsize=(5 * len(labelers), 4), squeeze=False)
    for ax, lab in zip(axes[0], labelers):
        series = defaultdict(lambda: defaultdict(list))
        for r in ok:
            if r["labeler"] == lab and (variants is None or r["variant"] in variants):
                series[r["variant"]][r["labels"]].append(r)
        for name, by_n in sorted(series.items()):
            if len(by_n) < 2:
                continue
            xs = sorted(by_n)
            stats = [pooled(by_n[x]) for x in xs]
            ys = [s[0] for s in stats]
            ax.errorbar(xs, ys, yerr=[[y - s[1] for y, s in zip(ys, stats)], [s[2] - y for y, s in zip(ys, stats)]],
                        marker="o", capsize=3, label=name)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.axhline(0.8, color="green", lw=0.6, ls=":")
        ax.set_title(lab.split(":")[-1])
        ax.set_xlabel("labels")
        ax.set_ylabel("win rate over base (pooled seeds, 95 % CI)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def tradeoff_plot(results: list[dict], path: Path, labels: int = 128) -> None:
    """Win rate (pooled seeds) against the fidelity change, one point per (labeler, variant) at `labels` labels;
    the shaded corner is the target (win rate >= 0.8 with fidelity no more than 5 points below the base)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in results:
        if "error" not in r and r["labels"] == labels:
            groups[(r["labeler"].split(":")[-1], r["variant"])].append(r)
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(12, 5.5))
    ax.add_patch(Rectangle((-MAX_DROP, 0.8), 1.0, 0.2, color="green", alpha=0.08, lw=0))
    markers = dict(zip(sorted({lab for lab, _ in groups}), "osD^v<>"))
    for (lab, variant), rs in sorted(groups.items()):
        rate, lo, hi = pooled(rs)
        drop = sum(r["fidelity_aligned"] - r["fidelity_base"] for r in rs) / len(rs)
        ax.errorbar(drop, rate, yerr=[[rate - lo], [hi - rate]], marker=markers[lab], capsize=2, ms=6,
                    label=f"{lab} · {variant} ({len(rs)} seeds)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("fidelity aligned − base (mean over seeds)")
    ax.set_ylabel(f"win rate over base after {labels} labels")
    ax.set_ylim(0.3, 1.0)
    ax.set_xlim(min(-0.3, ax.get_xlim()[0]), 0.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--variants", nargs="+", default=["discounted", "trajectory", "diffusion-dpo"])
    p.add_argument("--labelers", nargs="+", default=["larger"], help="names in alignment.eval.labelers or module:function")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pool", type=int, default=256, help="pairs sampled and labeled per (labeler, seed)")
    p.add_argument("--eval-prompts", type=int, default=8, help="evaluation prompts (alignment.eval.splits: 8)")
    p.add_argument("--eval-seeds", type=int, default=32)
    p.add_argument("--model", default="embedded")
    p.add_argument("--out", default="runs/alignment")
    p.add_argument("--report-only", action="store_true", help="only rebuild table.md and the plot")
    p.add_argument("--guard", action="store_true",
                   help="also evaluate what the worker would serve: the latest checkpoint the fidelity guard passes")
    p.add_argument("--guard-seeds", type=int, default=64,
                   help="selection seeds of the guard, one image each (the worker's default is 64)")
    p.add_argument("--pools-only", action="store_true", help="only sample and label the pools (e.g. ahead of time)")
    a = p.parse_args(argv)
    if min(a.labels) < 2:
        p.error("--labels must be at least 2")
    out = Path(a.out)
    results = ([json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] if a.report_only
               else run_grid(a))
    if a.pools_only:
        return
    (out / "table.md").write_text(table(results) + "\n")
    plot(results, out / "win_rate.png")
    tradeoff_plot(results, out / "tradeoff.png")
    print(table(results))


if __name__ == "__main__":
    main()
