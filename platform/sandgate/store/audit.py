"""Audit reads: a skill's append-only events (who, what, when, why, before/after, evidence).

Events are written by the rooms that act (a version stored, an evaluation
finished, a pointer moved, a flag); this room only reads them.
"""

from __future__ import annotations

from sqlalchemy import select

from sandgate.records import EventRecord, PointerMove
from sandgate.store._rows import _event_record, _skill
from sandgate.store.engine import Store
from sandgate.store.models import Event, Skill, Version

__all__ = ["history", "promotion_of", "events_after"]


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


def promotion_of(store: Store, *, skill: str, evaluation_id: str) -> PointerMove | None:
    """The newest ``promoted`` move of ``skill`` that cites ``evaluation_id`` (None: none did).

    One indexed lookup on ``events.evaluation_id`` (how a client learns that
    its submission was auto-promoted).
    """
    q = (
        select(Event, Version.number)
        .join(Skill, Skill.id == Event.skill_id)
        .join(Version, Version.id == Event.version_id)
        .where(Event.evaluation_id == evaluation_id, Skill.name == skill, Event.action == "promoted")
        .order_by(Event.id.desc())
        .limit(1)
    )
    with store.read() as s:
        row = s.execute(q).first()
        if row is None:
            return None
        e, number = row
        return PointerMove(
            skill=skill,
            action="promoted",
            from_version=(e.before or {}).get("version"),
            to_version=number,
            generation=int((e.after or {}).get("generation") or 0),
            event_id=e.id,
            forced=bool((e.evidence or {}).get("forced")),
        )


def events_after(store: Store, *, after: int, limit: int = 500) -> list[EventRecord]:
    """Every event with ``id > after``, oldest first, at most ``limit`` (a primary-key range scan)."""
    q = (
        select(Event, Skill.name, Version.number)
        .join(Skill, Skill.id == Event.skill_id)
        .outerjoin(Version, Version.id == Event.version_id)
        .where(Event.id > after)
        .order_by(Event.id)
        .limit(limit)
    )
    with store.read() as s:
        return [_event_record(e, name, number) for e, name, number in s.execute(q)]
