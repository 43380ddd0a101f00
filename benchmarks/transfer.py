"""Where does a run's learnt preference carry over? The final weights of one training run, judged on three sets.

    python -m benchmarks.transfer --labelers larger smaller --seeds 3 1 --eval-seeds 16 --out runs/transfer
    python -m benchmarks.transfer --labelers larger --seeds 3 1 --trainer-seeds 1 3 --out runs/transfer-crossed

For each (labeler, run seed): the benchmark's pool of base pairs for that seed (`benchmarks.alignment`, cached in
`<out>/pools`), labelled by the labeler, trains one adapter at the defaults (no guard: nothing selects it); its
final weights and the base are then rendered at equal prompt and seed on

- `training prompts`: up to 8 of the prompts the run trained on, at seeds that no training pair, evaluation or
  guard uses (from 1.4 x 10^9);
- `eval prompts, own seeds`: the evaluation prompts at the run seed's evaluation seeds (`alignment.eval.splits`),
  the set the guard study and the alignment benchmark judge on;
- `eval prompts, other seeds`: the same prompts at the evaluation seeds of `--other-seed` (a run seed of its own).

Each set reports the labeler's win rate over the base (ties half, 95 % Wilson interval), the mean change of the
shape's area (the quantity the size labelers judge), and the prompt fidelity of both. A preference that holds on
the training prompts and flips on the evaluation prompts does not carry over to new (colour, shape, background)
combinations; one that flips only at the run seed's own evaluation seeds says those seeds are unusual.

A run seed sets two things: the pool (its prompts, seeds and pairs) and the trainer's own seed (the LoRA's
initialisation, the order of the pairs and the timesteps drawn). `--trainer-seeds` gives the trainer a seed of its
own per run seed (in the same order), so that a pool can be trained with another run's trainer seed.

Every run keeps its final weights in `<out>/adapters/`. `--mean-of 0,1,2 1,2,3` trains nothing: for each labeler
and run seed it judges the mean of the kept adapters of those trainer seeds (`Trainer.load_mean`, one LoRA whose
weight change is the members' mean), so that an ensemble over trainer seeds is measured on the same sets:

    python -m benchmarks.transfer --labelers larger --seeds 3 --mean-of 0,1,2 0,1,2,3 --out runs/transfer-crossed
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch


def area_change(base: list, aligned: list) -> float:
    from alignment.embedded.analysis import analyze

    return sum(analyze(a).area - analyze(b).area for b, a in zip(base, aligned, strict=True)) / max(1, len(base))


def judge_set(labeler, sampler, trainer, prompts: list[str], cases: list, seeds: list[int],
              base_images: dict) -> dict:
    """Base and final weights at equal (prompt, seed): win rate and area change; with `cases` (the prompts'
    `PromptCase`s) also the prompt fidelity of both (`benchmarks.alignment.judge_eval`). The base's images are
    rendered once per (prompts, seeds) and kept in `base_images` for the next labeler."""
    from alignment.eval.simulate import judge_against_base
    from benchmarks.alignment import judge_eval

    def render(enabled: bool) -> list:
        trainer.set_adapter_enabled(enabled)
        return [g.image for p in prompts for g in sampler.generate(p, seeds)]

    key = (tuple(prompts), tuple(seeds))
    if key not in base_images:
        base_images[key] = render(False)
    images = {"base": base_images[key], "aligned": render(True)}
    trainer.set_adapter_enabled(False)
    if cases:
        out = judge_eval(labeler, images["base"], images["aligned"], cases, seeds)
    else:
        out = judge_against_base(labeler, images["base"], images["aligned"], [p for p in prompts for _ in seeds])
    out["area_change"] = round(area_change(images["base"], images["aligned"]), 4)
    return out


def judge_sets(labeler, sampler, trainer, seed: int, pool: list[dict], args, base_images: dict) -> dict:
    """The three sets of the module docstring, judged for the trainer's current adapter."""
    from alignment.eval.splits import eval_cases, eval_seeds, transfer_seeds

    cases = eval_cases()
    trained_on = sorted({p["prompt"] for p in pool[: args.labels]})
    prompts = random.Random(seed).sample(trained_on, min(len(cases), len(trained_on)))
    eval_prompts = [c.prompt for c in cases]
    sets = {"training prompts": (prompts, [], transfer_seeds(args.eval_seeds)),
            "eval prompts, own seeds": (eval_prompts, cases, eval_seeds(seed, args.eval_seeds)),
            "eval prompts, other seeds": (eval_prompts, cases, eval_seeds(args.other_seed, args.eval_seeds))}
    return {k: judge_set(labeler, sampler, trainer, *v, base_images) for k, v in sets.items()}


