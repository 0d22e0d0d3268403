"""worker_beats: one liveness row per running queue worker

A worker (``sandgate worker``, or the in-process worker of ``sandgate serve``)
inserts its row on start, refreshes ``heartbeat_at`` every few seconds and
deletes it on a clean stop. ``/readyz`` and a waiting remote ``submit`` read
it to tell "no worker is alive" from "the queue is long".

Safe on existing data: one new table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen copies of the types as they were at this revision (never import models here)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "worker_beats",
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_worker_beats"),
    )


def downgrade() -> None:
    op.drop_table("worker_beats")
