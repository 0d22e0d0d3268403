"""What every room of the store shares: row lookups, row → record, small rules.

Private to :mod:`sandgate.store`: the rooms (:mod:`~sandgate.store.versions`,
:mod:`~sandgate.store.evaluations`, :mod:`~sandgate.store.pointers`,
:mod:`~sandgate.store.audit`) import these; nothing else does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast, overload

from sqlalchemy import CursorResult, Result, func, select
from sqlalchemy.orm import Session

from sandgate.errors import InvalidTransition, NotFound
from sandgate.records import EvaluationRecord, EventRecord, SkillRecord, VersionRecord
from sandgate.store.models import ACTOR_LENGTH, Evaluation, Event, Skill, Version

MOVES = ("promoted", "rolled_back")
#: verdicts that say something about the skill (``error`` is the infrastructure's)
CONCLUSIVE = ("passed", "failed", "rejected")
_MAX_WALK = 10_000


def _now() -> datetime:
    return datetime.now(UTC)

@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
@overload
def _utc(value: datetime | None) -> datetime | None: ...
def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value

def _rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE matched: ``Session.execute`` is typed to return a plain ``Result``, but for
    an UPDATE or DELETE without RETURNING it is a ``CursorResult``, which counts them."""
    return cast(CursorResult[Any], result).rowcount

def _hook(point: str, session: Session) -> None:
    """Run the store's test hook for ``point``, if any (see :attr:`Store.hooks`)."""
    fn = session.info.get("sandgate.hooks", {}).get(point)
    if fn is not None:
        fn(session)

def _require_actor(actor: str) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise InvalidTransition("an actor is required (who is doing this?)", code="actor_required")
    if len(actor) > ACTOR_LENGTH:
        raise InvalidTransition(f"actor is longer than {ACTOR_LENGTH} characters")
    return actor

def _require_reason(reason: str | None, what: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidTransition(f"{what} needs a reason", code="reason_required")
    return reason

def _skill(s: Session, name: str, *, lock: bool = False) -> Skill:
    q = select(Skill).where(Skill.name == name)
    if lock:
        q = q.with_for_update()
    skill = s.scalars(q).one_or_none()
    if skill is None:
        raise NotFound(f"no skill named {name!r}")
    return skill

def _version(s: Session, skill: Skill, number: int, *, lock: str | None = None) -> Version:
    q = select(Version).where(Version.skill_id == skill.id, Version.number == number)
    if lock == "share":
        q = q.with_for_update(read=True)
    elif lock == "update":
        q = q.with_for_update()
    v = s.scalars(q).one_or_none()
    if v is None:
        latest = s.scalar(select(func.max(Version.number)).where(Version.skill_id == skill.id))
        hint = f"latest is {skill.name}@{latest}" if latest else "it has no versions yet"
        raise NotFound(f"{skill.name}@{number} does not exist ({hint})")
    return v

def _version_record(v: Version, skill: Skill, latest_verdict: str | None = None) -> VersionRecord:
    return VersionRecord(
        id=v.id,
        skill=skill.name,
        number=v.number,
        content_hash=v.content_hash,
        manifest=dict(v.manifest or {}),
        file_count=v.file_count,
        total_bytes=v.total_bytes,
        created_at=_utc(v.created_at),
        created_by=v.created_by,
        status=v.status,
        yanked_at=_utc(v.yanked_at),
        yank_reason=v.yank_reason,
        provenance=v.provenance,
        active=skill.active_version_id == v.id,
        latest_verdict=latest_verdict,
    )

def _evaluation_record(e: Evaluation, skill_name: str, number: int) -> EvaluationRecord:
    return EvaluationRecord(
        id=e.id,
        skill=skill_name,
        version=number,
        policy_name=e.policy_name,
        policy_hash=e.policy_hash,
        status=e.status,
        verdict=e.verdict,
        reasons=list(e.reasons or []),
        report=e.report,
        created_at=_utc(e.created_at),
        started_at=_utc(e.started_at),
        finished_at=_utc(e.finished_at),
        attempts=e.attempts or 0,
        lease_owner=e.lease_owner,
        lease_expires_at=_utc(e.lease_expires_at),
        traceparent=e.traceparent,
    )

def _event_record(e: Event, skill_name: str, number: int | None) -> EventRecord:
    return EventRecord(
        id=e.id,
        skill=skill_name,
        version=number,
        actor=e.actor,
        action=e.action,
        reason=e.reason,
        before=e.before,
        after=e.after,
        evidence=e.evidence,
        created_at=_utc(e.created_at),
    )

def _skill_record(s: Session, skill: Skill) -> SkillRecord:
    active = (
        s.scalar(select(Version.number).where(Version.id == skill.active_version_id))
        if skill.active_version_id is not None
        else None
    )
    latest = s.scalar(select(func.max(Version.number)).where(Version.skill_id == skill.id))
    return SkillRecord(
        name=skill.name,
        created_at=_utc(skill.created_at),
        active_version=active,
        generation=skill.generation,
        latest_version=latest,
    )

def _short(h: str) -> str:
    return h.split(":", 1)[-1][:12]

def _evaluation_with_owner(s: Session, evaluation_id: str) -> tuple[Evaluation, Version, Skill]:
    ev = s.get(Evaluation, evaluation_id)
    if ev is None:
        raise NotFound(f"no evaluation {evaluation_id!r}")
    version = s.get_one(Version, ev.version_id)
    return ev, version, s.get_one(Skill, version.skill_id)

def _db_now(s: Session) -> datetime:
    """Lease clock: the database server's on PostgreSQL (one clock for every worker host)."""
    if s.get_bind().dialect.name == "postgresql":
        value = s.scalar(select(func.clock_timestamp()))
        assert value is not None
        return value
    return _now()

def _latest_conclusive(s: Session, version_id: int, policy_hash: str) -> Evaluation | None:
    return s.scalars(
        select(Evaluation)
        .where(
            Evaluation.version_id == version_id,
            Evaluation.policy_hash == policy_hash,
            Evaluation.status == "done",
            Evaluation.verdict.in_(CONCLUSIVE),
        )
        .order_by(Evaluation.finished_at.desc(), Evaluation.created_at.desc())
        .limit(1)
    ).first()
