"""Speed benchmark: each figure is a ratio of two things measured side by side in this one run.

    python -m benchmarks.speed [--model embedded] [--repeats 10] [--json runs/speed.json]
    python -m benchmarks.sd15_shaped --out runs/sd15-shaped       # SD 1.5's architecture, random weights
    python -m benchmarks.speed --model runs/sd15-shaped --batch-pairs 1 --mixed-precision bf16 \
        --gradient-checkpointing --repeats 5 --json runs/speed-sd15.json          # on a GPU
    python -m benchmarks.sd15_shaped --out runs/sd15-shaped --size 256 --steps 4  # on a CPU: smaller images
    python -m benchmarks.speed --model runs/sd15-shaped --sections swap memory --batch-pairs 1 \
        --gradient-checkpointing --micro-batch 1 --repeats 6                     # (the adapter section: --repeats 2)

1. pair latency: `Sampler.generate_pair` (trajectory capture) vs the plain pipeline call with the same batch, seeds
   and settings (interleaved, medians) -> capture overhead;
2. per-step cost of a pair;
3. hot-swap of a new adapter version (`SwapSlot`) vs a full pipeline reload: the whole swap, during which generation
   waits, and prepared beside generation, where generation waits only for the commit;
4. sampling with a live adapter (fused, as the sampler keeps it) vs the base, and unfused for reference;
5. one training step of the discounted objective (batch 8 pairs, M 3);
6. trainer peak memory while training (in a child process: peak RSS on a CPU, reset after loading; peak CUDA
   allocation on a GPU) vs a trainer that keeps a second UNet copy as the reference model.

On a GPU every timed call ends with a device synchronisation, so queued kernels are counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch


def seconds(fn) -> float:
    """Wall time of fn(), including any GPU work it queued."""
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed(fn, repeats: int) -> float:
    return statistics.median(seconds(fn) for _ in range(repeats))


def interleaved(fa, fb, repeats: int) -> tuple[float, float]:
    """Medians of fa and fb, alternating calls so that machine load affects both alike."""
    ta, tb = [], []
    fa(), fb()  # warm-up
    for _ in range(repeats):
        ta.append(seconds(fa))
        tb.append(seconds(fb))
    return statistics.median(ta), statistics.median(tb)


def random_adapters(model_id: str, n: int) -> list[bytes]:
    """n adapters with random weights (seeds 1..n), from one trainer (one model load, however large the model)."""
    from alignment.families.loader import load_pipeline
    from alignment.training.trainer import Trainer
    from settings import TrainerConfig

    tr = Trainer(load_pipeline(model_id))
    out = []
    for seed in range(1, n + 1):
        tr.config = TrainerConfig(seed=seed)
        tr.fresh_adapter()
        with torch.no_grad():
            for p in tr.lora_parameters():
                p.normal_(0, 0.05)
        out.append(tr.export_lora())
    return out


PROMPT = "a large red circle on a blue background"


def pair_latency(model_id: str, repeats: int) -> dict:
    """Section `pair`: Sampler.generate_pair (trajectory capture) vs the plain pipeline call."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler

    model = load_pipeline(model_id)
    s = Sampler(model)
    c = s.config

    def plain():
        gens = [torch.Generator(model.device).manual_seed(i) for i in (0, 1)]
        model.pipe([PROMPT] * 2, negative_prompt=[c.negative_prompt] * 2, height=c.height, width=c.width,
                   num_inference_steps=c.steps, guidance_scale=c.guidance_scale, eta=c.eta, generator=gens,
                   output_type="pil")

    t_plain, t_capture = interleaved(plain, lambda: s.generate_pair(PROMPT, (0, 1)), repeats)
    return {"pair_plain_s": t_plain, "pair_capture_s": t_capture, "capture_overhead": t_capture / t_plain - 1,
            "steps": c.steps, "per_step_ms": 1000 * t_capture / c.steps}


