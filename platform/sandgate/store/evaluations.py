"""Evaluations: the work queue, finishing an evaluation, and reading results.

Keyword-only functions, one transaction each, plain records out. The store
records the reports it is given: it never builds one, nor decides a verdict
(a report for an evaluation the workers gave up on comes from the caller's
``give_up`` constructor, e.g. :func:`sandgate.report.gave_up`).

The work queue
==============

``queue_evaluation`` writes a ``queued`` row; workers take rows with leases::

    queued ──claim──► running (lease_owner, lease_expires_at, attempts += 1) ──finish──► done
       ▲                 │  heartbeat: extend, only while still the owner
       │                 ├─ lease lapses ─► claimed again by another worker (or requeued
       └── release ──────┘                 by recover_leases); at max attempts → verdict error

* ``claim_evaluation`` takes a running row whose lease lapsed first, else the
  oldest queued row of the *fairest tenant* (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite): exactly one claimer wins a row.

Fair share between tenants
==========================

Every evaluation has a ``tenant``: ``key:<name>`` for an API key, ``local``
for the embedded path. A claim does not take the oldest queued row of the
whole queue (one key's flood would make everyone else wait behind it); it
picks a tenant, then that tenant's oldest queued row, in one statement:

1. the tenants with queued work (a skip scan of the ``(status, tenant,
   created_at)`` index: one index probe per tenant, not per row);
2. minus those at their running cap (``api_keys.max_running``; no cap by
   default, and none for ``local``);
3. ordered by fewest running evaluations, then least recently given a slot
   (``max(started_at)``, never first), then oldest queued row, then name;
4. the first tenant's oldest queued row, ``FOR UPDATE SKIP LOCKED``.

So a key that submits one evaluation while another has a thousand queued
gets the next free slot. Concurrent claimers may pick the same tenant (its
counts change only when they commit); the second then takes that tenant's
next row, never the same one. If every queued row of the chosen tenant is
locked by concurrent claimers, the next tenants in the same order are tried.

The queued cap (``max_queued`` of :func:`queue_evaluation` and
:func:`begin_evaluation`) is checked in the transaction that adds the row, under
a per-tenant advisory lock on PostgreSQL (``BEGIN IMMEDIATE`` serialises it
on SQLite): a tenant at its cap gets :class:`~sandgate.errors.QueueFull`
with an estimate of when it will have room, and nothing is queued.
* ``finish_evaluation`` with a lease owner is a compare-and-set on
  ``(status = running, lease_owner = owner)``: a worker whose lease was taken
  over gets ``Conflict`` (code ``lease_lost``) and discards its result, so an
  evaluation is completed — one ``evaluated`` event — exactly once.
* A job that exhausts ``max_attempts`` (default 3) ends as verdict ``error``
  with reason ``infrastructure`` ("gave up after 3 attempts"), never
  ``failed``: a dying worker is the infrastructure's fault.
* Lease times come from the database server's clock on PostgreSQL, so workers
  on several hosts agree on expiry whatever their own clocks say.
* ``traceparent`` (migration 0010): the W3C trace context of the span that
  queued the row, given by the caller (``sandgate.tracing``; NULL when traces
  are off). It survives release and requeue, so whichever worker claims the
  row continues the submitter's trace.

Retention (``prune_evaluations``) and re-scan flags (``flag_version``) are the
scheduler's; neither ever touches versions, nor any evaluation of a version
that is or ever was active.
"""

from __future__ import annotations

import functools
import hashlib
import math
import statistics
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, case, delete, func, literal, select, update
from sqlalchemy.orm import Session

from sandgate.errors import Conflict, QueueFull, StoreError
from sandgate.names import owner_id
from sandgate.records import EvaluationRecord
from sandgate.store._rows import (
    _MAX_WALK,
    CONCLUSIVE,
    MOVES,
    _db_now,
    _evaluation_record,
    _evaluation_with_owner,
    _latest_conclusive,
    _now,
    _rowcount,
    _skill,
    _utc,
    _version,
)
from sandgate.store.engine import Store
from sandgate.store.keys import ApiKey
from sandgate.store.models import (
    ACTOR_LENGTH,
    HASH_LENGTH,
    TRACEPARENT_LENGTH,
    Evaluation,
    Event,
    Skill,
    Version,
    WorkerBeat,
)

