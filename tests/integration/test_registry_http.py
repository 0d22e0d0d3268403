"""sandgate.registry over HTTP against a real ``sandgate serve`` process (real sockets, SQLite and PostgreSQL).

The consumer connects with ``sandgate.connect(server_url, api_key=reader_key)``.
Versions are submitted through the API and run by ``api_harness.drain_queue``
(the worker's job, with a fake evaluator: these tests are about the registry,
not the sandbox); pointer moves are made with a promoter key over HTTP.

Push is proven by a slow safety-net poll: the consumers here poll every
``POLL`` = 5 s, so a swap observed well under that came through the event
stream. The server's event feed polls its database every 0.1 s
(``SANDGATE_API_WATCH_POLL_SECONDS``, set by ``api_harness.base_env``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandgate
from sandgate.client import SandgateClient
from sandgate.errors import ConfigError, StoreError
from sandgate.registry import HttpBackend, Registry, RegistryEvent
from tests.integration import api_harness
from tests.integration.api_harness import (
    ApiServer,
    drain_queue,
    fake_evaluate,
    make_keys,
    skill_files,
)

pytest_plugins = ["tests.integration.conftest_store"]

SKILL = "greet"
THREADS = 4
POLL = 5.0
#: a swap observed faster than this, with a POLL-second poll interval, was pushed
PUSH_BOUND = 2.0


def tag(i: int) -> str:
    return f"v{i}:"


class World:
    def __init__(self, db_url: str, home: Path) -> None:
        self.db_url = db_url
        self.home = home
        self.tokens = make_keys(db_url, {"reader": "reader"})  # the server's default rate limit
        self.tokens.update(make_keys(db_url, {"ci": "submitter", "ops": "promoter"}, rate=1000, burst=1000))
        self.server = ApiServer(db_url, home=home).start()

    def api(self, role: str = "ops") -> SandgateClient:
        return SandgateClient(self.server.url, self.tokens[role])

    def seed(self, count: int) -> None:
        """Versions 1..count of SKILL, passed; the default policy auto-promotes each in turn."""
        with self.api("ci") as ci:
            for i in range(1, count + 1):
                files = {p: t.encode() for p, t in skill_files(SKILL, tag(i)).items()}
                assert ci.submit_files(files)["version"] == i
        assert len(drain_queue(self.db_url, evaluate=fake_evaluate("passed"))) == count
        with self.api("reader") as reader:
            assert reader.pointers([SKILL]) == {SKILL: (count, count)}

    def connect(self, tmp_path: Path, events: list[RegistryEvent], **kw: Any) -> Registry:
        kw.setdefault("poll_interval", POLL)
        return sandgate.connect(self.server.url, api_key=self.tokens["reader"], cache_dir=tmp_path / "cache",
                                on_event=events.append, **kw)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp(f"registry-http-{request.param}")
    if request.param == "sqlite":
        url, drop = f"sqlite:///{home / 'sandgate.db'}", None
    else:
        pg, template = request.getfixturevalue("pg_server"), request.getfixturevalue("pg_template")
        url, drop = pg.create_database("registry_http", template=template), pg
    w = World(url, home)
    try:
        w.seed(3)
        yield w
    finally:
        w.server.stop()
        if drop is not None:
            drop.drop_database("registry_http")


class Callers:
    """THREADS threads calling the skill in a loop; each result is counted under the phase its call started in."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.phase = 0
        self.stop = threading.Event()
        self.results: Counter[tuple[int, Any]] = Counter()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, name=f"caller-{i}") for i in range(THREADS)]

    def _run(self) -> None:
        out: Counter[tuple[int, Any]] = Counter()
        call, stop = self.registry.call, self.stop
        while not stop.is_set():
            phase = self.phase
            try:
                out[phase, call(SKILL, 0)] += 1
            except BaseException as exc:  # the test reports it
                self.errors.append(exc)
            time.sleep(0)
        with self.lock:
            self.results.update(out)

    def __enter__(self) -> Callers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def served_within(registry: Registry, number: int, limit: float = 15.0) -> float:
    """Seconds from now until a call is served by ``number`` (probing every millisecond)."""
    t0 = time.monotonic()
    want = tag(number) + "0"
    while registry.call(SKILL, 0) != want:
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{SKILL}@{number} not served after {limit} s (serving {registry.version(SKILL)})")
        time.sleep(0.001)
    return time.monotonic() - t0