def hotswap(model_id: str, repeats: int) -> dict:
    """Section `swap`: making a new adapter version live in place vs loading the pipeline again. Two ways: the
    whole swap (`SwapSlot.load` alone; the live model holds its generation lock throughout), and `prepare` beside
    generation followed by the commit (how the live model's follower swaps): generation waits only for the
    commit."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.swap import SwapSlot

    s = SwapSlot(load_pipeline(model_id).pipe)
    lora_a, lora_b = random_adapters(model_id, 2)
    s.load(1, lora_a)
    swaps, prepares, commits = [], [], []
    for i in range(repeats):
        lora = lora_b if i % 2 == 0 else lora_a
        swaps.append(seconds(partial(s.load, 100 + i, lora)))  # the whole swap
        prepares.append(seconds(partial(s.prepare, 200 + i, lora)))
        commits.append(seconds(partial(s.commit, 200 + i)))  # how the live model commits a prepared version
    if s.version != 200 + repeats - 1 or s.prepared_version is not None:
        raise RuntimeError(f"the swaps did not end on a committed version {200 + repeats - 1} ({s.version})")
    # the part of a whole swap that rewrites the fused weights (base + delta), timed alone
    fuse_pass = statistics.median(seconds(s.fuse_again) for _ in range(repeats))
    layers, fused_mb = s.wrapped_layers, s.fused_weights_bytes / 2**20
    del s
    t_reload = timed(lambda: load_pipeline(model_id), max(3, repeats // 3))
    swap, prepare, commit = (statistics.median(x) for x in (swaps, prepares, commits))
    return {"hotswap_s": swap, "reload_s": t_reload, "hotswap_vs_reload": swap / t_reload,
            "prepare_s": prepare, "commit_s": commit, "commit_vs_reload": commit / t_reload,
            "prepared_total_vs_reload": (prepare + commit) / t_reload, "fuse_pass_s": fuse_pass,
            "lora_layers": layers, "fused_weights_mb": fused_mb}


def live_adapter(model_id: str, repeats: int) -> dict:
    """Section `adapter`: sampling with a live adapter (fused, as the sampler keeps it; and unfused) vs the base."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.serving.swap import SwapSlot

    (lora,) = random_adapters(model_id, 1)
    base, fused, unfused = (Sampler(load_pipeline(model_id)) for _ in range(3))
    SwapSlot(fused.pipe).load(1, lora)
    SwapSlot(unfused.pipe, fuse=False).load(1, lora)
    t_base, t_live = interleaved(lambda: base.generate_pair(PROMPT, (0, 1)),
                                 lambda: fused.generate_pair(PROMPT, (0, 1)), repeats)
    t_base2, t_unfused = interleaved(lambda: base.generate_pair(PROMPT, (0, 1)),
                                     lambda: unfused.generate_pair(PROMPT, (0, 1)), repeats)
    return {"adapter_fused_vs_base": t_live / t_base, "adapter_unfused_vs_base": t_unfused / t_base2}


def train_step(model_id: str, repeats: int, train: dict) -> dict:
    from alignment.families.loader import load_pipeline
    from alignment.training.trainer import Trainer
    from settings import TrainerConfig

    model = load_pipeline(model_id, dtype="fp32")
    pairs = synthetic_pairs(model)  # the step's cost does not depend on what the latents hold
    tr = Trainer(model, TrainerConfig(train_steps=1, steps_per_pair=3, **train))
    tr.train(pairs)  # warm-up (kernel selection, allocator)
    tr.config = TrainerConfig(train_steps=repeats, steps_per_pair=3, **train)
    res = tr.train(pairs)
    return {"train_step_s": res.metrics["train_seconds"] / repeats, **{f"train_{k}": v for k, v in train.items()}}


