"""The README and docs/: Spaces front matter parses and says what a Docker Space needs; the first screen's two
commands are the ones this repository supports; the README stays a short front door; every relative link in the
README and docs/*.md leads to a file of the repository; no doc points outside it or narrates its history."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_BYTES = 8192
# [text](target) and ![alt](target), with an optional "title"; the target has no spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# names of files outside the repository, spelt in pieces so that this checker does not cite them itself
OUTSIDE = tuple(name + ".md" for name in ("DESIGN", "STYLE", "API-NOTES")) + ("../" + "shared",)
HISTORY = ("first version", "earlier run", "re-measured", "at the time", "no longer", "defaults of the time",
           "old default", "new default")


def front_matter() -> dict:
    text = README.read_text()
    head, sep, _ = text.partition("\n---\n")
    if not text.startswith("---\n") or not sep:
        raise AssertionError("README.md must start with a --- YAML front matter block")
    return yaml.safe_load(head[4:])


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, code blocks and inline code left out."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def heading_slugs(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    slugs = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


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


def test_the_readme_is_a_short_front_door_that_links_into_docs():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {MAX_README_BYTES})"
    linked = {Path(target.split("#")[0]).name for target in links(README) if target.startswith("docs/")}
    assert {"architecture.md", "objective.md", "benchmarks.md", "speed.md", "deploy.md", "security.md"} <= linked
    assert "docs/screenshots/label.png" in links(README)


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_of_the_repository(doc):
    assert DOCS, "docs/ holds no Markdown pages"
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.is_relative_to(ROOT) or not resolved.is_file():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in heading_slugs(resolved):
            broken.append(target)
    assert not broken, f"{doc.name}: links that lead nowhere in the repository: {broken}"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_doc_points_outside_the_repository_or_narrates_history(doc):
    text = doc.read_text()
    assert not [name for name in OUTSIDE if name in text], f"{doc.name} names files outside the repository"
    lowered = text.lower()
    assert not [phrase for phrase in HISTORY if phrase in lowered], (
        f"{doc.name} narrates history; say what is true and how it was measured")