def test_consumer_follows_promote_and_rollback_by_push(world: World, tmp_path: Path) -> None:
    events: list[RegistryEvent] = []
    registry = world.connect(tmp_path, events)
    ops = world.api("ops")
    try:
        assert registry.call(SKILL, 0) == tag(3) + "0"
        backend = registry.backend
        assert isinstance(backend, HttpBackend) and backend.wait_push(10)
        # each move: (how, target); the callers' phase p starts once move p is served
        moves = [("promote", 1), ("promote", 2), ("rollback", 1), ("promote", 3), ("rollback", 1), ("promote", 2)]
        expected = [3] + [target for _, target in moves]
        latencies = []
        with Callers(registry) as callers:
            time.sleep(0.2)
            for phase, (how, target) in enumerate(moves, start=1):
                if how == "promote":
                    move = ops.promote(SKILL, target, reason="registry over http")
                else:
                    move = ops.rollback(SKILL, reason="registry over http")
                assert move.to_version == target
                latencies.append(served_within(registry, target))  # from the move's answer
                callers.phase = phase
                time.sleep(0.1)
        assert callers.errors == []
        # a call that started in phase p ran the version of move p, or already the next one
        for (phase, result), _n in callers.results.items():
            allowed = {tag(expected[phase]) + "0"}
            if phase + 1 < len(expected):
                allowed.add(tag(expected[phase + 1]) + "0")
            assert result in allowed, (phase, result)
        assert sum(callers.results.values()) > 1000
        # every move arrived well inside the 5 s poll interval: pushed
        assert max(latencies) < PUSH_BOUND, latencies
        assert backend.push_stats()["moves"] >= len(moves)
        kinds = [(e.kind, e.old, e.new) for e in events if e.kind in ("swapped", "rolled_back")]
        assert kinds == [("rolled_back", 3, 1), ("swapped", 1, 2), ("rolled_back", 2, 1),
                         ("swapped", 1, 3), ("rolled_back", 3, 1), ("swapped", 1, 2)]
        assert not [e for e in events if e.kind in ("backend_error", "load_failed")]
    finally:
        ops.close()
        t0 = time.monotonic()
        registry.close()
        assert time.monotonic() - t0 < 2.0  # a 5 s poll interval does not delay close()


