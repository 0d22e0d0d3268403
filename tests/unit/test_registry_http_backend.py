"""sandgate.registry over HTTP (``HttpBackend``) against stand-ins for the API server.

Two stand-ins:

* ``httpx.MockTransport`` for request shapes and error mapping (no sockets);
* :class:`FakeSandgate`, a small threaded HTTP/1.1 server on 127.0.0.1 that
  speaks the routes a registry uses (``/v1/pointers``, the two version routes
  and ``/v1/watch`` as chunked server-sent events), for the push stream:
  resumption, reconnection, interruption, close. Real sockets, because the
  interesting failures (a read blocked on an idle stream, a refused
  connection) only exist there.

The real server is in ``tests/integration/test_registry_http.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sandgate.errors import ConfigError, NotFound, StoreError
from sandgate.registry import HTTP_POLL_INTERVAL, HttpBackend, Registry, RegistryEvent, connect
from sandgate.registry.loader import content_hash, loaded_prefixes

TOKEN = "sg_unittest_" + "S3cr3t" * 7


def skill(tag: str) -> dict[str, bytes]:
    return {
        "skill.py": f"TAG = {tag!r}\n\ndef run(*args, **kwargs):\n    return TAG\n".encode(),
        "skill.toml": b'name = "x"\nentrypoint = "skill:run"\n',
    }


def version_json(name: str, number: int, files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "version": {
            "id": number, "skill": name, "number": number, "content_hash": content_hash(files),
            "manifest": {"name": name, "entrypoint": "skill:run"}, "file_count": len(files),
            "total_bytes": sum(map(len, files.values())), "created_at": datetime.now(UTC).isoformat(),
            "created_by": "test", "status": "passed", "yanked_at": None, "yank_reason": None,
            "provenance": None, "active": False,
        },
        "evaluation": None,
        "files": [{"path": p, "size": len(b)} for p, b in files.items()],
    }


def files_json(name: str, number: int, files: Mapping[str, bytes], claimed_hash: str | None = None) -> dict[str, Any]:
    return {
        "skill": name, "version": number, "content_hash": claimed_hash or content_hash(files),
        "entrypoint": "skill:run",
        "files": [{"path": p, "size": len(b), "content_base64": base64.b64encode(b).decode()}
                  for p, b in files.items()],
    }


# --------------------------------------------------------------------------- a fake API server


class FakeSandgate:
    """The registry's routes of ``sandgate serve``, in memory, on a real socket.

    ``move()`` appends an event and wakes every open ``/v1/watch`` stream;
    ``drop_streams()`` ends them (like a graceful server shutdown);
    ``watch_status`` makes ``/v1/watch`` answer that status instead;
    ``tamper[(name, n)]`` replaces the bytes served for a version (not its hash).
    """

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.versions: dict[tuple[str, int], dict[str, bytes]] = {}
        self.active: dict[str, tuple[int, int]] = {}
        self.events: list[dict[str, Any]] = []
        self.tamper: dict[tuple[str, int], dict[str, bytes]] = {}
        self.watch_status: int | None = None
        self.watch_requests: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.cond = threading.Condition()
        self.epoch = 0  # bumped by drop_streams()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()

    # -- state

    def add(self, name: str, files: Mapping[str, bytes]) -> int:
        number = 1 + max((n for (s, n) in self.versions if s == name), default=0)
        self.versions[name, number] = dict(files)
        return number

    def move(self, name: str, number: int, action: str = "promoted") -> int:
        with self.cond:
            generation = self.active.get(name, (0, 0))[1] + 1
            self.active[name] = (number, generation)
            event_id = len(self.events) + 1
            self.events.append({"id": event_id, "skill": name, "version": number, "action": action})
            self.cond.notify_all()
        return event_id

    def drop_streams(self) -> None:
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeSandgate:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                fake.connections.add(self.connection)

            def finish(self) -> None:
                fake.connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused) and end the open streams."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.drop_streams()
        for conn in list(self.connections):  # keep-alive connections die with the server
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- HTTP

    def _json(self, h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append(("GET", parts.path))
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._json(h, 401, {"error": {"code": "unauthorized", "message": "invalid or revoked API key"}})
        segs = parts.path.strip("/").split("/")
        if parts.path == "/v1/pointers":
            names = query.get("names", "").split(",")
            with self.cond:
                last = len(self.events)
                rows = {n: {"version": v, "generation": g} for n, (v, g) in self.active.items() if n in names}
            return self._json(h, 200, {"pointers": rows, "last_event_id": last})
        if parts.path == "/v1/watch":
            return self._watch(h, query)
        if len(segs) in (5, 6) and segs[:2] == ["v1", "skills"] and segs[3] == "versions":
            key = (segs[2], int(segs[4]))
            if key not in self.versions:
                return self._json(h, 404, {"error": {"code": "not_found", "message": f"no version {key}"}})
            files = self.versions[key]
            if len(segs) == 5:
                return self._json(h, 200, version_json(*key, files))
            served = self.tamper.get(key, files)
            return self._json(h, 200, files_json(*key, served, claimed_hash=content_hash(files)))
        return self._json(h, 404, {"error": {"code": "not_found", "message": "no route"}})

    def _watch(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        last_id = h.headers.get("Last-Event-ID")
        self.watch_requests.append({**query, "last_event_id": last_id})
        if self.watch_status is not None:
            return self._json(h, self.watch_status, {"error": {"code": "x", "message": "refused"}})
        after = int(query["after"]) if "after" in query else int(last_id) if last_id else len(self.events)
        skills = set(query["skills"].split(",")) if "skills" in query else None
        actions = set(query.get("actions", "promoted,rolled_back").split(","))
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(text: str) -> None:
            data = text.encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        try:
            with self.cond:
                epoch = self.epoch
            send(f"retry: 2000\n\nid: {after}\nevent: ready\ndata: {json.dumps({'after': after})}\n\n")
            cursor = after
            while True:
                with self.cond:
                    self.cond.wait_for(lambda cursor=cursor: len(self.events) > cursor or self.epoch != epoch,
                                       timeout=0.5)
                    if self.epoch != epoch or self.server is None:
                        break
                    new = self.events[cursor:]
                if not new:
                    send(": keepalive\n\n")
                for ev in new:
                    cursor = ev["id"]
                    if ev["action"] in actions and (skills is None or ev["skill"] in skills):
                        send(f"id: {ev['id']}\nevent: {ev['action']}\ndata: {json.dumps(ev)}\n\n")
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            pass
        h.close_connection = True


@pytest.fixture
def fake() -> Iterator[FakeSandgate]:
    server = FakeSandgate().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before = set(loaded_prefixes())
    yield
    assert not set(loaded_prefixes()) - before
    deadline = time.monotonic() + 5
    while any(t.name == "sandgate-registry-push" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "sandgate-registry-push"], "push thread left behind"


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[Any]]:
    """Registries and backends to close after the test."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def mock_backend(handler: Any, **kw: Any) -> HttpBackend:
    kw.setdefault("push", False)
    return HttpBackend("http://sandgate.test", api_key=TOKEN, transport=httpx.MockTransport(handler), **kw)


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