def run(args) -> list[dict]:
    from alignment.eval.labelers import load_labeler
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.trainer import Trainer
    from benchmarks.alignment import (
        Variant,
        label_pool,
        labeler_spec,
        load_or_sample_pool,
        training_pairs,
    )
    from settings import SamplerConfig

    trainer_seeds = args.trainer_seeds or args.seeds
    if len(trainer_seeds) != len(args.seeds):
        raise SystemExit(f"--trainer-seeds needs one seed per run seed ({len(args.seeds)}), got {len(trainer_seeds)}")
    if args.other_seed in args.seeds:
        raise SystemExit(f"--other-seed {args.other_seed} must differ from the run seeds")
    groups = trainer_seed_groups(args.mean_of or [])
    out = Path(args.out)
    variant = Variant(args.variant)
    members = {(name, seed, group): [adapter_path(out, name, seed, m, variant) for m in group]
               for seed in args.seeds for name in map(labeler_spec, args.labelers) for group in groups}
    for paths in members.values():  # all checked before anything is rendered or written
        if missing := [p for p in paths if not p.exists()]:
            raise SystemExit(f"--mean-of: no kept adapter {missing[0]} (train that trainer seed first)")
    (out / "pools").mkdir(parents=True, exist_ok=True)
    loaded = load_pipeline("embedded", dtype="fp32")
    trainer = Trainer(loaded)
    sampler = Sampler(loaded, SamplerConfig.from_defaults(loaded.sampler_defaults), fuse=False)
    results, base_images = [], {}
    for seed, trainer_seed in zip(args.seeds, trainer_seeds):
        for name in map(labeler_spec, args.labelers):
            labeler = load_labeler(name)
            if getattr(trainer.unet, "peft_config", None):
                trainer.set_adapter_enabled(False)
            pool = load_or_sample_pool(out / "pools" / f"seed-{seed}.pt", sampler, seed, args.labels)
            row = {"labeler": name, "seed": seed, "variant": variant.spec, "labels": args.labels}
            if not groups:
                trainer.config = variant.trainer_config(trainer_seed)
                result = trainer.train(training_pairs(label_pool(pool, labeler))[: args.labels])
                torch.save(trainer.lora_state(), adapter_path(out, name, seed, trainer_seed, variant))
                write_row(out, {**row, "trainer_seed": trainer_seed,
                                "train_accuracy": round(result.metrics["accuracy"], 3),
                                **judge_sets(labeler, sampler, trainer, seed, pool, args, base_images)}, results)
            for group in groups:  # means of kept adapters; nothing is trained
                trainer.config = variant.trainer_config(group[0])
                trainer.load_mean([torch.load(p) for p in members[(name, seed, group)]])
                write_row(out, {**row, "trainer_seed": "mean(" + ",".join(map(str, group)) + ")",
                                **judge_sets(labeler, sampler, trainer, seed, pool, args, base_images)}, results)
    return results


def adapter_path(out: Path, labeler: str, seed: int, trainer_seed: int, variant) -> Path:
    folder = out / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() or c in "=.-" else "_" for c in f"{labeler}-{variant.spec}")
    return folder / f"{tag}-pool{seed}-trainer{trainer_seed}.pt"


def write_row(out: Path, r: dict, results: list) -> None:
    print(json.dumps(r), flush=True)
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(r) + "\n")
    results.append(r)


def trainer_seed_groups(specs: list[str]) -> list[tuple[int, ...]]:
    """`--mean-of` groups: "0,1,2" -> (0, 1, 2); two or more distinct seeds each."""
    groups = []
    for spec in specs:
        try:
            group = tuple(int(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise SystemExit(f"--mean-of takes comma-separated trainer seeds, e.g. 0,1,2; got {spec!r}") from None
        if len(set(group)) < 2 or len(set(group)) != len(group):
            raise SystemExit(f"--mean-of {spec!r}: a mean needs two or more distinct trainer seeds")
        groups.append(group)
    return groups


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labelers", nargs="+", default=["larger", "smaller"])
    p.add_argument("--seeds", type=int, nargs="+", default=[3])
    p.add_argument("--trainer-seeds", type=int, nargs="+", default=None,
                   help="the trainer's seed for each run seed, in order (default: the run seed itself)")
    p.add_argument("--other-seed", type=int, default=0, help="run seed whose evaluation seeds are the third set")
    p.add_argument("--labels", type=int, default=128)
    p.add_argument("--eval-seeds", type=int, default=16, help="seeds per set (x 8 prompts)")
    p.add_argument("--variant", default="discounted", help="objective[:key=value,...] as in benchmarks.alignment")
    p.add_argument("--mean-of", nargs="+", default=None, metavar="SEEDS",
                   help="judge the mean of the adapters kept for these trainer seeds (e.g. 0,1,2), per labeler and "
                        "run seed, instead of training")
    p.add_argument("--out", default="runs/transfer")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