MEMORY_CHILD = r"""
import copy, ctypes, gc, json, resource, sys, torch
sys.path.insert(0, ".")
from alignment.families.loader import load_pipeline
from alignment.training.trainer import Trainer
from settings import TrainerConfig
from benchmarks.speed import synthetic_pairs
model = load_pipeline(sys.argv[1], dtype="fp32")
tr = Trainer(model, TrainerConfig(train_steps=int(sys.argv[4]), **json.loads(sys.argv[3])))
pairs = synthetic_pairs(model)
cuda = model.device.type == "cuda"
if sys.argv[2] == "copy":  # the reference is a second UNet kept in memory
    ref = copy.deepcopy(tr.unet).requires_grad_(False)  # copied before the LoRA is added: the base
    real = tr.unet
    def disable(): tr.unet = ref
    def enable(): tr.unet = real
    for m in (real, ref):
        m.disable_adapters, m.enable_adapters = disable, enable
def status_kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
lifetime_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# Peak while training, not while loading: loading converts fp16 files to fp32 through temporary buffers, a spike
# that both trainers share and that would hide the difference. Give freed buffers back and reset the peak.
if cuda:
    torch.cuda.reset_peak_memory_stats()
    start_kb = torch.cuda.memory_allocated() // 1024
else:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS
    start_kb = status_kb("VmRSS")
tr.train(pairs)
peak_kb = torch.cuda.max_memory_allocated() // 1024 if cuda else status_kb("VmHWM")
print(start_kb, peak_kb, max(lifetime_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def synthetic_pairs(model, n: int = 4):
    """Pairs of random trajectories with the model's latent shape (memory does not depend on their content)."""
    from settings import SamplerConfig
    from alignment.core.trajectory import Trajectory
    from alignment.training.trainer import TrainingPair

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


def memory(model_id: str, train: dict, steps: int = 3) -> dict:
    """Peak memory while training (resident set on a CPU, CUDA allocation on a GPU), shared reference vs a copy."""
    out = {"memory_measure": "peak CUDA allocation while training" if torch.cuda.is_available()
           else "peak RSS while training (VmHWM reset after loading)"}
    for mode in ("shared", "copy"):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, model_id, mode, json.dumps(train), str(steps)],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if res.returncode:
            raise SystemExit(f"memory child ({mode}) failed:\n{res.stderr[-3000:]}")
        start_kb, peak_kb, lifetime_kb = map(int, res.stdout.split()[-3:])
        out[f"trainer_{mode}_start_mb"] = start_kb / 1024
        out[f"trainer_{mode}_peak_mb"] = peak_kb / 1024
        out[f"trainer_{mode}_lifetime_peak_mb"] = lifetime_kb / 1024  # includes the load-time spike
    out["peak_shared_vs_copy"] = out["trainer_shared_peak_mb"] / out["trainer_copy_peak_mb"]
    return out


SECTIONS = {"pair": lambda model, repeats, train: pair_latency(model, repeats),
            "swap": lambda model, repeats, train: hotswap(model, repeats),
            "adapter": lambda model, repeats, train: live_adapter(model, repeats),
            "train": lambda model, repeats, train: train_step(model, max(3, repeats // 2), train),
            "memory": lambda model, repeats, train: memory(model, train, steps=max(2, repeats // 2))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path)
    p.add_argument("--batch-pairs", type=int, default=8, help="pairs per training step (train step and memory)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--micro-batch", type=int, default=0, help="trajectory steps per UNet call in training")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                   help="what to measure (default: all); e.g. only swap and memory for a large model on a CPU")
    a = p.parse_args(argv)
    train = {"batch_pairs": a.batch_pairs, "mixed_precision": a.mixed_precision,
             "gradient_checkpointing": a.gradient_checkpointing, "micro_batch": a.micro_batch}
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch_threads": torch.get_num_threads(), "model": a.model}
    for name in a.sections:
        print(f"measuring {name} ...", flush=True)
        result.update(SECTIONS[name](a.model, a.repeats, train))
    for k, v in result.items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
