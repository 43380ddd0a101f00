"""Trainer memory at SDXL's size: the frozen base in bf16 vs in fp32, as a ratio measured in one run.

    python -m benchmarks.sdxl_shaped --out runs/sdxl-shaped --size 256 --steps 4
    python -m benchmarks.trainer_memory --model runs/sdxl-shaped [--json runs/trainer-memory.json]

Two child processes, one after the other, each load the trainer on the folder on the CPU, one with the frozen base
(UNet, text encoders) in bf16, as the trainer keeps it on a GPU, the other in fp32; the LoRA and its AdamW state
are fp32 in both. Each trains `--train-steps` steps of the discounted objective on one pair of stored trajectories
of the folder's sampler size and step count (random latents: memory does not depend on their values), one
trajectory step per pair, micro-batch 1, gradient checkpointing on. The figure is each child's peak resident set
while training, measured from just after loading (VmHWM reset, as `benchmarks.speed` does), and their ratio.

Before each child the benchmark compares what its weights alone need with the memory the machine has available;
when the full architecture cannot fit, or a child does not finish within `--child-seconds`, it says so and
measures on a copy with fewer transformer layers per level (`--fallback-layers`, everything else the same), and
prints exactly what was changed. Last it prints the arithmetic for SDXL 1.0 (real vocabularies) on a 24 GB GPU with
the sampler and the worker in one process, from parameter counts (no weights loaded). A CPU's resident set is not a
GPU's allocation: the ratio carries over, the absolute megabytes include the Python process and its libraries.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a large red circle on a blue background"
GiB = 2**30
MODES = ("bf16", "fp32")
SDXL_VOCAB = 49408  # CLIP's BPE, both SDXL tokenizers
SLOT_RANK = 64  # SwapSlot's default max_lora_rank: the live adapter's A and B are padded to it for hot-swaps


def stored_pair(model):
    """One `TrainingPair` of two trajectories with the model's sampler size, steps, family and schedule."""
    from alignment.core.trajectory import Trajectory
    from alignment.training.pairs import TrainingPair
    from settings import SamplerConfig

    cfg = SamplerConfig.from_defaults(model.sampler_defaults)
    pipe = model.pipe
    pipe.scheduler.set_timesteps(cfg.steps)
    scale = pipe.vae_scale_factor
    shape = (cfg.steps + 1, pipe.unet.config.in_channels, cfg.height // scale, cfg.width // scale)
    settings = {**asdict(cfg), **model.settings}

    def trajectory(seed: int) -> Trajectory:
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).half()
        return Trajectory(latents, pipe.scheduler.timesteps.clone(), PROMPT, seed, settings, model.model_id, None)

    return TrainingPair(PROMPT, trajectory(0), trajectory(1))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def child() -> None:
    """In a child process: load, reset the peak, train, print one JSON line (argv: folder, dtype, config)."""
    from alignment.training.trainer import Trainer
    from settings import TrainerConfig

    folder, dtype, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    t0 = time.perf_counter()
    tr = Trainer(folder, TrainerConfig(**config), device="cpu", dtype=dtype)
    pair = stored_pair(tr.model)
    load_s = time.perf_counter() - t0
    frozen = {str(p.dtype): 0 for p in tr.unet.parameters()}
    for p in tr.unet.parameters():
        frozen[str(p.dtype)] += p.numel()
    # Peak while training, not while loading: loading converts the fp16 files through temporary buffers.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS
    start_kb = _status_kb("VmRSS")
    result = tr.train([pair])
    print(json.dumps({"start_kb": start_kb, "peak_kb": _status_kb("VmHWM"), "load_s": load_s,
                      "train_s": result.metrics["train_seconds"], "loss": result.metrics["loss"],
                      "unet_dtype": str(tr.unet.dtype), "text_encoder_2_dtype": str(tr.model.pipe.text_encoder_2.dtype),
                      "lora_dtypes": sorted({str(p.dtype) for p in tr.lora_parameters()}),
                      "lora_parameters": sum(p.numel() for p in tr.lora_parameters()),
                      "unet_parameters_by_dtype": frozen}))


