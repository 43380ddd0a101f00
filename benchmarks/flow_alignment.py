"""Temporal discounting on a flow-matching model: discounted (gamma 0.9) vs gamma = 1 vs flow Diffusion-DPO.

    python -m benchmarks.flow_alignment --json runs/flow-alignment.json          # the full grid (hours on a CPU)
    python -m benchmarks.flow_alignment --labels 8 --seeds 0 --labelers larger --train-steps 4 --cases 2

On the embedded flow model (`--model embedded-flow`, SD3-class, sampled with the SDE at its noise level): for each
seed, a pool of base pairs is sampled once and judged by each programmatic labeler (`alignment.eval.labelers`);
each objective trains a fresh LoRA on the first N labels, and the adapter's images on the held-out prompts are
judged against the base's (same prompt and seed, ties half) with a Wilson interval, with the prompt fidelity of
both (`alignment.embedded.evaluate.score`). `--noise-levels` adds the noise-level trade-off: the base's sample
quality at each noise level (the SDE's `eta`; the smallest stands in for the ODE, which has no log-probability and
which the sampler therefore refuses). Results are printed and written as JSON, one row per point;
`--summarize FILE...` pools earlier results over their seeds into the table of docs/flow.md:

    python -m benchmarks.flow_alignment --summarize docs/flow-alignment-results.jsonl
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

VARIANTS = {"discounted": {"objective": "discounted", "gamma": 0.9}, "gamma1": {"objective": "trajectory"},
            "diffusion-dpo": {"objective": "diffusion-dpo"}}


def run(args) -> list[dict]:
    from alignment.embedded.evaluate import evaluate, held_out_cases
    from alignment.eval.labelers import load_labeler
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.trainer import Trainer
    from benchmarks.alignment import judge_eval, label_pool, labeler_spec, render_eval, sample_pool, training_pairs
    from settings import SamplerConfig, TrainerConfig

    base = load_pipeline(args.model)
    cfg = SamplerConfig.from_defaults(base.sampler_defaults, steps=args.steps)
    sampler = Sampler(base, cfg)
    cases = held_out_cases(sizes=(None,))[:args.cases]
    eval_seeds = list(range(1000, 1000 + args.eval_seeds))
    base_images = render_eval(sampler, cases, eval_seeds)
    rows: list[dict] = []
    for level in args.noise_levels:  # the noise-level trade-off of the base model itself
        quality, _, _ = evaluate(Sampler(base, replace(cfg, eta=level)), eval_seeds)
        rows.append({"kind": "noise_level", "eta": level, **{k: quality[k] for k in
                     ("colour", "background", "shape", "large_bigger_than_small", "fidelity")}})
    trainer = Trainer(load_pipeline(args.model), TrainerConfig())
    aligned_sampler = Sampler(trainer.model, cfg)
    for seed in args.seeds:
        pool = sample_pool(sampler, seed, max(args.labels))
        for labeler_name in args.labelers:
            labeled = label_pool(pool, load_labeler(labeler_spec(labeler_name)))
            for n in args.labels:
                for variant in args.variants:
                    trainer.config = TrainerConfig(**VARIANTS[variant], train_steps=args.train_steps,
                                                   checkpoint_every=0, seed=seed)
                    result = trainer.train(training_pairs(labeled[:n]))
                    trainer.set_adapter_enabled(True)
                    aligned = render_eval(aligned_sampler, cases, eval_seeds)
                    figures = judge_eval(load_labeler(labeler_spec(labeler_name)), base_images, aligned, cases,
                                         eval_seeds)
                    rows.append({"kind": "alignment", "variant": variant, "labeler": labeler_name, "labels": n,
                                 "seed": seed, "loss_first": result.metrics["loss_first"],
                                 "loss": result.metrics["loss"], **figures})
                    print(json.dumps(rows[-1]))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """The alignment rows pooled over seeds, one per (labeler, labels, variant): the win rate of all their
    comparisons (ties half) with its Wilson interval, each seed's win rate, and the mean fidelity of base and
    adapter."""
    from alignment.core.objective import paired_win_rate

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind") == "alignment":
            groups.setdefault((r["labeler"], r["labels"], r["variant"]), []).append(r)
    out = []
    for (labeler, labels, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                 list(VARIANTS).index(kv[0][2]))):
        rs = sorted(rs, key=lambda r: r["seed"])
        if len({r["seed"] for r in rs}) != len(rs):
            raise ValueError(f"{labeler}/{labels}/{variant}: a seed appears twice")
        rate, low, high = paired_win_rate(sum(r["wins"] for r in rs), sum(r["ties"] for r in rs),
                                          sum(r["comparisons"] for r in rs))
        out.append({"labeler": labeler, "labels": labels, "variant": variant, "seeds": [r["seed"] for r in rs],
                    "win_rate": rate, "ci_low": low, "ci_high": high,
                    "per_seed": [r["win_rate"] for r in rs],
                    "fidelity_base": sum(r["fidelity_base"] for r in rs) / len(rs),
                    "fidelity_aligned": sum(r["fidelity_aligned"] for r in rs) / len(rs)})
    return out


def markdown(summary: list[dict]) -> str:
    """`summarize`'s rows as the table in docs/flow.md: a line per labeler and label count, a column per variant."""
    lines = ["| labeler | labels | " + " | ".join(VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]
    cells: dict[tuple, dict[str, str]] = {}
    for r in summary:
        per_seed = "/".join(f"{x:.2f}" for x in r["per_seed"])
        cells.setdefault((r["labeler"], r["labels"]), {})[r["variant"]] = (
            f"{r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] ({per_seed}), fid "
            f"{r['fidelity_aligned']:.3f}")
    for (labeler, labels), by_variant in cells.items():
        lines.append(f"| {labeler} | {labels} | " + " | ".join(by_variant.get(v, "") for v in VARIANTS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded-flow")
    p.add_argument("--labels", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labelers", nargs="+", default=["larger", "smaller"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-steps", type=int, default=120)
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    p.add_argument("--cases", type=int, default=16, help="held-out prompts judged (at most 16)")
    p.add_argument("--eval-seeds", type=int, default=4)
    p.add_argument("--noise-levels", type=float, nargs="*", default=[0.7, 0.3, 0.05])
    p.add_argument("--json", type=Path)
    p.add_argument("--summarize", type=Path, nargs="+", metavar="FILE",
                   help="print the pooled table of earlier results (JSON lists or JSON lines) and run nothing")
    args = p.parse_args(argv)
    if args.summarize:
        rows = [r for f in args.summarize for r in read_rows(f)]
        print(markdown(summarize(rows)))
        return rows
    rows = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


def read_rows(path: Path) -> list[dict]:
    """Rows from a `--json` file (a JSON list) or from the printed rows, one JSON object a line
    (docs/flow-alignment-results.jsonl, a captured log: other lines are skipped)."""
    text = path.read_text()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: a line that starts like a row is not JSON ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SystemExit(f"{path}: expected a list of result rows")
    return rows


if __name__ == "__main__":
    main()
