"""The store side of canaries: the candidate pointer, canary runs, runtime evidence.

The pointer state of a skill is ``(active, candidate, weight)``, all in its
``skills`` row (migration 0006). Every change of it is one transaction that
writes exactly one event and compare-and-sets ``skills.generation``, as
``promote``/``rollback`` do (``pointers._move``)::

    UPDATE skills SET candidate_version_id = ?, candidate_weight = ?, generation = generation + 1
     WHERE id = ? AND generation = ?

A canary change does not touch ``pointer_event_id`` (the rollback stack is
about the ``active`` pointer only). A move of the active pointer (any
``promote``/``rollback``, including the canary's own full promotion) clears
the candidate in the same UPDATE, so a person's promote or rollback during a
canary ends it; the scheduler then marks that run ``superseded``.

Events (``events.action``), each with the decision's evidence:

==========================  =================================================
``canary_started``          candidate at the first weight (``promote --canary``)
``canary_advanced``         the weight went up a step
``canary_held``             the decision changed to "hold" (written when its
                            reason code changes, not at every look)
``promoted``                full promotion: a normal pointer move (the
                            rollback stack sees it), evidence ``canary``
``canary_rolled_back``      the candidate was dropped automatically
``canary_aborted``          a person dropped it (``sandgate abort``)
``rolled_back``             the bake window found a regression: a normal
                            rollback, evidence ``automatic: true``
``canary_completed``        the bake window ended without a regression
==========================  =================================================

Runtime evidence: :func:`record_runtime` stores one consumer batch in one
transaction (idempotent on its ``batch_id``); :func:`step_counts` groups
the counts of a canary by the generation each step began at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sandgate.errors import Conflict, InvalidCanaryInput, InvalidTransition, NotFound
from sandgate.names import SKILL_NAME
from sandgate.policy.canary import StepCounts, VersionCounts
from sandgate.records import CanaryRecord
from sandgate.store._rows import (
    _latest_conclusive,
    _now,
    _require_actor,
    _require_reason,
    _rowcount,
    _skill,
    _utc,
    _version,
)
from sandgate.store.engine import Store
from sandgate.store.models import ACTOR_LENGTH, Canary, Event, RuntimeCount, RuntimeSample, Skill, Version
from sandgate.store.pointers import _check_expected, _move, _rollback_in

__all__ = [
    "CanaryRecord",
    "ACTIVE_STATES",
    "MAX_SAMPLES_PER_VERSION",
    "canary_routes",
    "start_canary",
    "set_weight",
    "promote_candidate",
    "drop_candidate",
    "bake_rollback",
    "finish_canary",
    "record_decision",
    "get_canary",
    "running_canaries",
    "record_runtime",
    "step_counts",
    "version_counts",
    "consumers",
    "runtime_samples",
]

#: states in which the scheduler still looks at a canary
ACTIVE_STATES = ("running", "baking")
#: samples kept per version in the store (beyond this, batches' samples are dropped)
MAX_SAMPLES_PER_VERSION = 1000
#: limits on one consumer batch (the API refuses larger ones before this)
MAX_REPORTS = 1000
MAX_ERROR_TYPES = 50
MAX_BUCKET = 400


def _record(s: Session, c: Canary, skill: Skill) -> CanaryRecord:
    numbers = dict(s.execute(select(Version.id, Version.number).where(
        Version.id.in_({c.candidate_version_id, c.baseline_version_id} | (
            {skill.active_version_id} if skill.active_version_id else set())))).all())
    return CanaryRecord(
        id=c.id, skill=skill.name, candidate=numbers[c.candidate_version_id],
        baseline=numbers[c.baseline_version_id], state=c.state, config=dict(c.config), steps=list(c.steps),
        last_decision=c.last_decision, actor=c.actor, started_at=_utc(c.started_at),
        updated_at=_utc(c.updated_at), finished_at=_utc(c.finished_at),
        active=numbers.get(skill.active_version_id) if skill.active_version_id else None,
        weight=skill.candidate_weight, generation=skill.generation,
    )


# --------------------------------------------------------------------------- the pointer state


def canary_routes(store: Store, *, names: Iterable[str]) -> dict[str, tuple[int, int, bool, int]]:
    """``{name: (candidate number, weight, fallback, sample_io)}`` for those of ``names`` with a candidate."""
    wanted = list(names)
    if not wanted:
        return {}
    with store.read() as s:
        rows = s.execute(
            select(Skill.name, Version.number, Skill.candidate_weight, Skill.id)
            .join(Version, Version.id == Skill.candidate_version_id)
            .where(Skill.name.in_(wanted), Skill.candidate_version_id.is_not(None))
        ).all()
        out: dict[str, tuple[int, int, bool, int]] = {}
        for name, number, weight, skill_id in rows:
            config = s.scalar(select(Canary.config)
                              .where(Canary.skill_id == skill_id, Canary.state == "running")
                              .order_by(Canary.id.desc()).limit(1))
            config = config or {}
            out[name] = (number, int(weight), bool(config.get("fallback", False)), int(config.get("sample_io", 0)))
        return out


def _cas(s: Session, skill: Skill, *, candidate_id: int | None, weight: int) -> int:
    """Compare-and-set the candidate part of the pointer; returns the new generation."""
    generation = skill.generation
    rc = _rowcount(s.execute(
        update(Skill)
        .where(Skill.id == skill.id, Skill.generation == generation)
        .values(candidate_version_id=candidate_id, candidate_weight=weight, generation=Skill.generation + 1)
        .execution_options(synchronize_session=False)
    ))
    if rc != 1:
        now = s.scalar(select(Skill.generation).where(Skill.id == skill.id))
        raise Conflict(f"skill {skill.name} moved concurrently: expected generation {generation}, now {now}")
    s.expire(skill)
    return generation + 1


def _event(s: Session, skill: Skill, *, version_id: int | None, actor: str, action: str, reason: str | None,
           before: dict[str, Any], after: dict[str, Any], evidence: dict[str, Any]) -> Event:
    event = Event(skill_id=skill.id, version_id=version_id, actor=actor, action=action, reason=reason,
                  before=before, after=after, evidence=evidence, created_at=_now())
    s.add(event)
    s.flush()
    return event


def _state(skill: Skill, numbers: Mapping[int, int]) -> dict[str, Any]:
    return {"version": numbers.get(skill.active_version_id) if skill.active_version_id else None,
            "candidate": numbers.get(skill.candidate_version_id) if skill.candidate_version_id else None,
            "weight": skill.candidate_weight, "generation": skill.generation}


def _numbers(s: Session, skill: Skill) -> dict[int, int]:
    ids = {i for i in (skill.active_version_id, skill.candidate_version_id) if i is not None}
    return dict(s.execute(select(Version.id, Version.number).where(Version.id.in_(ids))).all()) if ids else {}


def _running(s: Session, skill: Skill, *, states: tuple[str, ...] = ("running",)) -> Canary | None:
    return s.scalars(select(Canary).where(Canary.skill_id == skill.id, Canary.state.in_(states))
                     .order_by(Canary.id.desc()).limit(1)).first()


def start_canary(
    store: Store,
    *,
    name: str,
    number: int,
    actor: str,
    config: Mapping[str, Any],
    policy: Any | None,
    weight: int | None = None,
    reason: str | None = None,
    expected_generation: int | None = None,
    force: bool = False,
) -> CanaryRecord:
    """Make ``name@number`` the candidate at ``weight`` % (default: the first step) beside the active version.

    The same checks as ``promote`` (passed under ``policy`` unless ``force``, not
    yanked, not already active); also: something must be active (the first
    version has nothing to compare with: promote it normally), and no other
    canary may be running (abort it first).
    """
    actor = _require_actor(actor)
    steps = [int(w) for w in config.get("steps", [10, 50]) if int(w) != 100]
    first = steps[0] if steps else 10
    weight = first if weight is None else int(weight)
    if not 0 < weight < 100:
        raise InvalidCanaryInput(f"a canary weight is a percentage in 1..99, got {weight}", code="bad_weight")
    if force:
        reason = _require_reason(reason, "a forced canary")
    elif policy is None:
        raise ValueError("start_canary needs the current policy (or force=True)")
    with store.write() as s:
        skill = _skill(s, name)
        _check_expected(skill, expected_generation)
        target = _version(s, skill, number, lock="share")
        ref = f"{name}@{number}"
        if skill.active_version_id is None:
            raise InvalidTransition(f"{name} has no active version to compare {ref} with: promote it normally",
                                    code="nothing_active")
        if target.yanked_at is not None:
            raise InvalidTransition(f"{ref} is yanked ({target.yank_reason}); yanked versions cannot be promoted",
                                    code="yanked")
        if skill.active_version_id == target.id:
            raise InvalidTransition(f"{ref} is already the active version; nothing to do", code="already_active")
        running = _running(s, skill)
        if running is not None or skill.candidate_version_id is not None:
            raise InvalidTransition(f"{name} already has a canary running (candidate "
                                    f"{_numbers(s, skill).get(skill.candidate_version_id or -1, '?')}): abort it first",
                                    code="canary_running")
        evidence: dict[str, Any] = {"forced": force, "config": dict(config), "weight": weight}
        if policy is not None:
            evidence |= {"policy": policy.name, "policy_hash": policy.hash}
            ev = _latest_conclusive(s, target.id, policy.hash)
            if ev is not None:
                evidence |= {"evaluation_id": ev.id, "verdict": ev.verdict}
            if not force and (ev is None or ev.verdict != "passed"):
                what = "has no finished evaluation" if ev is None else f"did not pass (verdict {ev.verdict})"
                raise InvalidTransition(f"{ref} {what} under policy {policy.name}; only passed versions can be "
                                        "canaried without --force", code="not_passed" if ev else "not_evaluated")
        numbers = _numbers(s, skill) | {target.id: number}
        before = _state(skill, numbers)
        baseline_id = skill.active_version_id
        _event(s, skill, version_id=target.id, actor=actor, action="canary_started", reason=reason, before=before,
               after={**before, "candidate": number, "weight": weight, "generation": skill.generation + 1},
               evidence=evidence)
        generation = _cas(s, skill, candidate_id=target.id, weight=weight)
        now = _now()
        canary = Canary(skill_id=skill.id, candidate_version_id=target.id, baseline_version_id=baseline_id,
                        state="running", config={**dict(config), "steps": steps or [weight]},
                        steps=[{"weight": weight, "generation": generation, "started_at": now.isoformat()}],
                        last_decision=None, actor=actor, started_at=now, updated_at=now)
        s.add(canary)
        s.flush()
        s.refresh(skill)
        return _record(s, canary, skill)


def _load(s: Session, name: str, canary_id: int, states: tuple[str, ...]) -> tuple[Skill, Canary]:
    skill = _skill(s, name)
    canary = s.get(Canary, canary_id)
    if canary is None or canary.skill_id != skill.id:
        raise NotFound(f"no canary {canary_id} of {name}")
    if canary.state not in states:
        raise InvalidTransition(f"canary {canary_id} of {name} is {canary.state}, not {' or '.join(states)}",
                                code="canary_not_running")
    return skill, canary


def _check_pointer(skill: Skill, canary: Canary, expected_generation: int | None) -> None:
    _check_expected(skill, expected_generation)
    if (skill.candidate_version_id != canary.candidate_version_id
            or skill.active_version_id != canary.baseline_version_id):
        raise Conflict(f"{skill.name}: the pointer moved since canary {canary.id} started "
                       "(promoted or rolled back by hand?)", code="canary_superseded")


def set_weight(store: Store, *, name: str, canary_id: int, weight: int, actor: str, evidence: dict[str, Any],
               reason: str | None = None, expected_generation: int | None = None) -> CanaryRecord:
    """Advance: the candidate's weight becomes ``weight`` (one event ``canary_advanced``, one CAS)."""
    actor = _require_actor(actor)
    if not 0 < weight < 100:
        raise InvalidCanaryInput(f"a canary weight is a percentage in 1..99, got {weight}", code="bad_weight")
    with store.write() as s:
        skill, canary = _load(s, name, canary_id, ("running",))
        _check_pointer(skill, canary, expected_generation)
        numbers = _numbers(s, skill)
        before = _state(skill, numbers)
        _event(s, skill, version_id=canary.candidate_version_id, actor=actor, action="canary_advanced",
               reason=reason, before=before, after={**before, "weight": weight, "generation": skill.generation + 1},
               evidence=evidence)
        generation = _cas(s, skill, candidate_id=canary.candidate_version_id, weight=weight)
        now = _now()
        canary.steps = [*canary.steps, {"weight": weight, "generation": generation, "started_at": now.isoformat()}]
        canary.last_decision = evidence.get("decision")
        canary.updated_at = now
        s.flush()
        s.refresh(skill)
        return _record(s, canary, skill)


