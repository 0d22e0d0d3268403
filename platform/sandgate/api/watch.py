"""``GET /v1/watch``: the event log as server-sent events, resumable by event id.

::

    GET /v1/watch?after=41&skills=text_stats&actions=promoted,rolled_back
    Last-Event-ID: 41                       (instead of ?after=, e.g. on reconnect)

    retry: 2000

    id: 41
    event: ready
    data: {"after": 41}

    id: 42
    event: promoted
    data: {"id": 42, "skill": "text_stats", "version": 2, "actor": "key:ci", ...}

    : keepalive

Every event is an audit event from the store (``promoted``, ``rolled_back``,
``evaluated``, ``yanked``; ``submitted`` and ``flagged`` on request with ``actions=``); its SSE
``id`` is the event id. A client that reconnects with ``Last-Event-ID`` (or
``?after=``) gets everything after it, in order, exactly once. Without either,
the stream starts at the newest event.

Polling, efficiently: one :class:`EventHub` per process polls ``max(events.id)``
(an index lookup) every ``watch_poll_seconds`` and wakes the streams when it
grows; only then does each stream read its new events (a primary-key range
scan). Idle streams cost nothing but a keepalive comment.

Ordering: ids are allocated when a transaction inserts its event, so on
PostgreSQL a *later* id can commit before an earlier one, and a transaction
that rolls back leaves a hole for ever. A stream therefore delivers strictly in
id order and holds back events above a hole for up to
``watch_gap_grace_seconds`` (counted from the creation time of the first
event above the hole, so an old hole met on resume costs nothing); then it
gives the hole up as a rollback. That is what makes the last delivered id a
safe resume point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from sandgate.service import embedded as queries

__all__ = ["EventHub", "DEFAULT_ACTIONS", "ALL_ACTIONS", "event_stream", "format_sse"]

log = logging.getLogger("sandgate.api")

ALL_ACTIONS: tuple[str, ...] = ("submitted", "evaluated", "promoted", "rolled_back", "yanked", "flagged")
DEFAULT_ACTIONS: tuple[str, ...] = ("evaluated", "promoted", "rolled_back", "yanked")
#: canary decisions (sandgate.store.canary): in the default stream too, one event per decision
CANARY_ACTIONS = ("canary_started", "canary_advanced", "canary_held", "canary_rolled_back", "canary_aborted",
                  "canary_completed", "canary_superseded")
ALL_ACTIONS += CANARY_ACTIONS
DEFAULT_ACTIONS += CANARY_ACTIONS
RETRY_MS = 2000


def format_sse(*, data: Any, event: str | None = None, id: int | None = None) -> str:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    payload = json.dumps(data, default=str, ensure_ascii=False, separators=(",", ":"))
    lines.extend(f"data: {line}" for line in payload.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


class EventHub:
    """Watches ``max(events.id)`` for every stream of this process."""

    def __init__(self, store: Callable[[], Any], *, poll_seconds: float) -> None:
        self._store = store
        self.poll = poll_seconds
        self.latest = 0
        self.tick = 0
        self._cond: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None
        self.closing = False
        self.streams = 0

    async def start(self) -> None:
        self._cond = asyncio.Condition()
        self._task = asyncio.create_task(self._run(), name="sandgate-event-hub")

    async def stop(self) -> None:
        await self.close_streams()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def close_streams(self) -> None:
        """End every open stream (server shutdown): they return after their current write."""
        self.closing = True
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()

    async def _run(self) -> None:
        while not self.closing:
            try:
                latest = await run_in_threadpool(lambda: queries.latest_event_id(self._store()))
            except Exception as exc:  # the database may be away: streams keep waiting
                log.debug("event hub poll failed: %s", exc)
            else:
                if latest != self.latest:
                    self.latest = latest
                    self.tick += 1
                    assert self._cond is not None
                    async with self._cond:
                        self._cond.notify_all()
            await asyncio.sleep(self.poll)

    async def wait(self, seen_tick: int, timeout: float) -> int:
        """Until the hub saw new events after ``seen_tick``, shutdown, or ``timeout``; the tick."""
        if self.tick != seen_tick or self.closing:
            return self.tick
        if self._cond is None:  # not started (no lifespan): plain polling
            await asyncio.sleep(min(timeout, self.poll))
            self.tick += 1
            return self.tick
        try:
            async with self._cond:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self.tick != seen_tick or self.closing), timeout)
        except TimeoutError:
            pass
        return self.tick


async def event_stream(
    hub: EventHub,
    store: Callable[[], Any],
    *,
    after: int | None,
    skills: Collection[str] | None,
    actions: Collection[str],
    keepalive: float,
    gap_grace: float,
    batch: int,
    is_disconnected: Callable[[], Any] | None = None,
) -> AsyncIterator[str]:
    """The SSE text of one ``/v1/watch`` stream (see the module docstring)."""
    hub.streams += 1
    try:
        if after is None:
            after = await run_in_threadpool(lambda: queries.latest_event_id(store()))
        cursor = after  # every id <= cursor was delivered (or given up as a hole)
        yield f"retry: {RETRY_MS}\n\n"
        yield format_sse(data={"after": cursor}, event="ready", id=cursor)
        hole_since: dict[int, float] = {}
        tick = -1
        last_write = time.monotonic()
        while not hub.closing:
            rows = await run_in_threadpool(
                lambda c: queries.events_after(store(), after=c, limit=batch), cursor)
            held = False
            for ev in rows:
                if ev.id != cursor + 1:
                    # the hole is as old as the first event above it: an old hole (a
                    # rollback long ago, seen on resume) is given up at once
                    age = max(0.0, (datetime.now(UTC) - ev.created_at).total_seconds())
                    first = hole_since.setdefault(cursor + 1, time.monotonic() - age)
                    if time.monotonic() - first < gap_grace:
                        held = True
                        break
                    log.debug("event ids %d..%d given up as a rolled-back hole", cursor + 1, ev.id - 1)
                hole_since.pop(cursor + 1, None)
                cursor = ev.id
                if ev.action in actions and (skills is None or ev.skill in skills):
                    yield format_sse(data=ev.to_dict(), event=ev.action, id=ev.id)
                    last_write = time.monotonic()
            for start in [s for s in hole_since if s <= cursor]:
                del hole_since[start]
            if len(rows) >= batch and not held:
                continue  # more to read right away
            if held:
                # a hole only fills by a commit, which max(id) does not show: poll for it
                await asyncio.sleep(min(hub.poll, 0.25))
            else:
                tick = await hub.wait(tick, timeout=max(0.05, keepalive - (time.monotonic() - last_write)))
            if is_disconnected is not None and await is_disconnected():
                return
            if time.monotonic() - last_write >= keepalive:
                yield ": keepalive\n\n"
                last_write = time.monotonic()
    finally:
        hub.streams -= 1
