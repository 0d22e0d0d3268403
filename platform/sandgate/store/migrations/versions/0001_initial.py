"""initial schema: skills, versions, version_files, evaluations, events

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen copies of the types as they were at this revision (never import models here)
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # skills <-> versions/events is a cycle. SQLite cannot ALTER constraints in,
    # but does not check that a referenced table exists yet, so it gets them
    # inline; every other backend gets them by ALTER once the tables exist.
    cyclic_fks = [
        sa.ForeignKeyConstraint(
            ["active_version_id"], ["versions.id"], name="fk_skills_active_version_id_versions"
        ),
        sa.ForeignKeyConstraint(
            ["pointer_event_id"], ["events.id"], name="fk_skills_pointer_event_id_events"
        ),
    ]
    op.create_table(
        "skills",
        sa.Column("id", BigIntPK, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("active_version_id", BigIntPK, nullable=True),
        sa.Column("generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pointer_event_id", BigIntPK, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_skills"),
        sa.UniqueConstraint("name", name="uq_skills_name"),
        *(cyclic_fks if sqlite else []),
    )
    op.create_table(
        "versions",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("skill_id", BigIntPK, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(100), nullable=False),
        sa.Column("manifest", JSONType, nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("yanked_at", TS, nullable=True),
        sa.Column("yank_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_versions"),
        sa.ForeignKeyConstraint(["skill_id"], ["skills.id"], name="fk_versions_skill_id_skills"),
        sa.UniqueConstraint("skill_id", "number", name="uq_versions_skill_id_number"),
        sa.UniqueConstraint("skill_id", "content_hash", name="uq_versions_skill_id_content_hash"),
    )
    op.create_table(
        "version_files",
        sa.Column("version_id", BigIntPK, nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "path", name="pk_version_files"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_version_files_version_id_versions"
        ),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("version_id", BigIntPK, nullable=False),
        sa.Column("policy_name", sa.String(126), nullable=False),
        sa.Column("policy_hash", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("reasons", JSONType, nullable=True),
        sa.Column("report", JSONType, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_evaluations_version_id_versions"
        ),
    )
    op.create_index(
        "ix_evaluations_version_id_policy_hash", "evaluations", ["version_id", "policy_hash"]
    )
    op.create_table(
        "events",
        sa.Column("id", BigIntPK, nullable=False, autoincrement=True),
        sa.Column("skill_id", BigIntPK, nullable=False),
        sa.Column("version_id", BigIntPK, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("before", JSONType, nullable=True),
        sa.Column("after", JSONType, nullable=True),
        sa.Column("evidence", JSONType, nullable=True),
        sa.Column("back_event_id", BigIntPK, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(["skill_id"], ["skills.id"], name="fk_events_skill_id_skills"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_events_version_id_versions"
        ),
        sa.ForeignKeyConstraint(
            ["back_event_id"], ["events.id"], name="fk_events_back_event_id_events"
        ),
    )
    op.create_index("ix_events_skill_id_id", "events", ["skill_id", "id"])
    op.create_index("ix_events_version_id", "events", ["version_id"])
    if not sqlite:
        op.create_foreign_key(
            "fk_skills_active_version_id_versions", "skills", "versions", ["active_version_id"], ["id"]
        )
        op.create_foreign_key(
            "fk_skills_pointer_event_id_events", "skills", "events", ["pointer_event_id"], ["id"]
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_skills_active_version_id_versions", "skills", type_="foreignkey")
        op.drop_constraint("fk_skills_pointer_event_id_events", "skills", type_="foreignkey")
    op.drop_table("events")
    op.drop_table("evaluations")
    op.drop_table("version_files")
    op.drop_table("versions")
    op.drop_table("skills")