# --------------------------------------------------------------------------- requests and errors (no sockets)


def test_pointers_is_one_request_with_the_key_and_names() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"pointers": {"a": {"version": 3, "generation": 7},
                                                      "zzz": {"version": 1, "generation": 1}},
                                         "last_event_id": 42})

    b = mock_backend(handler)
    assert b.pointers(["b", "a", "a"]) == {"a": (3, 7)}  # names it did not ask about are ignored
    assert len(seen) == 1
    r = seen[0]
    assert (r.method, r.url.path, r.url.params["names"]) == ("GET", "/v1/pointers", "a,b")
    assert r.headers["authorization"] == f"Bearer {TOKEN}"
    assert b.pointers([]) == {} and len(seen) == 1  # nothing to ask: no request
    b.close()
    with pytest.raises(StoreError, match="closed"):
        b.pointers(["a"])


def test_describe_and_fetch_use_the_version_routes() -> None:
    files = skill("v2")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/skills/greet/versions/2":
            return httpx.Response(200, json=version_json("greet", 2, files))
        if request.url.path == "/v1/skills/greet/versions/2/files":
            return httpx.Response(200, json=files_json("greet", 2, files))
        return error(404, "not_found", "no such version: greet@9")

    b = mock_backend(handler)
    info = b.describe("greet", 2)
    assert info.content_hash == content_hash(files) and info.entrypoint == "skill:run"
    got = b.fetch("greet", 2)
    assert got.files == files and got.content_hash == content_hash(files) and got.entrypoint == "skill:run"
    with pytest.raises(NotFound, match="greet@9"):
        b.describe("greet", 9)
    b.close()


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [(401, "unauthorized", "refused the API key"), (403, "forbidden", "reader role")],
)
def test_refused_keys_are_config_errors(status: int, code: str, words: str) -> None:
    b = mock_backend(lambda r: error(status, code, "invalid or revoked API key" if status == 401 else "no"))
    for call in (lambda: b.pointers(["a"]), lambda: b.describe("a", 1), lambda: b.fetch("a", 1)):
        with pytest.raises(ConfigError, match=words) as info:
            call()
        assert info.value.code == code and TOKEN not in str(info.value)
        assert "http://sandgate.test" in str(info.value)
    b.close()


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "unreachable"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (error(500, "internal", "boom"), "internal"),
        (error(503, "database_unavailable", "the database is away"), "database_unavailable"),
        (error(429, "rate_limited", "slow down"), "rate_limited"),
        (httpx.Response(200, text="<html>not json</html>"), None),
        (httpx.Response(200, json={"unexpected": True}), "bad_answer"),
    ],
)
def test_server_trouble_is_a_retryable_store_error(answer: Any, code: str | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    b = mock_backend(handler)
    with pytest.raises(StoreError) as info:
        b.pointers(["a"])
    assert not isinstance(info.value, ConfigError)
    if code is not None:
        assert info.value.code == code
    b.close()


def test_construction_needs_a_key_and_an_http_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDGATE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="API key is needed") as info:
        HttpBackend("http://controller:8080")
    assert info.value.code == "unauthorized"
    with pytest.raises(ConfigError, match="not an http"):
        HttpBackend("ftp://controller", api_key=TOKEN)
    monkeypatch.setenv("SANDGATE_API_KEY", TOKEN)
    b = HttpBackend("https://user:pw@controller.example:8443/base?x=1")  # no I/O until asked
    assert repr(b) == "HttpBackend('https://controller.example:8443/base')"
    assert TOKEN not in repr(b) and "pw" not in repr(b)
    b.close()


