"""Initial schema: prompt, generation, pair, vote, adapter, training_run, ab_trial.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.sqltypes import UTCDateTime, utcnow

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at(name: str = "created_at") -> sa.Column:
    return sa.Column(name, UTCDateTime(), server_default=utcnow(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "adapter",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("file_hash", sa.String(length=64), nullable=False),
        sa.Column("objective", sa.String(length=64), nullable=False),
        sa.Column("hyperparams", sa.JSON(), nullable=False),
        sa.Column("votes_used", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="candidate", nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        _created_at(),
        _created_at("status_changed_at"),
        sa.CheckConstraint("status IN ('candidate', 'live', 'rejected', 'retired')", name=op.f("ck_adapter_status")),
        sa.CheckConstraint("version > 0", name=op.f("ck_adapter_version_positive")),
        sa.CheckConstraint("votes_used >= 0", name=op.f("ck_adapter_votes_used_not_negative")),
        sa.ForeignKeyConstraint(
            ["parent_version"], ["adapter.version"], name=op.f("fk_adapter_parent_version_adapter")
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_adapter")),
    )
    op.create_index(
        "uq_adapter_one_live",
        "adapter",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'live'"),
        postgresql_where=sa.text("status = 'live'"),
    )

    op.create_table(
        "prompt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt")),
        sa.UniqueConstraint("text", name=op.f("uq_prompt_text")),
    )

    op.create_table(
        "ab_trial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("adapter_version", sa.Integer(), nullable=False),
        sa.Column("adapter_side", sa.String(length=8), nullable=False),
        sa.Column("annotator", sa.String(length=100), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        _created_at(),
        sa.CheckConstraint("adapter_side IN ('left', 'right')", name=op.f("ck_ab_trial_adapter_side")),
        sa.CheckConstraint("choice IN ('adapter', 'base', 'tie')", name=op.f("ck_ab_trial_choice")),
        sa.CheckConstraint("length(annotator) > 0", name=op.f("ck_ab_trial_annotator_not_empty")),
        sa.ForeignKeyConstraint(
            ["adapter_version"], ["adapter.version"], name=op.f("fk_ab_trial_adapter_version_adapter")
        ),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompt.id"], name=op.f("fk_ab_trial_prompt_id_prompt")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_trial")),
    )
    op.create_index(op.f("ix_ab_trial_adapter_version"), "ab_trial", ["adapter_version"])

    op.create_table(
        "generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("adapter_version", sa.Integer(), nullable=True),
        sa.Column("sampler_settings", sa.JSON(), nullable=False),
        sa.Column("image_hash", sa.String(length=64), nullable=False),
        sa.Column("trajectory_hash", sa.String(length=64), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["adapter_version"], ["adapter.version"], name=op.f("fk_generation_adapter_version_adapter")
        ),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompt.id"], name=op.f("fk_generation_prompt_id_prompt")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation")),
    )
    op.create_index(op.f("ix_generation_image_hash"), "generation", ["image_hash"])
    op.create_index(op.f("ix_generation_prompt_id"), "generation", ["prompt_id"])
    op.create_index(op.f("ix_generation_trajectory_hash"), "generation", ["trajectory_hash"])

    op.create_table(
        "training_run",
        sa.Column("id", sa.Integer(), nullable=False),
        _created_at("started_at"),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("adapter_version", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'rejected', 'interrupted')",
            name=op.f("ck_training_run_status"),
        ),
        sa.ForeignKeyConstraint(
            ["adapter_version"], ["adapter.version"], name=op.f("fk_training_run_adapter_version_adapter")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_run")),
    )

    op.create_table(
        "pair",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("left_generation_id", sa.Integer(), nullable=False),
        sa.Column("right_generation_id", sa.Integer(), nullable=False),
        sa.Column("served_to", sa.String(length=100), nullable=True),
        _created_at(),
        sa.CheckConstraint("left_generation_id <> right_generation_id", name=op.f("ck_pair_distinct_sides")),
        sa.ForeignKeyConstraint(
            ["left_generation_id"], ["generation.id"], name=op.f("fk_pair_left_generation_id_generation")
        ),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompt.id"], name=op.f("fk_pair_prompt_id_prompt")),
        sa.ForeignKeyConstraint(
            ["right_generation_id"], ["generation.id"], name=op.f("fk_pair_right_generation_id_generation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pair")),
    )
    op.create_index(op.f("ix_pair_prompt_id"), "pair", ["prompt_id"])

    op.create_table(
        "vote",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.Integer(), nullable=False),
        sa.Column("annotator", sa.String(length=100), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        _created_at(),
        sa.CheckConstraint(
            "choice IN ('left', 'right', 'tie', 'both_bad', 'skip')", name=op.f("ck_vote_choice")
        ),
        sa.CheckConstraint("length(annotator) > 0", name=op.f("ck_vote_annotator_not_empty")),
        sa.ForeignKeyConstraint(["pair_id"], ["pair.id"], name=op.f("fk_vote_pair_id_pair")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vote")),
        sa.UniqueConstraint("pair_id", "annotator", name=op.f("uq_vote_pair_id_annotator")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_vote_created_at_id", "vote", ["created_at", "id"])


def downgrade() -> None:
    # Children before parents, so foreign keys never dangle.
    op.drop_index("ix_vote_created_at_id", table_name="vote")
    op.drop_table("vote")
    op.drop_index(op.f("ix_pair_prompt_id"), table_name="pair")
    op.drop_table("pair")
    op.drop_table("training_run")
    op.drop_index(op.f("ix_generation_trajectory_hash"), table_name="generation")
    op.drop_index(op.f("ix_generation_prompt_id"), table_name="generation")
    op.drop_index(op.f("ix_generation_image_hash"), table_name="generation")
    op.drop_table("generation")
    op.drop_index(op.f("ix_ab_trial_adapter_version"), table_name="ab_trial")
    op.drop_table("ab_trial")
    op.drop_table("prompt")
    op.drop_index("uq_adapter_one_live", table_name="adapter")
    op.drop_table("adapter")
