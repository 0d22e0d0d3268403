"""A scripted fake of an OpenAI-compatible chat-completions server, on real loopback sockets.

::

    with FakeOpenAIServer() as server:            # 127.0.0.1, ephemeral port, threads
        server.enqueue(Reply.error(429, retry_after="0.2"), Reply.chat(skill_reply(files)))
        settings = GenerationSettings(base_url=server.url, model="fake-model")
        ...
        server.requests[0].headers["authorization"], server.requests[-1].messages

Each ``POST /v1/chat/completions`` pops the next scripted :class:`Reply` and is
recorded (method, path, query, headers, body) *before* the reply is sent; a
request with nothing left in the queue gets a 500 naming the problem, so a
test asserting on the request count notices. Only ever binds 127.0.0.1.

The file sets and the format renderer here are written independently of
``sandgate.generation`` on purpose: a fake that reused the code under test
would hide a bug shared by both.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = [
    "FakeOpenAIServer",
    "Reply",
    "RecordedRequest",
    "skill_reply",
    "fake_llm",
    "closed_port",
    "CLAMP_MANIFEST",
    "CLAMP_MODULE",
    "CLAMP_TESTS_GOOD",
    "CLAMP_TESTS_WRONG",
    "clamp_files",
    "FAILING_NODEID",
    "MALFORMED_REPLY",
]

_USAGE_DEFAULT = object()


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    content: str | None = None
    #: raw body (overrides ``content``)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: seconds to wait before answering (to exceed the client's read timeout)
    delay: float = 0.0
    usage: Any = _USAGE_DEFAULT
    finish_reason: str = "stop"
    model: str = "fake-model-2024"
    #: close the connection without any response
    disconnect: bool = False
    #: send the body in this many pieces, ``trickle_delay`` seconds apart (a slow drip)
    trickle_pieces: int = 1
    trickle_delay: float = 0.0

    @classmethod
    def chat(cls, content: str, *, usage: Any = _USAGE_DEFAULT, finish_reason: str = "stop",
             delay: float = 0.0, model: str = "fake-model-2024") -> Reply:
        return cls(content=content, usage=usage, finish_reason=finish_reason, delay=delay,
                   model=model)

    @classmethod
    def error(cls, status: int, *, retry_after: str | None = None,
              message: str = "scripted error") -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = json.dumps({"error": {"message": message, "type": "fake"}}).encode()
        return cls(status=status, body=body, headers=headers)

    @classmethod
    def raw(cls, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def drop(cls) -> Reply:
        return cls(disconnect=True)

    @classmethod
    def trickle(cls, content: str, *, pieces: int, delay: float) -> Reply:
        """A 200 whose body drips in: every gap below the read timeout, the whole above it."""
        return cls(content=content, trickle_pieces=pieces, trickle_delay=delay)

    def payload(self, prompt_chars: int) -> bytes:
        if self.body is not None:
            return self.body
        assert self.content is not None
        data: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": self.finish_reason,
                         "message": {"role": "assistant", "content": self.content}}],
        }
        if self.usage is _USAGE_DEFAULT:
            prompt, completion = prompt_chars // 4 + 1, len(self.content) // 4 + 1
            data["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
        elif self.usage is not None:
            data["usage"] = self.usage
        return json.dumps(data).encode()


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    #: lower-cased names
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.json["messages"]

    @property
    def text(self) -> str:
        """Every message's content, joined: for ``in`` assertions."""
        return "\n".join(m["content"] for m in self.messages)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (read timeout) makes the late write fail: expected


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL a client is configured with."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def enqueue(self, *replies: Reply) -> FakeOpenAIServer:
        with self._lock:
            self._queue.extend(replies)
        return self

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                record = RecordedRequest(
                    method="POST", path=parts.path, query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                    received_at=time.monotonic())
                with fake._lock:
                    fake.requests.append(record)
                    reply = fake._queue.popleft() if fake._queue else None
                if parts.path != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": f"no route {parts.path}"}})
                               .encode(), {})
                    return
                if reply is None:
                    self._send(500, b'{"error": {"message": "fake server: no scripted reply left"}}',
                               {})
                    return
                if reply.delay and fake._stopping.wait(reply.delay):
                    return
                if reply.disconnect:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self._send(reply.status, reply.payload(len(body)), reply.headers,
                           pieces=reply.trickle_pieces, delay=reply.trickle_delay)

            def _send(self, status: int, payload: bytes, headers: Mapping[str, str], *,
                      pieces: int = 1, delay: float = 0.0) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                step = max(1, -(-len(payload) // max(1, pieces)))
                for start in range(0, len(payload), step):
                    if start and delay and fake._stopping.wait(delay):
                        return
                    self.wfile.write(payload[start:start + step])
                    self.wfile.flush()

        return Handler


@pytest.fixture
def fake_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    """A started fake server; proxies are unset so the client talks to 127.0.0.1 directly."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FakeOpenAIServer() as server:
        yield server


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- canned replies


def skill_reply(files: Mapping[str, str], *, prose: str = "") -> str:
    """Files in the ``### FILE:`` format, as a well-behaved model writes them."""
    out = [prose] if prose else []
    for path, text in files.items():
        lang = "toml" if path.endswith(".toml") else "python"
        out.append(f"### FILE: {path}\n```{lang}\n{text.rstrip()}\n```\n")
    return "\n".join(out)


CLAMP_MANIFEST = '''\
name = "clamp"
description = "Clamp a number into a closed range"
entrypoint = "clamp:clamp"
requirements = []
'''

CLAMP_MODULE = '''\
"""Clamp a number into [low, high]."""


def clamp(value, low, high):
    if low > high:
        raise ValueError("low must not exceed high")
    if value < low:
        return low
    if value > high:
        return high
    return value
'''

CLAMP_TESTS_GOOD = '''\
import pytest

from clamp import clamp


def test_inside():
    assert clamp(2, 0, 3) == 2


def test_below():
    assert clamp(-1, 0, 3) == 0


def test_above():
    assert clamp(5, 0, 3) == 3


def test_bad_range():
    with pytest.raises(ValueError):
        clamp(1, 3, 0)
'''

#: the model got the upper bound wrong in one test
CLAMP_TESTS_WRONG = CLAMP_TESTS_GOOD.replace("assert clamp(5, 0, 3) == 3",
                                             "assert clamp(5, 0, 3) == 5")
FAILING_NODEID = "tests/test_clamp.py::test_above"


def clamp_files(tests: str = CLAMP_TESTS_GOOD, **overrides: str) -> dict[str, str]:
    files = {"skill.toml": CLAMP_MANIFEST, "clamp.py": CLAMP_MODULE, "tests/test_clamp.py": tests}
    files.update(overrides)
    return files


MALFORMED_REPLY = """Sure! Here is the skill:

```python
def clamp(value, low, high):
    return max(low, min(value, high))
```
"""