def test_connect_dispatches_http_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SANDGATE_API_KEY", raising=False)
    r = connect("http://127.0.0.1:9", api_key=TOKEN, cache_dir=tmp_path, watch=False)
    assert isinstance(r.backend, HttpBackend) and r.poll_interval == HTTP_POLL_INTERVAL
    r.close()
    monkeypatch.setenv("SANDGATE_URL", "HTTPS://controller.example")
    monkeypatch.setenv("SANDGATE_API_KEY", TOKEN)
    r = connect(cache_dir=tmp_path, watch=False, poll_interval=0.5)
    assert repr(r.backend) == "HttpBackend('https://controller.example')" and r.poll_interval == 0.5
    r.close()
    with pytest.raises(ConfigError, match="api_key is for http"):
        connect("sqlite://", api_key=TOKEN, cache_dir=tmp_path)


# --------------------------------------------------------------------------- a registry on the fake server


def test_registry_follows_moves_by_push_and_verifies_bytes(fake: FakeSandgate, tmp_path: Path, made: list[Any]) -> None:
    v1, v2, v3 = (fake.add("greet", skill(t)) for t in ("v1", "v2", "v3"))
    fake.move("greet", v1)
    events: list[RegistryEvent] = []
    # a 30 s poll: anything faster than that was pushed
    r = connect(fake.url, api_key=TOKEN, poll_interval=30, cache_dir=tmp_path, on_event=events.append)
    made.append(r)
    assert r.call("greet") == "v1"
    backend = r.backend
    assert isinstance(backend, HttpBackend) and backend.wait_push(5)
    assert fake.watch_requests[0]["skills"] == "greet"
    from sandgate.registry.backends import _MOVES

    assert fake.watch_requests[0]["actions"] == ",".join(_MOVES)  # pointer moves and canary changes
    assert fake.watch_requests[0]["last_event_id"] == "1"  # the pointers answer's last_event_id

    t0 = time.monotonic()
    fake.move("greet", v2)
    assert r.wait_for("greet", v2, timeout=5) and time.monotonic() - t0 < 2
    assert r.call("greet") == "v2"
    fake.move("greet", v1, action="rolled_back")
    assert r.wait_for("greet", v1, timeout=5)  # a rollback to a still-loaded version: pure swap

    # bytes that do not match the hash the server names are refused; the old version keeps serving
    fake.tamper["greet", v3] = skill("evil")
    fake.move("greet", v3)
    assert wait_until(lambda: any(e.kind == "load_failed" for e in events))
    failed = next(e for e in events if e.kind == "load_failed")
    assert failed.new == v3 and "hash" in str(failed.error)
    assert r.call("greet") == "v1"
    assert [e.kind for e in events if e.kind != "load_failed"] == ["loaded", "swapped", "rolled_back"]
    assert backend.push_stats()["moves"] == 3


