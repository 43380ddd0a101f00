"""Worker processes for the scale-out tests: `python -m alignment.worker` (or several under `accelerate launch`)
as their own process group with a log file, and polling helpers.

The studio processes come from `tests.support.studio.start_studio`; `tests.support.studio.stop_studio` stops either kind
(SIGTERM to the process group, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")
# Several processes on one machine: accelerate's torchrun launcher; on a machine without CUDA the worker asks for
# CPU processes itself (gloo). `accelerate launch --cpu --num_processes N` would start ONE process (its multi-CPU
# mode needs mpirun).
ACCELERATE_LAUNCH = [str(ACCELERATE), "launch", "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]
# A small guard (4 + 4 seeds, one image each) for tests of processes, not of the guard's statistics; the default
# guard (64 + 64 seeds) renders 256 images a run and would make each process test several times slower.
SMALL_GUARD = ("--fidelity-seeds", "1000,1001,1002,1003", "--fidelity-confirm-seeds", "2000,2001,2002,2003",
               "--fidelity-prompts", "1")
SMALL_GUARD_CONFIG = {"fidelity_seeds": (1000, 1001, 1002, 1003), "fidelity_confirm_seeds": (2000, 2001, 2002, 2003),
                      "fidelity_prompts": 1}  # the same, as WorkerConfig fields for a worker in the test's process


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
            "TOKENIZERS_PARALLELISM": "false"}


def start_worker(data_dir: Path, *args: str, log: Path, processes: int = 1, port: int | None = None
                 ) -> subprocess.Popen:
    """`python -m alignment.worker --data-dir DATA_DIR ARGS`, or under `accelerate launch` with `processes` > 1
    (`port`: the launcher's rendezvous port). Output goes to `log`."""
    worker = ["-m", "alignment.worker", "--data-dir", str(data_dir), *args]
    if processes > 1:
        command = [*ACCELERATE_LAUNCH, "--num_processes", str(processes), "--main_process_port", str(port), *worker]
    else:
        command = [sys.executable, *worker]
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_all(procs) -> None:
    """SIGTERM to every process group first (they shut down in parallel), then `stop_studio` on each."""
    from tests.support.studio import stop_studio

    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        stop_studio(proc)


def wait_for(condition: Callable[[], object], timeout: float, what: str, procs=(), interval: float = 0.2):
    """Poll `condition` until it returns something truthy (returned); fail after `timeout` s or when one of
    `procs` (pairs of name and Popen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for name, proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
