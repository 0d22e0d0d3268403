"""``GET /v1/watch`` woken by PostgreSQL LISTEN/NOTIFY, over real HTTP against a real ``sandgate serve``.

Every server here polls its database only every ``SLOW`` = 30 s and sends
keepalives every 30 s (a stream re-reads after each keepalive, too), so an
event that reaches a stream within ``WAIT`` = 10 s of its commit was announced
by NOTIFY: nothing else could have woken the stream. The events are written
by the store functions in the test process (a pointer move commits its event
in the same transaction as the move), on the same database as the server.

* PostgreSQL: delivered promptly, in id order, each once; the NOTIFY is sent
  only at commit (a listener hears nothing of an open or rolled-back
  transaction); the listener reconnects after its backend is terminated and
  after a database restart, and no event committed while it was away is lost
  or sent twice.
* SQLite: no listener; the feed polls (its events arrive by the poll).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandgate.client import _parse_sse
from sandgate.store import Store, audit, open_store, pointers
from sandgate.store.models import Event
from tests.integration.api_harness import ApiServer, make_key
from tests.integration.conftest_store import make_policy, passed_version

pytest_plugins = ["tests.integration.conftest_store"]

SLOW = "30"
WAIT = 10.0
SKILL = "greet"
_names = itertools.count(1)


class Feed(threading.Thread):
    """One ``/v1/watch?actions=all`` stream read in the background until ``want`` events came."""

    def __init__(self, server: ApiServer, token: str, want: int, after: int | None = None) -> None:
        super().__init__(daemon=True, name="feed")
        self.server, self.token, self.want, self.after = server, token, want, after
        self.ready = threading.Event()
        self.done = threading.Event()
        self.events: list[tuple[int, str, float]] = []  # (id, action, monotonic time received)
        self.error: BaseException | None = None

    def run(self) -> None:
        path = "/v1/watch?actions=all" + (f"&after={self.after}" if self.after is not None else "")
        try:
            with httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {self.token}"}) as c, \
                    c.stream("GET", path, timeout=httpx.Timeout(5.0, read=120.0)) as response:
                assert response.status_code == 200, response.read()
                for kind, event_id, _data in _parse_sse(response.iter_lines()):
                    if kind == "ready":
                        self.ready.set()
                        continue
                    assert event_id is not None
                    self.events.append((event_id, kind, time.monotonic()))
                    if len(self.events) >= self.want:
                        return
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()

    def start_and_wait_ready(self) -> Feed:
        self.start()
        assert self.ready.wait(WAIT), f"the stream did not open: {self.error!r}"
        time.sleep(0.3)  # the stream has read what there was and waits on the hub now
        return self

    def ids(self) -> list[int]:
        return [e[0] for e in self.events]


def metric(server: ApiServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5.0).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def event_ids(store: Store, after: int) -> list[int]:
    return [e.id for e in audit.events_after(store, after=after, limit=10_000)]


def moves(store: Store, count: int) -> list[float]:
    """``count`` pointer moves of SKILL (promote 2 / roll back to 1, alternating); their commit times."""
    out = []
    policy = make_policy()
    for k in range(count):
        if k % 2 == 0:
            pointers.promote(store, name=SKILL, number=2, actor="test", policy=policy)
        else:
            pointers.rollback(store, name=SKILL, actor="test", reason="test")
        out.append(time.monotonic())
    return out


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    server, template = request.getfixturevalue("pg_server"), request.getfixturevalue("pg_template")
    name = f"notify_{next(_names)}"
    yield server.create_database(name, template=template)
    server.drop_database(name)


def seeded(url: str) -> Store:
    store = open_store(url)
    for i in (1, 2):
        passed_version(store, SKILL, i)
    pointers.promote(store, name=SKILL, number=1, actor="test", policy=make_policy())
    return store


def serve(url: str, home: Path, **env: str) -> ApiServer:
    return ApiServer(url, home=home, env={"SANDGATE_API_WATCH_POLL_SECONDS": SLOW,
                                          "SANDGATE_API_WATCH_KEEPALIVE_SECONDS": SLOW, **env}).start()


# --------------------------------------------------------------------------- the store's side


@pytest.mark.postgres
def test_notify_is_sent_at_commit_only(pg_url: str) -> None:
    """A listener hears of an event when its transaction commits: never before, never for a rollback."""
    with seeded(pg_url) as store, audit.EventListener(store) as listener:
        with store.engine.connect() as conn:
            skill_id = conn.exec_driver_sql("SELECT id FROM skills WHERE name = %(n)s", {"n": SKILL}).scalar()
        assert listener.wait(0.2) == []

        class Abort(Exception):
            pass

        with pytest.raises(Abort), store.write() as s:
            s.add(Event(skill_id=skill_id, actor="t", action="flagged", created_at=_now()))
            s.flush()
            assert listener.wait(0.5) == [], "notified before the commit"
            raise Abort
        assert listener.wait(0.5) == [], "notified of a rolled-back event"

        with store.write() as s:
            ev = Event(skill_id=skill_id, actor="t", action="flagged", created_at=_now())
            s.add(ev)
            s.flush()
            new_id = ev.id
            assert listener.wait(0.5) == [], "notified before the commit"
        assert listener.wait(WAIT) == [new_id]
        assert event_ids(store, new_id - 1) == [new_id]  # and it is readable once heard of


def test_sqlite_has_no_listener(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        assert not audit.notify_supported(store)
        with pytest.raises(Exception, match="no LISTEN/NOTIFY"):
            audit.EventListener(store)


# --------------------------------------------------------------------------- over HTTP


@pytest.mark.postgres
def test_events_arrive_by_notify_in_order_each_once(pg_url: str, tmp_path: Path) -> None:
    token = make_key(pg_url, "reader", "reader")
    store = seeded(pg_url)
    server = serve(pg_url, tmp_path)
    try:
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 1, "the listener")
        before = event_ids(store, 0)[-1]
        heard = metric(server, "sandgate_watch_notifications_total")
        feed = Feed(server, token, want=6).start_and_wait_ready()
        committed = moves(store, 6)
        assert feed.done.wait(WAIT), f"only {len(feed.events)} of 6 events within {WAIT} s (poll: {SLOW} s)"
        assert feed.error is None
        assert feed.ids() == event_ids(store, before)  # every event, in id order, once
        assert [a for _, a, _ in feed.events] == ["promoted", "rolled_back"] * 3
        # each event reached the stream well before any poll or keepalive could have woken it
        late = [round(t - c, 3) for (_, _, t), c in zip(feed.events, committed, strict=True) if t - c > WAIT]
        assert not late
        assert metric(server, "sandgate_watch_notifications_total") >= heard + 6
    finally:
        server.stop()
        store.close()


@pytest.mark.postgres
def test_no_event_lost_or_duplicated_when_the_listener_is_terminated(pg_url: str, tmp_path: Path) -> None:
    token = make_key(pg_url, "reader", "reader")
    store = seeded(pg_url)
    server = serve(pg_url, tmp_path)
    try:
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 1, "the listener")
        before = event_ids(store, 0)[-1]
        feed = Feed(server, token, want=12).start_and_wait_ready()
        moves(store, 4)
        wait_for(lambda: len(feed.events) == 4, "the first 4 events", timeout=WAIT)

        killed = _terminate_listener(store)
        assert killed == 1, "no listening backend found"
        moves(store, 4)  # committed while nobody listens: their NOTIFYs are lost
        wait_for(lambda: metric(server, "sandgate_watch_listener_connects_total") >= 2, "the reconnection")
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 1, "the listener back")
        # the reconnected listener wakes the streams: what was committed meanwhile comes without a new event
        wait_for(lambda: len(feed.events) == 8, "the 4 events committed while the listener was away",
                 timeout=WAIT)
        moves(store, 4)
        assert feed.done.wait(WAIT), f"{len(feed.events)} of 12 events (poll: {SLOW} s)"
        assert feed.error is None
        assert feed.ids() == event_ids(store, before)
        assert len(set(feed.ids())) == 12
    finally:
        server.stop()
        store.close()


@pytest.mark.postgres
def test_the_listener_comes_back_after_a_database_restart(pg_server: Any, pg_url: str, tmp_path: Path) -> None:
    token = make_key(pg_url, "reader", "reader")
    store = seeded(pg_url)
    server = serve(pg_url, tmp_path)
    try:
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 1, "the listener")
        before = event_ids(store, 0)[-1]
        moves(store, 2)
        with store.engine.connect() as conn:  # the test server runs synchronous_commit=off: make them durable
            conn.exec_driver_sql("CHECKPOINT")
        pg_server.stop()
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 0, "the listener to notice")
        pg_server.start()
        store.engine.dispose()  # the test's own pool holds dead connections
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 1, "the listener back", timeout=60)
        assert metric(server, "sandgate_watch_listener_connects_total") >= 2
        # a stream resuming from before the restart gets what was committed before it, then live events
        assert len(event_ids(store, before)) == 2
        feed = Feed(server, token, want=6, after=before).start_and_wait_ready()
        moves(store, 4)
        assert feed.done.wait(WAIT), f"{len(feed.events)} of 6 events (poll: {SLOW} s)"
        assert feed.error is None
        assert feed.ids() == event_ids(store, before)
    finally:
        server.stop()
        store.close()


@pytest.mark.postgres
def test_a_forged_notify_wakes_streams_but_delivers_nothing(pg_url: str, tmp_path: Path) -> None:
    """Anyone who can connect may NOTIFY on the channel: the payload only wakes streams, which read the table."""
    token = make_key(pg_url, "reader", "reader")
    store = seeded(pg_url)
    server = serve(pg_url, tmp_path)
    try:
        wait_for(lambda: metric(server, "sandgate_watch_listening") == 1, "the listener")
        before = event_ids(store, 0)[-1]
        heard = metric(server, "sandgate_watch_notifications_total")
        feed = Feed(server, token, want=2).start_and_wait_ready()
        with store.engine.connect() as conn:
            for payload in (str(before + 1), "999999999", "not-an-id", "-5", "1; DROP TABLE events"):
                conn.exec_driver_sql("SELECT pg_notify(%(c)s, %(p)s)", {"c": audit.EVENTS_CHANNEL, "p": payload})
            conn.commit()
        wait_for(lambda: metric(server, "sandgate_watch_notifications_total") >= heard + 2, "the forged NOTIFYs")
        time.sleep(0.5)
        assert feed.events == []  # woken, read the table, found nothing
        moves(store, 2)  # and real events still arrive by NOTIFY, with ids the forged ones do not skip
        assert feed.done.wait(WAIT), f"{len(feed.events)} of 2 events (poll: {SLOW} s)"
        assert feed.ids() == event_ids(store, before) == [before + 1, before + 2]
    finally:
        server.stop()
        store.close()


def test_sqlite_feed_polls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sandgate.db'}"
    store = seeded(url)
    token = make_key(url, "reader", "reader")
    server = ApiServer(url, home=tmp_path, env={"SANDGATE_API_WATCH_POLL_SECONDS": "0.1",
                                                "SANDGATE_API_WATCH_KEEPALIVE_SECONDS": SLOW}).start()
    try:
        before = event_ids(store, 0)[-1]
        feed = Feed(server, token, want=4).start_and_wait_ready()
        moves(store, 4)
        assert feed.done.wait(WAIT)
        assert feed.ids() == event_ids(store, before)
        assert metric(server, "sandgate_watch_listening") == 0
        assert metric(server, "sandgate_watch_listener_connects_total") == 0
        assert metric(server, "sandgate_watch_notifications_total") == 0
    finally:
        server.stop()
        store.close()


def _terminate_listener(store: Store) -> int:
    with store.engine.connect() as conn:
        n = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %(a)s AND datname = current_database()",
            {"a": audit.LISTENER_APPLICATION_NAME}).scalar()
        conn.commit()
    return int(n or 0)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