def promote_candidate(store: Store, *, name: str, canary_id: int, actor: str, evidence: dict[str, Any],
                      reason: str | None = None, expected_generation: int | None = None) -> CanaryRecord:
    """Full promotion: the candidate becomes ``active`` (a normal ``promoted`` move); the bake window starts."""
    actor = _require_actor(actor)
    with store.write() as s:
        skill, canary = _load(s, name, canary_id, ("running",))
        _check_pointer(skill, canary, expected_generation)
        target = s.get_one(Version, canary.candidate_version_id)
        if target.yanked_at is not None:
            raise InvalidTransition(f"{name}@{target.number} was yanked during its canary", code="yanked")
        move = _move(s, skill, target=target, action="promoted", actor=actor, reason=reason,
                          expected_generation=None, back_event_id=skill.pointer_event_id,
                          evidence={"forced": False, "canary": canary.id, **evidence})
        now = _now()
        bake = float(canary.config.get("bake_seconds", 0) or 0)
        canary.state = "baking" if bake > 0 else "completed"
        canary.steps = [*canary.steps, {"weight": 100, "generation": move.generation, "started_at": now.isoformat()}]
        canary.last_decision = evidence.get("decision")
        canary.updated_at = now
        if bake <= 0:
            canary.finished_at = now
        s.flush()
        s.refresh(skill)
        return _record(s, canary, skill)


