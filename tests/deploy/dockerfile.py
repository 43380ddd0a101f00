"""A small Dockerfile reader for the structural tests (there is no Docker engine on the test machines).

It joins continuation lines, drops comments, and splits each instruction into its keyword, its ``--flags`` and its
arguments, reading the JSON (exec) form where one is used. It also answers whether a path of the build context is
excluded by ``.dockerignore`` (the patterns this project uses: plain paths, ``*`` and ``**/`` prefixes, no ``!``).
It knows Dockerfile syntax, not what this project's Dockerfile should say.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    flags: dict[str, str]  # --chown=1000:1000 -> {"chown": "1000:1000"}
    args: list[str]  # the JSON form's list, or the shell form split like a shell would
    raw: str  # the arguments as written (continuations joined)
    exec_form: bool


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags = {}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse(path: Path) -> list[Instruction]:
    instructions = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags: dict[str, str] = {}
        if keyword in ("COPY", "ADD", "HEALTHCHECK", "RUN", "FROM"):
            flags, rest = _split_flags(rest)
        exec_form = False
        if keyword == "HEALTHCHECK" and rest.upper().startswith("CMD "):
            rest = rest[4:].strip()
        if rest.startswith("["):
            try:
                args, exec_form = json.loads(rest), True
            except json.JSONDecodeError:
                args = shlex.split(rest)
        else:
            args = shlex.split(rest, posix=True) if keyword not in ("RUN",) else [rest]
        instructions.append(Instruction(keyword, flags, args, rest, exec_form))
    return instructions


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    """The one instruction with ``keyword`` (ValueError when there are none or several)."""
    found = [i for i in instructions if i.keyword == keyword]
    if len(found) != 1:
        raise ValueError(f"expected exactly one {keyword}, found {len(found)}")
    return found[0]


def env_vars(instructions: list[Instruction]) -> dict[str, str]:
    """Every ``ENV key=value`` in order (later ones win); ``$PATH``-style references are left as written."""
    values = {}
    for inst in instructions:
        if inst.keyword == "ENV":
            for item in inst.args:
                key, sep, value = item.partition("=")
                if sep:
                    values[key] = value
    return values


def dockerignore_excludes(patterns: list[str], relpath: str) -> bool:
    """True if ``relpath`` (or a folder above it) matches one of the ``.dockerignore`` patterns."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip().lstrip("/")
        if not pattern or pattern.startswith("#"):
            continue
        bare = pattern[3:] if pattern.startswith("**/") else None
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if bare is not None and fnmatch.fnmatchcase(Path(candidate).name, bare):
                return True
    return False
