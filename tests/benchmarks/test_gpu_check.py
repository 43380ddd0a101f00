"""The GPU check: without a CUDA device it refuses (exit code 2, saying why) instead of printing a table; its
per-family pass, given a device, runs capture -> train -> swap -> generate and reports what it measured."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.families.tiny import build_family
from benchmarks.gpu_check import check_family

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_cuda_device_the_check_refuses_with_exit_code_2_and_says_why():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # hide any GPU this machine has
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert "needs a CUDA device and none is visible" in res.stderr and "does not run on a CPU" in res.stderr
    assert "noise" not in res.stdout and "status" not in res.stdout  # no table, nothing measured


def test_the_family_pass_trains_swaps_and_changes_the_images_on_the_device_it_is_given(tmp_path):
    folder = build_family("sd-turbo", tmp_path / "sd-turbo")
    row = check_family(folder, "cpu", "fp32", seeds=4, train_steps=2, size=64)
    assert row["status"] == "ok", row
    assert row["family"] == "sd" and row["dtype"] == "float32" and row["lora_dtype"] == ["float32"]
    assert row["noise_std"] == pytest.approx(1.0, abs=0.1) and len(row["step_sigma"]) == row["steps"] == 4
    assert row["loss_first"] == pytest.approx(0.6931, abs=1e-3) and row["image_change"] > 0
    assert row["swap_s"] > 0 and row["train_step_s"] > 0 and row["peak_mib"] is None  # no CUDA memory on a CPU