__all__ = [
    "GiveUp",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "queue_evaluation",
    "start_evaluation",
    "begin_evaluation",
    "finish_evaluation",
    "record_evaluation",
    "claim_evaluation",
    "heartbeat",
    "release_evaluation",
    "recover_leases",
    "prune_evaluations",
    "LOCAL_TENANT",
    "queue_room",
    "retry_after_seconds",
    "get_evaluation",
    "latest_evaluation",
    "pending_evaluation",
    "WORKER_BEAT_SECONDS",
    "WORKER_ALIVE_SECONDS",
    "worker_beat",
    "worker_gone",
    "worker_liveness",
]

#: a worker's lease on a running evaluation, unless it heartbeats
DEFAULT_LEASE_SECONDS = 30.0
#: claims of one evaluation before it ends as verdict ``error``
DEFAULT_MAX_ATTEMPTS = 3
#: the tenant of evaluations queued by the embedded path (no API key)
LOCAL_TENANT = "local"
#: the prefix of an API key's tenant (``key:<name>``, the key's actor)
_KEY_TENANT = "key:"
#: a running cap that never binds
_NO_CAP = 2**31 - 1
#: Retry-After of a full queue: bounds, and the evaluation duration assumed with no history
RETRY_AFTER_MIN, RETRY_AFTER_MAX, _DEFAULT_DURATION = 1, 600, 30.0
#: finished evaluations whose durations make the estimate
_DURATION_SAMPLE = 50


class GiveUp(Protocol):
    """Builds the report of an evaluation the workers could not finish (the caller's verdict)."""

    def __call__(
        self,
        *,
        evaluation_id: str,
        skill: str,
        content_hash: str,
        policy: str,
        policy_hash: str,
        attempts: int,
        why: str,
    ) -> Any: ...


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
            evaluation_id=ev.id,
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
    tenant: str = LOCAL_TENANT,
    max_queued: int | None = None,
    limit_setting: str | None = None,
    traceparent: str | None = None,
) -> EvaluationRecord:
    """Create an evaluation of ``name@number`` under a policy, status ``queued``, for ``tenant``.

    ``max_queued``: refuse with :class:`QueueFull` when ``tenant`` already has that many
    queued (``limit_setting`` names where the cap comes from, for the message).
    ``traceparent``: the W3C trace context of the span that queued it (``sandgate.tracing``),
    kept on the row so the worker that claims it continues that trace."""
    _check_traceparent(traceparent)
    now = _now()
    _check_tenant(tenant)
    with store.write() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        _check_room(s, tenant, max_queued, limit_setting)
        ev = Evaluation(
            id=evaluation_id or str(uuid.uuid4()),
            version_id=version.id,
            policy_name=policy_name,
            policy_hash=policy_hash,
            status="queued",
            created_at=now,
            tenant=tenant,
            traceparent=traceparent,
        )
        s.add(ev)
        s.flush()
        return _evaluation_record(ev, skill.name, version.number)

def _check_traceparent(traceparent: str | None) -> None:
    if traceparent is not None and len(traceparent) > TRACEPARENT_LENGTH:
        raise StoreError(f"traceparent longer than {TRACEPARENT_LENGTH} characters")


def start_evaluation(store: Store, *, evaluation_id: str) -> EvaluationRecord:
    """``queued`` → ``running`` (compare-and-set: only one runner wins)."""
    now = _now()
    with store.write() as s:
        ev, version, skill = _evaluation_with_owner(s, evaluation_id)
        rc = _rowcount(s.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == "queued")
            .values(status="running", started_at=now)
            .execution_options(synchronize_session=False)
        ))
        s.refresh(ev)
        if rc != 1:
            raise Conflict(f"evaluation {evaluation_id} is already {ev.status}")
        return _evaluation_record(ev, skill.name, version.number)

