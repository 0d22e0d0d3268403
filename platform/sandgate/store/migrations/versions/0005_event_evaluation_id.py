"""events.evaluation_id: the evaluation an event is about, as a column

``evaluated`` events (the evaluation finished) and ``promoted`` events that
cite an evaluation (auto-promotion and checked promotions) carry its id in
``evidence["evaluation_id"]``. Finding "the promotion of evaluation E" used to
mean reading the newest moves' JSON one by one; the column, with the
``(evaluation_id)`` index, makes it one indexed lookup.

Backfilled from the evidence of existing ``evaluated`` and ``promoted``
events, in batches (portable: SQLite and PostgreSQL read the JSON in Python).
A nullable column: no table rewrite on PostgreSQL, a plain ADD COLUMN on SQLite.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    op.add_column("events", sa.Column("evaluation_id", sa.String(36), nullable=True))
    op.create_index("ix_events_evaluation_id", "events", ["evaluation_id"])
    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("id", sa.BigInteger()),
        sa.column("action", sa.String(32)),
        sa.column("evidence", sa.JSON()),
        sa.column("evaluation_id", sa.String(36)),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(events.c.id, events.c.evidence)
            .where(events.c.id > last, events.c.action.in_(("evaluated", "promoted")))
            .order_by(events.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        for event_id, evidence in rows:
            if isinstance(evidence, str):  # a driver that hands JSON back as text
                evidence = json.loads(evidence)
            value = (evidence or {}).get("evaluation_id")
            if isinstance(value, str) and 0 < len(value) <= 36:
                conn.execute(
                    events.update().where(events.c.id == event_id).values(evaluation_id=value)
                )
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_events_evaluation_id", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("evaluation_id")