def weights_gib(folder: Path, dtype: str) -> float:
    """What a trainer's weights take in `dtype` (the VAE is upcast to fp32 either way: force_upcast)."""
    from benchmarks.sdxl_shaped import parameter_counts

    counts = parameter_counts(folder)
    size = {"bf16": 2, "fp32": 4}[dtype]
    return (size * (counts["unet"] + counts["text_encoder"] + counts["text_encoder_2"]) + 4 * counts["vae"]) / GiB


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20


def run_child(folder: Path, dtype: str, config: dict, seconds: float) -> dict | str:
    """The child's figures, or why there are none (a sentence)."""
    cmd = [sys.executable, "-c", "from benchmarks.trainer_memory import child; child()", str(folder), dtype,
           json.dumps(config)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds)
    except subprocess.TimeoutExpired:
        return f"the {dtype} child did not finish within {seconds:.0f} s"
    if res.returncode:
        why = "killed (out of memory?)" if res.returncode < 0 else f"exit code {res.returncode}"
        return f"the {dtype} child failed ({why}):\n{res.stderr[-2000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(folder: Path, config: dict, seconds: float, headroom_gib: float) -> dict | str:
    out: dict = {"model": str(folder)}
    for dtype in MODES:
        need, have = weights_gib(folder, dtype) + headroom_gib, available_gib()
        if need > have:
            return (f"the {dtype} trainer needs about {need:.1f} GiB (weights + {headroom_gib:g} GiB), the machine "
                    f"has {have:.1f} GiB available")
        print(f"  {dtype} base: training ...", flush=True)
        got = run_child(folder, dtype, config, seconds)
        if isinstance(got, str):
            return got
        out[dtype] = got
    out["peak_bf16_vs_fp32"] = out["bf16"]["peak_kb"] / out["fp32"]["peak_kb"]
    out["start_bf16_vs_fp32"] = out["bf16"]["start_kb"] / out["fp32"]["start_kb"]
    return out


# ------------------------------------------------------------------------------------------------ the arithmetic