def begin_evaluation(
    store: Store,
    *,
    name: str,
    number: int,
    policy_name: str,
    policy_hash: str,
    start: bool = True,
    tenant: str = LOCAL_TENANT,
    max_queued: int | None = None,
    limit_setting: str | None = None,
    traceparent: str | None = None,
) -> tuple[EvaluationRecord, bool]:
    """The evaluation a submit of ``name@number`` under a policy uses, in one transaction.

    Returns ``(evaluation, reused)``:

    * the latest *conclusive* finished evaluation under ``policy_hash``, if
      any: ``reused=True`` (``error`` verdicts are never reused);
    * else, with ``start=True``, a ``running`` one for the caller to run: the
      newest ``queued`` one, taken over by compare-and-set (queued → running),
      or — when there is none, or a worker is already running it — a new one;
    * else (``start=False``) the newest queued or running one, or a new ``queued`` one
      for ``tenant`` — unless ``tenant`` has ``max_queued`` queued already
      (:class:`QueueFull`, nothing queued).

    ``traceparent`` is stored on a new evaluation (one taken over keeps its own).
    """
    _check_traceparent(traceparent)
    now = _now()
    _check_tenant(tenant)
    with store.write() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        done = _latest_conclusive(s, version.id, policy_hash)
        if done is not None:
            return _evaluation_record(done, skill.name, version.number), True
        pending = _pending(s, version.id, policy_hash)
        if not start and pending is not None:
            return _evaluation_record(pending, skill.name, version.number), False
        if pending is not None and pending.status == "queued":
            rc = _rowcount(s.execute(
                update(Evaluation)
                .where(Evaluation.id == pending.id, Evaluation.status == "queued")
                .values(status="running", started_at=now)
                .execution_options(synchronize_session=False)
            ))
            s.refresh(pending)
            if rc == 1:
                return _evaluation_record(pending, skill.name, version.number), False
        if not start:
            _check_room(s, tenant, max_queued, limit_setting)
        ev = Evaluation(
            id=str(uuid.uuid4()),
            version_id=version.id,
            policy_name=policy_name,
            policy_hash=policy_hash,
            status="running" if start else "queued",
            created_at=now,
            started_at=now if start else None,
            tenant=tenant,
            traceparent=traceparent,
        )
        s.add(ev)
        s.flush()
        return _evaluation_record(ev, skill.name, version.number), False


def finish_evaluation(
    store: Store, *, evaluation_id: str, report: Any, owner: str | None = None
) -> EvaluationRecord:
    """Store the report of a queued or running evaluation: → ``done``, one ``evaluated`` event.

    With a lease ``owner`` (a worker's) it is a compare-and-set on the lease: only a
    ``running`` evaluation still held by that owner is finished. A worker whose lease lapsed and was taken over gets
    :class:`Conflict` (code ``lease_lost``) and its result is discarded, so a job
    is never completed twice. Without an owner (the embedded path) any queued or
    running evaluation is finished.

    The report's ``policy_hash`` (the policy content actually used) replaces the
    queued one when they differ; the event's evidence keeps the queued hash.
    """
    verdict, reasons, data = _report_fields(report)
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
        rc = _rowcount(s.execute(
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
        ))
        s.refresh(ev)
        if rc != 1:
            if owner is not None:
                holder = f", held by {ev.lease_owner}" if ev.status == "running" else ""
                raise Conflict(
                    f"evaluation {evaluation_id}: lease lost (it is {ev.status}{holder}); result discarded",
                    code="lease_lost",
                )
            raise Conflict(f"evaluation {evaluation_id} is already {ev.status}")
        extra: dict[str, Any] | None = {"queued_policy_hash": queued_hash} if used_hash != queued_hash else None
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


def _give_up(
    s: Session,
    ev: Evaluation,
    version: Version,
    skill: Skill,
    now: datetime,
    why: str,
    give_up: GiveUp,
) -> None:
    """Store the caller's report for an evaluation the workers could not finish."""
    verdict, reasons, report = _report_fields(
        give_up(
            evaluation_id=ev.id,
            skill=skill.name,
            content_hash=version.content_hash,
            policy=ev.policy_name,
            policy_hash=ev.policy_hash,
            attempts=ev.attempts,
            why=why,
        )
    )
    ev.status = "done"
    ev.verdict = verdict
    ev.reasons = reasons
    ev.report = report
    ev.started_at = ev.started_at or now
    ev.finished_at = now
    ev.lease_expires_at = None
    s.flush()
    _apply_verdict(s, version, skill, ev, now, {"gave_up": True, "attempts": ev.attempts})


