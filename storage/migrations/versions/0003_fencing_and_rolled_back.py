"""Lease fencing token and the ``rolled_back`` adapter status.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``worker_lease.generation`` counts hand-overs of a lease, so a worker that lost its lease can be refused in the
same transaction that would register or promote its adapter. ``rolled_back`` marks a version that a roll back
took off, which a later roll back never returns to (``retired`` versions it may). SQLite needs batch mode to
change a CHECK constraint; ``env.py`` renders batch operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('candidate', 'live', 'rejected', 'retired')"
_NEW = "status IN ('candidate', 'live', 'rejected', 'retired', 'rolled_back')"


def upgrade() -> None:
    with op.batch_alter_table("worker_lease") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), server_default="1", nullable=False))
    with op.batch_alter_table("adapter") as batch:
        batch.drop_constraint(op.f("ck_adapter_status"), type_="check")
        batch.create_check_constraint(op.f("ck_adapter_status"), sa.text(_NEW))


def downgrade() -> None:
    op.execute("UPDATE adapter SET status = 'retired' WHERE status = 'rolled_back'")
    with op.batch_alter_table("adapter") as batch:
        batch.drop_constraint(op.f("ck_adapter_status"), type_="check")
        batch.create_check_constraint(op.f("ck_adapter_status"), sa.text(_OLD))
    with op.batch_alter_table("worker_lease") as batch:
        batch.drop_column("generation")
