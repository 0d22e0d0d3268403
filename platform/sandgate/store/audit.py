"""Audit reads: a skill's append-only events (who, what, when, why, before/after, evidence).

Events are written by the rooms that act (a version stored, an evaluation
finished, a pointer moved, a flag); this room only reads them.
"""

from __future__ import annotations

from sqlalchemy import select

from sandgate.records import EventRecord
from sandgate.store._rows import _event_record, _skill
from sandgate.store.engine import Store
from sandgate.store.models import Event, Version

__all__ = ["history"]


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