def claim_evaluation(
    store: Store,
    *,
    give_up: GiveUp,
    owner: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    fair: bool = True,
) -> EvaluationRecord | None:
    """Lease the next evaluation to ``owner`` for ``lease_seconds`` and mark it running.

    The next one is a ``running`` evaluation whose lease lapsed (its worker died
    or hung; oldest lapse first), else the oldest ``queued`` one of the fairest
    tenant (see "Fair share between tenants" above). Each claim
    counts an attempt; a lapsed evaluation that already had ``max_attempts``
    is finished with the report ``give_up(...)`` builds (the workers' choice:
    :func:`sandgate.report.gave_up`, verdict ``error``) and the next is tried.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so workers never wait on each other
    and never get the same row. SQLite: the write transaction is ``BEGIN
    IMMEDIATE``, so claims are serialised and each row has one winner.
    ``owner`` defaults to ``host:pid:random``. ``fair=False``: the oldest queued row of the
    whole queue, whoever queued it (the FIFO baseline ``bench/bench_fairshare.py`` measures;
    workers always claim fairly).
    """
    owner = owner or owner_id()
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
                ev = _fair_next(s) if fair else s.scalars(
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
                _give_up(s, ev, version, skill, now, f"the lease of {ev.lease_owner} lapsed", give_up)
                continue
            ev.status = "running"
            ev.started_at = now
            ev.lease_owner = owner
            ev.lease_expires_at = now + timedelta(seconds=lease_seconds)
            ev.attempts = (ev.attempts or 0) + 1
            s.flush()
            return _evaluation_record(ev, skill.name, version.number)
    return None  # pragma: no cover - more than _MAX_WALK exhausted rows in one go


@functools.cache
def _fair_tenants() -> Any:
    """The tenants with queued work, fairest first, each under its running cap (a SELECT of ``tenant``).

    Built once per process: the statement has no parameters, and a claim builds none of its
    aliases and subqueries again.

    A recursive skip scan of the ``(status, tenant, created_at)`` index finds the tenants
    (one ``min(tenant) > previous`` probe each); per tenant, correlated index lookups give
    its running count, its last start (``(tenant, started_at)``), its oldest queued row and
    its key's running cap.
    """
    e = Evaluation.__table__.alias("e")
    seed = select(func.min(e.c.tenant).label("tenant")).where(e.c.status == "queued")
    tenants = seed.cte("queued_tenants", recursive=True)
    n = Evaluation.__table__.alias("n")
    step = select(
        select(func.min(n.c.tenant)).where(n.c.status == "queued", n.c.tenant > tenants.c.tenant)
        .scalar_subquery()
    ).where(tenants.c.tenant.is_not(None))
    tenants = tenants.union_all(step)
    r = Evaluation.__table__.alias("r")
    running = (select(func.count()).select_from(r)
               .where(r.c.status == "running", r.c.tenant == tenants.c.tenant).scalar_subquery())
    st = Evaluation.__table__.alias("st")
    last_start = select(func.max(st.c.started_at)).where(st.c.tenant == tenants.c.tenant).scalar_subquery()
    q = Evaluation.__table__.alias("q")
    oldest = (select(func.min(q.c.created_at))
              .where(q.c.status == "queued", q.c.tenant == tenants.c.tenant).scalar_subquery())
    k = ApiKey.__table__
    cap = (select(k.c.max_running)
           .where(tenants.c.tenant.startswith(_KEY_TENANT, autoescape=True),
                  k.c.name == func.substr(tenants.c.tenant, len(_KEY_TENANT) + 1))
           .scalar_subquery())
    return (
        select(tenants.c.tenant)
        .where(tenants.c.tenant.is_not(None), running < func.coalesce(cap, literal(_NO_CAP)))
        .order_by(running, case((last_start.is_(None), 0), else_=1), last_start, oldest, tenants.c.tenant)
    )


@functools.cache
def _fair_statements() -> tuple[Any, Any, Any]:
    """(a tenant's oldest queued row, locked; the fair order of tenants; the fairest tenant's
    oldest queued row, locked): built once per process, like :func:`_fair_tenants`."""
    head = (select(Evaluation)
            .where(Evaluation.status == "queued")
            .order_by(Evaluation.created_at)
            .limit(1)
            .with_for_update(skip_locked=True))
    fair = _fair_tenants()
    return head, fair, head.where(Evaluation.tenant == fair.limit(1).scalar_subquery())


def _fair_next(s: Session) -> Evaluation | None:
    """The oldest queued row of the fairest tenant, locked (one statement; see the module docstring)."""
    head, fair, fairest = _fair_statements()
    ev = s.scalars(fairest).first()
    if ev is not None:
        return ev
    # the fairest tenant's queued rows are all being claimed right now (or nothing is
    # queued): the other tenants, in the same order (PostgreSQL only: SQLite claims serially)
    for tenant in list(s.scalars(fair))[1:]:
        ev = s.scalars(head.where(Evaluation.tenant == tenant)).first()
        if ev is not None:
            return ev
    return None


def _check_tenant(tenant: str) -> None:
    if not tenant or len(tenant) > ACTOR_LENGTH:
        raise StoreError(f"a tenant is 1 to {ACTOR_LENGTH} characters, not {tenant[:40]!r}")


def _lock_tenant(s: Session, tenant: str) -> None:
    """PostgreSQL: serialise the queued-cap check of one tenant (released at commit)."""
    if s.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"sandgate-queue:{tenant}".encode()).digest()[:8], "big", signed=True)
        s.execute(select(func.pg_advisory_xact_lock(key)))


