"""canary: the candidate beside the active pointer, canary runs, runtime evidence from consumers

* ``skills.candidate_version_id`` / ``skills.candidate_weight``: the pointer
  state is now (active, candidate, weight) in one row, moved by the same
  compare-and-set on ``skills.generation`` as promote/rollback. (No foreign
  key on the new column: SQLite cannot add one without rebuilding ``skills``;
  the store writes it only from a version row it has just read.)
* ``canaries``: one row per canary run (its configuration, the generation at
  which each step began, state, last decision).
* ``runtime_counts``: one row per (batch, version, generation) a consumer
  sent: calls, errors by type, a latency histogram. ``batch_id`` is unique per
  version and generation, so a batch re-sent after a lost answer counts once.
* ``runtime_samples``: capped JSON inputs/outputs of skills whose policy opts in.

Safe on existing data: two new columns (nullable, and ``NOT NULL DEFAULT 0``)
and three new tables.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen copies of the types as they were at this revision (never import models here)
TS = sa.DateTime(timezone=True)
JSONT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("skills", sa.Column("candidate_version_id", ID, nullable=True))
    op.add_column("skills", sa.Column("candidate_weight", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "canaries",
        sa.Column("id", ID, primary_key=True),
        sa.Column("skill_id", ID, sa.ForeignKey("skills.id", name="fk_canaries_skill_id_skills"), nullable=False),
        sa.Column("candidate_version_id", ID,
                  sa.ForeignKey("versions.id", name="fk_canaries_candidate_version_id_versions"), nullable=False),
        sa.Column("baseline_version_id", ID,
                  sa.ForeignKey("versions.id", name="fk_canaries_baseline_version_id_versions"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("config", JSONT, nullable=False),
        sa.Column("steps", JSONT, nullable=False),
        sa.Column("last_decision", JSONT, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_canaries"),
    )
    op.create_index("ix_canaries_skill_id_id", "canaries", ["skill_id", "id"])
    op.create_index("ix_canaries_state", "canaries", ["state"])
    op.create_table(
        "runtime_counts",
        sa.Column("id", ID, primary_key=True),
        sa.Column("skill_id", ID, sa.ForeignKey("skills.id", name="fk_runtime_counts_skill_id_skills"),
                  nullable=False),
        sa.Column("version_id", ID, sa.ForeignKey("versions.id", name="fk_runtime_counts_version_id_versions"),
                  nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("fallbacks", sa.BigInteger(), nullable=False),
        sa.Column("error_types", JSONT, nullable=False),
        sa.Column("latency", JSONT, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runtime_counts"),
        sa.UniqueConstraint("batch_id", "version_id", "generation",
                            name="uq_runtime_counts_batch_id_version_id_generation"),
    )
    op.create_index("ix_runtime_counts_version_id_generation", "runtime_counts", ["version_id", "generation"])
    op.create_table(
        "runtime_samples",
        sa.Column("id", ID, primary_key=True),
        sa.Column("version_id", ID, sa.ForeignKey("versions.id", name="fk_runtime_samples_version_id_versions"),
                  nullable=False),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("sample", JSONT, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runtime_samples"),
    )
    op.create_index("ix_runtime_samples_version_id_id", "runtime_samples", ["version_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_runtime_samples_version_id_id", table_name="runtime_samples")
    op.drop_table("runtime_samples")
    op.drop_index("ix_runtime_counts_version_id_generation", table_name="runtime_counts")
    op.drop_table("runtime_counts")
    op.drop_index("ix_canaries_state", table_name="canaries")
    op.drop_index("ix_canaries_skill_id_id", table_name="canaries")
    op.drop_table("canaries")
    with op.batch_alter_table("skills") as batch:
        batch.drop_column("candidate_weight")
        batch.drop_column("candidate_version_id")