def drop_candidate(store: Store, *, name: str, actor: str, reason: str | None, evidence: dict[str, Any],
                   automatic: bool, canary_id: int | None = None,
                   expected_generation: int | None = None) -> CanaryRecord:
    """Drop the candidate: ``canary_rolled_back`` (automatic) or ``canary_aborted`` (a person)."""
    actor = _require_actor(actor)
    if not automatic:
        reason = _require_reason(reason, "aborting a canary")
    with store.write() as s:
        skill = _skill(s, name)
        if canary_id is None:
            canary = _running(s, skill)
            if canary is None:
                raise InvalidTransition(f"{name} has no canary running", code="no_canary")
        else:
            skill, canary = _load(s, name, canary_id, ("running",))
        _check_pointer(skill, canary, expected_generation)
        numbers = _numbers(s, skill)
        before = _state(skill, numbers)
        action = "canary_rolled_back" if automatic else "canary_aborted"
        _event(s, skill, version_id=canary.candidate_version_id, actor=actor, action=action, reason=reason,
               before=before, after={**before, "candidate": None, "weight": 0, "generation": skill.generation + 1},
               evidence={"automatic": automatic, "canary": canary.id, **evidence})
        _cas(s, skill, candidate_id=None, weight=0)
        now = _now()
        canary.state = "rolled_back" if automatic else "aborted"
        canary.last_decision = evidence.get("decision") or canary.last_decision
        canary.updated_at = canary.finished_at = now
        s.flush()
        s.refresh(skill)
        return _record(s, canary, skill)