def _queued_of(s: Session, tenant: str) -> int:
    return int(s.scalar(select(func.count()).select_from(Evaluation)
                        .where(Evaluation.status == "queued", Evaluation.tenant == tenant)) or 0)


def _describe(tenant: str) -> str:
    return f"key {tenant[len(_KEY_TENANT):]!r}" if tenant.startswith(_KEY_TENANT) else f"tenant {tenant!r}"


def _check_room(s: Session, tenant: str, max_queued: int | None, limit_setting: str | None) -> None:
    if max_queued is None:
        return
    _lock_tenant(s, tenant)
    queued = _queued_of(s, tenant)
    if queued < max_queued:
        return
    wait = _retry_after(s)
    where = f" ({limit_setting})" if limit_setting else ""
    raise QueueFull(
        f"the queue of {_describe(tenant)} is full: {queued} evaluations queued, its limit is "
        f"{max_queued}{where}; nothing was queued, retry in {wait} s",
        tenant=tenant, limit=max_queued, queued=queued, retry_after=wait, setting=limit_setting,
    )


def retry_after_seconds(*, median_seconds: float | None, tenants_queued: int, slots: int) -> int:
    """When a full tenant queue should have room again: one evaluation slot of its fair share.

    With ``slots`` alive worker slots shared fairly between ``tenants_queued`` tenants
    that have queued work, a tenant gets a slot every ``median × tenants / slots``
    seconds, and each slot it gets frees one place in its queue. No worker alive: the
    upper bound. No finished evaluation yet: a 30 s evaluation is assumed. Bounded to
    [1, 600] whole seconds.
    """
    if slots <= 0:
        return RETRY_AFTER_MAX
    median = _DEFAULT_DURATION if median_seconds is None else max(0.0, median_seconds)
    wait = median * max(1, tenants_queued) / slots
    return int(min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, math.ceil(wait))))


def _retry_after(s: Session) -> int:
    rows = s.execute(
        select(Evaluation.started_at, Evaluation.finished_at)
        .where(Evaluation.status == "done", Evaluation.started_at.is_not(None))
        .order_by(Evaluation.status.desc(), Evaluation.created_at.desc())
        .limit(_DURATION_SAMPLE)
    ).all()
    durations = [(_utc(f) - _utc(b)).total_seconds() for b, f in rows if b is not None and f is not None]
    tenants = int(s.scalar(select(func.count(func.distinct(Evaluation.tenant)))
                           .where(Evaluation.status == "queued")) or 0)
    cutoff = _db_now(s) - timedelta(seconds=WORKER_ALIVE_SECONDS)
    slots = int(s.scalar(select(func.coalesce(func.sum(WorkerBeat.concurrency), 0))
                         .where(WorkerBeat.heartbeat_at >= cutoff)) or 0)
    return retry_after_seconds(median_seconds=statistics.median(durations) if durations else None,
                               tenants_queued=tenants, slots=slots)


