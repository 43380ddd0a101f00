"""Helpers of the app tests: stand-in adapters, free ports, and the studio as a subprocess.

A stand-in adapter is a LoRA with random `lora_B` weights, registered in the repository the way the worker does
it, so tests of make-live, roll-back, compare and hot-swap need no training run.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from alignment.sampler import save_lora_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def random_lora_bytes(pipe, seed: int = 0, scale: float = 0.3, rank: int = 4) -> bytes:
    """A diffusers-format LoRA with random weights (from `seed`) for `pipe`'s UNet, which is not touched; pass a
    pipeline without adapters (the shared `embedded` one)."""
    unet = copy.deepcopy(pipe.unet)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return save_lora_bytes(convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))


def register_adapter(repo, lora: bytes, *, live: bool = True, loss_curve=(0.693, 0.68, 0.66)) -> int:
    """Register `lora` like the worker does (and make it live); returns its version."""
    parent = repo.live_adapter()
    record = repo.register_adapter(lora, parent_version=parent.version if parent else None, objective="discounted",
                                   hyperparams={"gamma": 0.9}, votes_used=4,
                                   metrics={"loss": loss_curve[-1], "loss_first": loss_curve[0],
                                            "loss_curve": list(loss_curve)})
    if live:
        repo.set_adapter_status(record.version, "live", reason="test")
    return record.version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 240.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers 200 (and fail early if `proc` died). Generous: a loaded 2-core CI box needs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the studio exited with {proc.returncode} before it answered on {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {url} within {timeout} s")


def start_studio(data_dir: Path, port: int, *args: str, log: Path | None = None) -> subprocess.Popen:
    """`python -m app` on `data_dir` and `port` as its own process group; waits until it answers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = open(log or data_dir.parent / f"studio-{port}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--data-dir", str(data_dir), "--port", str(port), *args],
                            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc=proc)
    except BaseException:
        stop_studio(proc)
        raise
    return proc


def stop_studio(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the studio started by `start_studio` (its own process group only)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