def bake_rollback(store: Store, *, name: str, canary_id: int, actor: str, reason: str,
                  evidence: dict[str, Any]) -> CanaryRecord:
    """The bake window found a regression: roll ``active`` back to the baseline (a normal ``rolled_back`` move)."""
    actor = _require_actor(actor)
    with store.write() as s:
        skill, canary = _load(s, name, canary_id, ("baking",))
        if skill.active_version_id != canary.candidate_version_id:
            raise Conflict(f"{name}: the pointer moved since canary {canary.id} was promoted",
                           code="canary_superseded")
        # the full promotion pushed the baseline's state: a plain rollback returns to it
        _rollback_in(s, skill, to=None, actor=actor, reason=reason, expected_generation=None,
                          evidence={"automatic": True, "canary": canary.id, **evidence})
        now = _now()
        canary.state = "rolled_back"
        canary.last_decision = evidence.get("decision")
        canary.updated_at = canary.finished_at = now
        s.flush()
        s.refresh(skill)
        return _record(s, canary, skill)


def finish_canary(store: Store, *, name: str, canary_id: int, state: str, actor: str, reason: str,
                  evidence: dict[str, Any]) -> CanaryRecord:
    """End a canary without a pointer move: ``completed`` (bake over) or ``superseded`` (moved by hand)."""
    if state not in ("completed", "superseded"):
        raise ValueError(f"finish_canary: state {state!r}")
    actor = _require_actor(actor)
    with store.write() as s:
        skill, canary = _load(s, name, canary_id, ACTIVE_STATES)
        numbers = _numbers(s, skill)
        state_now = _state(skill, numbers)
        _event(s, skill, version_id=canary.candidate_version_id, actor=actor, action=f"canary_{state}",
               reason=reason, before=state_now, after=state_now, evidence={"canary": canary.id, **evidence})
        now = _now()
        canary.state = state
        canary.last_decision = evidence.get("decision") or canary.last_decision
        canary.updated_at = canary.finished_at = now
        s.flush()
        return _record(s, canary, skill)


