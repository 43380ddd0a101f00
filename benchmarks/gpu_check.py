"""The GPU check: every tiny model family in half precision through capture -> train -> swap -> generate.

    python -m benchmarks.gpu_check [--dtype bf16] [--kinds sd1 sd2 sdxl sd-turbo sdxl-turbo] [--json runs/gpu.json]

For any CUDA machine, a few minutes in all; not part of CI, which has no GPU. It refuses to run without a CUDA
device (exit code 2): the point is the half-precision GPU path, and a CPU run would only repeat what the test suite
already checks. Each family's tiny random-weight copy (`alignment.families.tiny`) is built into a temporary folder
and loaded twice on the GPU in `--dtype`, once for the live sampler and once for the trainer (as the studio does):

1. capture: the sampler generates `--seeds` images with the family's settings and stores their chains;
2. implied noise: the trainer re-evaluates every stored step under the same weights and reads back the noise that
   turns x_k into the stored x_{k+1}; for a faithful re-evaluation it is standard normal (mean 0, std 1);
3. train: `--train-steps` steps of the discounted objective on pairs of those chains (the base in `--dtype`, the
   LoRA and its optimizer state in fp32); the median time of one optimiser step;
4. swap: the new LoRA becomes what the live sampler's weights hold (`SwapSlot.load`, fused);
5. generate: the same seeds again; the images must differ from the base's.

It prints one row per family: implied-noise mean and std over the steps whose DDIM std sigma_k is at least 0.1,
the std of the steps below apart (see SMALL_SIGMA), loss first -> last, train step time, swap time, peak CUDA memory
allocated, and ok or what failed. Exit code 0 when every family passes, 1 otherwise. Weights are
random, so nothing here measures image quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a large red circle on a blue background"
NOISE_STD_TOLERANCE = 0.1  # |std - 1| within this: the chain is re-evaluated as it was sampled
# Steps whose DDIM std is below this (the last steps of a chain) are reported apart. In half precision the pipeline
# runs the whole chain, UNet and scheduler step, in the UNet's dtype, and the trainer re-evaluates the UNet in that
# dtype in another batch composition: rounding differences that are a visible fraction of so small a std (on a CPU:
# implied-noise std 1.69 at sd-turbo's last step, sigma 0.029, in bf16; 1.04 in fp16; 1.02 in fp32; docs/models.md).
SMALL_SIGMA = 0.1


def implied_noise_by_step(trainer, traj) -> tuple[torch.Tensor, torch.Tensor]:
    """(K', C, h, w) implied noise of `traj`'s steps that have a density, and (K',) their DDIM std sigma_k."""
    from alignment.core.ddim import step_alphas

    k = torch.arange(traj.num_steps)[trainer.replay.stochastic_steps(traj)]
    abar_t, abar_prev = step_alphas(trainer.abar, trainer.final_abar, traj.timesteps[k], traj.num_steps)
    sigma = float(traj.settings["eta"]) * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    return trainer.implied_noise(traj), sigma.cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_family(folder: str | Path, device: str, dtype: str, *, seeds: int = 8, train_steps: int = 8,
                 size: int = 128, max_steps: int = 10) -> dict:
    """One family's row: capture -> implied noise -> train -> swap -> generate on `device` in `dtype`."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.serving.swap import SwapSlot
    from alignment.training.trainer import Trainer, TrainingPair
    from settings import SamplerConfig, TrainerConfig

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    live = load_pipeline(str(folder), device=device, dtype=dtype)
    steps = min(max_steps, int(live.sampler_defaults["steps"]))
    cfg = SamplerConfig.from_defaults(live.sampler_defaults, steps=steps, height=size, width=size)
    sampler = Sampler(live, cfg)
    seed_list = list(range(seeds))

    _sync(dev)
    t0 = time.perf_counter()
    base = sampler.generate(PROMPT, seed_list)
    _sync(dev)
    capture_s = time.perf_counter() - t0

    trainer = Trainer(str(folder), TrainerConfig(train_steps=train_steps, batch_pairs=2, steps_per_pair=2, lr=3e-3,
                                                 log_ratio_clip=0.1, checkpoint_every=0), device=device, dtype=dtype)
    z, sigma = zip(*(implied_noise_by_step(trainer, g.trajectory) for g in base))
    z, sigma = torch.stack(z).transpose(0, 1).flatten(1).double(), sigma[0]  # (K', seeds * C * h * w), (K',)
    large = sigma >= SMALL_SIGMA
    noise, noise_small = z[large].flatten(), z[~large].flatten()
    pairs = [TrainingPair(PROMPT, base[i].trajectory, base[i + 1].trajectory) for i in range(0, seeds - 1, 2)]
    result = trainer.train(pairs)

    slot = SwapSlot(live.pipe)
    _sync(dev)
    t0 = time.perf_counter()
    slot.load(1, result.lora)
    _sync(dev)
    swap_s = time.perf_counter() - t0
    adapted = sampler.generate(PROMPT, seed_list, adapter_version=slot.version)
    changed = float(np.mean([np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).mean()
                             for a, b in zip(adapted, base)]))

    losses = [h["loss"] for h in result.history]
    row = {"family": live.family.name, "dtype": str(trainer.unet.dtype).removeprefix("torch."),
           "lora_dtype": sorted({str(p.dtype).removeprefix("torch.") for p in trainer.lora_parameters()}),
           "steps": steps, "size": size, "seeds": seeds, "capture_s": capture_s,
           "noise_mean": float(noise.mean()), "noise_std": float(noise.std()), "noise_elements": noise.numel(),
           "noise_std_small_sigma": float(noise_small.std()) if noise_small.numel() else None,
           "step_sigma": [round(float(v), 4) for v in sigma],
           "step_noise_std": [round(float(v), 4) for v in z.std(1)],
           "loss_first": losses[0], "loss_last": losses[-1], "train_step_s": result.metrics["train_seconds"] /
           train_steps, "swap_s": swap_s, "image_change": changed,
           "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
    problems = []
    if abs(row["noise_std"] - 1) > NOISE_STD_TOLERANCE or abs(row["noise_mean"]) > NOISE_STD_TOLERANCE:
        problems.append("implied noise is not standard normal")
    if not all(np.isfinite(losses)):
        problems.append("non-finite loss")
    if slot.version != 1:
        problems.append("the adapter did not go live")
    if not changed > 0:
        problems.append("the live adapter left the images unchanged")
    row["status"] = "; ".join(problems) or "ok"
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'kind':11s} {'family':6s} {'dtype':8s} {'steps':>5s} {'noise mean':>10s} {'std s>=0.1':>10s} "
            f"{'std s<0.1':>9s} {'loss first->last':>17s} {'step s':>7s} {'swap ms':>8s} {'peak MiB':>9s}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:9.0f}"
        small = "-" if r["noise_std_small_sigma"] is None else f"{r['noise_std_small_sigma']:9.4f}"
        lines.append(f"{r['kind']:11s} {r['family']:6s} {r['dtype']:8s} {r['steps']:5d} {r['noise_mean']:10.4f} "
                     f"{r['noise_std']:10.4f} {small:>9s} {r['loss_first']:8.4f}->{r['loss_last']:.4f} "
                     f"{r['train_step_s']:7.3f} {1000 * r['swap_s']:8.1f} {peak:>9s}  {r['status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16", help="the sampler's and the base's dtype")
    p.add_argument("--kinds", nargs="+", help="tiny family copies to check (default: all of them)")
    p.add_argument("--device", default="cuda", help="a CUDA device, e.g. cuda:1")
    p.add_argument("--seeds", type=int, default=8, help="images per family (pairs of them train)")
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device and none is visible (torch.cuda.is_available() is False); it checks the "
              "half-precision GPU path and does not run on a CPU. Run it on a machine with an NVIDIA GPU and a CUDA "
              "build of torch; on a CPU, the test suite covers the same loop in fp32.", file=sys.stderr)
        return 2
    from alignment.families.tiny import KINDS, build_family  # after the refusal: it needs diffusers

    unknown = sorted(set(a.kinds or ()) - set(KINDS))
    if unknown:
        p.error(f"unknown --kinds {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if not a.device.startswith("cuda"):
        p.error(f"--device must be a CUDA device (cuda or cuda:N), got {a.device!r}")
    if a.seeds < 2 or a.train_steps < 1:
        p.error("--seeds must be at least 2 and --train-steps at least 1")
    print(f"{torch.cuda.get_device_name(a.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{a.dtype}", flush=True)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for kind in a.kinds or KINDS:
            print(f"  {kind} ...", flush=True)
            folder = build_family(kind, Path(tmp) / kind)
            rows.append({"kind": kind, **check_family(folder, a.device, a.dtype, seeds=a.seeds,
                                                      train_steps=a.train_steps)})
    print(table(rows))
    print(f"{time.perf_counter() - t0:.0f} s in all")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"device": torch.cuda.get_device_name(a.device), "torch": torch.__version__,
                                      "rows": rows}, indent=2))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
