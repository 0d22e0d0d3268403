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

Waking, efficiently: one :class:`EventHub` per process wakes the streams when
new events may be there; only then does each stream read its new events (a
primary-key range scan). Idle streams cost nothing but a keepalive comment.

* PostgreSQL: every event insert sends ``NOTIFY sandgate_events, '<id>'`` in
  the writing transaction (a trigger, migration 0008), delivered at its commit.
  The hub holds one dedicated connection per process that ``LISTEN``s (a
  thread, :class:`~sandgate.store.audit.EventListener`) and wakes the streams
  on each notification: an event reaches a stream within a few milliseconds of
  its commit. The poll below still runs as a safety net, every
  ``max(watch_poll_seconds, 5 s)``. When that connection breaks (database
  restart, backend terminated), the hub polls every ``watch_poll_seconds``
  and reconnects (0.2 s doubling to 5 s); once it listens again it wakes every
  stream, which re-reads from its cursor, so nothing committed meanwhile is
  lost (or sent twice: a stream only ever reads ids above its cursor).
  ``SANDGATE_API_WATCH_NOTIFY=false`` turns listening off (polling only).
* SQLite (or no listener): the hub polls ``max(events.id)`` (an index lookup)
  every ``watch_poll_seconds`` and wakes the streams when it grows.

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
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from sandgate.service import embedded as queries
from sandgate.store import audit

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
#: with a LISTEN connection up, the poll only catches what NOTIFY could not say: this often at most
NOTIFY_SAFETY_POLL_SECONDS = 5.0
#: how long the listener thread blocks for notifications before looking at its stop flag
LISTEN_SLICE_SECONDS = 0.25
#: the listener's reconnection backoff (seconds)
LISTEN_RECONNECT_MIN_SECONDS = 0.2
LISTEN_RECONNECT_MAX_SECONDS = 5.0


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
    """Wakes every stream of this process when new events may be there (see the module docstring).

    ``notify``: on PostgreSQL, also listen (a thread with its own connection, a
    :class:`~sandgate.store.audit.EventListener`) and wake the streams on every
    ``NOTIFY``; while that connection is up the poll is only a safety net, run
    every ``max(poll_seconds, NOTIFY_SAFETY_POLL_SECONDS)``.
    """

    def __init__(self, store: Callable[[], Any], *, poll_seconds: float, notify: bool = True) -> None:
        self._store = store
        self.poll = poll_seconds
        self.notify = notify
        self.latest = 0
        self.tick = 0
        self._changed: asyncio.Event | None = None
        self._poll_now: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.closing = False
        self.streams = 0
        #: a LISTEN connection is up now (False on SQLite, with notify off, or while reconnecting)
        self.listening = False
        #: how many times the listener connected (more than 1: it reconnected)
        self.listener_connects = 0
        #: notifications received
        self.notifications = 0
        #: the listener gave up for good (SQLite: nothing to listen to)
        self.listener_unsupported = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._poll_now = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="sandgate-event-hub")
        if self.notify:
            self._thread = threading.Thread(target=self._listen, name="sandgate-event-listener", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        await self.close_streams()
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._thread is not None:
            # a daemon thread: wait one listening slice for it, not a whole connection attempt
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, LISTEN_SLICE_SECONDS + 1)

    async def close_streams(self) -> None:
        """End every open stream (server shutdown): they return after their current write."""
        self.closing = True
        self._bump()

    def _bump(self, latest: int | None = None) -> None:
        """Wake the waiting streams (on the event loop's thread)."""
        if latest is not None and latest > self.latest:
            self.latest = latest
        self.tick += 1
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _from_thread(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                pass

    def _set_listening(self, up: bool) -> None:
        self.listening = up
        if self._poll_now is not None:
            self._poll_now.set()  # the poll interval changes now, not after the old one ran out

    async def _run(self) -> None:
        assert self._poll_now is not None
        while not self.closing:
            try:
                latest = await run_in_threadpool(lambda: queries.latest_event_id(self._store()))
            except Exception as exc:  # the database may be away: streams keep waiting
                log.debug("event hub poll failed: %s", exc)
            else:
                if latest != self.latest:
                    self.latest = latest  # the table's word (a notification's id is only a hint)
                    self._bump()
            interval = max(self.poll, NOTIFY_SAFETY_POLL_SECONDS) if self.listening else self.poll
            try:
                await asyncio.wait_for(self._poll_now.wait(), interval)
            except TimeoutError:
                pass
            self._poll_now.clear()

    def _listen(self) -> None:
        """The listener thread: LISTEN, wake the streams on each NOTIFY, reconnect with backoff."""
        failures = 0
        while not self._stop.is_set():
            try:
                store = self._store()
                if not audit.notify_supported(store):
                    self.listener_unsupported = True
                    return  # SQLite: the poll is all there is
                listener = audit.EventListener(store)
            except Exception as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "watch feed: cannot listen for events (%s); polling every %g s until it can", exc, self.poll)
                self._stop.wait(_backoff(failures))
                continue
            try:
                self.listener_connects += 1
                if self.listener_connects > 1:
                    log.info("watch feed: listening for events again (connection %d)", self.listener_connects)
                self._from_thread(self._set_listening, True)
                # events committed while nobody listened were never announced: every stream re-reads
                self._from_thread(self._bump, None)
                failures = 0
                while not self._stop.is_set():
                    ids = listener.wait(LISTEN_SLICE_SECONDS)
                    if ids:
                        self.notifications += len(ids)
                        self._from_thread(self._bump, max(ids))
            except Exception as exc:
                failures += 1
                log.warning("watch feed: lost the event listener (%s); polling every %g s while it reconnects",
                            exc, self.poll)
            finally:
                self._from_thread(self._set_listening, False)
                listener.close()
            self._stop.wait(_backoff(failures))

    async def wait(self, seen_tick: int, timeout: float) -> int:
        """Until the hub saw new events after ``seen_tick``, shutdown, or ``timeout``; the tick."""
        if self.tick != seen_tick or self.closing:
            return self.tick
        changed = self._changed
        if changed is None:  # not started (no lifespan): plain polling
            await asyncio.sleep(min(timeout, self.poll))
            self.tick += 1
            return self.tick
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass
        return self.tick


def _backoff(failures: int) -> float:
    """Seconds before the listener's next attempt: 0.2 doubling to 5, jittered."""
    delay = min(LISTEN_RECONNECT_MAX_SECONDS, LISTEN_RECONNECT_MIN_SECONDS * 2 ** max(0, failures - 1))
    return random.uniform(delay / 2, delay)


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
                # a hole only fills by a commit, which max(id) does not show: poll for it (on
                # PostgreSQL the commit's NOTIFY wakes the hub, so this returns at once)
                tick = await hub.wait(tick, timeout=min(hub.poll, 0.25))
            else:
                tick = await hub.wait(tick, timeout=max(0.05, keepalive - (time.monotonic() - last_write)))
            if is_disconnected is not None and await is_disconnected():
                return
            if time.monotonic() - last_write >= keepalive:
                yield ": keepalive\n\n"
                last_write = time.monotonic()
    finally:
        hub.streams -= 1