def queue_room(store: Store, *, tenant: str, max_queued: int | None, limit_setting: str | None = None) -> None:
    """Raise :class:`QueueFull` if ``tenant`` has ``max_queued`` evaluations queued (a read, before
    anything is stored; the write that queues checks again)."""
    if max_queued is None:
        return
    with store.read() as s:
        queued = _queued_of(s, tenant)
        if queued >= max_queued:
            _check_room(s, tenant, max_queued, limit_setting)


def _pending(s: Session, version_id: int, policy_hash: str) -> Evaluation | None:
    """The newest queued or running evaluation of a version under a policy hash."""
    return s.scalars(
        select(Evaluation)
        .where(
            Evaluation.version_id == version_id,
            Evaluation.policy_hash == policy_hash,
            Evaluation.status.in_(("queued", "running")),
        )
        .order_by(Evaluation.created_at.desc())
        .limit(1)
    ).first()


def get_evaluation(store: Store, *, evaluation_id: str) -> EvaluationRecord:
    with store.read() as s:
        ev, version, skill = _evaluation_with_owner(s, evaluation_id)
        return _evaluation_record(ev, skill.name, version.number)


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
        q = select(Evaluation).where(Evaluation.version_id == version.id, Evaluation.status == "done")
        if policy_hash is not None:
            q = q.where(Evaluation.policy_hash == policy_hash)
        if conclusive:
            q = q.where(Evaluation.verdict.in_(CONCLUSIVE))
        ev = s.scalars(q.order_by(Evaluation.finished_at.desc(), Evaluation.created_at.desc()).limit(1)).first()
        return None if ev is None else _evaluation_record(ev, skill.name, version.number)


def pending_evaluation(store: Store, *, name: str, number: int, policy_hash: str) -> EvaluationRecord | None:
    """The newest queued or running evaluation of ``name@number`` under a policy."""
    with store.read() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        ev = _pending(s, version.id, policy_hash)
        return None if ev is None else _evaluation_record(ev, skill.name, version.number)


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
        rc = _rowcount(s.execute(
            update(Evaluation)
            .where(
                Evaluation.id == evaluation_id,
                Evaluation.status == "running",
                Evaluation.lease_owner == owner,
            )
            .values(lease_expires_at=expires)
            .execution_options(synchronize_session=False)
        ))
        if rc != 1:
            row = s.execute(
                select(Evaluation.status, Evaluation.lease_owner).where(Evaluation.id == evaluation_id)
            ).first()
            state = "gone" if row is None else f"{row[0]}, lease {row[1]}"
            raise Conflict(f"evaluation {evaluation_id}: lease lost ({state})", code="lease_lost")
        return expires


def release_evaluation(store: Store, *, evaluation_id: str, owner: str, count_attempt: bool = False) -> bool:
    """Hand a running evaluation back to the queue (a worker shutting down, or whose engine died).

    Only ``owner``'s own lease is released; the attempt it used is not counted
    (stopping a worker is not the job's fault) unless ``count_attempt`` (an
    engine that died during the run: counted, so a job that keeps killing
    engines ends at ``max_attempts``). False: it was not ``owner``'s.
    """
    less = 0 if count_attempt else 1
    with store.write() as s:
        rc = _rowcount(s.execute(
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
                attempts=func.max(Evaluation.attempts - less, 0)
                if s.get_bind().dialect.name == "sqlite"
                else func.greatest(Evaluation.attempts - less, 0),
            )
            .execution_options(synchronize_session=False)
        ))
        return rc == 1


