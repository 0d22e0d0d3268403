"""The skill store schema: SQLAlchemy 2 typed models.

These models describe the schema at the *head* migration. The migrations in
``store/migrations/versions`` are the source of truth for how a database gets
there; ``tests/integration/test_store_migrations.py`` checks that the two agree.

::

    skills ──< versions ──< version_files
      │  │        │
      │  │        └──< evaluations
      │  └──< events (append-only audit log)
      ├── active_version_id ─► versions.id   (the ``active`` pointer)
      └── pointer_event_id  ─► events.id     (the move that set the pointer)

The pointer moves only by compare-and-set on ``skills.generation`` (see
``pointers.promote``/``rollback``). ``events.back_event_id`` links a move to
the move whose state a rollback from it returns to (the pointer's history
stack), so a rollback is a couple of primary-key lookups, never a log scan.

Nothing is ever deleted: versions are yanked, events are only appended. The one
exception is retention (``evaluations.prune_evaluations``, run by the scheduler):
old, superseded evaluations of versions that were never active.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Skill",
    "Version",
    "VersionFile",
    "Evaluation",
    "Event",
    "Canary",
    "RuntimeCount",
    "RuntimeSample",
    "WorkerBeat",
    "JSONType",
    "BigIntPK",
    "NAMING_CONVENTION",
]

#: stable constraint names, so migrations can refer to them on every backend
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON everywhere, JSONB on PostgreSQL
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: 64-bit ids on PostgreSQL; SQLite's INTEGER PRIMARY KEY (the rowid) there
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

#: length limits (checked by the store functions before the database sees them)
NAME_LENGTH = 63
ACTOR_LENGTH = 200
HASH_LENGTH = 100
#: a W3C traceparent (version 00 is 55 characters; room for a later version's)
TRACEPARENT_LENGTH = 64
PATH_LENGTH = 512


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


class Skill(Base):
    __tablename__ = "skills"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    created_at: Mapped[datetime]
    #: the ``active`` pointer (NULL: nothing promoted yet)
    active_version_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("versions.id", use_alter=True)
    )
    #: bumped by every pointer move; the compare-and-set token
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: the promoted/rolled_back event that set the current pointer
    pointer_event_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("events.id", use_alter=True)
    )
    # -- canary (0006): the pointer state is (active, candidate, weight), one CAS-protected row --
    #: a passed version serving ``candidate_weight`` % of calls beside ``active`` (NULL: no canary)
    candidate_version_id: Mapped[int | None] = mapped_column(BigIntPK)
    #: percent of calls routed to the candidate (0 when there is none)
    candidate_weight: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("skill_id", "number"),
        UniqueConstraint("skill_id", "content_hash"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    skill_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("skills.id"))
    #: 1, 2, ... per skill, contiguous
    number: Mapped[int] = mapped_column(Integer)
    #: ``sha256:<hex>`` of the canonical file set (see ``sandgate.submission``)
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    manifest: Mapped[dict[str, Any]]
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    #: latest *conclusive* verdict under any policy: pending | passed | failed | rejected
    #: (``error`` verdicts never change it: the infrastructure's fault is not the skill's)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    yanked_at: Mapped[datetime | None]
    yank_reason: Mapped[str | None] = mapped_column(Text)
    #: where the submission came from (client, path, agent run, ...) — added in 0002
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class VersionFile(Base):
    """The exact bytes of a version: what is served is what was evaluated."""

    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("versions.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(PATH_LENGTH), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (
        Index(None, "version_id", "policy_hash"),
        # the work queue: oldest queued first (added in 0002)
        Index(None, "status", "created_at"),
        # lapsed leases of running evaluations, oldest first (added in 0003)
        Index(None, "status", "lease_expires_at"),
        # the fair claim: tenants with queued work, each one's oldest queued and running count (0009)
        Index(None, "status", "tenant", "created_at"),
        # when a tenant last got a slot: the fair claim's tie-break (0009)
        Index(None, "tenant", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("versions.id"))
    policy_name: Mapped[str] = mapped_column(String(NAME_LENGTH * 2))
    policy_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    #: queued | running | done
    status: Mapped[str] = mapped_column(String(16))
    #: passed | failed | rejected | error (NULL until done)
    verdict: Mapped[str | None] = mapped_column(String(16))
    reasons: Mapped[list[Any] | None] = mapped_column(JSONType)
    #: the full ``EvaluationReport`` as JSON
    report: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: the worker that holds (or last held) the evaluation: ``host:pid:random`` — added in 0003
    lease_owner: Mapped[str | None] = mapped_column(String(ACTOR_LENGTH))
    #: while ``running``: when the lease lapses unless the owner heartbeats (NULL: not leased,
    #: e.g. an embedded ``submit(wait=True)`` run)
    lease_expires_at: Mapped[datetime | None]
    #: how many times a worker claimed it; at the maximum it ends as verdict ``error``
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: who queued it (0009): ``key:<name>`` for an API key, ``local`` for the embedded path;
    #: workers share their slots fairly between tenants and each tenant's caps apply
    tenant: Mapped[str] = mapped_column(String(ACTOR_LENGTH), default="local", server_default="local")
    #: the W3C ``traceparent`` of the span that queued it (NULL: traces off) — added in 0010
    traceparent: Mapped[str | None] = mapped_column(String(TRACEPARENT_LENGTH))


class Event(Base):
    """Append-only audit record: who, what, when, why, before/after, evidence."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "skill_id", "id"),
        Index(None, "version_id"),
        Index(None, "evaluation_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    skill_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("skills.id"))
    #: the version acted on (for a move: the version that became active)
    version_id: Mapped[int | None] = mapped_column(BigIntPK, ForeignKey("versions.id"))
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    #: submitted | evaluated | promoted | rolled_back | yanked | flagged
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: for moves: the move whose state a plain rollback from this state returns to
    back_event_id: Mapped[int | None] = mapped_column(BigIntPK, ForeignKey("events.id"))
    #: the evaluation it is about (``evaluated``; a ``promoted`` that cites one), as in
    #: ``evidence["evaluation_id"]`` — a column so "the promotion of evaluation E" is a lookup.
    #: No foreign key: retention deletes old evaluations, never events.
    evaluation_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime]