def test_the_stream_resumes_after_the_last_event_id(fake: FakeSandgate, tmp_path: Path, made: list[Any]) -> None:
    fake.move("other", fake.add("other", skill("o1")))  # event 1, not followed
    v1, v2, v3 = (fake.add("greet", skill(t)) for t in ("v1", "v2", "v3"))
    fake.move("greet", v1)  # event 2
    backend = HttpBackend(fake.url, api_key=TOKEN, reconnect_min=0.05, reconnect_max=0.2)
    # built by hand (not connect): close the backend first, it wakes the registry's watch()
    r = Registry(backend, cache_dir=tmp_path, poll_interval=30, owns_backend=False)
    made.extend([r, backend])
    assert r.call("greet") == "v1" and backend.wait_push(5)
    assert fake.watch_requests[-1]["last_event_id"] == "2"
    fake.move("other", 1)  # event 3: filtered out by the server (skills=greet)
    fake.move("greet", v2)  # event 4
    assert r.wait_for("greet", v2, timeout=5)

    # the server ends the stream (shutdown) and refuses connections for a while; a move meanwhile
    fake.stop()
    assert wait_until(lambda: not backend.push_connected)
    fake.move("greet", v3)  # event 5, "committed while the server was away"
    time.sleep(0.3)  # a few refused reconnections
    fake.start()  # same port
    assert backend.wait_push(5)
    # resumed after the last event it received, so event 5 is replayed and wakes the registry
    assert fake.watch_requests[-1]["last_event_id"] == "4"
    assert r.wait_for("greet", v3, timeout=5)
    assert backend.push_stats()["connects"] >= 2 and backend.push_stats()["cursor"] == 5


def test_a_new_skill_reopens_the_stream_at_once(fake: FakeSandgate, tmp_path: Path, made: list[Any]) -> None:
    fake.move("alpha", fake.add("alpha", skill("a1")))
    b2 = fake.add("beta", skill("b1"))
    fake.move("beta", b2)
    r = connect(fake.url, api_key=TOKEN, poll_interval=30, cache_dir=tmp_path)
    made.append(r)
    assert r.call("alpha") == "a1" and r.backend.wait_push(5)
    assert r.call("beta") == "b1"
    # the idle stream (skills=alpha) is interrupted and reopened with both names, immediately
    assert wait_until(lambda: fake.watch_requests[-1].get("skills") == "alpha,beta", timeout=1.0)
    assert len(fake.watch_requests) == 2
    assert r.backend.wait_push(5)
    fake.move("beta", fake.add("beta", skill("b2")))
    assert r.wait_for("beta", 2, timeout=5)


