"""Audit reads: a skill's append-only events (who, what, when, why, before/after, evidence).

Events are written by the rooms that act (a version stored, an evaluation
finished, a pointer moved, a flag); this room only reads them.

On PostgreSQL every insert into ``events`` also sends ``NOTIFY sandgate_events,
'<id>'`` from a trigger (migration 0008), so it is delivered when the writing
transaction commits and never before: :class:`EventListener` is a dedicated
connection that ``LISTEN``s for those (the API's watch feed wakes on them
instead of waiting for its next poll). SQLite has no such thing: there the
feed polls.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sandgate.errors import StoreError
from sandgate.records import EventRecord, PointerMove
from sandgate.store._rows import _event_record, _skill
from sandgate.store.engine import Store
from sandgate.store.models import Event, Skill, Version

__all__ = ["history", "promotion_of", "events_after", "EVENTS_CHANNEL", "EventListener", "notify_supported"]

#: the NOTIFY channel of new events (the trigger of migration 0008 sends each new id on it)
EVENTS_CHANNEL = "sandgate_events"
#: how long opening the listening connection may take
LISTEN_CONNECT_TIMEOUT_S = 5
#: ``application_name`` of the listening connection (how to find it in ``pg_stat_activity``)
LISTENER_APPLICATION_NAME = "sandgate-event-listener"


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


def notify_supported(store: Store) -> bool:
    """Whether new events are announced by NOTIFY (PostgreSQL) rather than found by polling."""
    return store.dialect == "postgresql"


class EventListener:
    """One dedicated PostgreSQL connection ``LISTEN``-ing on :data:`EVENTS_CHANNEL`.

    ::

        with EventListener(store) as listener:     # connects and LISTENs (StoreError if it cannot)
            ids = listener.wait(1.0)               # event ids announced since, [] after the timeout

    Outside the store's pool (it is held for ever, in autocommit: ``LISTEN``
    takes effect at once). :meth:`wait` raises :class:`StoreError` when the
    connection is lost (database restart, backend terminated); the caller
    opens a new listener, and reads the events table once it listens again,
    since notifications sent meanwhile are gone.
    """

    def __init__(self, store: Store) -> None:
        if not notify_supported(store):
            raise StoreError(f"{store.dialect} has no LISTEN/NOTIFY: poll for events instead", code="unsupported")
        import psycopg

        engine = store.engine
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        cparams.setdefault("connect_timeout", LISTEN_CONNECT_TIMEOUT_S)
        cparams["application_name"] = LISTENER_APPLICATION_NAME
        try:
            self._conn: Any = psycopg.connect(*cargs, **cparams, autocommit=True)
            self._conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        except psycopg.Error as exc:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot listen for events: {type(exc).__name__}: {exc}") from exc

    @property
    def backend_pid(self) -> int:
        """The server process of this connection (``pg_terminate_backend`` ends it)."""
        return int(self._conn.info.backend_pid)

    def wait(self, timeout: float) -> list[int]:
        """The ids announced within ``timeout`` seconds (returns at the first batch; [] after the timeout)."""
        import psycopg

        ids: list[int] = []
        try:
            for n in self._conn.notifies(timeout=timeout, stop_after=1):
                ids.append(_event_id(n.payload))
            # whatever else has arrived already comes with it (no waiting)
            for n in self._conn.notifies(timeout=0):
                ids.append(_event_id(n.payload))
        except psycopg.Error as exc:
            raise StoreError(f"the event listener's connection broke: {type(exc).__name__}: {exc}",
                             code="listener_lost") from exc
        return [i for i in ids if i >= 0]

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # a broken connection is closed all the same
            pass

    def __enter__(self) -> EventListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event_id(payload: str) -> int:
    try:
        return int(payload)
    except ValueError:  # not ours (someone else NOTIFYing on the channel): ignored
        return -1
