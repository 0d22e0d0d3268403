"""The skill store's operations: keyword-only functions, one transaction each.

Every function takes the :class:`~sandgate.store.engine.Store` explicitly and
returns plain records (:mod:`sandgate.records`), never ORM objects.
Refusals are :class:`~sandgate.errors.NotFound`,
:class:`~sandgate.errors.Conflict` or :class:`~sandgate.errors.InvalidTransition`
with a message meant for the person at the terminal.

The ``active`` pointer
======================

``promote`` and ``rollback`` are the only ways the pointer moves. Each is one
transaction that writes exactly one event and then does a compare-and-set::

    UPDATE skills SET active_version_id = ?, generation = generation + 1, pointer_event_id = ?
     WHERE id = ? AND generation = ?

Zero rows updated means another move won: :class:`Conflict` ("skill X moved
concurrently: expected generation 4, now 5") and the transaction — event
included — is rolled back. ``expected_generation=None`` compares against the
generation read in the same transaction, so two concurrent movers still cannot
both win.

* Promoting the version that is already active is refused
  (:class:`InvalidTransition`, code ``already_active``) rather than being a
  silent no-op: a move that does nothing must not look like one that happened,
  and a script can tell the case apart by the code.
* Promoting needs the version's latest *conclusive* evaluation (passed, failed
  or rejected — ``error`` verdicts are the infrastructure's fault and are
  ignored) under the *current* policy hash to be ``passed``. ``force=True``
  skips that check (never the yank check), needs a reason, and is recorded in
  the event's evidence as ``forced``.

Rollback semantics
------------------

**rollback = go back to what was active before the last move, and again to
what was active before that.** The pointer keeps a history stack: ``promote``
pushes, ``rollback`` pops. After promoting 1, 2, 3, 4, ``rollback`` three times
walks 4 → 3 → 2 → 1 (it does not flip between 4 and 3: undoing a rollback is a
``promote``). Each move event stores ``back_event_id``, the move whose state a
rollback returns to, and ``skills.pointer_event_id`` names the move that set
the current pointer, so a rollback is a few primary-key lookups — no log scan,
no re-evaluation.

* Yanked versions are skipped on the way back (as is the version that is
  active now, if it appears further down the stack).
* ``rollback(to=N)`` moves to any *older* version N (lower number than the
  active one) that is not yanked and that passed an evaluation under some
  policy or was active before. The stack is cut back to N's place: if N was
  on it, a following plain rollback continues below N; if not, it continues
  with the newest entry older than N.
* The first version ever promoted has nothing below it: "nothing to roll back
  to" (:class:`InvalidTransition`). A rollback never empties the pointer.

Yank
----

A yanked version stays stored (its events and bytes are evidence) but can no
longer be promoted or rolled back to. Yanking the active version is refused
unless ``rollback=True``, which rolls back (plain semantics, skipping the
version being yanked) and yanks in one transaction: two events, one move.

The work queue
==============

``queue_evaluation`` writes a ``queued`` row; workers take rows with leases::

    queued ──claim──► running (lease_owner, lease_expires_at, attempts += 1) ──finish──► done
       ▲                 │  heartbeat: extend, only while still the owner
       │                 ├─ lease lapses ─► claimed again by another worker (or requeued
       └── release ──────┘                 by recover_leases); at max attempts → verdict error

* ``claim_evaluation`` takes a running row whose lease lapsed first, else the
  oldest queued row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; ``BEGIN
  IMMEDIATE`` on SQLite): exactly one claimer wins a row.
* ``finish_evaluation`` with a lease owner is a compare-and-set on
  ``(status = running, lease_owner = owner)``: a worker whose lease was taken
  over gets ``Conflict`` (code ``lease_lost``) and discards its result, so an
  evaluation is completed — one ``evaluated`` event — exactly once.
* A job that exhausts ``max_attempts`` (default 3) ends as verdict ``error``
  with reason ``infrastructure`` ("gave up after 3 attempts"), never
  ``failed``: a dying worker is the infrastructure's fault.
* Lease times come from the database server's clock on PostgreSQL, so workers
  on several hosts agree on expiry whatever their own clocks say.

Retention (``prune_evaluations``) and re-scan flags (``flag_version``) are the
scheduler's; neither ever touches versions, nor any evaluation of a version
that is or ever was active.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sandgate.errors import Conflict, InvalidTransition, NotFound, StoreError
from sandgate.store.engine import Store
from sandgate.store.models import (
    ACTOR_LENGTH,
    HASH_LENGTH,
    PATH_LENGTH,
    Evaluation,
    Event,
    Skill,
    Version,
    VersionFile,
)
from sandgate.records import (
    EvaluationRecord,
    EventRecord,
    FileDiff,
    FlagResult,
    PointerMove,
    SkillRecord,
    VersionRecord,
    YankResult,
)

__all__ = [
    "PolicyRef",
    "SubmissionLike",
    "create_version",
    "get_skill",
    "list_skills",
    "list_versions",
    "get_version",
    "get_active_version",
    "get_version_files",
    "queue_evaluation",
    "start_evaluation",
    "finish_evaluation",
    "record_evaluation",
    "claim_evaluation",
    "heartbeat",
    "release_evaluation",
    "recover_leases",
    "lease_scope",
    "prune_evaluations",
    "flag_version",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "get_evaluation",
    "latest_evaluation",
    "pending_evaluation",
    "promote",
    "rollback",
    "yank",
    "history",
    "diff",
    "active_pointers",
    "active_pointer",
]

SKILL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MOVES = ("promoted", "rolled_back")
#: verdicts that say something about the skill (``error`` is the infrastructure's)
CONCLUSIVE = ("passed", "failed", "rejected")
_MAX_WALK = 10_000
_CREATE_ATTEMPTS = 5
#: a worker's lease on a running evaluation, unless it heartbeats
DEFAULT_LEASE_SECONDS = 30.0
#: claims of one evaluation before it ends as verdict ``error``
DEFAULT_MAX_ATTEMPTS = 3

#: the lease owner :func:`finish_evaluation` checks when none is passed (see :func:`lease_scope`)
_lease_owner: ContextVar[str | None] = ContextVar("sandgate_lease_owner", default=None)

#: test seam: callables run at named points inside transactions, given the session
#: ("create_version.files_inserted", "move.before_cas")
_hooks: dict[str, Callable[[Session], None]] = {}


class PolicyRef(Protocol):
    """What the store needs of a policy: its name and content hash."""

    @property
    def name(self) -> str: ...

    @property
    def hash(self) -> str: ...


class SubmissionLike(Protocol):
    """What the store needs of a ``sandgate.submission.Submission``."""

    @property
    def name(self) -> str: ...

    @property
    def manifest(self) -> Any: ...

    @property
    def files(self) -> Mapping[str, bytes]: ...

    @property
    def content_hash(self) -> str: ...


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _hook(point: str, session: Session) -> None:
    fn = _hooks.get(point)
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


def _manifest_dict(manifest: Any) -> dict[str, Any]:
    if manifest is None:
        return {}
    if hasattr(manifest, "model_dump"):
        return dict(manifest.model_dump(mode="json"))
    return dict(manifest)


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


def _version_record(v: Version, skill: Skill) -> VersionRecord:
    return VersionRecord(
        id=v.id,
        skill=skill.name,
        number=v.number,
        content_hash=v.content_hash,
        manifest=dict(v.manifest or {}),
        file_count=v.file_count,
        total_bytes=v.total_bytes,
        created_at=_utc(v.created_at),  # type: ignore[arg-type]
        created_by=v.created_by,
        status=v.status,
        yanked_at=_utc(v.yanked_at),
        yank_reason=v.yank_reason,
        provenance=v.provenance,
        active=skill.active_version_id == v.id,
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
        created_at=_utc(e.created_at),  # type: ignore[arg-type]
        started_at=_utc(e.started_at),
        finished_at=_utc(e.finished_at),
        attempts=e.attempts or 0,
        lease_owner=e.lease_owner,
        lease_expires_at=_utc(e.lease_expires_at),
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
        created_at=_utc(e.created_at),  # type: ignore[arg-type]
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
        created_at=_utc(skill.created_at),  # type: ignore[arg-type]
        active_version=active,
        generation=skill.generation,
        latest_version=latest,
    )


def _short(h: str) -> str:
    return h.split(":", 1)[-1][:12]


# --------------------------------------------------------------------------- versions


def create_version(
    store: Store,
    *,
    submission: SubmissionLike,
    actor: str,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[VersionRecord, bool]:
    """Store a submission as the skill's next version (idempotent on content).

    Identical content returns the existing version and ``created=False``. A new
    version — row, every file, and its ``submitted`` event — is written in one
    transaction: a crash at any point leaves no trace of it, and numbers stay
    contiguous.
    """
    actor = _require_actor(actor)
    name = submission.name
    if not SKILL_NAME.match(name or ""):
        raise InvalidTransition(f"invalid skill name {name!r}: must match {SKILL_NAME.pattern}")
    content_hash = submission.content_hash
    if not content_hash or len(content_hash) > HASH_LENGTH:
        raise StoreError(f"invalid content hash {content_hash!r}")
    files = {path: bytes(data) for path, data in sorted(submission.files.items())}
    if not files:
        raise StoreError(f"submission {name!r} has no files")
    for path in files:
        if len(path) > PATH_LENGTH:
            raise StoreError(f"file path longer than {PATH_LENGTH} characters: {path[:60]}...")
    manifest = _manifest_dict(submission.manifest)

    last_error: IntegrityError | None = None
    for _attempt in range(_CREATE_ATTEMPTS):
        try:
            return _create_version_once(
                store,
                name=name,
                content_hash=content_hash,
                files=files,
                manifest=manifest,
                actor=actor,
                provenance=dict(provenance) if provenance is not None else None,
            )
        except IntegrityError as exc:
            # a concurrent submit created the skill or took the number first: retry
            last_error = exc
    raise StoreError(f"could not store {name!r}: concurrent writers kept colliding") from last_error


def _create_version_once(
    store: Store,
    *,
    name: str,
    content_hash: str,
    files: dict[str, bytes],
    manifest: dict[str, Any],
    actor: str,
    provenance: dict[str, Any] | None,
) -> tuple[VersionRecord, bool]:
    now = _now()
    with store.write() as s:
        skill = s.scalars(select(Skill).where(Skill.name == name).with_for_update()).one_or_none()
        if skill is None:
            skill = Skill(name=name, created_at=now, generation=0)
            s.add(skill)
            s.flush()
        existing = s.scalars(
            select(Version).where(Version.skill_id == skill.id, Version.content_hash == content_hash)
        ).one_or_none()
        if existing is not None:
            return _version_record(existing, skill), False
        latest = s.scalar(select(func.max(Version.number)).where(Version.skill_id == skill.id))
        version = Version(
            skill_id=skill.id,
            number=(latest or 0) + 1,
            content_hash=content_hash,
            manifest=manifest,
            file_count=len(files),
            total_bytes=sum(len(b) for b in files.values()),
            created_at=now,
            created_by=actor,
            status="pending",
            provenance=provenance,
        )
        s.add(version)
        s.flush()
        s.execute(
            VersionFile.__table__.insert(),
            [
                {
                    "version_id": version.id,
                    "path": path,
                    "content": data,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
                for path, data in files.items()
            ],
        )
        _hook("create_version.files_inserted", s)
        s.add(
            Event(
                skill_id=skill.id,
                version_id=version.id,
                actor=actor,
                action="submitted",
                reason=None,
                before=None,
                after={"version": version.number, "content_hash": content_hash},
                evidence={"files": len(files), "bytes": version.total_bytes},
                created_at=now,
            )
        )
        record = _version_record(version, skill)
    return record, True


def get_skill(store: Store, *, name: str) -> SkillRecord:
    with store.read() as s:
        return _skill_record(s, _skill(s, name))


def list_skills(store: Store, *, prefix: str | None = None, limit: int | None = None) -> list[SkillRecord]:
    """All skills by name (optionally those starting with ``prefix``)."""
    latest = (
        select(func.max(Version.number))
        .where(Version.skill_id == Skill.id)
        .correlate(Skill)
        .scalar_subquery()
    )
    active = (
        select(Version.number)
        .where(Version.id == Skill.active_version_id)
        .correlate(Skill)
        .scalar_subquery()
    )
    q = select(Skill.name, Skill.created_at, active, Skill.generation, latest).order_by(Skill.name)
    if prefix:
        q = q.where(Skill.name.startswith(prefix, autoescape=True))
    if limit is not None:
        q = q.limit(limit)
    with store.read() as s:
        return [
            SkillRecord(
                name=row[0],
                created_at=_utc(row[1]),  # type: ignore[arg-type]
                active_version=row[2],
                generation=row[3],
                latest_version=row[4],
            )
            for row in s.execute(q)
        ]


def list_versions(store: Store, *, name: str) -> list[VersionRecord]:
    with store.read() as s:
        skill = _skill(s, name)
        versions = s.scalars(
            select(Version).where(Version.skill_id == skill.id).order_by(Version.number)
        )
        return [_version_record(v, skill) for v in versions]


def get_version(store: Store, *, name: str, number: int) -> VersionRecord:
    with store.read() as s:
        skill = _skill(s, name)
        return _version_record(_version(s, skill, number), skill)


def get_active_version(store: Store, *, name: str) -> VersionRecord | None:
    """The active version of ``name``, or None when nothing was promoted yet."""
    with store.read() as s:
        skill = _skill(s, name)
        if skill.active_version_id is None:
            return None
        return _version_record(s.get_one(Version, skill.active_version_id), skill)


def get_version_files(store: Store, *, name: str, number: int) -> dict[str, bytes]:
    """The exact bytes of a version, by path (sorted)."""
    with store.read() as s:
        version = _version(s, _skill(s, name), number)
        rows = s.execute(
            select(VersionFile.path, VersionFile.content)
            .where(VersionFile.version_id == version.id)
            .order_by(VersionFile.path)
        )
        return {path: bytes(content) for path, content in rows}


# --------------------------------------------------------------------------- evaluations


def _report_fields(report: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    data = report.model_dump(mode="json") if hasattr(report, "model_dump") else dict(report)
    verdict = data["verdict"]
    if verdict not in (*CONCLUSIVE, "error"):
        raise StoreError(f"unknown verdict {verdict!r}")
    return verdict, list(data.get("reasons") or []), data


def _apply_verdict(
    s: Session,
    version: Version,
    skill: Skill,
    ev: Evaluation,
    now: datetime,
    extra_evidence: Mapping[str, Any] | None = None,
) -> None:
    """Version status follows conclusive verdicts; every finished evaluation is an event."""
    if ev.verdict in CONCLUSIVE:
        version.status = ev.verdict
    s.add(
        Event(
            skill_id=skill.id,
            version_id=version.id,
            actor=f"policy:{ev.policy_name}",
            action="evaluated",
            reason=", ".join(r.get("code", "?") for r in (ev.reasons or [])) or None,
            before=None,
            after={"version": version.number, "verdict": ev.verdict},
            evidence={
                "evaluation_id": ev.id,
                "policy": ev.policy_name,
                "policy_hash": ev.policy_hash,
                "verdict": ev.verdict,
                **(extra_evidence or {}),
            },
            created_at=now,
        )
    )


def queue_evaluation(
    store: Store,
    *,
    name: str,
    number: int,
    policy_name: str,
    policy_hash: str,
    evaluation_id: str | None = None,
) -> EvaluationRecord:
    """Create an evaluation of ``name@number`` under a policy, status ``queued``."""
    now = _now()
    with store.write() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        ev = Evaluation(
            id=evaluation_id or str(uuid.uuid4()),
            version_id=version.id,
            policy_name=policy_name,
            policy_hash=policy_hash,
            status="queued",
            created_at=now,
        )
        s.add(ev)
        s.flush()
        return _evaluation_record(ev, skill.name, version.number)


def _evaluation_with_owner(s: Session, evaluation_id: str) -> tuple[Evaluation, Version, Skill]:
    ev = s.get(Evaluation, evaluation_id)
    if ev is None:
        raise NotFound(f"no evaluation {evaluation_id!r}")
    version = s.get_one(Version, ev.version_id)
    return ev, version, s.get_one(Skill, version.skill_id)


def start_evaluation(store: Store, *, evaluation_id: str) -> EvaluationRecord:
    """``queued`` → ``running`` (compare-and-set: only one runner wins)."""
    now = _now()
    with store.write() as s:
        ev, version, skill = _evaluation_with_owner(s, evaluation_id)
        rc = s.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == "queued")
            .values(status="running", started_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        s.refresh(ev)
        if rc != 1:
            raise Conflict(f"evaluation {evaluation_id} is already {ev.status}")
        return _evaluation_record(ev, skill.name, version.number)


def finish_evaluation(
    store: Store, *, evaluation_id: str, report: Any, owner: str | None = None
) -> EvaluationRecord:
    """Store the report of a queued or running evaluation: → ``done``, one ``evaluated`` event.

    With a lease owner — ``owner``, or the one set by :func:`lease_scope` — it is
    a compare-and-set on the lease: only a ``running`` evaluation still held by
    that owner is finished. A worker whose lease lapsed and was taken over gets
    :class:`Conflict` (code ``lease_lost``) and its result is discarded, so a job
    is never completed twice. Without an owner (the embedded path) any queued or
    running evaluation is finished.

    The report's ``policy_hash`` (the policy content actually used) replaces the
    queued one when they differ; the event's evidence keeps the queued hash.
    """
    verdict, reasons, data = _report_fields(report)
    owner = owner or _lease_owner.get()
    now = _now()
    with store.write() as s:
        ev, version, skill = _evaluation_with_owner(s, evaluation_id)
        queued_hash = ev.policy_hash
        used_hash = data.get("policy_hash") or queued_hash
        if len(used_hash) > HASH_LENGTH:
            raise StoreError(f"invalid policy hash {used_hash[:40]!r}...")
        q = update(Evaluation).where(Evaluation.id == evaluation_id)
        if owner is None:
            q = q.where(Evaluation.status.in_(("queued", "running")))
        else:
            q = q.where(Evaluation.status == "running", Evaluation.lease_owner == owner)
        rc = s.execute(
            q.values(
                status="done",
                verdict=verdict,
                reasons=reasons,
                report=data,
                policy_hash=used_hash,
                started_at=func.coalesce(Evaluation.started_at, now),
                finished_at=now,
                lease_expires_at=None,
            ).execution_options(synchronize_session=False)
        ).rowcount
        s.refresh(ev)
        if rc != 1:
            if owner is not None:
                holder = f", held by {ev.lease_owner}" if ev.status == "running" else ""
                raise Conflict(
                    f"evaluation {evaluation_id}: lease lost (it is {ev.status}{holder}); "
                    "result discarded",
                    code="lease_lost",
                )
            raise Conflict(f"evaluation {evaluation_id} is already {ev.status}")
        extra = {"queued_policy_hash": queued_hash} if used_hash != queued_hash else None
        if owner is not None:
            extra = {**(extra or {}), "worker": owner, "attempt": ev.attempts}
        _apply_verdict(s, version, skill, ev, now, extra)
        return _evaluation_record(ev, skill.name, version.number)


def record_evaluation(
    store: Store,
    *,
    name: str,
    number: int,
    report: Any,
    policy_name: str,
    policy_hash: str,
) -> EvaluationRecord:
    """Store a finished report produced elsewhere, in one step (id: ``report.evaluation_id``)."""
    verdict, reasons, data = _report_fields(report)
    now = _now()
    with store.write() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        ev = Evaluation(
            id=data.get("evaluation_id") or str(uuid.uuid4()),
            version_id=version.id,
            policy_name=policy_name,
            policy_hash=policy_hash,
            status="done",
            verdict=verdict,
            reasons=reasons,
            report=data,
            created_at=now,
            started_at=now,
            finished_at=now,
        )
        s.add(ev)
        s.flush()
        _apply_verdict(s, version, skill, ev, now)
        return _evaluation_record(ev, skill.name, version.number)


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _db_now(s: Session) -> datetime:
    """Lease clock: the database server's on PostgreSQL (one clock for every worker host)."""
    if s.get_bind().dialect.name == "postgresql":
        value = s.scalar(select(func.clock_timestamp()))
        assert value is not None
        return value
    return _now()


