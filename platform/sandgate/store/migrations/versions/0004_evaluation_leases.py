"""evaluations.lease_owner / lease_expires_at / attempts: the durable work queue's leases

A worker that claims an evaluation holds a lease on it (``lease_owner``,
``lease_expires_at``) and extends it by heartbeat; a running evaluation whose
lease lapsed may be claimed again, and ``attempts`` counts the claims so a job
that keeps killing its workers ends as verdict ``error`` instead of looping.
The ``(status, lease_expires_at)`` index finds lapsed leases without a scan.

Safe on existing data: two nullable columns and one ``NOT NULL DEFAULT 0``
column (no table rewrite on PostgreSQL 11+, a plain ADD COLUMN on SQLite).
Rows that were ``running`` before this migration have no lease; the
scheduler's lease recovery requeues them once they are older than its stale
limit.

Revision ID: 0004
Revises: 0003
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen copies of the types as they were at this revision (never import models here)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("lease_owner", sa.String(200), nullable=True))
    op.add_column("evaluations", sa.Column("lease_expires_at", TS, nullable=True))
    op.add_column(
        "evaluations", sa.Column("attempts", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_index(
        "ix_evaluations_status_lease_expires_at", "evaluations", ["status", "lease_expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_evaluations_status_lease_expires_at", table_name="evaluations")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