def test_connect_from_the_environment(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDGATE_URL", world.server.url)
    monkeypatch.setenv("SANDGATE_API_KEY", world.tokens["reader"])
    with sandgate.connect(cache_dir=tmp_path, skills=[SKILL]) as registry:
        assert isinstance(registry.backend, HttpBackend)
        assert registry.call(SKILL, 7).startswith("v") and registry.call(SKILL, 7).endswith(":7")


def test_a_bad_key_is_a_clear_error(world: World, tmp_path: Path) -> None:
    bad = "sg_000000000000_" + "A" * 43
    with sandgate.connect(world.server.url, api_key=bad, cache_dir=tmp_path) as registry:
        with pytest.raises(ConfigError, match="refused the API key") as info:
            registry.call(SKILL)
        assert info.value.code == "unauthorized" and bad not in str(info.value)
    with pytest.raises(ConfigError, match="refused the API key"):
        sandgate.connect(world.server.url, api_key=bad, cache_dir=tmp_path, skills=[SKILL])


def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    port = api_harness.free_port()  # nothing listens there
    with sandgate.connect(f"http://127.0.0.1:{port}", api_key="sg_x", cache_dir=tmp_path) as registry:
        with pytest.raises(StoreError, match="cannot reach") as info:
            registry.call(SKILL)
        assert not isinstance(info.value, ConfigError) and info.value.code == "unreachable"


def test_server_restart_the_consumer_reconnects_and_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandgate import lifecycle
    from sandgate.store import open_store

    world = World(f"sqlite:///{tmp_path / 'restart.db'}", tmp_path / "home")
    events: list[RegistryEvent] = []
    registry = None
    try:
        world.seed(3)
        registry = world.connect(tmp_path, events)
        assert registry.call(SKILL, 0) == tag(3) + "0"
        backend = registry.backend
        assert isinstance(backend, HttpBackend) and backend.wait_push(10)
        with Callers(registry) as callers:
            world.server.stop()  # SIGTERM: the server ends its event streams and exits
            assert not backend.push_connected or _wait(lambda: not backend.push_connected)
            # while it is away, the pointer moves (the CLI on the database, another server...)
            store = open_store(world.db_url)
            try:
                lifecycle.rollback(store, name=SKILL, actor="test", reason="while the server restarts")
            finally:
                store.close()
            time.sleep(1.0)  # refused reconnections, backing off; v3 keeps serving
            assert registry.version(SKILL) == 3
            port = world.server.port
            monkeypatch.setattr(api_harness, "free_port", lambda: port)
            world.server.start()  # the same address
            restarted = time.monotonic()
            assert backend.wait_push(15)
            # the stream resumed after the last event it had seen: the move made while the
            # server was down is delivered on reconnection
            served_within(registry, 2)
            catch_up = time.monotonic() - restarted
            callers.phase = 1
            with world.api("ops") as ops:
                ops.promote(SKILL, 1, reason="after the restart")
                latency = served_within(registry, 1)
        assert callers.errors == []
        assert {r for (_, r) in callers.results} <= {tag(3) + "0", tag(2) + "0", tag(1) + "0"}
        assert catch_up < 10, catch_up
        assert latency < PUSH_BOUND, latency  # pushed, on the new connection
        stats = backend.push_stats()
        assert stats["connects"] >= 2 and stats["last_error"] is None
        assert [(e.kind, e.new) for e in events if e.kind in ("swapped", "rolled_back")] == [
            ("rolled_back", 2), ("rolled_back", 1)]
    finally:
        if registry is not None:
            registry.close()
        world.server.stop()


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_move_costs_the_poll_and_one_fetch(world: World, tmp_path: Path) -> None:
    """After a move an HTTP registry asks for the pointers (which name content and canary) and, on a cache
    miss, the files: no describe, no /v1/canaries. A rollback to a version still loaded costs only the poll."""
    events: list[RegistryEvent] = []
    begin = world.server.log_size()
    registry = world.connect(tmp_path, events, report=False)
    ops = world.api("ops")

    def reader_requests(since: int) -> list[dict[str, Any]]:
        return [ln for ln in world.server.log_lines(since)
                if ln.get("message") == "request" and ln.get("key") == "reader" and ln.get("route") != "/v1/watch"]

    try:
        with world.api("reader") as reader:
            current = reader.pointers([SKILL])[SKILL][0]
        assert registry.call(SKILL, 0) == tag(current) + "0"
        assert isinstance(registry.backend, HttpBackend) and registry.backend.wait_push(10)
        target = 1 if current != 1 else 2
        # the server logs a request once its answer is sent, which can be after the client has it: the first
        # load's fetch must be in the log before a move's requests are counted from a mark
        first = f"/v1/skills/{SKILL}/versions/{current}/files"
        assert _wait(lambda: any(ln.get("path") == first for ln in reader_requests(begin))), first

        def requests_during(move: Any, number: int) -> Counter[str]:
            start = world.server.log_size()
            move()
            served_within(registry, number)
            time.sleep(0.3)  # the request log line is written when the answer is sent
            return Counter(ln["route"] for ln in reader_requests(start))

        fresh = requests_during(lambda: ops.promote(SKILL, target, reason="count"), target)
        assert fresh["/v1/skills/{name}/versions/{number}/files"] == 1, fresh
        assert fresh["/v1/pointers"] >= 1, fresh
        assert set(fresh) == {"/v1/pointers", "/v1/skills/{name}/versions/{number}/files"}, fresh
        back = requests_during(lambda: ops.rollback(SKILL, reason="count"), current)
        assert set(back) == {"/v1/pointers"}, back
        assert not [e for e in events if e.kind in ("backend_error", "load_failed")]
    finally:
        ops.close()
        registry.close()