def test_reconnection_backs_off_with_jitter(fake: FakeSandgate, tmp_path: Path, made: list[Any]) -> None:
    b = HttpBackend(fake.url, api_key=TOKEN)
    made.append(b)
    push = b._push
    assert push is not None
    for failures, cap in ((1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (6, 5.0), (40, 5.0)):
        delays = [push._backoff(failures) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays), (failures, min(delays), max(delays))
        assert len(set(delays)) > 100  # jittered, not lockstep

    # a stream that keeps failing (503) is retried less and less often, while polls still work
    fake.move("greet", fake.add("greet", skill("v1")))
    fake.watch_status = 503
    r = connect(backend=HttpBackend(fake.url, api_key=TOKEN, reconnect_min=0.05, reconnect_max=0.4),
                cache_dir=tmp_path, poll_interval=30)
    made.append(r)
    assert r.call("greet") == "v1"
    time.sleep(1.2)
    attempts = len(fake.watch_requests)
    assert 3 <= attempts <= 9, attempts  # 0.05, 0.1, 0.2, 0.4, 0.4 ... (each in [d/2, d])
    assert not r.backend.push_connected and "refused" in r.backend.push_stats()["last_error"]
    t0 = time.monotonic()
    assert r.backend.watch(0.2) is False  # no stream: watch() is a plain wait (the registry polls)
    assert 0.15 < time.monotonic() - t0 < 1.0
    fake.watch_status = None
    assert r.backend.wait_push(2)


def test_a_refused_key_is_a_clear_error_and_is_not_hammered(fake: FakeSandgate, tmp_path: Path,
                                                           made: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.move("greet", fake.add("greet", skill("v1")))
    r = connect(fake.url, api_key="sg_wrong_" + "x" * 40, cache_dir=tmp_path, poll_interval=30)
    made.append(r)
    with pytest.raises(ConfigError, match="refused the API key") as info:
        r.call("greet")
    assert info.value.code == "unauthorized"
    with pytest.raises(ConfigError, match="refused the API key"):
        connect(fake.url, api_key="sg_wrong_" + "x" * 40, cache_dir=tmp_path, skills=["greet"])

    # the stream with a refused key: one attempt, then the longest backoff (not a tight loop)
    fake.token = "sg_rotated_" + "y" * 40
    good = HttpBackend(fake.url, api_key=TOKEN, reconnect_min=0.05, reconnect_max=2.0)
    made.append(good)
    with pytest.raises(ConfigError):
        good.pointers(["greet"])  # refused (401) before any stream starts
    fake.token = TOKEN
    assert good.pointers(["greet"]) == {"greet": (1, 1)} and good.wait_push(5)
    fake.token = "sg_rotated_" + "y" * 40  # the key is revoked while streaming
    def watch_attempts() -> int:
        return sum(path == "/v1/watch" for _, path in fake.requests)

    before = watch_attempts()
    fake.drop_streams()
    time.sleep(0.8)
    assert watch_attempts() - before == 1
    assert "refused the API key" in good.push_stats()["last_error"]
    assert TOKEN not in caplog.text and "sg_wrong_" not in caplog.text


def test_server_down_keeps_the_old_version_serving(fake: FakeSandgate, tmp_path: Path, made: list[Any]) -> None:
    v1 = fake.add("greet", skill("v1"))
    fake.move("greet", v1)
    events: list[RegistryEvent] = []
    r = connect(fake.url, api_key=TOKEN, cache_dir=tmp_path, poll_interval=0.05, on_event=events.append)
    made.append(r)
    assert r.call("greet") == "v1"
    fake.stop()
    assert wait_until(lambda: any(e.kind == "backend_error" for e in events))
    err = next(e for e in events if e.kind == "backend_error").error
    assert isinstance(err, StoreError) and not isinstance(err, ConfigError)
    assert err.code == "unreachable" and TOKEN not in str(err)
    for _ in range(100):
        assert r.call("greet") == "v1"
    fake.move("greet", fake.add("greet", skill("v2")))
    fake.start()
    assert r.wait_for("greet", 2, timeout=10)


def test_close_is_prompt_with_an_idle_stream_and_a_slow_poll(fake: FakeSandgate, tmp_path: Path) -> None:
    fake.move("greet", fake.add("greet", skill("v1")))
    r = connect(fake.url, api_key=TOKEN, cache_dir=tmp_path, poll_interval=60)
    assert r.call("greet") == "v1" and r.backend.wait_push(5)
    time.sleep(0.1)  # the watcher is inside watch(60), the push thread inside a blocking read
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("sandgate-registry")]


def test_an_abandoned_backend_stops_its_thread(fake: FakeSandgate) -> None:
    import gc

    b = HttpBackend(fake.url, api_key=TOKEN)
    fake.move("greet", fake.add("greet", skill("v1")))
    b.pointers(["greet"])
    assert b.wait_push(5)
    del b
    gc.collect()
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == "sandgate-registry-push"])


