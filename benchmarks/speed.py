"""Speed benchmark: each figure is a ratio of two things measured side by side in this one run.

    python -m benchmarks.speed [--model embedded] [--repeats 10] [--json runs/speed.json]

1. pair latency: `Sampler.generate_pair` (trajectory capture) vs the plain pipeline call with the same batch, seeds
   and settings (interleaved, medians) -> capture overhead;
2. per-step cost of a pair;
3. hot-swap of a new adapter version vs a full pipeline reload;
4. sampling with a live adapter (fused, as the sampler keeps it) vs the base, and unfused for reference;
5. one training step of the discounted objective (batch 8 pairs, M 3);
6. trainer peak memory (RSS growth while training, in a child process) vs a trainer that keeps a second UNet copy as
   the reference model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fa, fb, repeats: int) -> tuple[float, float]:
    """Medians of fa and fb, alternating calls so that machine load affects both alike."""
    ta, tb = [], []
    fa(), fb()  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter(); fa(); ta.append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); fb(); tb.append(time.perf_counter() - t0)  # noqa: E702
    return statistics.median(ta), statistics.median(tb)


def random_adapter(model_id: str, seed: int) -> bytes:
    from alignment.models import load_pipeline
    from alignment.trainer import Trainer, TrainerConfig

    tr = Trainer(load_pipeline(model_id), TrainerConfig(seed=seed))
    tr._fresh_adapter()
    with torch.no_grad():
        for p in tr.lora_parameters():
            p.normal_(0, 0.05)
    return tr.export_lora()


def sampling(model_id: str, repeats: int) -> dict:
    from alignment.models import load_pipeline
    from alignment.sampler import Sampler

    model = load_pipeline(model_id)
    s = Sampler(model)
    c = s.config
    prompt = "a large red circle on a blue background"

    def plain():
        gens = [torch.Generator().manual_seed(i) for i in (0, 1)]
        model.pipe([prompt] * 2, negative_prompt=[c.negative_prompt] * 2, height=c.height, width=c.width,
                   num_inference_steps=c.steps, guidance_scale=c.guidance_scale, eta=c.eta, generator=gens,
                   output_type="pil")

    def captured():
        s.generate_pair(prompt, (0, 1))

    t_plain, t_capture = interleaved(plain, captured, repeats)
    out = {"pair_plain_s": t_plain, "pair_capture_s": t_capture, "capture_overhead": t_capture / t_plain - 1,
           "steps": c.steps, "per_step_ms": 1000 * t_capture / c.steps}

    lora_a, lora_b = random_adapter(model_id, 1), random_adapter(model_id, 2)
    s.set_adapter(1, lora_a)
    swaps = []
    for i in range(repeats):
        swaps.append(s.set_adapter(2 + i, lora_b if i % 2 == 0 else lora_a))
    t_reload = timed(lambda: load_pipeline(model_id), max(3, repeats // 3))
    out.update({"hotswap_s": statistics.median(swaps), "reload_s": t_reload,
                "hotswap_vs_reload": statistics.median(swaps) / t_reload})

    base = Sampler(load_pipeline(model_id))
    unfused = Sampler(load_pipeline(model_id), fuse=False)
    unfused.set_adapter(1, lora_a)
    t_base, t_live = interleaved(lambda: base.generate_pair(prompt, (0, 1)), captured, repeats)
    _, t_unfused = interleaved(lambda: base.generate_pair(prompt, (0, 1)),
                               lambda: unfused.generate_pair(prompt, (0, 1)), repeats)
    out.update({"adapter_fused_vs_base": t_live / t_base, "adapter_unfused_vs_base": t_unfused / t_base})
    return out


def train_step(model_id: str, repeats: int) -> dict:
    from alignment.labelers import larger
    from alignment.models import load_pipeline
    from alignment.sampler import Sampler
    from alignment.trainer import Trainer, TrainerConfig, TrainingPair

    model = load_pipeline(model_id)
    s = Sampler(model)
    pairs = []
    for i, p in enumerate(["a red circle", "a large blue square", "a small green triangle", "an orange circle"]):
        a, b = s.generate_pair(p, (2 * i, 2 * i + 1))
        w, l = (a, b) if larger(a.image, b.image, p) != 1 else (b, a)
        pairs.append(TrainingPair(p, w.trajectory, l.trajectory))
    tr = Trainer(model, TrainerConfig(train_steps=repeats, batch_pairs=8, steps_per_pair=3))
    res = tr.train(pairs)
    return {"train_step_s": res.metrics["train_seconds"] / repeats}


MEMORY_CHILD = r"""
import copy, resource, sys, torch
sys.path.insert(0, ".")
from alignment.models import load_pipeline
from alignment.trainer import Trainer, TrainerConfig
from benchmarks.speed import synthetic_pairs
model = load_pipeline(sys.argv[1]); tr = Trainer(model, TrainerConfig(train_steps=3, batch_pairs=8))
pairs = synthetic_pairs(model)
if sys.argv[2] == "copy":  # the reference is a second UNet kept in memory
    ref = copy.deepcopy(tr.unet).requires_grad_(False)  # copied before the LoRA is added: the base
    real = tr.unet
    def disable(): tr.unet = ref
    def enable(): tr.unet = real
    for m in (real, ref):
        m.disable_adapters, m.enable_adapters = disable, enable
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tr.train(pairs)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def synthetic_pairs(model, n: int = 4):
    """Pairs of random trajectories with the model's latent shape (memory does not depend on their content)."""
    from alignment.sampler import SamplerConfig, Trajectory
    from alignment.trainer import TrainingPair

    cfg = SamplerConfig.from_defaults(model.sampler_defaults)
    sched = model.pipe.scheduler
    sched.set_timesteps(cfg.steps)
    shape = (cfg.steps + 1, model.pipe.unet.config.in_channels, cfg.height // model.pipe.vae_scale_factor,
             cfg.width // model.pipe.vae_scale_factor)
    settings = {"steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "eta": cfg.eta, "negative_prompt": ""}

    def traj(seed):
        g = torch.Generator().manual_seed(seed)
        return Trajectory(torch.randn(shape, generator=g).half(), sched.timesteps.clone(), "a red circle", seed,
                          settings, model.model_id, None)
    return [TrainingPair("a red circle", traj(2 * i), traj(2 * i + 1)) for i in range(n)]


def memory(model_id: str) -> dict:
    out = {}
    for mode in ("shared", "copy"):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, model_id, mode], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent, check=True)
        growth_kb, peak_kb = map(int, res.stdout.split()[-2:])
        out[f"trainer_{mode}_peak_mb"] = peak_kb / 1024
        out[f"trainer_{mode}_growth_mb"] = growth_kb / 1024
    out["peak_shared_vs_copy"] = out["trainer_shared_peak_mb"] / out["trainer_copy_peak_mb"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    result = {"torch_threads": torch.get_num_threads()}
    result.update(sampling(a.model, a.repeats))
    result.update(train_step(a.model, max(3, a.repeats // 2)))
    result.update(memory(a.model))
    for k, v in result.items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
