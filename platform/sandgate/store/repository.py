"""The skill store's operations: keyword-only functions, one transaction each.

Every function takes the :class:`~sandgate.store.engine.Store` explicitly and
returns plain records (:mod:`sandgate.store.records`), never ORM objects.
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
"""

from __future__ import annotations

import difflib
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
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
from sandgate.store.records import (
    EvaluationRecord,
    EventRecord,
    FileDiff,
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


def _apply_verdict(s: Session, version: Version, skill: Skill, ev: Evaluation, now: datetime) -> None:
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


def finish_evaluation(store: Store, *, evaluation_id: str, report: Any) -> EvaluationRecord:
    """Store the report of a queued or running evaluation: → ``done``, one ``evaluated`` event."""
    verdict, reasons, data = _report_fields(report)
    now = _now()
    with store.write() as s:
        ev, version, skill = _evaluation_with_owner(s, evaluation_id)
        rc = s.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status.in_(("queued", "running")))
            .values(
                status="done",
                verdict=verdict,
                reasons=reasons,
                report=data,
                started_at=func.coalesce(Evaluation.started_at, now),
                finished_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        s.refresh(ev)
        if rc != 1:
            raise Conflict(f"evaluation {evaluation_id} is already {ev.status}")
        _apply_verdict(s, version, skill, ev, now)
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


def claim_evaluation(store: Store) -> EvaluationRecord | None:
    """Take the oldest queued evaluation and mark it running (for workers).

    PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so workers never wait on each other.
    SQLite: writers are serialised anyway.
    """
    now = _now()
    with store.write() as s:
        ev = s.scalars(
            select(Evaluation)
            .where(Evaluation.status == "queued")
            .order_by(Evaluation.created_at, Evaluation.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if ev is None:
            return None
        ev.status = "running"
        ev.started_at = now
        version = s.get_one(Version, ev.version_id)
        skill = s.get_one(Skill, version.skill_id)
        s.flush()
        return _evaluation_record(ev, skill.name, version.number)


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