def recover_leases(
    store: Store,
    *,
    give_up: GiveUp,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    stale_seconds: float | None = 3600.0,
) -> dict[str, list[str]]:
    """Requeue running evaluations whose lease lapsed, or give them up (the scheduler's job).

    A lapsed lease with fewer than ``max_attempts`` claims goes back to
    ``queued``; one at the maximum is finished with the report ``give_up(...)``
    builds (:func:`sandgate.report.gave_up`: verdict ``error``, "gave up after N
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
                _give_up(s, ev, version, skill, now, f"the lease of {ev.lease_owner} lapsed", give_up)
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
        s.scalars(select(Event.version_id).where(Event.version_id.in_(version_ids), Event.action.in_(MOVES)).distinct())
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
            if verdict in CONCLUSIVE and (key not in newest_conclusive or rank > newest_conclusive[key][0]):
                newest_conclusive[key] = (rank, eid)
        keep = {eid for _, eid in newest.values()} | {eid for _, eid in newest_conclusive.values()}
        cutoff = _utc(before)
        # a done evaluation always has finished_at (every way to 'done' sets it)
        old = [eid for eid, _v, _h, _vd, finished, _c in rows if _utc(cast(datetime, finished)) < cutoff]
        drop = [eid for eid in old if eid not in keep]
        for start in range(0, len(drop), 500):
            # a declared model's __table__ is a Table
            s.execute(cast(Table, Evaluation.__table__).delete().where(Evaluation.id.in_(drop[start : start + 500])))
        dropped = 0
        kept_old = [eid for eid in old if eid in keep]
        for start in range(0, len(kept_old), 500):
            for ev in s.scalars(select(Evaluation).where(Evaluation.id.in_(kept_old[start : start + 500]))):
                if isinstance(ev.report, dict) and ev.report.get("output"):
                    ev.report = {**ev.report, "output": ""}
                    dropped += 1
        s.flush()
        return {"deleted": len(drop), "outputs_dropped": dropped}


# --------------------------------------------------------------------------- worker liveness

#: how often a running worker refreshes its row in ``worker_beats``
WORKER_BEAT_SECONDS = 5.0
#: a worker whose row is older than this is not alive (three missed beats and a margin)
WORKER_ALIVE_SECONDS = 20.0
#: rows of workers silent this long are deleted when a worker starts
_WORKER_FORGET = timedelta(days=1)


def worker_beat(store: Store, *, owner: str, concurrency: int, kind: str = "worker", first: bool = False) -> None:
    """Record that worker ``owner`` is alive now (``first``: it just started; forget stale rows)."""
    with store.write() as s:
        now = _db_now(s)
        if first:
            s.execute(delete(WorkerBeat).where(WorkerBeat.heartbeat_at < now - _WORKER_FORGET))
        updated = s.execute(
            update(WorkerBeat).where(WorkerBeat.owner == owner)
            .values(heartbeat_at=now, concurrency=concurrency)
        )
        if _rowcount(updated) == 0:
            s.add(WorkerBeat(owner=owner[:ACTOR_LENGTH], concurrency=concurrency, kind=kind,
                             started_at=now, heartbeat_at=now))


def worker_gone(store: Store, *, owner: str) -> None:
    """Worker ``owner`` stopped cleanly: it is no longer counted as alive."""
    with store.write() as s:
        s.execute(delete(WorkerBeat).where(WorkerBeat.owner == owner))


def worker_liveness(store: Store, *, within: float = WORKER_ALIVE_SECONDS, host: str | None = None) -> dict[str, Any]:
    """``{"alive": workers, "slots": their concurrency, "queued": n, "running": n, "kinds": [...]}``
    (``host``: only the workers on that host, by their owner id ``host:pid:random``)."""
    with store.read() as s:
        cutoff = _db_now(s) - timedelta(seconds=within)
        q = select(WorkerBeat.kind, WorkerBeat.concurrency).where(WorkerBeat.heartbeat_at >= cutoff)
        if host is not None:
            q = q.where(WorkerBeat.owner.startswith(f"{host}:", autoescape=True))
        rows = s.execute(q)
        beats = list(rows)
        counts = dict(
            s.execute(
                select(Evaluation.status, func.count())
                .where(Evaluation.status.in_(("queued", "running")))
                .group_by(Evaluation.status)
            ).all()
        )
    return {"alive": len(beats), "slots": sum(c for _, c in beats), "kinds": sorted({k for k, _ in beats}),
            "queued": int(counts.get("queued", 0)), "running": int(counts.get("running", 0))}
