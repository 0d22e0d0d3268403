"""sandgate.wire's PlainClient (the CLI's remote reads over http.client) against a loopback server.

The same requests as :class:`sandgate.client.SandgateClient` and the same
errors: each case runs both clients against one canned server and compares
what they sent and what they raised. (tests/integration/test_api_lifecycle.py
compares the two through the CLI against a real ``sandgate serve``.)
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from sandgate.client import SandgateClient
from sandgate.errors import ApiError, InfrastructureError, NotFound, SandgateError
from sandgate.records import SkillRecord
from sandgate.wire import PlainClient
from tests.loopback import serve

SKILL = {"name": "greet", "active_version": 1, "latest_version": 2, "generation": 3,
         "created_at": "2026-01-02T03:04:05+00:00", "unknown_field": "ignored"}


class _Api(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None, str | None]] = []
    answers: dict[str, tuple[int, bytes, dict[str, str]]] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        type(self).seen.append((self.path, self.headers.get("Authorization"), self.headers.get("User-Agent")))
        status, body, headers = self.answers.get(self.path.split("?", 1)[0], (404, json.dumps(
            {"error": {"code": "not_found", "message": "no skill named 'x'"}}).encode(), {}))
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    _Api.seen = []
    _Api.answers = {
        "/base/v1/skills": (200, json.dumps([SKILL]).encode(), {}),
        "/base/v1/skills/limited/history": (429, json.dumps(
            {"error": {"code": "rate_limited", "message": "slow down"}}).encode(), {"Retry-After": "7"}),
        "/base/v1/skills/html/versions": (502, b"<html>bad gateway</html>", {}),
        "/base/v1/skills/text/versions": (200, b"not json", {}),
    }
    with serve(_Api) as url:
        yield f"{url}/base/"


def both(url: str, call: Any) -> list[Any]:
    """``call(client)`` on each client: the result, or the error (type, message, status, code, retry_after)."""
    out = []
    for client in (SandgateClient(url, "sg_k"), PlainClient(url, "sg_k")):
        with client:
            try:
                out.append(call(client))
            except SandgateError as exc:
                out.append((type(exc), str(exc), getattr(exc, "status", None), getattr(exc, "code", None),
                            getattr(exc, "retry_after", None)))
    return out


def test_the_same_request_and_the_same_records(server: str) -> None:
    full, plain = both(server, lambda c: c.list_skills(prefix="gr e", limit=5))
    assert full == plain and plain == [SkillRecord(**{k: v for k, v in SKILL.items() if k != "unknown_field"}
                                                   | {"created_at": plain[0].created_at})]
    assert plain[0].created_at.isoformat() == SKILL["created_at"]  # rebuilt as a datetime
    (a_path, a_auth, _), (b_path, b_auth, b_agent) = _Api.seen
    assert a_path == b_path == "/base/v1/skills?prefix=gr+e&limit=5"  # the base URL's path kept, as httpx
    assert a_auth == b_auth == "Bearer sg_k" and b_agent == "sandgate-client"


@pytest.mark.parametrize(("call", "kind"), [
    (lambda c: c.get_skill("x"), NotFound),
    (lambda c: c.history("limited"), ApiError),
    (lambda c: c.list_versions("html"), SandgateError),
])
def test_the_same_errors(server: str, call: Any, kind: type) -> None:
    full, plain = both(server, call)
    assert issubclass(plain[0], kind)
    if kind is SandgateError:  # not JSON: the message names the URL, the rest is equal
        assert (full[0], full[2:]) == (plain[0], plain[2:]) and "HTTP 502 from " in plain[1]
    else:
        assert full == plain
    if kind is ApiError:
        assert plain[2:] == (429, "rate_limited", 7.0)


def test_an_answer_that_is_not_json_is_an_infrastructure_error(server: str) -> None:
    full, plain = both(server, lambda c: c.list_versions("text"))
    assert full == plain and plain[0] is InfrastructureError and "not JSON" in plain[1]


def test_an_unreachable_server_and_a_silent_one() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    full, plain = both(f"http://127.0.0.1:{port}", lambda c: c.list_skills())
    assert full[0] is plain[0] is InfrastructureError and full[3] == plain[3] == "unreachable"
    assert plain[1].startswith(f"cannot reach the sandgate server at http://127.0.0.1:{port}: ")

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with PlainClient(url, timeout=0.3) as client, pytest.raises(InfrastructureError) as caught:
            client.list_skills()
        assert caught.value.code == "timeout" and "did not answer in time" in str(caught.value)
    finally:
        silent.close()


def test_only_get_and_only_http_urls() -> None:
    with pytest.raises(TypeError, match="GET requests only"):
        PlainClient("http://127.0.0.1:1")._json("POST", "/v1/x", json={})
    with pytest.raises(InfrastructureError, match="not an http:// or https:// URL"):
        PlainClient("ftp://example.invalid/")