def sdxl_arithmetic(rank: int, targets: tuple[str, ...], gpu_gib: float = 24.0) -> dict:
    """Bytes of SDXL 1.0's sampler + trainer in one process on a GPU, from parameter counts (meta tensors)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from benchmarks.sdxl_shaped import FULL, unet

    with init_empty_weights():
        u = unet(FULL)
        encoders = [cls(CLIPTextConfig(vocab_size=SDXL_VOCAB, hidden_size=w, intermediate_size=4 * w,
                                       num_hidden_layers=n, num_attention_heads=h, max_position_embeddings=77,
                                       projection_dim=w))
                    for cls, w, n, h in zip((CLIPTextModel, CLIPTextModelWithProjection), FULL.text_widths,
                                            FULL.text_layers, FULL.text_heads)]
        vae = AutoencoderKL(block_out_channels=FULL.vae_channels, layers_per_block=FULL.vae_layers,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    n_unet, n_text, n_vae = count(u), sum(count(e) for e in encoders), count(vae)
    wrapped = [m for name, m in u.named_modules() if isinstance(m, torch.nn.Linear)
               and any(name == t or name.endswith("." + t) for t in targets)]
    n_wrapped = sum(m.weight.numel() for m in wrapped)
    lora = lambda r: sum(r * (m.in_features + m.out_features) for m in wrapped)  # noqa: E731
    rows = [  # (what, parameters, bytes per parameter)
        ("sampler: UNet + text encoders + VAE, bf16", n_unet + n_text + n_vae, 2),
        (f"sampler: live LoRA A and B, padded to rank {SLOT_RANK} for hot-swaps, bf16", lora(SLOT_RANK), 2),
        ("swap slot: saved base weights of the wrapped layers, bf16", n_wrapped, 2),
        ("swap slot: spare fused-weight buffers (prepare beside generation), bf16", n_wrapped, 2),
        ("trainer: frozen UNet + text encoders, bf16", n_unet + n_text, 2),
        ("trainer: VAE, fp32 (force_upcast; encodes imported images only)", n_vae, 4),
        (f"trainer: LoRA rank {rank}: fp32 weights + gradients + AdamW exp_avg, exp_avg_sq", lora(rank), 16),
    ]
    total = sum(n * b for _, n, b in rows) / GiB
    fp32_base = (n_unet + n_text) * 4 / GiB
    return {"rows": [(what, n, b, n * b / GiB) for what, n, b in rows], "total_gib": total, "gpu_gib": gpu_gib,
            "left_gib": gpu_gib - total, "trainer_fp32_base_gib": fp32_base,
            "left_with_fp32_base_gib": gpu_gib - total + (n_unet + n_text) * 2 / GiB - fp32_base,
            "wrapped_layers": len(wrapped)}


def print_arithmetic(a: dict) -> None:
    print(f"\nSDXL 1.0 on a {a['gpu_gib']:g} GiB GPU, sampler and worker in one process "
          f"({a['wrapped_layers']} LoRA-wrapped layers):")
    for what, n, b, gib in a["rows"]:
        print(f"  {what:78s} {n / 1e6:8.1f} M x {b:2d} B = {gib:5.2f} GiB")
    print(f"  {'total':78s} {'':17s}   {a['total_gib']:5.2f} GiB")
    print(f"  left for activations, the CUDA context and allocator slack: {a['left_gib']:.2f} GiB")
    print(f"  with the trainer's base in fp32 instead ({a['trainer_fp32_base_gib']:.2f} GiB): "
          f"{a['left_with_fp32_base_gib']:.2f} GiB left")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("runs/sdxl-shaped"), help="a folder from benchmarks.sdxl_shaped")
    p.add_argument("--train-steps", type=int, default=1, help="optimiser steps per child (1-2)")
    p.add_argument("--child-seconds", type=float, default=1800, help="give up on a child after this long")
    p.add_argument("--headroom-gib", type=float, default=2.0, help="memory a child needs beyond its weights")
    p.add_argument("--fallback-layers", default="1,2,2", help="transformer layers per level of the reduced copy")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not (a.model / "model_index.json").is_file():
        p.error(f"{a.model} is not a pipeline folder; build one with python -m benchmarks.sdxl_shaped")
    from benchmarks.sdxl_shaped import layers, reduced_copy
    from settings import TrainerConfig

    config = {"train_steps": a.train_steps, "batch_pairs": 1, "steps_per_pair": 1, "micro_batch": 1,
              "gradient_checkpointing": True, "checkpoint_every": 0}
    print(f"measuring {a.model} ({torch.get_num_threads()} threads) ...", flush=True)
    result = measure(a.model, config, a.child_seconds, a.headroom_gib)
    if isinstance(result, str):
        fewer = layers(a.fallback_layers)
        reduced = Path(f"{a.model}-layers-{'-'.join(map(str, fewer))}")
        print(f"the full architecture does not fit this machine: {result}\nmeasuring instead on {reduced}: the "
              f"same pipeline with transformer_layers_per_block {fewer} in the UNet (everything else unchanged)",
              flush=True)
        if not (reduced / "model_index.json").is_file():
            reduced_copy(a.model, fewer, reduced)
        result = measure(reduced, config, a.child_seconds, a.headroom_gib)
        if isinstance(result, str):
            raise SystemExit(f"the reduced copy did not fit either: {result}")
        result["changed"] = f"transformer_layers_per_block {fewer}"
    result["train"] = config
    for dtype in MODES:
        r = result[dtype]
        print(f"  {dtype} base: {r['start_kb'] / 2**20:6.2f} GiB after loading, peak {r['peak_kb'] / 2**20:6.2f} GiB "
              f"while training ({r['train_s']:.0f} s; UNet {r['unet_dtype']}, LoRA {', '.join(r['lora_dtypes'])})")
    print(f"  peak bf16 / fp32 base: {result['peak_bf16_vs_fp32']:.3f} (after loading: "
          f"{result['start_bf16_vs_fp32']:.3f})")
    trainer = TrainerConfig()
    result["arithmetic"] = sdxl_arithmetic(trainer.lora_rank, trainer.target_modules)
    print_arithmetic(result["arithmetic"])
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