def record_decision(store: Store, *, name: str, canary_id: int, decision: dict[str, Any], actor: str) -> bool:
    """Store a "hold" decision; writes a ``canary_held`` event only when its reason code changed (True then)."""
    with store.write() as s:
        skill, canary = _load(s, name, canary_id, ACTIVE_STATES)
        previous = canary.last_decision or {}
        changed = previous.get("action") != decision.get("action") or previous.get("code") != decision.get("code")
        canary.last_decision = decision
        canary.updated_at = _now()
        if changed:
            state_now = _state(skill, _numbers(s, skill))
            _event(s, skill, version_id=canary.candidate_version_id, actor=_require_actor(actor),
                   action="canary_held", reason=decision.get("message"), before=state_now, after=state_now,
                   evidence={"canary": canary.id, "decision": decision})
        return changed


def get_canary(store: Store, *, name: str) -> CanaryRecord | None:
    """The skill's latest canary (any state), None if it never had one."""
    with store.read() as s:
        skill = _skill(s, name)
        canary = s.scalars(select(Canary).where(Canary.skill_id == skill.id).order_by(Canary.id.desc())
                           .limit(1)).first()
        return _record(s, canary, skill) if canary is not None else None


def running_canaries(store: Store) -> list[CanaryRecord]:
    """Every canary the scheduler still watches (running or baking), oldest first."""
    with store.read() as s:
        rows = s.execute(select(Canary, Skill).join(Skill, Skill.id == Canary.skill_id)
                         .where(Canary.state.in_(ACTIVE_STATES)).order_by(Canary.id)).all()
        return [_record(s, c, skill) for c, skill in rows]


# --------------------------------------------------------------------------- runtime evidence


def _int(value: Any, what: str, *, high: int = 2**53) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InvalidCanaryInput(f"runtime report: {what} must be an integer in 0..{high}, got {value!r}")
    return value


