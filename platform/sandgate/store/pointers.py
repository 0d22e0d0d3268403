"""Pointer moves: promote, rollback, yank, flag — and reading the ``active`` pointers.

Keyword-only functions, one transaction each, plain records out. Refusals are
:class:`~sandgate.errors.NotFound`, :class:`~sandgate.errors.Conflict` or
:class:`~sandgate.errors.InvalidTransition` with a message meant for the
person at the terminal.

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

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from sandgate.errors import Conflict, InvalidTransition, NotFound
from sandgate.records import FlagResult, MoveAction, PointerMove, YankResult
from sandgate.store._rows import (
    _MAX_WALK,
    MOVES,
    _hook,
    _latest_conclusive,
    _now,
    _require_actor,
    _require_reason,
    _rowcount,
    _short,
    _skill,
    _version,
    _version_record,
)
from sandgate.store.engine import Store
from sandgate.store.models import Event, Skill, Version

__all__ = [
    "PolicyRef",
    "promote",
    "rollback",
    "yank",
    "flag_version",
    "active_pointers",
    "active_pointer",
    "ActivePointer",
    "active_pointer_details",
]


class PolicyRef(Protocol):
    """What the store needs of a policy: its name and content hash."""

    @property
    def name(self) -> str: ...

    @property
    def hash(self) -> str: ...

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
    action: MoveAction,
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
        evaluation_id=evidence.get("evaluation_id"),
        created_at=_now(),
    )
    s.add(event)
    s.flush()
    _hook("move.before_cas", s)
    rc = _rowcount(s.execute(
        update(Skill)
        .where(Skill.id == skill.id, Skill.generation == generation)
        .values(
            active_version_id=target.id,
            generation=Skill.generation + 1,
            pointer_event_id=event.id,
            # canary (store/canary.py): every move of the active pointer ends a candidate
            candidate_version_id=None,
            candidate_weight=0,
        )
        .execution_options(synchronize_session=False)
    ))
    if rc != 1:
        now_generation = s.scalar(select(Skill.generation).where(Skill.id == skill.id))
        raise Conflict(
            f"skill {skill.name} moved concurrently: expected generation {generation}, "
            f"now {now_generation}"
        )
    s.expire(skill)
    return PointerMove(
        skill=skill.name,
        action=action,
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
    over_newer: bool = True,
) -> PointerMove:
    """Make ``name@number`` the active version.

    ``policy`` is the *current* policy: the version's latest conclusive
    evaluation under ``policy.hash`` must be ``passed``. It is required unless
    ``force=True`` (then a reason is required too, and the event says forced).
    ``over_newer=False`` (auto-promotion) refuses to replace a newer active
    version (:class:`InvalidTransition`, code ``newer_active``), checked in the
    same transaction as the move.
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
        if not over_newer and skill.active_version_id not in (None, target.id):
            active = s.get_one(Version, skill.active_version_id)
            if active.number > target.number:
                raise InvalidTransition(
                    f"{name}@{active.number} is active and newer: {ref} not promoted over it",
                    code="newer_active",
                )
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

def active_pointers(
    store: Store, *, names: Iterable[str] | None = None
) -> dict[str, tuple[int, int]]:
    """``{skill: (active version number, generation)}`` for skills with an active version.

    Cheap enough to poll: one indexed join (``names`` narrows it to a few skills).
    """
    q = _pointer_query(names, Skill.name, Version.number, Skill.generation)
    if q is None:
        return {}
    with store.read() as s:
        return {name: (number, generation) for name, number, generation in s.execute(q)}


class ActivePointer(NamedTuple):
    version: int
    generation: int
    content_hash: str
    #: ``module:function`` from the version's manifest (None: the manifest has none)
    entrypoint: str | None


def active_pointer_details(store: Store, *, names: Iterable[str] | None = None) -> dict[str, ActivePointer]:
    """Like :func:`active_pointers`, with each active version's content hash and entrypoint (same join)."""
    q = _pointer_query(names, Skill.name, Version.number, Skill.generation, Version.content_hash, Version.manifest)
    if q is None:
        return {}
    with store.read() as s:
        out = {}
        for name, number, generation, content_hash, manifest in s.execute(q):
            entrypoint = (manifest or {}).get("entrypoint")
            out[name] = ActivePointer(number, generation, content_hash,
                                      entrypoint if isinstance(entrypoint, str) else None)
        return out


def _pointer_query(names: Iterable[str] | None, *columns: Any) -> Select[Any] | None:
    """``columns`` of the skills with an active version joined to it (None: ``names`` is empty)."""
    q = select(*columns).join(Version, Version.id == Skill.active_version_id)
    if names is None:
        return q
    wanted = list(names)
    return q.where(Skill.name.in_(wanted)) if wanted else None

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
