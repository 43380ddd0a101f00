"""The README: Spaces front matter parses and says what a Docker Space needs; the first screen's two commands are
the ones this repository supports."""

from pathlib import Path

import yaml

README = Path(__file__).resolve().parents[2] / "README.md"


def front_matter() -> dict:
    text = README.read_text()
    head, sep, _ = text.partition("\n---\n")
    if not text.startswith("---\n") or not sep:
        raise AssertionError("README.md must start with a --- YAML front matter block")
    return yaml.safe_load(head[4:])


def test_front_matter_describes_a_docker_space():
    meta = front_matter()
    assert meta["sdk"] == "docker" and meta["app_port"] == 7860 and meta["hf_oauth"] is True
    assert meta["title"] and meta["emoji"] and meta["suggested_hardware"] and meta["suggested_storage"]


def test_first_screen_has_the_run_and_test_commands():
    body = README.read_text().split("\n---\n", 1)[1]
    first_screen = "\n".join(body.splitlines()[:30])
    commands = [line for line in first_screen.splitlines() if line.startswith(("python3 ", "./"))]
    assert len(commands) == 2
    assert "pip install -r requirements.txt" in commands[0] and "-m app" in commands[0]
    assert commands[1] == "./.ci/run"
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pytest" in ci and "requirements-dev.txt" in ci
