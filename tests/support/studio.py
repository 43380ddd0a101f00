"""Helpers of the app tests: stand-in adapters and votes, free ports, the studio as a subprocess, and a raw
browser session.

A stand-in adapter (`tests.support.lora.random_lora`) is registered in the repository the way the worker does
it, so tests of make-live, roll-back, compare and hot-swap need no training run. `RawSession` speaks Gradio's HTTP
queue directly, private events included, as a hand-written client could: the server must not trust it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx

from benchmarks.browser_pace import CHROMIUM, CHROMIUM_ARGS  # noqa: F401 (the browser tests take them from here)
from tests.support.storage import generation

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def api_identity(client) -> str:
    """A signed identity for a `gradio_client.Client` that has no login (what `/identity` issues)."""
    return client.predict(api_name="/identity")["identity"]


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


def start_studio(data_dir: Path, port: int, *args: str, log: Path | None = None,
                 threads: int | None = 1) -> subprocess.Popen:
    """`python -m app` on `data_dir` and `port` as its own process group; waits until it answers. `threads` sets
    OMP_NUM_THREADS (None: torch's default, every core)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
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


def stored_votes(repo, votes: list[tuple[str, str]], prompt: str = "a large red circle on a blue background") -> None:
    """One stand-in pair per (annotator, choice), voted on, without running the sampler."""
    for i, (annotator, choice) in enumerate(votes):
        pair = repo.create_pair(prompt, generation(seed=2 * i), generation(seed=2 * i + 1, color=(0, 0, 255)))
        repo.record_vote(pair.id, annotator, choice)


class RawSession:
    """One page session over Gradio's HTTP queue (what the page's JavaScript sends), private events included."""

    def __init__(self, url: str, demo, auth: tuple[str, str] | None = None, *, session_hash: str | None = None,
                 local_address: str | None = None, headers: dict | None = None):
        """`local_address` (e.g. 127.0.0.2) makes the session come from another client address; `headers` go
        with every request (an `Origin`, say)."""
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=240, transport=transport, headers=headers)
        self.session_hash = session_hash or secrets.token_hex(8)
        self.dependencies = demo.config["dependencies"]
        if auth is not None:
            self.http.post("/login", data={"username": auth[0], "password": auth[1]}).raise_for_status()

    def index_of(self, api_name: str) -> int:
        return next(i for i, d in enumerate(self.dependencies) if d.get("api_name") == api_name)

    def join(self, index: int, data: list) -> httpx.Response:
        """Put event `index` (with `data` as its inputs) in the queue; the join's HTTP answer."""
        return self.http.post("/gradio_api/queue/join", json={"data": data, "fn_index": index, "event_data": None,
                                                              "session_hash": self.session_hash, "trigger_id": None})

    def call(self, api_name: str | int, data: list) -> dict:
        """Run the event named `api_name` (or with that index) with `data` as its inputs; the final message
        (output or error)."""
        index = api_name if isinstance(api_name, int) else self.index_of(api_name)
        self.join(index, data).raise_for_status()
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
        raise RuntimeError(f"no answer to {api_name}")

    def close(self) -> None:
        self.http.close()