def _give_up(
    s: Session, ev: Evaluation, version: Version, skill: Skill, now: datetime, why: str
) -> None:
    """End an evaluation the workers could not finish: verdict ``error`` (never ``failed``)."""
    from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict

    message = f"gave up after {ev.attempts} attempt{'s' if ev.attempts != 1 else ''}: {why}"
    report = EvaluationReport(
        evaluation_id=ev.id,
        verdict=Verdict.error,
        reasons=[Reason(code=ReasonCode.infrastructure, message=message)],
        skill=skill.name,
        content_hash=version.content_hash,
        policy=ev.policy_name,
        policy_hash=ev.policy_hash,
    ).model_dump(mode="json")
    ev.status = "done"
    ev.verdict = "error"
    ev.reasons = report["reasons"]
    ev.report = report
    ev.started_at = ev.started_at or now
    ev.finished_at = now
    ev.lease_expires_at = None
    s.flush()
    _apply_verdict(s, version, skill, ev, now, {"gave_up": True, "attempts": ev.attempts})


def claim_evaluation(
    store: Store,
    *,
    owner: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> EvaluationRecord | None:
    """Lease the next evaluation to ``owner`` for ``lease_seconds`` and mark it running.

    The next one is a ``running`` evaluation whose lease lapsed (its worker died
    or hung; oldest lapse first), else the oldest ``queued`` one. Each claim
    counts an attempt; a lapsed evaluation that already had ``max_attempts``
    ends as verdict ``error`` ("gave up after N attempts") and the next is tried.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so workers never wait on each other
    and never get the same row. SQLite: the write transaction is ``BEGIN
    IMMEDIATE``, so claims are serialised and each row has one winner.
    ``owner`` defaults to ``host:pid:random``.
    """
    owner = owner or _default_owner()
    if len(owner) > ACTOR_LENGTH:
        raise StoreError(f"lease owner longer than {ACTOR_LENGTH} characters")
    with store.write() as s:
        now = _db_now(s)
        for _ in range(_MAX_WALK):
            ev = s.scalars(
                select(Evaluation)
                .where(Evaluation.status == "running", Evaluation.lease_expires_at < now)
                .order_by(Evaluation.lease_expires_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if ev is None:
                ev = s.scalars(
                    select(Evaluation)
                    .where(Evaluation.status == "queued")
                    # created_at alone: the (status, created_at) index serves it, no sort
                    .order_by(Evaluation.created_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
            if ev is None:
                return None
            version = s.get_one(Version, ev.version_id)
            skill = s.get_one(Skill, version.skill_id)
            if ev.attempts >= max_attempts:
                _give_up(s, ev, version, skill, now, f"the lease of {ev.lease_owner} lapsed")
                continue
            ev.status = "running"
            ev.started_at = now
            ev.lease_owner = owner
            ev.lease_expires_at = now + timedelta(seconds=lease_seconds)
            ev.attempts = (ev.attempts or 0) + 1
            s.flush()
            return _evaluation_record(ev, skill.name, version.number)
    return None  # pragma: no cover - more than _MAX_WALK exhausted rows in one go


def get_evaluation(store: Store, *, evaluation_id: str) -> EvaluationRecord:
    with store.read() as s:
        ev, version, skill = _evaluation_with_owner(s, evaluation_id)
        return _evaluation_record(ev, skill.name, version.number)


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


def latest_evaluation(
    store: Store,
    *,
    name: str,
    number: int,
    policy_hash: str | None = None,
    conclusive: bool = False,
) -> EvaluationRecord | None:
    """The latest finished evaluation of ``name@number``.

    ``policy_hash`` limits it to one policy; ``conclusive=True`` ignores
    ``error`` verdicts (the infrastructure's, which say nothing about the skill).
    """
    with store.read() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        q = select(Evaluation).where(
            Evaluation.version_id == version.id, Evaluation.status == "done"
        )
        if policy_hash is not None:
            q = q.where(Evaluation.policy_hash == policy_hash)
        if conclusive:
            q = q.where(Evaluation.verdict.in_(CONCLUSIVE))
        ev = s.scalars(
            q.order_by(Evaluation.finished_at.desc(), Evaluation.created_at.desc()).limit(1)
        ).first()
        return None if ev is None else _evaluation_record(ev, skill.name, version.number)


def pending_evaluation(
    store: Store, *, name: str, number: int, policy_hash: str
) -> EvaluationRecord | None:
    """The newest queued or running evaluation of ``name@number`` under a policy."""
    with store.read() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        ev = s.scalars(
            select(Evaluation)
            .where(
                Evaluation.version_id == version.id,
                Evaluation.policy_hash == policy_hash,
                Evaluation.status.in_(("queued", "running")),
            )
            .order_by(Evaluation.created_at.desc())
            .limit(1)
        ).first()
        return None if ev is None else _evaluation_record(ev, skill.name, version.number)


# --------------------------------------------------------------------------- the work queue


@contextmanager
def lease_scope(owner: str) -> Iterator[None]:
    """Within this block (this thread/context), :func:`finish_evaluation` acts as ``owner``.

    Workers run ``lifecycle.run_evaluation`` inside it, so the one code path the
    embedded mode uses also gets the lease compare-and-set.
    """
    token = _lease_owner.set(owner)
    try:
        yield
    finally:
        _lease_owner.reset(token)


def heartbeat(
    store: Store, *, evaluation_id: str, owner: str, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> datetime:
    """Extend ``owner``'s lease to now + ``lease_seconds``; return the new expiry.

    Only while the evaluation is ``running`` and still leased to ``owner``
    (even if the lease already lapsed, as long as nobody took it over).
    Otherwise :class:`Conflict` (code ``lease_lost``): the caller must stop and
    discard its result.
    """
    with store.write() as s:
        now = _db_now(s)
        expires = now + timedelta(seconds=lease_seconds)
        rc = s.execute(
            update(Evaluation)
            .where(
                Evaluation.id == evaluation_id,
                Evaluation.status == "running",
                Evaluation.lease_owner == owner,
            )
            .values(lease_expires_at=expires)
            .execution_options(synchronize_session=False)
        ).rowcount
        if rc != 1:
            row = s.execute(
                select(Evaluation.status, Evaluation.lease_owner).where(Evaluation.id == evaluation_id)
            ).first()
            state = "gone" if row is None else f"{row[0]}, lease {row[1]}"
            raise Conflict(f"evaluation {evaluation_id}: lease lost ({state})", code="lease_lost")
        return expires


def release_evaluation(store: Store, *, evaluation_id: str, owner: str) -> bool:
    """Hand a running evaluation back to the queue (a worker shutting down).

    Only ``owner``'s own lease is released; the attempt it used is not counted
    (stopping a worker is not the job's fault). False: it was not ``owner``'s.
    """
    with store.write() as s:
        rc = s.execute(
            update(Evaluation)
            .where(
                Evaluation.id == evaluation_id,
                Evaluation.status == "running",
                Evaluation.lease_owner == owner,
            )
            .values(
                status="queued",
                started_at=None,
                lease_owner=None,
                lease_expires_at=None,
                attempts=func.max(Evaluation.attempts - 1, 0)
                if s.get_bind().dialect.name == "sqlite"
                else func.greatest(Evaluation.attempts - 1, 0),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        return rc == 1


def recover_leases(
    store: Store,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    stale_seconds: float | None = 3600.0,
) -> dict[str, list[str]]:
    """Requeue running evaluations whose lease lapsed, or give them up (the scheduler's job).

    A lapsed lease with fewer than ``max_attempts`` claims goes back to
    ``queued``; one at the maximum ends as verdict ``error`` ("gave up after N
    attempts"). A ``running`` evaluation with no lease at all (an embedded run,
    or one from before leases existed) that started more than ``stale_seconds``
    ago is requeued too (``None``: leave those alone).

    Returns ``{"requeued": [ids], "gave_up": [ids]}``.
    """
    out: dict[str, list[str]] = {"requeued": [], "gave_up": []}
    with store.write() as s:
        now = _db_now(s)
        lapsed = list(
            s.scalars(
                select(Evaluation)
                .where(Evaluation.status == "running", Evaluation.lease_expires_at < now)
                .order_by(Evaluation.lease_expires_at)
                .with_for_update(skip_locked=True)
            )
        )
        if stale_seconds is not None:
            lapsed += list(
                s.scalars(
                    select(Evaluation)
                    .where(
                        Evaluation.status == "running",
                        Evaluation.lease_expires_at.is_(None),
                        Evaluation.started_at < now - timedelta(seconds=stale_seconds),
                    )
                    .with_for_update(skip_locked=True)
                )
            )
        for ev in lapsed:
            version = s.get_one(Version, ev.version_id)
            skill = s.get_one(Skill, version.skill_id)
            if ev.attempts >= max_attempts:
                _give_up(s, ev, version, skill, now, f"the lease of {ev.lease_owner} lapsed")
                out["gave_up"].append(ev.id)
            else:
                ev.status = "queued"
                ev.started_at = None
                ev.lease_owner = None
                ev.lease_expires_at = None
                out["requeued"].append(ev.id)
        s.flush()
    return out


def _protected(s: Session, version_ids: set[int]) -> set[int]:
    """Those of ``version_ids`` that are active now or ever were (a move event names them)."""
    if not version_ids:
        return set()
    skill_ids = set(s.scalars(select(Version.skill_id).where(Version.id.in_(version_ids))))
    active = set(s.scalars(select(Skill.active_version_id).where(Skill.id.in_(skill_ids)))) & version_ids
    moved = set(
        s.scalars(
            select(Event.version_id)
            .where(Event.version_id.in_(version_ids), Event.action.in_(MOVES))
            .distinct()
        )
    )
    return {int(v) for v in active | moved if v is not None}


def prune_evaluations(store: Store, *, before: datetime) -> dict[str, int]:
    """Retention: shrink old evaluations of versions that were never active.

    For every version that is not active and never was (no ``promoted`` /
    ``rolled_back`` event names it), evaluations finished before ``before``:

    * are deleted unless they are, per policy hash, the version's latest
      evaluation or its latest conclusive one (what ``promote`` and ``submit``
      look at) — so pruning never changes a decision;
    * the ones kept lose their captured ``output`` text (the report stays valid).

    Versions, their files and events are never touched, nor anything of a
    version that is or was active, nor queued/running evaluations.
    Returns ``{"deleted": n, "outputs_dropped": n}``.
    """
    with store.write() as s:
        # created_at <= finished_at: the (status, created_at) index bounds the scan to old rows
        candidates = {
            int(v)
            for v in s.scalars(
                select(Evaluation.version_id)
                .where(
                    Evaluation.status == "done",
                    Evaluation.created_at < before,
                    Evaluation.finished_at < before,
                )
                .distinct()
            )
        }
        old_versions: set[int] = set()
        chunk = sorted(candidates)
        for start in range(0, len(chunk), 500):
            batch = set(chunk[start : start + 500])
            old_versions |= batch - _protected(s, batch)
        if not old_versions:
            return {"deleted": 0, "outputs_dropped": 0}
        rows = s.execute(
            select(
                Evaluation.id,
                Evaluation.version_id,
                Evaluation.policy_hash,
                Evaluation.verdict,
                Evaluation.finished_at,
                Evaluation.created_at,
            ).where(Evaluation.version_id.in_(old_versions), Evaluation.status == "done")
        ).all()
        newest: dict[tuple[int, str], tuple[Any, str]] = {}
        newest_conclusive: dict[tuple[int, str], tuple[Any, str]] = {}
        for eid, vid, phash, verdict, finished, created in rows:
            key, rank = (vid, phash), (_utc(finished), _utc(created), eid)
            if key not in newest or rank > newest[key][0]:
                newest[key] = (rank, eid)
            if verdict in CONCLUSIVE and (
                key not in newest_conclusive or rank > newest_conclusive[key][0]
            ):
                newest_conclusive[key] = (rank, eid)
        keep = {eid for _, eid in newest.values()} | {eid for _, eid in newest_conclusive.values()}
        cutoff = _utc(before)
        old = [eid for eid, _v, _h, _vd, finished, _c in rows if _utc(finished) < cutoff]  # type: ignore[operator]
        drop = [eid for eid in old if eid not in keep]
        for start in range(0, len(drop), 500):
            s.execute(
                Evaluation.__table__.delete().where(Evaluation.id.in_(drop[start : start + 500]))
            )
        dropped = 0
        kept_old = [eid for eid in old if eid in keep]
        for start in range(0, len(kept_old), 500):
            for ev in s.scalars(select(Evaluation).where(Evaluation.id.in_(kept_old[start : start + 500]))):
                if isinstance(ev.report, dict) and ev.report.get("output"):
                    ev.report = {**ev.report, "output": ""}
                    dropped += 1
        s.flush()
        return {"deleted": len(drop), "outputs_dropped": dropped}


# --------------------------------------------------------------------------- pointer moves


def _check_expected(skill: Skill, expected_generation: int | None) -> None:
    """A caller that acted on a stale view gets Conflict before any other verdict."""
    if expected_generation is not None and expected_generation != skill.generation:
        raise Conflict(
            f"skill {skill.name} moved concurrently: expected generation "
            f"{expected_generation}, now {skill.generation}"
        )


def _move(
    s: Session,
    skill: Skill,
    *,
    target: Version,
    action: str,
    actor: str,
    reason: str | None,
    expected_generation: int | None,
    back_event_id: int | None,
    evidence: dict[str, Any],
) -> PointerMove:
    """Write the one event of a move, then compare-and-set the pointer."""
    _check_expected(skill, expected_generation)
    generation = skill.generation
    current = (
        s.get_one(Version, skill.active_version_id) if skill.active_version_id is not None else None
    )
    from_number = current.number if current is not None else None
    event = Event(
        skill_id=skill.id,
        version_id=target.id,
        actor=actor,
        action=action,
        reason=reason,
        before={"version": from_number, "generation": generation},
        after={"version": target.number, "generation": generation + 1},
        evidence=evidence,
        back_event_id=back_event_id,
        created_at=_now(),
    )
    s.add(event)
    s.flush()
    _hook("move.before_cas", s)
    rc = s.execute(
        update(Skill)
        .where(Skill.id == skill.id, Skill.generation == generation)
        .values(
            active_version_id=target.id,
            generation=Skill.generation + 1,
            pointer_event_id=event.id,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if rc != 1:
        now_generation = s.scalar(select(Skill.generation).where(Skill.id == skill.id))
        raise Conflict(
            f"skill {skill.name} moved concurrently: expected generation {generation}, "
            f"now {now_generation}"
        )
    s.expire(skill)
    return PointerMove(
        skill=skill.name,
        action=action,  # type: ignore[arg-type]
        from_version=from_number,
        to_version=target.number,
        generation=generation + 1,
        event_id=event.id,
        forced=bool(evidence.get("forced")),
    )


def promote(
    store: Store,
    *,
    name: str,
    number: int,
    actor: str,
    reason: str | None = None,
    policy: PolicyRef | None = None,
    expected_generation: int | None = None,
    force: bool = False,
) -> PointerMove:
    """Make ``name@number`` the active version.

    ``policy`` is the *current* policy: the version's latest conclusive
    evaluation under ``policy.hash`` must be ``passed``. It is required unless
    ``force=True`` (then a reason is required too, and the event says forced).
    """
    actor = _require_actor(actor)
    if force:
        reason = _require_reason(reason, "a forced promotion")
    elif policy is None:
        raise ValueError("promote needs the current policy (or force=True)")
    with store.write() as s:
        skill = _skill(s, name)
        _check_expected(skill, expected_generation)
        target = _version(s, skill, number, lock="share")
        ref = f"{name}@{number}"
        if target.yanked_at is not None:
            raise InvalidTransition(
                f"{ref} is yanked ({target.yank_reason}); yanked versions cannot be promoted",
                code="yanked",
            )
        if skill.active_version_id == target.id:
            raise InvalidTransition(
                f"{ref} is already the active version (generation {skill.generation}); nothing to do",
                code="already_active",
            )
        evidence: dict[str, Any] = {"forced": force}
        if policy is not None:
            evidence |= {"policy": policy.name, "policy_hash": policy.hash}
            ev = _latest_conclusive(s, target.id, policy.hash)
            if ev is not None:
                evidence |= {"evaluation_id": ev.id, "verdict": ev.verdict}
            if not force:
                if ev is None:
                    raise InvalidTransition(
                        f"{ref} has no finished evaluation under policy {policy.name} "
                        f"({_short(policy.hash)}); evaluate it first, or promote with --force",
                        code="not_evaluated",
                    )
                if ev.verdict != "passed":
                    codes = ", ".join(r.get("code", "?") for r in (ev.reasons or [])) or "no reasons"
                    raise InvalidTransition(
                        f"{ref} did not pass under policy {policy.name}: verdict {ev.verdict} "
                        f"({codes}); only passed versions can be promoted without --force",
                        code="not_passed",
                    )
        return _move(
            s,
            skill,
            target=target,
            action="promoted",
            actor=actor,
            reason=reason,
            expected_generation=expected_generation,
            back_event_id=skill.pointer_event_id,
            evidence=evidence,
        )


def _walk_back(
    s: Session, start_event_id: int | None, *, skip_version_id: int | None
) -> tuple[Event, Version] | None:
    """The newest state at or below ``start_event_id`` whose version can be active again."""
    event_id = start_event_id
    for _ in range(_MAX_WALK):
        if event_id is None:
            return None
        event = s.get_one(Event, event_id)
        # FOR SHARE: a concurrent yank of this version either committed before
        # (we see yanked_at) or waits for us (and then sees it active)
        version = s.scalars(
            select(Version)
            .where(Version.id == event.version_id)
            .with_for_update(read=True)
            .execution_options(populate_existing=True)
        ).one()
        if version.yanked_at is None and version.id != skip_version_id:
            return event, version
        event_id = event.back_event_id
    return None


def _was_active(s: Session, version_id: int) -> bool:
    return (
        s.scalar(
            select(Event.id)
            .where(Event.version_id == version_id, Event.action.in_(MOVES))
            .limit(1)
        )
        is not None
    )


def _rollback_in(
    s: Session,
    skill: Skill,
    *,
    to: int | None,
    actor: str,
    reason: str | None,
    expected_generation: int | None,
    evidence: dict[str, Any] | None = None,
) -> PointerMove:
    _check_expected(skill, expected_generation)
    if skill.active_version_id is None:
        raise InvalidTransition(
            f"{skill.name} has no active version: nothing to roll back", code="nothing_to_roll_back"
        )
    active = s.get_one(Version, skill.active_version_id)
    current_event = s.get(Event, skill.pointer_event_id) if skill.pointer_event_id else None
    below = current_event.back_event_id if current_event is not None else None
    if to is None:
        found = _walk_back(s, below, skip_version_id=active.id)
        if found is None:
            raise InvalidTransition(
                f"nothing to roll back to: no earlier active version of {skill.name} "
                f"(before {skill.name}@{active.number}) that is not yanked",
                code="nothing_to_roll_back",
            )
        target_event, target = found
        back_event_id = target_event.back_event_id
    else:
        target = _version(s, skill, to, lock="share")
        ref = f"{skill.name}@{to}"
        if target.id == active.id:
            raise InvalidTransition(f"{ref} is already the active version", code="already_active")
        if target.number > active.number:
            raise InvalidTransition(
                f"rollback only goes back: {ref} is newer than the active "
                f"{skill.name}@{active.number}; use promote",
                code="not_older",
            )
        if target.yanked_at is not None:
            raise InvalidTransition(
                f"{ref} is yanked ({target.yank_reason}); cannot roll back to it", code="yanked"
            )
        if target.status != "passed" and not _was_active(s, target.id):
            raise InvalidTransition(
                f"{ref} never passed an evaluation and was never active; cannot roll back to it",
                code="not_passed",
            )
        # cut the history stack back to N's place
        back_event_id = None
        event_id = below
        for _ in range(_MAX_WALK):
            if event_id is None:
                break
            event = s.get_one(Event, event_id)
            number = s.get_one(Version, event.version_id).number
            if number == to:
                back_event_id = event.back_event_id
                break
            if number < to:
                back_event_id = event.id
                break
            event_id = event.back_event_id
    return _move(
        s,
        skill,
        target=target,
        action="rolled_back",
        actor=actor,
        reason=reason,
        expected_generation=expected_generation,
        back_event_id=back_event_id,
        evidence={"forced": False, "requested_to": to, **(evidence or {})},
    )


def rollback(
    store: Store,
    *,
    name: str,
    to: int | None = None,
    actor: str,
    reason: str | None = None,
    expected_generation: int | None = None,
) -> PointerMove:
    """Move ``active`` back (see the module docstring for the exact semantics)."""
    actor = _require_actor(actor)
    with store.write() as s:
        skill = _skill(s, name)
        return _rollback_in(
            s,
            skill,
            to=to,
            actor=actor,
            reason=reason,
            expected_generation=expected_generation,
        )


def yank(
    store: Store,
    *,
    name: str,
    number: int,
    actor: str,
    reason: str,
    rollback: bool = False,
) -> YankResult:
    """Mark ``name@number`` as never to be promoted again (reason required).

    The active version is refused unless ``rollback=True``: then the pointer is
    rolled back first, in the same transaction.
    """
    actor = _require_actor(actor)
    reason = _require_reason(reason, "a yank")
    ref = f"{name}@{number}"
    with store.write() as s:
        # lock the version row first, then read the pointer: a concurrent
        # promote of this version either finishes first (and we see it active)
        # or waits for us (and sees it yanked)
        skill_id = s.scalar(select(Skill.id).where(Skill.name == name))
        if skill_id is None:
            raise NotFound(f"no skill named {name!r}")
        version = s.scalars(
            select(Version)
            .where(Version.skill_id == skill_id, Version.number == number)
            .with_for_update()
        ).one_or_none()
        skill = s.scalars(
            select(Skill).where(Skill.id == skill_id).execution_options(populate_existing=True)
        ).one()
        if version is None:
            _version(s, skill, number)  # raises NotFound with a hint
            raise AssertionError("unreachable")
        if version.yanked_at is not None:
            raise InvalidTransition(
                f"{ref} is already yanked ({version.yank_reason})", code="already_yanked"
            )
        now = _now()
        move = None
        if skill.active_version_id == version.id:
            if not rollback:
                raise InvalidTransition(
                    f"{ref} is the active version: roll back first "
                    f"(sandgate rollback {name}) or yank with --rollback to do both at once",
                    code="yank_active",
                )
            version.yanked_at = now  # so the walk back skips it
            version.yank_reason = reason
            s.flush()
            move = _rollback_in(
                s,
                skill,
                to=None,
                actor=actor,
                reason=f"yank {ref}: {reason}",
                expected_generation=None,
                evidence={"yank": number},
            )
        version.yanked_at = now
        version.yank_reason = reason
        event = Event(
            skill_id=skill.id,
            version_id=version.id,
            actor=actor,
            action="yanked",
            reason=reason,
            before={"version": number, "yanked": False},
            after={"version": number, "yanked": True},
            evidence={"rolled_back": move.event_id if move else None},
            created_at=now,
        )
        s.add(event)
        s.flush()
        s.refresh(skill)
        return YankResult(
            version=_version_record(version, skill), rollback=move, event_id=event.id
        )


def flag_version(
    store: Store,
    *,
    name: str,
    number: int,
    actor: str,
    reason: str,
    evidence: Mapping[str, Any],
    quarantine: bool = False,
) -> FlagResult | None:
    """Record a ``flagged`` event on ``name@number`` (a re-scan found blocked findings).

    ``evidence["fingerprint"]`` identifies the findings: when the version's
    latest ``flagged`` event has the same fingerprint nothing is written and
    None is returned (a daily re-scan does not repeat itself).

    ``quarantine=True`` on the active version also rolls the skill back (plain
    rollback semantics, in the same transaction, its event pointing at the
    flag). A rollback is reversible — a human can promote the version again —
    where a yank is not, and a new rule can be a false positive. When there is
    nothing to roll back to the flag is still written and ``note`` says why.
    """
    actor = _require_actor(actor)
    reason = _require_reason(reason, "a flag")
    evidence = dict(evidence)
    with store.write() as s:
        skill = _skill(s, name, lock=True)
        version = _version(s, skill, number)
        fingerprint = evidence.get("fingerprint")
        if fingerprint is not None:
            last = s.scalars(
                select(Event)
                .where(Event.version_id == version.id, Event.action == "flagged")
                .order_by(Event.id.desc())
                .limit(1)
            ).first()
            if last is not None and (last.evidence or {}).get("fingerprint") == fingerprint:
                return None
        active = skill.active_version_id == version.id
        event = Event(
            skill_id=skill.id,
            version_id=version.id,
            actor=actor,
            action="flagged",
            reason=reason,
            before={"version": number, "active": active},
            after={"version": number, "quarantine": quarantine},
            evidence=evidence,
            created_at=_now(),
        )
        s.add(event)
        s.flush()
        move, note = None, None
        if quarantine and active:
            try:
                move = _rollback_in(
                    s,
                    skill,
                    to=None,
                    actor=actor,
                    reason=f"quarantine {name}@{number}: {reason}",
                    expected_generation=None,
                    evidence={"flagged_event": event.id, "quarantine": number},
                )
            except InvalidTransition as exc:
                note = f"quarantine did not happen: {exc}"
        elif quarantine:
            note = f"{name}@{number} is not active: nothing to quarantine"
        event.evidence = {
            **evidence,
            "rolled_back": move.event_id if move else None,
            **({"note": note} if note else {}),
        }
        s.flush()
        return FlagResult(
            skill=name, version=number, event_id=event.id, rollback=move, note=note
        )


# --------------------------------------------------------------------------- audit, diff, pointers


def history(store: Store, *, name: str, limit: int | None = None) -> list[EventRecord]:
    """The skill's events, oldest first (``limit``: only the newest ``limit``)."""
    with store.read() as s:
        skill = _skill(s, name)
        q = (
            select(Event, Version.number)
            .outerjoin(Version, Version.id == Event.version_id)
            .where(Event.skill_id == skill.id)
            .order_by(Event.id.desc())
        )
        if limit is not None:
            q = q.limit(limit)
        rows = list(s.execute(q))
        return [_event_record(ev, skill.name, number) for ev, number in reversed(rows)]


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def diff(store: Store, *, name: str, a: int, b: int) -> list[FileDiff]:
    """Per changed file, a unified diff from ``name@a`` to ``name@b``."""
    with store.read() as s:
        skill = _skill(s, name)
        id_a, id_b = _version(s, skill, a).id, _version(s, skill, b).id
        files: dict[int, dict[str, bytes]] = {id_a: {}, id_b: {}}
        for vid, path, content in s.execute(
            select(VersionFile.version_id, VersionFile.path, VersionFile.content).where(
                VersionFile.version_id.in_({id_a, id_b})
            )
        ):
            files[vid][path] = bytes(content)
    old, new = files[id_a], files[id_b]
    out: list[FileDiff] = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "modified"
        text_a = "" if before is None else _decode(before)
        text_b = "" if after is None else _decode(after)
        if text_a is None or text_b is None:
            out.append(FileDiff(path=path, change=change, diff="", binary=True))  # type: ignore[arg-type]
            continue
        lines = difflib.unified_diff(
            text_a.splitlines(keepends=True),
            text_b.splitlines(keepends=True),
            fromfile=f"a/{path}" if before is not None else "/dev/null",
            tofile=f"b/{path}" if after is not None else "/dev/null",
        )
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        out.append(FileDiff(path=path, change=change, diff=text))  # type: ignore[arg-type]
    return out


def active_pointers(
    store: Store, *, names: Iterable[str] | None = None
) -> dict[str, tuple[int, int]]:
    """``{skill: (active version number, generation)}`` for skills with an active version.

    Cheap enough to poll: one indexed join (``names`` narrows it to a few skills).
    """
    q = select(Skill.name, Version.number, Skill.generation).join(
        Version, Version.id == Skill.active_version_id
    )
    if names is not None:
        wanted = list(names)
        if not wanted:
            return {}
        q = q.where(Skill.name.in_(wanted))
    with store.read() as s:
        return {name: (number, generation) for name, number, generation in s.execute(q)}


def active_pointer(store: Store, *, name: str) -> tuple[int, int] | None:
    """``(active version number, generation)`` of one skill (None: nothing active)."""
    with store.read() as s:
        row = s.execute(
            select(Skill.id, Version.number, Skill.generation)
            .outerjoin(Version, Version.id == Skill.active_version_id)
            .where(Skill.name == name)
        ).first()
    if row is None:
        raise NotFound(f"no skill named {name!r}")
    return None if row[1] is None else (row[1], row[2])
