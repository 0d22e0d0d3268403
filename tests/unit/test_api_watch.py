"""The event feed's ordering: strictly by id, holding back behind a hole, giving a hole up after grace.

On PostgreSQL a later event id can commit before an earlier one, and a rolled
back transaction leaves a hole for ever. Here the holes are made by hand
(events inserted with chosen ids into a real SQLite store).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandgate.api.watch import ALL_ACTIONS, event_stream
from sandgate.store import open_store
from sandgate.store.models import Event, Skill


class StubHub:
    """Wakes the stream at once, every time (the stream's own logic decides what to send)."""

    poll = 0.02
    closing = False
    streams = 0
    tick = 0

    async def wait(self, seen: int, timeout: float) -> int:
        await asyncio.sleep(0.01)
        self.tick += 1
        return self.tick


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(f"sqlite:///{tmp_path / 'w.db'}")
    with s.write() as session:
        session.add(Skill(id=1, name="greet", created_at=datetime.now(UTC), generation=0))
    yield s
    s.close()


def add_event(store, event_id: int, action: str = "promoted", skill_id: int = 1) -> None:
    with store.write() as s:
        s.add(Event(id=event_id, skill_id=skill_id, version_id=None, actor="t", action=action,
                    reason=None, before=None, after={"n": event_id}, evidence=None,
                    created_at=datetime.now(UTC)))


def parse(chunk: str) -> tuple[str | None, int | None]:
    kind = event_id = None
    for line in chunk.splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("id: "):
            event_id = int(line[4:])
    return kind, event_id


async def next_event(gen, timeout: float = 3.0) -> tuple[str | None, int | None, float]:
    start = time.monotonic()
    while True:
        chunk = await asyncio.wait_for(gen.__anext__(), timeout)
        if chunk.startswith(("retry:", ":")):
            continue
        kind, event_id = parse(chunk)
        return kind, event_id, time.monotonic() - start


def test_in_order_with_a_late_commit_and_a_hole_given_up(store):
    async def scenario() -> None:
        add_event(store, 1)
        add_event(store, 3)  # 2 is "in flight"
        gen = event_stream(StubHub(), lambda: store, after=0, skills=None, actions=set(ALL_ACTIONS),
                           keepalive=30, gap_grace=0.6, batch=100)
        assert (await next_event(gen))[:2] == ("ready", 0)
        assert (await next_event(gen))[:2] == ("promoted", 1)
        # 3 is held back behind the hole at 2 ... until 2 commits
        task = asyncio.ensure_future(next_event(gen))
        await asyncio.sleep(0.2)
        assert not task.done()
        add_event(store, 2)
        assert (await task)[:2] == ("promoted", 2)
        assert (await next_event(gen))[:2] == ("promoted", 3)
        # a hole that never fills (a rolled-back transaction) is given up after the grace
        add_event(store, 5)
        kind, event_id, waited = await next_event(gen)
        assert (kind, event_id) == ("promoted", 5) and waited >= 0.5
        await gen.aclose()

    asyncio.run(scenario())


def test_filters_and_resume_point(store):
    async def scenario() -> None:
        with store.write() as s:
            s.add(Skill(id=2, name="other", created_at=datetime.now(UTC), generation=0))
        for i, (action, skill) in enumerate([("submitted", 1), ("promoted", 2), ("evaluated", 1),
                                             ("rolled_back", 1)], start=1):
            add_event(store, i, action, skill)
        gen = event_stream(StubHub(), lambda: store, after=1, skills={"greet"},
                           actions={"evaluated", "rolled_back"}, keepalive=30, gap_grace=0.5, batch=1)
        assert (await next_event(gen))[:2] == ("ready", 1)
        assert (await next_event(gen))[:2] == ("evaluated", 3)
        assert (await next_event(gen))[:2] == ("rolled_back", 4)
        await gen.aclose()
        # without a resume point: from the newest event on
        gen = event_stream(StubHub(), lambda: store, after=None, skills=None,
                           actions=set(ALL_ACTIONS), keepalive=30, gap_grace=0.5, batch=10)
        assert (await next_event(gen))[:2] == ("ready", 4)
        add_event(store, 5, "yanked")
        kind, event_id, _ = await next_event(gen)
        assert (kind, event_id) == ("yanked", 5)
        await gen.aclose()

    asyncio.run(scenario())


def test_keepalive_and_payload(store):
    async def scenario() -> None:
        add_event(store, 1)
        gen = event_stream(StubHub(), lambda: store, after=0, skills=None, actions=set(ALL_ACTIONS),
                           keepalive=0.2, gap_grace=0.5, batch=10)
        chunks = [await asyncio.wait_for(gen.__anext__(), 2) for _ in range(4)]
        assert chunks[0] == "retry: 2000\n\n"
        data = json.loads(chunks[2].split("data: ", 1)[1])
        assert data["id"] == 1 and data["skill"] == "greet" and data["after"] == {"n": 1}
        assert chunks[3] == ": keepalive\n\n"
        await gen.aclose()

    asyncio.run(scenario())


def test_an_old_hole_is_given_up_at_once(store):
    """Resuming over a hole left long ago (a rolled-back move) does not wait for the grace."""
    from datetime import timedelta

    async def scenario() -> None:
        with store.write() as s:
            s.add(Event(id=7, skill_id=1, version_id=None, actor="t", action="promoted", reason=None,
                        before=None, after=None, evidence=None,
                        created_at=datetime.now(UTC) - timedelta(minutes=5)))
        gen = event_stream(StubHub(), lambda: store, after=3, skills=None, actions=set(ALL_ACTIONS),
                           keepalive=30, gap_grace=5.0, batch=10)
        assert (await next_event(gen))[:2] == ("ready", 3)
        kind, event_id, waited = await next_event(gen)
        assert (kind, event_id) == ("promoted", 7) and waited < 1.0
        await gen.aclose()

    asyncio.run(scenario())
