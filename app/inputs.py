"""Checking what people and API clients send: seeds, pair ids, vote choices, Train-tab settings.

Each parser returns the value in the type the lower layers expect, or raises `StudioError` with a message the UI
shows as is. Range checks that belong to a lower layer (prompt length, objective values) stay there; this module
only makes the raw widget and JSON values comparable. The Train tab's settings take their types from the settings
dataclasses. It knows no Gradio and nothing below `alignment.core.limits` and `settings`.
"""

from __future__ import annotations

import re

from alignment.core.limits import MAX_SEED
from app.errors import StudioError
from settings import MAX_ANNOTATOR_CHARS, VOTE_CHOICES, TrainerConfig, WorkerConfig
from settings_cli import kinds

__all__ = ["BLIND_CHOICES", "SETTINGS", "VOTE_CHOICES", "StudioError", "parse_names", "parse_pair_id", "parse_seeds",
           "parse_setting"]

# Settings the Train tab edits, with their kinds from the dataclasses: beta may be empty (None = the objective's
# default), and so may train_annotators (None = everyone's votes).
_KINDS = kinds(TrainerConfig) | kinds(WorkerConfig)
SETTINGS = {name: _KINDS[name] for name in ("objective", "gamma", "beta", "lr", "train_steps", "train_every",
                                            "train_annotators", "train_voters")}
BLIND_CHOICES = ("left", "right", "tie")  # what the person clicks in blind A/B mode


def parse_seeds(seeds, count: int) -> list[int] | None:
    """`count` seeds from None/"" (random), a string like "12, 34" or a sequence of integers."""
    if seeds is None or (isinstance(seeds, str) and not seeds.strip()):
        return None
    items = re.split(r"[\s,;]+", seeds.strip()) if isinstance(seeds, str) else list(seeds)
    out = []
    for item in items:
        try:
            value = int(item) if not isinstance(item, float) or item.is_integer() else None
        except (TypeError, ValueError):
            value = None
        if value is None or isinstance(item, bool):
            raise StudioError(f"seed {item!r} is not a whole number")
        if not 0 <= value <= MAX_SEED:
            raise StudioError(f"seed {value} is out of range: use 0 .. {MAX_SEED}")
        out.append(value)
    if len(out) != count:
        raise StudioError(f"give {count} seed{'s' if count > 1 else ''} (e.g. {', '.join(['12', '34'][:count])}) "
                          f"or leave it empty for random ones; got {len(out)}")
    return out


def parse_pair_id(pair_id) -> int:
    """A pair id from an int, an integral float (gr.Number) or a string of digits."""
    if isinstance(pair_id, bool) or pair_id is None or pair_id == "":
        raise StudioError("no pair to vote on yet: wait for the pair to appear, or press New pair")
    if isinstance(pair_id, float) and pair_id.is_integer():
        return int(pair_id)
    if isinstance(pair_id, int):
        return pair_id
    if isinstance(pair_id, str) and pair_id.strip().isdigit():
        return int(pair_id.strip())
    raise StudioError(f"pair id must be a whole number, got {pair_id!r:.40}")


def parse_setting(name: str, value):
    """One Train-tab value as the type the alignment core expects; StudioError if it cannot be."""
    kind = SETTINGS[name]
    if kind.many:
        return parse_names(value, name)
    if value is None or value == "":
        if kind.optional:
            return None
        raise StudioError(f"{name} is empty: give a value")
    if kind.scalar is str:
        return str(value)
    if isinstance(value, str):  # a text field (beta, so that it can be left empty)
        try:
            value = float(value.strip())
        except ValueError:
            raise StudioError(f"{name} must be a number, got {value!r:.40}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudioError(f"{name} must be a number, got {value!r:.40}")
    if kind.scalar is int:
        if float(value) != int(value):
            raise StudioError(f"{name} must be a whole number, got {value}")
        return int(value)
    return float(value)


def parse_names(value, what: str = "names") -> tuple[str, ...] | None:
    """Distinct annotator names from "a, b", a list of names, or nothing (None = no selection)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise StudioError(f"{what} must be names separated by commas or a list of names, got {value!r:.40}")
    names = []
    for item in items:
        if not isinstance(item, str) or len(item.strip()) > MAX_ANNOTATOR_CHARS or "\x00" in item:
            raise StudioError(f"{what}: {item!r:.40} is not an annotator name")
        if item.strip() and item.strip() not in names:
            names.append(item.strip())
    return tuple(names) or None
