"""The studio's loop without a browser: sample pairs from the live model, label them, train, evaluate.

    python -m alignment.simulate --labeler alignment.eval.labelers:larger --pairs 128 --rounds 2 \\
        --objective discounted --gamma 0.9 --seed 0 --data-dir /tmp/sim --json sim.json

It goes through the same live model (`LiveModel`: sampler and hot-swap), storage and worker (trainer + fidelity
guard) as the app. Each round generates `pairs / rounds` pairs from the current live model (on-policy rounds, as in
the studio), stores them and the labeler's votes, and runs one training on all votes so far. What the studio then
serves (the live adapter, or the base when the guard promoted none) is judged against the base by the same labeler
on the evaluation set of `alignment.eval.splits`: prompts and seeds that neither training nor the fidelity guard
ever rendered (other held-out attribute combinations, seeds from 10^6). Reported: win rate with ties counted half
and a 95 % Wilson interval and, for the embedded model, the prompt fidelity of base and served model on the same
images. The guard's own figures (on its selection and confirmation seeds) are reported apart, under `guard`.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import replace
from pathlib import Path

from alignment.embedded.data import COLOURS, SHAPES, caption_for, held_out_combinations
from alignment.embedded.evaluate import score
from alignment.eval.splits import eval_cases, eval_seeds, training_seed0
from alignment.eval.labelers import Labeler, judge, load_labeler
from alignment.families.loader import LoadedModel, load_pipeline
from alignment.core.objective import paired_win_rate
from alignment.serving.live import LiveModel
from alignment.serving.sampler import Sampler
from alignment.training.trainer import Trainer
from settings import ModelConfig, SimulationConfig, StoreConfig, TrainerConfig
from settings_cli import CommandLine
from alignment.training.worker import Worker
from settings import WorkerConfig


def training_prompts(rng: random.Random, n: int) -> list[str]:
    """Grammar prompts whose (colour, shape, background) is not one of the held-out evaluation combinations."""
    held = held_out_combinations()
    out = []
    while len(out) < n:
        c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        b = rng.choice([x for x in COLOURS if x != c])
        if (c, s, b) not in held:
            out.append(caption_for(c, s, None, b if rng.random() < 0.8 else None))
    return out


def eval_prompts(n: int) -> list[str]:
    """The first `n` evaluation prompts (`alignment.eval.splits.eval_cases`, without and then with size words)."""
    return [c.prompt for c in eval_cases(sizes=(None, "small", "large"))][:n]


def collect_round(sampler, repo, labeler: Labeler, prompts: list[str], seed0: int, annotator: str) -> int:
    """Generate one pair per prompt with `sampler` (a `LiveModel`, or a plain `Sampler`: anything with
    `generate_pair`), store it and the labeler's vote; returns the number of votes stored."""
    from storage import NewGeneration

    n = 0
    for i, prompt in enumerate(prompts):
        seeds = (seed0 + 2 * i, seed0 + 2 * i + 1)
        a, b = sampler.generate_pair(prompt, seeds)
        gens = [NewGeneration(g.seed, g.trajectory.model_id, g.trajectory.adapter_version, g.trajectory.settings,
                              png(g.image), g.trajectory.to_bytes()) for g in (a, b)]
        pair = repo.create_pair(prompt, gens[0], gens[1], served_to=annotator)
        choice = judge(labeler, a.image, b.image, prompt)
        repo.record_vote(pair.id, annotator, {0: "left", 1: "right", None: "tie"}[choice])
        n += 1
    return n


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def judge_against_base(labeler: Labeler, base: list, aligned: list, prompts: list[str]) -> dict:
    """The labeler's verdict on aligned vs base image pairs (same prompt and seed), the aligned image shown first
    and second in turn so that a position bias cannot favour either model; ties count half."""
    wins = ties = 0
    for n, (im_b, im_a, p) in enumerate(zip(base, aligned, prompts, strict=True)):
        flip = n % 2 == 1
        choice = judge(labeler, im_b, im_a, p) if flip else judge(labeler, im_a, im_b, p)
        if choice is None:
            ties += 1
        elif choice == (1 if flip else 0):
            wins += 1
    rate, lo, hi = paired_win_rate(wins, ties, len(base))
    return {"win_rate": rate, "ci_low": lo, "ci_high": hi, "wins": wins, "ties": ties, "comparisons": len(base)}


def served_figures(live: LiveModel, version: int | None, labeler: Labeler, prompts: list[str], seeds: list[int],
                   fidelity: bool) -> dict:
    """`judge_against_base` on images of the base and of adapter `version` (None: the base itself) at equal prompts
    and seeds, and with `fidelity` the embedded analysis' prompt fidelity of both on the same images."""
    base = [g.image for p in prompts for g in live.at(None).generate(p, seeds)]
    aligned = base if version is None else [g.image for p in prompts for g in live.at(version).generate(p, seeds)]
    flat = [p for p in prompts for _ in seeds]
    result = judge_against_base(labeler, base, aligned, flat)
    if fidelity:
        cases = {c.prompt: c for c in eval_cases(sizes=(None, "small", "large"))}
        result["fidelity_base"] = score(base, [cases[p] for p in flat])["fidelity"]
        result["fidelity_aligned"] = score(aligned, [cases[p] for p in flat])["fidelity"]
    return result


