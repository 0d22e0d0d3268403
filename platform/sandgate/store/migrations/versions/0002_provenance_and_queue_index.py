"""versions.provenance, and an index for the evaluation work queue

``provenance`` records where a submission came from (client, path, agent run);
existing versions get NULL ("unknown"). The ``(status, created_at)`` index lets
workers claim the oldest queued evaluation without scanning every evaluation.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # a plain nullable ADD COLUMN: no table rebuild on SQLite, no rewrite on PostgreSQL
    op.add_column("versions", sa.Column("provenance", JSONType, nullable=True))
    op.create_index("ix_evaluations_status_created_at", "evaluations", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_status_created_at", table_name="evaluations")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("provenance")