# --------------------------------------------------------------------------- canary (0006)


class Canary(Base):
    """One canary run: a candidate beside the active version, stepped up by the scheduler."""

    __tablename__ = "canaries"
    __table_args__ = (Index(None, "skill_id", "id"), Index(None, "state"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    skill_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("skills.id"))
    candidate_version_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("versions.id"))
    #: the version active when the canary started (the comparison's baseline)
    baseline_version_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("versions.id"))
    #: running | baking | completed | rolled_back | aborted | superseded
    state: Mapped[str] = mapped_column(String(16))
    #: the policy's canary parameters at the start (steps, min_calls, alpha, ...)
    config: Mapped[dict[str, Any]]
    #: ``[{"weight", "generation", "started_at"}]``: the generation each step began at
    steps: Mapped[list[Any]]
    last_decision: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class RuntimeCount(Base):
    """What one consumer batch counted for one version at one pointer generation."""

    __tablename__ = "runtime_counts"
    __table_args__ = (
        UniqueConstraint("batch_id", "version_id", "generation"),
        Index(None, "version_id", "generation"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    skill_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("skills.id"))
    version_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("versions.id"))
    generation: Mapped[int] = mapped_column(Integer)
    consumer: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    batch_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
    calls: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    fallbacks: Mapped[int] = mapped_column(BigInteger)
    error_types: Mapped[dict[str, Any]]
    #: histogram bucket (sandgate.policy.canary.bucket_of, as a string) -> calls
    latency: Mapped[dict[str, Any]]


class RuntimeSample(Base):
    """One sampled call (JSON input and output or error) of a skill whose policy opts in."""

    __tablename__ = "runtime_samples"
    __table_args__ = (Index(None, "version_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    version_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("versions.id"))
    consumer: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    received_at: Mapped[datetime]
    sample: Mapped[dict[str, Any]]


class WorkerBeat(Base):
    """A running queue worker's liveness record (added in 0007): one row per worker process.

    The worker writes it on start and every few seconds (``heartbeat_at``) and deletes it on a
    clean stop; a killed worker's row simply goes stale. Not history: rows of workers silent
    for a day are deleted by the next worker that starts.
    """

    __tablename__ = "worker_beats"

    #: the worker's owner id, ``host:pid:random`` (the same as its leases' ``lease_owner``)
    owner: Mapped[str] = mapped_column(String(ACTOR_LENGTH), primary_key=True)
    #: evaluation slots the worker runs at once
    concurrency: Mapped[int] = mapped_column(Integer)
    #: ``worker`` (``sandgate worker``) or ``serve`` (the in-process worker of ``sandgate serve``)
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
