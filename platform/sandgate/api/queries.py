"""Read-only store queries the API needs beyond ``sandgate.store.repository``.

Plain functions over a :class:`~sandgate.store.Store`, one read transaction
each, returning records — candidates for ``repository`` once someone else
needs them (the event feed, the queue gauges).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from sandgate.store.engine import Store
from sandgate.store.models import Evaluation, Event, Skill, Version
from sandgate.records import EventRecord, PointerMove

__all__ = ["latest_event_id", "events_after", "evaluation_counts", "auto_promotion_of"]


def latest_event_id(store: Store) -> int:
    """The highest event id (0: no events). One index lookup."""
    with store.read() as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


def _utc(value: Any) -> Any:
    from datetime import UTC

    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


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
        return [
            EventRecord(
                id=e.id, skill=name, version=number, actor=e.actor, action=e.action,
                reason=e.reason, before=e.before, after=e.after, evidence=e.evidence,
                created_at=_utc(e.created_at),
            )
            for e, name, number in s.execute(q)
        ]


def evaluation_counts(store: Store) -> dict[tuple[str, str | None], int]:
    """``{(status, verdict): count}`` over all evaluations (one grouped count)."""
    q = select(Evaluation.status, Evaluation.verdict, func.count()).group_by(
        Evaluation.status, Evaluation.verdict
    )
    with store.read() as s:
        return {(status, verdict): int(n) for status, verdict, n in s.execute(q)}


def auto_promotion_of(store: Store, *, skill: str, evaluation_id: str, scan: int = 200) -> PointerMove | None:
    """The promotion whose evidence names ``evaluation_id`` (the newest ``scan`` moves of the skill)."""
    q = (
        select(Event, Version.number)
        .join(Skill, Skill.id == Event.skill_id)
        .join(Version, Version.id == Event.version_id)
        .where(Skill.name == skill, Event.action == "promoted")
        .order_by(Event.id.desc())
        .limit(scan)
    )
    with store.read() as s:
        for e, number in s.execute(q):
            if (e.evidence or {}).get("evaluation_id") == evaluation_id:
                return PointerMove(
                    skill=skill, action="promoted",
                    from_version=(e.before or {}).get("version"), to_version=number,
                    generation=int((e.after or {}).get("generation") or 0), event_id=e.id,
                    forced=bool((e.evidence or {}).get("forced")),
                )
    return None
