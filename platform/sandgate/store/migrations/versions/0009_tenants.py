"""evaluations.tenant and per-key queue limits: fair share between API keys

* ``evaluations.tenant`` (NOT NULL, default ``'local'``): who queued the
  evaluation — ``key:<name>`` for an API key (key names are never reused),
  ``local`` for the embedded path (the CLI without ``SANDGATE_URL``, a
  process calling the library). Existing rows become ``local``.
* two indexes: ``(status, tenant, created_at)`` serves the fair claim (the
  tenants with queued work, each one's oldest queued row, each one's running
  count) and the queued cap's count; ``(tenant, started_at)`` serves "when did
  this tenant last get a slot" (the claim's tie-break).
* ``api_keys.max_queued`` / ``api_keys.max_running`` (NULL: the server's
  default): a key's own caps on queued and running evaluations.

Safe on existing data: added columns with defaults, two indexes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("tenant", sa.String(200), nullable=False, server_default="local"))
    op.create_index("ix_evaluations_status_tenant_created_at", "evaluations",
                    ["status", "tenant", "created_at"])
    op.create_index("ix_evaluations_tenant_started_at", "evaluations", ["tenant", "started_at"])
    op.add_column("api_keys", sa.Column("max_queued", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("max_running", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_running")
        batch.drop_column("max_queued")
    op.drop_index("ix_evaluations_tenant_started_at", table_name="evaluations")
    op.drop_index("ix_evaluations_status_tenant_created_at", table_name="evaluations")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("tenant")
