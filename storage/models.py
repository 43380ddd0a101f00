"""SQLAlchemy 2.x tables of the studio (docs/architecture.md, "Data model").

Constraints live in the schema, not only in code: vote choices, A/B choices and statuses are CHECKed, a vote is
unique per (pair, annotator), foreign keys tie every row to what it names, and a partial unique index allows at
most one live adapter (SQLite and PostgreSQL; elsewhere the repository's code alone keeps that rule). A worker
lease is one row per name, kept after release (an expired row is a free lease). Blob columns
hold SHA-256 hex digests of files in the blob store, never paths. Timestamps are set by the database in UTC.

This module knows the table layout only. It makes no engine, opens no session and runs no query; changes to it
need a new Alembic revision in ``storage/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from settings import MAX_ANNOTATOR_CHARS, MAX_PROMPT_CHARS, VOTE_CHOICES  # the limits every layer checks

from .sqltypes import UTCDateTime, utcnow

MAX_MODEL_ID_CHARS = 200
MAX_LEASE_NAME_CHARS = 64
MAX_LEASE_HOLDER_CHARS = 200

PREFERENCE_CHOICES = ("left", "right", "tie")  # the votes that say which image is better
AB_CHOICES = ("adapter", "base", "tie")
AB_SIDES = ("left", "right")
# retired: was live, replaced by a newer version (roll back may return to it); rolled_back: taken off by a roll
# back, never chosen by a later roll back.
ADAPTER_STATUSES = ("candidate", "live", "rejected", "retired", "rolled_back")
TRAINING_RUN_STATUSES = ("running", "succeeded", "failed", "rejected", "interrupted")

# Deterministic constraint names, so Alembic batch migrations on SQLite can find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Prompt(Base):
    """One distinct prompt text; pairs and A/B trials point at it."""

    __tablename__ = "prompt"
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())


class Generation(Base):
    """One image made (or imported) for a prompt, with what is needed to reproduce or train on it."""

    __tablename__ = "generation"
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"), index=True)
    seed: Mapped[int | None] = mapped_column(BigInteger)  # None for imported images
    model_id: Mapped[str] = mapped_column(String(MAX_MODEL_ID_CHARS))
    adapter_version: Mapped[int | None] = mapped_column(ForeignKey("adapter.version"))  # None = base model
    sampler_settings: Mapped[dict[str, Any]]
    image_hash: Mapped[str] = mapped_column(String(64), index=True)
    trajectory_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # None for imported images
    created_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())


class Pair(Base):
    """Two generations of one prompt, shown side by side."""

    __tablename__ = "pair"
    __table_args__ = (CheckConstraint("left_generation_id <> right_generation_id", name="distinct_sides"),)
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"), index=True)
    left_generation_id: Mapped[int] = mapped_column(ForeignKey("generation.id"))
    right_generation_id: Mapped[int] = mapped_column(ForeignKey("generation.id"))
    served_to: Mapped[str | None] = mapped_column(String(MAX_ANNOTATOR_CHARS))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())


class Vote(Base):
    """One annotator's verdict on one pair; the table the trainer learns from."""

    __tablename__ = "vote"
    __table_args__ = (
        UniqueConstraint("pair_id", "annotator"),
        CheckConstraint(_one_of("choice", VOTE_CHOICES), name="choice"),
        CheckConstraint("length(annotator) > 0", name="annotator_not_empty"),
        Index("ix_vote_created_at_id", "created_at", "id"),
        # AUTOINCREMENT: ids never come back after a delete, so "votes after id N" stays a sound watermark.
        {"sqlite_autoincrement": True},
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id"))
    annotator: Mapped[str] = mapped_column(String(MAX_ANNOTATOR_CHARS))
    choice: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())


class Adapter(Base):
    """One trained LoRA; its weights are a blob. Versions count 1, 2, ... in registration order."""

    __tablename__ = "adapter"
    __table_args__ = (
        CheckConstraint(_one_of("status", ADAPTER_STATUSES), name="status"),
        CheckConstraint("version > 0", name="version_positive"),
        CheckConstraint("votes_used >= 0", name="votes_used_not_negative"),
        Index(
            "uq_adapter_one_live",
            "status",
            unique=True,
            sqlite_where=text("status = 'live'"),
            postgresql_where=text("status = 'live'"),
        ),
    )
    __mapper_args__ = {"eager_defaults": True}

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_version: Mapped[int | None] = mapped_column(ForeignKey("adapter.version"))
    file_hash: Mapped[str] = mapped_column(String(64))
    objective: Mapped[str] = mapped_column(String(64))
    hyperparams: Mapped[dict[str, Any]]
    votes_used: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default="candidate")
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())
    status_changed_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())


class TrainingRun(Base):
    """One attempt of the worker to train an adapter, successful or not."""

    __tablename__ = "training_run"
    __table_args__ = (CheckConstraint(_one_of("status", TRAINING_RUN_STATUSES), name="status"),)
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    error: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    adapter_version: Mapped[int | None] = mapped_column(ForeignKey("adapter.version"))


class ABTrial(Base):
    """One blind base-vs-adapter comparison; kept apart from votes so it never becomes training data."""

    __tablename__ = "ab_trial"
    __table_args__ = (
        CheckConstraint(_one_of("choice", AB_CHOICES), name="choice"),
        CheckConstraint(_one_of("adapter_side", AB_SIDES), name="adapter_side"),
        CheckConstraint("length(annotator) > 0", name="annotator_not_empty"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompt.id"))
    seed: Mapped[int] = mapped_column(BigInteger)
    adapter_version: Mapped[int] = mapped_column(ForeignKey("adapter.version"), index=True)
    adapter_side: Mapped[str] = mapped_column(String(8))
    annotator: Mapped[str] = mapped_column(String(MAX_ANNOTATOR_CHARS))
    choice: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=utcnow())


class WorkerLease(Base):
    """Who may do a one-at-a-time job (e.g. "trainer") until when; times are the database's clock."""

    __tablename__ = "worker_lease"
    __table_args__ = (CheckConstraint("length(holder) > 0", name="holder_not_empty"),)

    name: Mapped[str] = mapped_column(String(MAX_LEASE_NAME_CHARS), primary_key=True)
    holder: Mapped[str] = mapped_column(String(MAX_LEASE_HOLDER_CHARS))
    expires_at: Mapped[dt.datetime]
    acquired_at: Mapped[dt.datetime]
    heartbeat: Mapped[dt.datetime]  # last acquire or renew by the holder
    # The fencing token: incremented whenever the lease changes hands (taken when free or expired), so a holder
    # that lost it cannot act on its stale claim (see ``LeaseMixin.fence``).
    generation: Mapped[int] = mapped_column(Integer, server_default="1")