GUARD_KEYS = ("guard_selection_fidelity_base", "guard_selection_fidelity_candidate",
              "guard_selection_fidelity_lower_bound", "fidelity_base", "fidelity_candidate", "fidelity_lower_bound",
              "checkpoint_step", "guard_seconds")


GUARD_SETTINGS = ("fidelity_seeds", "fidelity_prompts", "fidelity_confirm_seeds", "fidelity_alpha", "fidelity_max_drop")


def simulate(cfg: SimulationConfig, data_dir: str | Path, model: str | LoadedModel = "embedded",
             worker_config: WorkerConfig | None = None) -> dict:
    """The loop of this module; `worker_config` holds the guard's settings (default: the worker's)."""
    from storage import Repository

    loaded = model if isinstance(model, LoadedModel) else load_pipeline(model)
    repo = Repository(data_dir)
    labeler = load_labeler(cfg.labeler)
    annotator = f"sim:{cfg.labeler}"
    live = LiveModel(Sampler(loaded), repo)
    trainer = Trainer(load_pipeline(loaded.model_id, dtype="fp32"), cfg.trainer)  # its own copy of the UNet
    worker = Worker(repo, loaded.model_id, cfg.trainer, replace(worker_config or WorkerConfig(), min_votes=1),
                    trainer=trainer)
    rng = random.Random(cfg.seed)
    per_round = [cfg.pairs // cfg.rounds + (1 if r < cfg.pairs % cfg.rounds else 0) for r in range(cfg.rounds)]
    t_train = 0.0
    labels = 0
    last = None
    for r, n in enumerate(per_round):
        labels += collect_round(live, repo, labeler, training_prompts(rng, n), training_seed0(cfg.seed) + labels * 2,
                                annotator)
        t0 = time.perf_counter()
        last = worker.run_once()
        t_train += time.perf_counter() - t0
        if last is None or last["status"] == "failed":
            raise RuntimeError(f"training failed in round {r}: {last}")
    served = repo.live_adapter()
    version = served.version if served is not None else None
    prompts = eval_prompts(cfg.eval_prompts)
    result = served_figures(live, version, labeler, prompts, eval_seeds(cfg.seed, cfg.eval_seeds), loaded.is_embedded)
    # the guard's own figures: "guard_selection_*" on the seeds it selected on, "fidelity_*" on its confirmation
    metrics = last.get("metrics", {})
    result.update({"labels": labels, "train_seconds": round(t_train, 2), "adapter_version": version,
                   "candidate_version": last["version"], "promoted": last["status"] == "live",
                   "objective": cfg.trainer.objective, "gamma": cfg.trainer.effective_gamma, "labeler": cfg.labeler,
                   "seed": cfg.seed, "rounds": cfg.rounds,
                   "guard": {k.replace("fidelity_", "confirmation_fidelity_", 1) if k.startswith("fidelity_") else k:
                             metrics[k] for k in GUARD_KEYS if k in metrics}})
    repo.close()
    return result


def main(argv: list[str] | None = None) -> None:
    cli = CommandLine(SimulationConfig, TrainerConfig, (ModelConfig, ("model",)), (StoreConfig, ("data_dir",)),
                      (WorkerConfig, GUARD_SETTINGS),
                      prog="python -m alignment.simulate", description=__doc__, required=("data_dir",))
    cli.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parsed = cli.parse(argv)
    tcfg = parsed.build(TrainerConfig)  # --seed is the simulation's and the training runs' seed alike
    cfg = parsed.build(SimulationConfig, trainer=tcfg)
    result = simulate(cfg, parsed.build(StoreConfig).data_dir, parsed.build(ModelConfig).model,
                      parsed.build(WorkerConfig))
    served = f"version {result['adapter_version']}" if result["adapter_version"] else "the base (nothing promoted)"
    print(f"{cfg.labeler} {tcfg.objective} gamma={tcfg.effective_gamma} labels={result['labels']}, serving {served}, "
          f"on evaluation prompts and seeds the guard never saw: win rate {result['win_rate']:.3f} "
          f"[{result['ci_low']:.3f}, {result['ci_high']:.3f}] fidelity {result.get('fidelity_base', float('nan')):.3f}"
          f" -> {result.get('fidelity_aligned', float('nan')):.3f}; train {result['train_seconds']:.1f}s")
    if parsed.extra.json:
        parsed.extra.json.parent.mkdir(parents=True, exist_ok=True)
        parsed.extra.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