def test_the_key_is_never_logged(fake: FakeSandgate, tmp_path: Path, made: list[Any],
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.move("greet", fake.add("greet", skill("v1")))
    r = connect(fake.url, api_key=TOKEN, cache_dir=tmp_path, poll_interval=0.05,
                on_event=lambda e: logging.getLogger("test").info("event %s %r", e, e.error))
    made.append(r)
    assert r.call("greet") == "v1" and r.backend.wait_push(5)
    fake.stop()  # errors, warnings, reconnections: everything gets logged
    time.sleep(0.5)
    fake.start()
    assert r.backend.wait_push(5)
    text = caplog.text + repr(r) + repr(r.backend) + json.dumps(r.backend.push_stats())
    assert "push stream" in caplog.text and TOKEN not in text


def test_socket_helper_is_really_idle() -> None:
    """Guard for the fixtures: a port from a stopped FakeSandgate refuses connections."""
    f = FakeSandgate().start()
    port = f.port
    f.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_pointers_answer_with_content_spares_the_describe_request(tmp_path: Path) -> None:
    seen: list[str] = []
    files = skill("v1")
    h = content_hash(files)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/pointers":
            assert request.url.params["content"] == "true"
            return httpx.Response(200, json={"pointers": {"greet": {
                "version": 1, "generation": 1, "content_hash": h, "entrypoint": "skill:run"}},
                "last_event_id": 1})
        if request.url.path == "/v1/canaries":  # the pointer moved: is there a candidate? (no)
            return httpx.Response(200, json={"canaries": {}})
        if request.url.path == "/v1/skills/greet/versions/1/files":
            return httpx.Response(200, json=files_json("greet", 1, files, claimed_hash=h))
        return error(404, "not_found", "no route")

    b = mock_backend(handler)
    r = Registry(b, cache_dir=tmp_path, watch=False)
    assert r.call("greet") == "v1"
    assert seen == ["/v1/pointers", "/v1/canaries", "/v1/skills/greet/versions/1/files"]
    r.close()


@pytest.mark.parametrize("route", [None, {"candidate": 2, "weight": 100, "fallback": False, "sample_io": 0}])
def test_a_pointers_answer_with_the_canary_spares_the_canaries_request(tmp_path: Path, route: Any) -> None:
    """A move costs the poll and (on a cache miss) the files: the pointers answer names content and canary."""
    seen: list[str] = []
    versions = {1: skill("v1"), 2: skill("v2")}
    hashes = {n: content_hash(f) for n, f in versions.items()}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/pointers":
            return httpx.Response(200, json={"pointers": {"greet": {
                "version": 1, "generation": 1, "content_hash": hashes[1], "entrypoint": "skill:run",
                "canary": route}}, "last_event_id": 1})
        for n, f in versions.items():
            if request.url.path == f"/v1/skills/greet/versions/{n}/files":
                return httpx.Response(200, json=files_json("greet", n, f, claimed_hash=hashes[n]))
            if request.url.path == f"/v1/skills/greet/versions/{n}":
                return httpx.Response(200, json=version_json("greet", n, f))
        return error(404, "not_found", "no route")

    b = mock_backend(handler)
    r = Registry(b, cache_dir=tmp_path, watch=False, report=False)
    # weight 100: every call goes to the candidate, so the route from the pointers answer was applied
    assert r.call("greet") == ("v2" if route else "v1")
    assert "/v1/canaries" not in seen
    assert seen[:2] == ["/v1/pointers", "/v1/skills/greet/versions/1/files"]
    # the candidate (not named by the pointers answer's content) is described, then fetched
    assert seen[2:] == (["/v1/skills/greet/versions/2", "/v1/skills/greet/versions/2/files"] if route else [])
    r.close()