def _check_report(r: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(r, Mapping):
        raise InvalidCanaryInput("runtime report: each report must be an object")
    skill = r.get("skill")
    if not isinstance(skill, str) or not SKILL_NAME.match(skill):
        raise InvalidCanaryInput(f"runtime report: bad skill name {skill!r}")
    calls = _int(r.get("calls"), "calls")
    errors = _int(r.get("errors"), "errors")
    if errors > calls:
        raise InvalidCanaryInput(f"runtime report: {errors} errors in {calls} calls")
    types = r.get("error_types") or {}
    latency = r.get("latency") or {}
    if not isinstance(types, Mapping) or len(types) > MAX_ERROR_TYPES or not isinstance(latency, Mapping):
        raise InvalidCanaryInput("runtime report: error_types / latency must be small objects")
    clean_types = {str(k)[:200]: _int(v, "an error type count") for k, v in types.items()}
    if sum(clean_types.values()) > errors:
        raise InvalidCanaryInput("runtime report: error types add up to more than errors")
    clean_lat: dict[str, int] = {}
    for k, v in latency.items():
        try:
            bucket = int(k)
        except (TypeError, ValueError):
            raise InvalidCanaryInput(f"runtime report: bad latency bucket {k!r}") from None
        _int(bucket, "a latency bucket", high=MAX_BUCKET)
        clean_lat[str(bucket)] = _int(v, "a latency count")
    if sum(clean_lat.values()) > calls:
        raise InvalidCanaryInput("runtime report: latency counts add up to more than calls")
    samples = r.get("samples") or []
    if not isinstance(samples, list):
        raise InvalidCanaryInput("runtime report: samples must be a list")
    return {"skill": skill, "version": _int(r.get("version"), "version"),
            "generation": _int(r.get("generation"), "generation"), "calls": calls, "errors": errors,
            "fallbacks": min(_int(r.get("fallbacks", 0), "fallbacks"), calls), "error_types": clean_types,
            "latency": clean_lat, "samples": [x for x in samples[:100] if isinstance(x, Mapping)]}


def record_runtime(store: Store, *, batch: Mapping[str, Any], consumer: str | None = None) -> dict[str, int]:
    """Store one consumer batch in one transaction; a ``batch_id`` seen before is ignored.

    ``consumer`` (the API passes the key's name) overrides what the batch
    says about itself. Reports of unknown skills or versions, or of a
    generation the skill's pointer never had, are skipped (counted in the
    answer as ``skipped``). Returns ``{"stored", "skipped",
    "duplicate", "samples"}``.
    """
    batch_id = batch.get("batch_id")
    if not isinstance(batch_id, str) or not 8 <= len(batch_id) <= 64:
        raise InvalidCanaryInput("runtime report: batch_id must be a string of 8..64 characters")
    reports = batch.get("reports")
    if not isinstance(reports, list) or len(reports) > MAX_REPORTS:
        raise InvalidCanaryInput(f"runtime report: reports must be a list of at most {MAX_REPORTS}")
    clean = [_check_report(r) for r in reports]
    who = (consumer or str(batch.get("consumer") or "unknown"))[:ACTOR_LENGTH]
    out = {"stored": 0, "skipped": 0, "duplicate": 0, "samples": 0}
    try:
        with store.write() as s:
            if s.scalar(select(RuntimeCount.id).where(RuntimeCount.batch_id == batch_id).limit(1)) is not None:
                return {**out, "duplicate": 1}
            names = {r["skill"] for r in clean}
            rows = s.execute(select(Skill.name, Skill.id, Skill.generation).where(Skill.name.in_(names))).all()
            ids = {name: (sid, gen) for name, sid, gen in rows}
            now = _now()
            for r in clean:
                skill_id, generation = ids.get(r["skill"], (None, -1))
                vid = None if skill_id is None else s.scalar(
                    select(Version.id).where(Version.skill_id == skill_id, Version.number == r["version"]))
                if vid is None or r["generation"] > generation:  # unknown, or a generation no pointer had yet
                    out["skipped"] += 1
                    continue
                if r["calls"]:
                    s.add(RuntimeCount(skill_id=skill_id, version_id=vid, generation=r["generation"], consumer=who,
                                       batch_id=batch_id, received_at=now, calls=r["calls"], errors=r["errors"],
                                       fallbacks=r["fallbacks"], error_types=r["error_types"],
                                       latency=r["latency"]))
                    out["stored"] += 1
                if r["samples"]:
                    have = s.scalar(select(func.count()).select_from(RuntimeSample)
                                    .where(RuntimeSample.version_id == vid)) or 0
                    for sample in r["samples"][: max(0, MAX_SAMPLES_PER_VERSION - have)]:
                        s.add(RuntimeSample(version_id=vid, consumer=who, received_at=now, sample=dict(sample)))
                        out["samples"] += 1
            s.flush()
    except IntegrityError:  # the same batch, sent twice at once: the other one won
        return {**out, "stored": 0, "duplicate": 1}
    return out


def _counts(rows: Iterable[Any]) -> VersionCounts:
    out = VersionCounts()
    for calls, errors, types, latency in rows:
        out = out + VersionCounts(int(calls), min(int(errors), int(calls)), dict(types or {}),
                                  {int(k): int(v) for k, v in (latency or {}).items()})
    return out


def _rows(s: Session, version_id: int, low: int, high: int | None) -> list[Any]:
    q = select(RuntimeCount.calls, RuntimeCount.errors, RuntimeCount.error_types, RuntimeCount.latency).where(
        RuntimeCount.version_id == version_id, RuntimeCount.generation >= low)
    if high is not None:
        q = q.where(RuntimeCount.generation < high)
    return list(s.execute(q))


def step_counts(store: Store, *, canary: CanaryRecord) -> list[StepCounts]:
    """The canary's counts per step below 100 % (candidate and baseline), oldest first."""
    with store.read() as s:
        skill = _skill(s, canary.skill)
        cand = _version(s, skill, canary.candidate).id
        base = _version(s, skill, canary.baseline).id
        steps = [st for st in canary.steps if int(st["weight"]) < 100]
        ends = [int(st["generation"]) for st in canary.steps[1:]] + [None]
        out = []
        for st, end in zip(steps, ends, strict=False):
            low = int(st["generation"])
            out.append(StepCounts(int(st["weight"]), _counts(_rows(s, cand, low, end)),
                                  _counts(_rows(s, base, low, end))))
        return out


def consumers(store: Store, *, canary: CanaryRecord, limit: int = 20) -> dict[str, int]:
    """Calls per reporting consumer (database client or ``key:<name>``) since the canary began, most first.

    Part of every decision's evidence: counts are as trustworthy as whoever sent
    them, so the event shows who that was.
    """
    with store.read() as s:
        skill = _skill(s, canary.skill)
        ids = [_version(s, skill, canary.candidate).id, _version(s, skill, canary.baseline).id]
        start = int(canary.steps[0]["generation"]) if canary.steps else 0
        total = func.sum(RuntimeCount.calls)
        rows = s.execute(select(RuntimeCount.consumer, total).where(
            RuntimeCount.version_id.in_(ids), RuntimeCount.generation >= start)
            .group_by(RuntimeCount.consumer).order_by(total.desc()).limit(limit)).all()
        return {consumer: int(calls) for consumer, calls in rows}


def version_counts(store: Store, *, name: str, number: int, since_generation: int = 0,
                   until_generation: int | None = None) -> VersionCounts:
    """All counts of ``name@number`` reported at generations in ``[since, until)``."""
    with store.read() as s:
        skill = _skill(s, name)
        vid = _version(s, skill, number).id
        return _counts(_rows(s, vid, since_generation, until_generation))


def runtime_samples(store: Store, *, name: str, number: int, limit: int = 100) -> list[dict[str, Any]]:
    """The sampled calls of ``name@number``, oldest first."""
    with store.read() as s:
        skill = _skill(s, name)
        vid = _version(s, skill, number).id
        rows = s.execute(select(RuntimeSample.sample, RuntimeSample.consumer, RuntimeSample.received_at)
                         .where(RuntimeSample.version_id == vid).order_by(RuntimeSample.id).limit(limit)).all()
        return [{**dict(sample), "consumer": consumer, "received_at": _utc(at).isoformat()}
                for sample, consumer, at in rows]
