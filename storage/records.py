"""Plain frozen records that cross the storage boundary, and the checks on what callers hand in.

Callers never see ORM objects: every read returns one of the dataclasses below, detached from any session, with
timestamps as timezone-aware UTC datetimes and JSON columns as fresh dicts. The ``check_*`` functions raise the
specific errors of ``storage.errors``. This module knows the shapes of the data, not how they are stored.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    InvalidAnnotatorError,
    InvalidChoiceError,
    InvalidGenerationError,
    InvalidMetadataError,
    InvalidPromptError,
)
from .models import MAX_ANNOTATOR_CHARS, MAX_MODEL_ID_CHARS, MAX_PROMPT_CHARS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # the range of the BIGINT column


@dataclass(frozen=True)
class NewGeneration:
    """One generated image, as the sampler hands it to ``Repository.create_pair``."""

    seed: int
    model_id: str
    adapter_version: int | None  # None = base model
    sampler_settings: dict  # JSON-serialisable: steps, guidance_scale, eta, ...
    image_png: bytes
    trajectory: bytes | None = None  # safetensors bytes; None for imported images


@dataclass(frozen=True)
class GenerationRecord:
    id: int
    prompt: str
    seed: int | None  # None for imported images
    model_id: str
    adapter_version: int | None
    sampler_settings: dict
    image_hash: str
    trajectory_hash: str | None


@dataclass(frozen=True)
class PairRecord:
    id: int
    prompt: str
    left: GenerationRecord
    right: GenerationRecord
    created_at: dt.datetime
    served_to: str | None


@dataclass(frozen=True)
class VoteRecord:
    id: int
    pair_id: int
    annotator: str
    choice: str
    created_at: dt.datetime


@dataclass(frozen=True)
class LabeledPair:
    pair_id: int
    prompt: str
    choice: str
    annotator: str
    voted_at: dt.datetime
    left: GenerationRecord
    right: GenerationRecord
    vote_id: int = 0  # monotonic; compare with Repository.last_vote_id()


@dataclass(frozen=True)
class AdapterRecord:
    version: int
    parent_version: int | None
    file_hash: str
    objective: str
    hyperparams: dict
    votes_used: int
    metrics: dict
    created_at: dt.datetime
    status: str
    status_reason: str | None


@dataclass(frozen=True)
class TrainingRunRecord:
    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    error: str | None
    metrics: dict | None
    adapter_version: int | None
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ImportedPair:
    """One already-judged pair read from a preference file, its images already in the blob store (no
    trajectories). Built by ``storage.export``; stored by ``Repository.import_pairs``."""

    prompt: str
    image_0_hash: str
    image_1_hash: str
    choice: str  # left / right / tie
    annotator: str
    model_0: str
    model_1: str
    seed_0: int | None = None
    seed_1: int | None = None
    voted_at: dt.datetime | None = None
    settings_0: dict = field(default_factory=dict)
    settings_1: dict = field(default_factory=dict)


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidPromptError("prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidPromptError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in prompt:
        raise InvalidPromptError("prompt contains a NUL character")
    return prompt


def check_annotator(annotator: object, what: str = "annotator") -> str:
    if not isinstance(annotator, str) or not annotator.strip():
        raise InvalidAnnotatorError(f"{what} must be a non-empty string, got {annotator!r:.80}")
    if len(annotator) > MAX_ANNOTATOR_CHARS:
        raise InvalidAnnotatorError(f"{what} has {len(annotator)} characters; the limit is {MAX_ANNOTATOR_CHARS}")
    return annotator


def check_choice(choice: object, allowed: tuple[str, ...], what: str = "choice") -> str:
    if not isinstance(choice, str) or choice not in allowed:
        raise InvalidChoiceError(f"{what} must be one of {', '.join(allowed)}; got {choice!r:.80}")
    return choice


def check_int(value: object, what: str, error: type[ValueError] = InvalidGenerationError) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {type(value).__name__}")
    return value


def check_json_dict(value: object, what: str, error: type[ValueError] = InvalidMetadataError) -> dict:
    """A deep copy of ``value`` if it is a dict of plain, finite JSON (what every database accepts)."""
    if not isinstance(value, dict):
        raise error(f"{what} must be a dict, got {type(value).__name__}")
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} is not plain JSON with finite numbers: {exc}") from None
    return json.loads(text)


def check_new_generation(gen: object, side: str) -> NewGeneration:
    if not isinstance(gen, NewGeneration):
        raise InvalidGenerationError(f"{side} must be a NewGeneration, got {type(gen).__name__}")
    seed = check_int(gen.seed, f"{side}.seed")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise InvalidGenerationError(f"{side}.seed {seed} is outside the signed 64-bit range")
    if not isinstance(gen.model_id, str) or not gen.model_id.strip() or len(gen.model_id) > MAX_MODEL_ID_CHARS:
        raise InvalidGenerationError(f"{side}.model_id must be a non-empty string of <= {MAX_MODEL_ID_CHARS} chars")
    if gen.adapter_version is not None and check_int(gen.adapter_version, f"{side}.adapter_version") < 1:
        raise InvalidGenerationError(f"{side}.adapter_version must be None (base model) or >= 1")
    check_json_dict(gen.sampler_settings, f"{side}.sampler_settings", InvalidGenerationError)
    if not isinstance(gen.image_png, bytes) or not gen.image_png.startswith(PNG_SIGNATURE):
        raise InvalidGenerationError(f"{side}.image_png must be the bytes of a PNG file")
    if gen.trajectory is not None and (not isinstance(gen.trajectory, bytes) or not gen.trajectory):
        raise InvalidGenerationError(f"{side}.trajectory must be non-empty bytes or None")
    return gen


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON value read from the database, so records never share mutable state."""
    return None if value is None else json.loads(json.dumps(value))
