"""The studio's loop without a browser: sample pairs from the live model, label them, train, evaluate.

    python -m alignment.simulate --labeler alignment.eval.labelers:larger --pairs 128 --rounds 2 \\
        --objective discounted --gamma 0.9 --seed 0 --data-dir /tmp/sim --json sim.json

It goes through the same sampler, storage, worker (trainer + fidelity guard) and live hot-swap as the app. Each round
generates `pairs / rounds` pairs from the current live model (on-policy rounds, as in the studio), stores them and
the labeler's votes, and runs one training on all votes so far. The final candidate adapter is then judged against
the base by the same labeler on prompts and seeds never used in training (held-out attribute combinations, seeds
from 10^6): win rate with ties counted half and a 95 % Wilson interval. For the embedded model the prompt fidelity
of base and aligned model is reported too.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignment.embedded.data import COLOURS, SHAPES, caption_for, held_out_combinations
from alignment.embedded.evaluate import prompt_fidelity
from alignment.eval.labelers import Labeler, judge, load_labeler
from alignment.serving.live import load_version, sync_live_adapter
from alignment.families.loader import LoadedModel, load_pipeline
from alignment.core.objective import paired_win_rate
from alignment.serving.sampler import Sampler
from alignment.training.trainer import Trainer
from settings import TrainerConfig
from alignment.training.worker import Worker
from settings import WorkerConfig

EVAL_SEED_BASE = 1_000_000


@dataclass
class SimulationConfig:
    labeler: str = "alignment.eval.labelers:larger"
    pairs: int = 64
    rounds: int = 1
    eval_prompts: int = 32
    eval_seeds: int = 4
    seed: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self):
        if self.pairs < 2 or self.rounds < 1 or self.rounds > self.pairs:
            raise ValueError("need pairs >= 2 and 1 <= rounds <= pairs")
        if self.eval_prompts < 1 or self.eval_seeds < 1:
            raise ValueError("eval_prompts and eval_seeds must be at least 1")


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
    combos = sorted(held_out_combinations())
    return [caption_for(c, s, None, b) for c, s, b in combos][:n] if n <= len(combos) else \
        [caption_for(c, s, None, b) for c, s, b in combos]


def collect_round(sampler: Sampler, repo, labeler: Labeler, prompts: list[str], seed0: int, annotator: str) -> int:
    """Generate one pair per prompt, store it and the labeler's vote; returns the number of votes stored."""
    from storage import NewGeneration

    n = 0
    for i, prompt in enumerate(prompts):
        seeds = (seed0 + 2 * i, seed0 + 2 * i + 1)
        a, b = sampler.generate_pair(prompt, seeds)
        gens = [NewGeneration(g.seed, sampler.model.model_id, sampler.adapter_version, g.trajectory.settings,
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


def win_rate(sampler: Sampler, repo, version: int, labeler: Labeler, prompts: list[str], seeds: list[int]) -> dict:
    """`judge_against_base` on images of the base and of adapter `version` at equal prompts and seeds."""
    with sampler.lock:
        load_version(sampler, repo, None)
        base = [g.image for p in prompts for g in sampler.generate(p, seeds)]
        load_version(sampler, repo, version)
        aligned = [g.image for p in prompts for g in sampler.generate(p, seeds)]
    return judge_against_base(labeler, base, aligned, [p for p in prompts for _ in seeds])


def simulate(cfg: SimulationConfig, data_dir: str | Path, model: str | LoadedModel = "embedded") -> dict:
    from storage import Repository

    loaded = model if isinstance(model, LoadedModel) else load_pipeline(model)
    repo = Repository(data_dir)
    labeler = load_labeler(cfg.labeler)
    annotator = f"sim:{cfg.labeler}"
    sampler = Sampler(loaded)
    trainer = Trainer(load_pipeline(loaded.model_id, dtype="fp32"), cfg.trainer)  # its own copy of the UNet
    worker = Worker(repo, loaded.model_id, cfg.trainer, WorkerConfig(min_votes=1), trainer=trainer)
    rng = random.Random(cfg.seed)
    per_round = [cfg.pairs // cfg.rounds + (1 if r < cfg.pairs % cfg.rounds else 0) for r in range(cfg.rounds)]
    t_train = 0.0
    labels = 0
    last = None
    for r, n in enumerate(per_round):
        sync_live_adapter(sampler, repo)
        labels += collect_round(sampler, repo, labeler, training_prompts(rng, n), cfg.seed * 100_000 + labels * 2,
                                annotator)
        t0 = time.perf_counter()
        last = worker.run_once()
        t_train += time.perf_counter() - t0
        if last is None or last["status"] == "failed":
            raise RuntimeError(f"training failed in round {r}: {last}")
    version = last["version"]
    prompts = eval_prompts(cfg.eval_prompts)
    seeds = [EVAL_SEED_BASE + cfg.seed * 1000 + j for j in range(cfg.eval_seeds)]
    result = win_rate(sampler, repo, version, labeler, prompts, seeds)
    result.update({"labels": labels, "train_seconds": round(t_train, 2), "adapter_version": version,
                   "promoted": last["status"] == "live", "objective": cfg.trainer.objective,
                   "gamma": cfg.trainer.effective_gamma, "labeler": cfg.labeler, "seed": cfg.seed,
                   "rounds": cfg.rounds})
    if loaded.is_embedded:
        with sampler.lock:
            load_version(sampler, repo, None)
            result["fidelity_base"] = prompt_fidelity(sampler)
            load_version(sampler, repo, version)
            result["fidelity_aligned"] = prompt_fidelity(sampler)
    repo.close()
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labeler", default="alignment.eval.labelers:larger", help="module:function")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--objective", default="discounted", choices=["discounted", "trajectory", "diffusion-dpo"])
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eps", type=float, default=None, help="log-ratio clip")
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--targets", default=None,
                   help="comma-separated LoRA target modules, e.g. to_q,to_k,to_v,to_out.0,conv1,conv2,time_emb_proj")
    p.add_argument("--steps-per-pair", type=int, default=None, help="M: step indices per pair and update")
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--eval-seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="embedded")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    overrides = {"beta": a.beta, "lr": a.lr, "log_ratio_clip": a.eps, "train_steps": a.train_steps,
                 "lora_rank": a.rank, "steps_per_pair": a.steps_per_pair,
                 "target_modules": tuple(a.targets.split(",")) if a.targets else None}
    tcfg = TrainerConfig(objective=a.objective, gamma=a.gamma, seed=a.seed,
                         **{k: v for k, v in overrides.items() if v is not None})
    cfg = SimulationConfig(a.labeler, a.pairs, a.rounds, a.eval_prompts, a.eval_seeds, a.seed, tcfg)
    result = simulate(cfg, a.data_dir, a.model)
    print(f"{cfg.labeler} {tcfg.objective} gamma={tcfg.effective_gamma} labels={result['labels']}: "
          f"win rate {result['win_rate']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] "
          f"fidelity {result.get('fidelity_base', float('nan')):.3f} -> {result.get('fidelity_aligned', float('nan')):.3f} "
          f"train {result['train_seconds']:.1f}s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
