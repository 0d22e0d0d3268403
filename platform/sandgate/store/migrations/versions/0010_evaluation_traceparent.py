"""evaluations.traceparent: the W3C trace context of the submitter, for the worker that claims it

A nullable ``VARCHAR(64)`` holding the ``traceparent`` (``00-<trace id>-<span
id>-<flags>``) of the span that queued the evaluation, written only while
traces are on (``sandgate.tracing``): the worker that claims the row continues
that trace, so one trace spans submit, queue wait, claim, the sandbox's
phases, the gates and the promotion. NULL: no trace (traces off, or queued
before this revision).

Safe on existing data: one nullable column, no default, no rewrite.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("traceparent")
