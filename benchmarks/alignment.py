"""Alignment-efficiency benchmark: win rate over the base after N labels, per objective, labeler and seed.

    python -m benchmarks.alignment --labels 32 64 128 --objectives discounted trajectory diffusion-dpo \\
        --labelers alignment.labelers:larger alignment.labelers:saturated alignment.labelers:lower \\
        --seeds 0 1 2 --out runs/alignment        # writes results.jsonl, table.md and win_rate.png

Every point is one `alignment.simulate` run (its own data dir): sample from the live model, label, train (with the
fidelity guard), then judge aligned vs base on held-out prompts and seeds. Results are appended to results.jsonl as
they finish, so an interrupted benchmark keeps what it measured and `--resume` skips finished points. The table
pools seeds per point (mean win rate, and a Wilson interval over all pooled comparisons).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from alignment.objective import paired_win_rate
from alignment.simulate import SimulationConfig, simulate
from alignment.trainer import TrainerConfig


def run_grid(args) -> list[dict]:
    from alignment.models import load_pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    key = lambda r: (r["labeler"], r["objective"], r["gamma"], r["labels"], r["seed"], r.get("lr"), r.get("eps"))  # noqa: E731
    finished = {key(r) for r in done}
    for labeler in args.labelers:
        for objective in args.objectives:
            for gamma in (args.gammas if objective != "trajectory" else [1.0]):
                for labels in args.labels:
                    for seed in args.seeds:
                        tcfg = TrainerConfig(objective=objective, gamma=gamma, seed=seed, lr=args.lr,
                                             log_ratio_clip=args.eps, train_steps=args.train_steps)
                        probe = {"labeler": labeler, "objective": objective, "gamma": tcfg.effective_gamma,
                                 "labels": labels, "seed": seed, "lr": args.lr, "eps": args.eps}
                        if key(probe) in finished:
                            continue
                        data = Path(tempfile.mkdtemp(prefix="bench-"))
                        try:
                            cfg = SimulationConfig(labeler, labels, args.rounds, args.eval_prompts, args.eval_seeds,
                                                   seed, tcfg)
                            # a fresh pipeline per point: a simulation leaves its adapters in the one it used
                            r = simulate(cfg, data, load_pipeline(args.model))
                        finally:
                            shutil.rmtree(data, ignore_errors=True)
                        r.update({"lr": args.lr, "eps": args.eps})
                        print(json.dumps(r), flush=True)
                        with results_file.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                        done.append(r)
    return done


def table(results: list[dict]) -> str:
    groups = defaultdict(list)
    for r in results:
        groups[(r["labeler"].split(":")[-1], r["objective"], r["gamma"], r["labels"], r.get("lr"), r.get("eps"))].append(r)
    lines = ["| labeler | objective | gamma | lr | eps | labels | seeds | win rate | 95 % CI (pooled) | "
             "fidelity base -> aligned | promoted |", "|" + "---|" * 11]
    for (lab, obj, gamma, labels, lr, eps), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        wins = sum(r["wins"] for r in rs)
        ties = sum(r["ties"] for r in rs)
        n = sum(r["comparisons"] for r in rs)
        rate, lo, hi = paired_win_rate(wins, ties, n)
        fb = sum(r.get("fidelity_base", 0) for r in rs) / len(rs)
        fa = sum(r.get("fidelity_aligned", 0) for r in rs) / len(rs)
        promoted = sum(bool(r.get("promoted")) for r in rs)
        lines.append(f"| {lab} | {obj} | {gamma:g} | {lr:g} | {eps:g} | {labels} | {len(rs)} | {rate:.3f} | "
                     f"[{lo:.3f}, {hi:.3f}] | {fb:.3f} -> {fa:.3f} | {promoted}/{len(rs)} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelers = sorted({r["labeler"] for r in results})
    fig, axes = plt.subplots(1, len(labelers), figsize=(5 * len(labelers), 4), squeeze=False)
    for ax, lab in zip(axes[0], labelers):
        series = defaultdict(lambda: defaultdict(list))
        for r in results:
            if r["labeler"] == lab:
                series[f"{r['objective']} (gamma {r['gamma']:g})"][r["labels"]].append(r)
        for name, by_n in sorted(series.items()):
            xs = sorted(by_n)
            stats = [paired_win_rate(sum(r["wins"] for r in by_n[x]), sum(r["ties"] for r in by_n[x]),
                                     sum(r["comparisons"] for r in by_n[x])) for x in xs]
            ys = [s[0] for s in stats]
            ax.errorbar(xs, ys, yerr=[[y - s[1] for y, s in zip(ys, stats)], [s[2] - y for y, s in zip(ys, stats)]],
                        marker="o", capsize=3, label=name)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(lab.split(":")[-1])
        ax.set_xlabel("labels")
        ax.set_ylabel("win rate over base")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--objectives", nargs="+", default=["discounted", "trajectory", "diffusion-dpo"])
    p.add_argument("--gammas", type=float, nargs="+", default=[0.9])
    p.add_argument("--labelers", nargs="+", default=["alignment.labelers:larger"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lr", type=float, default=TrainerConfig().lr)
    p.add_argument("--eps", type=float, default=TrainerConfig().log_ratio_clip)
    p.add_argument("--train-steps", type=int, default=TrainerConfig().train_steps)
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--eval-seeds", type=int, default=4)
    p.add_argument("--model", default="embedded")
    p.add_argument("--out", default="runs/alignment")
    p.add_argument("--report-only", action="store_true", help="only rebuild table.md and the plot")
    a = p.parse_args(argv)
    out = Path(a.out)
    results = ([json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] if a.report_only
               else run_grid(a))
    (out / "table.md").write_text(table(results) + "\n")
    plot(results, out / "win_rate.png")
    print(table(results))


if __name__ == "__main__":
    main()
