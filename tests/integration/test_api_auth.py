"""Auth, roles, rate and size limits, readiness, metrics, request ids — over real HTTP.

Each server is a real ``sandgate serve`` process on a real PostgreSQL database.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.integration.api_harness import (
    ApiServer,
    drain_queue,
    fake_evaluate,
    make_keys,
    skill_files,
)

pytest_plugins = ["tests.integration.conftest_store"]
pytestmark = [pytest.mark.postgres]

ROLES = ("reader", "submitter", "promoter", "admin")


@pytest.fixture(scope="module")
def main(pg_server, pg_template, tmp_path_factory):
    """A server with generous limits, keys of every role, one skill with a passed version."""
    url = pg_server.create_database("api_auth", template=pg_template)
    tokens = make_keys(url, {r: r for r in ROLES}, rate=1000, burst=1000)
    tokens |= make_keys(url, {"revoked": "admin", "slow": "reader"})
    from sandgate.store import keys, open_store

    store = open_store(url)
    keys.revoke_key(store, name="revoked", actor="test")
    store.close()
    server = ApiServer(url, home=tmp_path_factory.mktemp("api-auth"),
                       env={"SANDGATE_API_AUTH_FAILURES_PER_MINUTE": "100000",
                            "SANDGATE_API_READY_CACHE_SECONDS": "0"}).start()
    with server.client(tokens["admin"]) as c:
        r = c.post("/v1/skills/greet/versions", json={"files": skill_files("greet", "a")})
        assert r.status_code == 202, r.text
        evaluation_id = r.json()["evaluation_id"]
    drain_queue(url, evaluate=fake_evaluate("passed"))
    try:
        yield type("Main", (), {"url": url, "server": server, "tokens": tokens,
                                "evaluation_id": evaluation_id})
    finally:
        server.stop()
        pg_server.drop_database("api_auth")


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, ops in schema["paths"].items()
            for method, op in ops.items() if path.startswith("/v1/")]


def _request(client: httpx.Client, method: str, path: str, world) -> int:
    """One valid-looking request to the operation; its status."""
    concrete = (path.replace("{name}", "greet").replace("{number}", "1")
                .replace("{evaluation_id}", world.evaluation_id).replace("{job_id}", "0" * 32))
    bodies = {
        "/v1/skills/{name}/versions": {"files": skill_files("greet", "role-test")},
        "/v1/skills/{name}/promote": {"version": 1},
        "/v1/skills/{name}/rollback": {},
        "/v1/skills/{name}/versions/{number}/yank": {"reason": "role test"},
        "/v1/skills/{name}/generate": {"description": "greets"},
    }
    params = {"a": 1, "b": 1} if path.endswith("/diff") else None
    if path == "/v1/watch":
        with client.stream(method, concrete, timeout=10) as r:
            return r.status_code
    return client.request(method, concrete, json=bodies.get(path) if method == "POST" else None,
                          params=params).status_code


def test_every_route_enforces_its_role(main):
    s = main.server
    schema = httpx.get(f"{s.url}/openapi.json").json()
    ops = _operations(schema)
    assert len(ops) >= 17
    for method, path, op in ops:
        role = op.get("x-required-role")
        assert role in ROLES, f"{method} {path} declares no role"
        assert op.get("security") == [{"bearerAuth": []}]
        cases = {
            "none": None,
            "malformed": "not-a-token",
            "unknown": "sg_0123456789ab_" + "A" * 43,
            "revoked": main.tokens["revoked"],
        }
        for label, token in cases.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with httpx.Client(base_url=s.url, headers=headers, timeout=30) as c:
                status = _request(c, method, path, main)
            assert status == 401, (method, path, label, status)
        needed = ROLES.index(role)
        for i, have in enumerate(ROLES):
            with s.client(main.tokens[have]) as c:
                status = _request(c, method, path, main)
            if i < needed:
                assert status == 403, (method, path, have, status)
            else:
                assert status not in (401, 403), (method, path, have, status)
    # forcing a promotion is admin's alone
    body = {"version": 1, "force": True, "reason": "role test"}
    with s.client(main.tokens["promoter"]) as c:
        r = c.post("/v1/skills/greet/promote", json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    with s.client(main.tokens["admin"]) as c:
        assert c.post("/v1/skills/greet/promote", json=body).status_code not in (401, 403)
    # unauthenticated operational endpoints; /readyz is not ready while the submits above are
    # queued and no worker runs (this server has none), so they are run first
    assert httpx.get(f"{s.url}/readyz").status_code == 503
    drain_queue(main.url, evaluate=fake_evaluate("passed"))
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{s.url}{path}").status_code == 200, path


def test_401_body_and_header(main):
    r = httpx.get(f"{main.server.url}/v1/skills")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    err = r.json()["error"]
    assert err["code"] == "unauthorized" and "Authorization: Bearer" in err["message"]
    assert err["request_id"] == r.headers["x-request-id"]


def test_rate_limit_429_with_retry_after(main):
    from sandgate.store import keys, open_store

    store = open_store(main.url)
    _, token = keys.create_key(store, name="tight", role="reader", actor="t", rate_per_second=1.0, burst=3)
    store.close()
    with main.server.client(token) as c:
        statuses = [c.get("/v1/skills").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        r = c.get("/v1/skills")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1 and "tight" in r.json()["error"]["message"]
        time.sleep(float(r.headers["retry-after"]) + 0.05)
        assert c.get("/v1/skills").status_code == 200
    # other keys are not affected
    with main.server.client(main.tokens["reader"]) as c:
        assert c.get("/v1/skills").status_code == 200
    metrics = httpx.get(f"{main.server.url}/metrics").text
    assert 'sandgate_http_rate_limited_total{kind="key"}' in metrics


def test_request_ids_logs_and_metrics(main):
    s = main.server
    with s.client(main.tokens["reader"]) as c:
        r = c.get("/v1/skills/greet", headers={"X-Request-ID": "trace-42.a:b"})
        assert r.headers["x-request-id"] == "trace-42.a:b"
        r = c.get("/v1/skills/greet", headers={"X-Request-ID": "bad id with spaces"})
        assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32
        r = c.get(f"/v1/evaluations/{main.evaluation_id}")
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while True:
        lines = [ln for ln in s.log_lines() if ln.get("request_id") == rid]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines and lines[0]["evaluation_id"] == main.evaluation_id and lines[0]["key"] == "reader"
    assert lines[0]["route"] == "/v1/evaluations/{evaluation_id}" and lines[0]["status"] == 200
    assert any(ln.get("request_id") == "trace-42.a:b" for ln in s.log_lines())

    with s.client(main.tokens["submitter"]) as c:
        for i in range(2):
            assert c.post("/v1/skills/queued/versions",
                          json={"files": skill_files("queued", f"q{i}")}).status_code == 202
    from sandgate.service.embedded import evaluation_counts
    from sandgate.store import open_store

    store = open_store(main.url)
    counts = evaluation_counts(store)
    store.close()
    queued = sum(n for (status, _), n in counts.items() if status == "queued")
    passed = counts.get(("done", "passed"), 0)
    assert queued >= 2 and passed >= 1
    deadline = time.monotonic() + 5  # the store gauges are reused for 2 s
    while True:
        text = httpx.get(f"{s.url}/metrics").text
        if f"sandgate_evaluations_queue_depth {queued}\n" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert text.endswith("\n") and "# TYPE sandgate_http_requests_total counter" in text
    assert 'sandgate_http_requests_total{method="GET",route="/v1/skills/{name}",status="200"}' in text
    assert 'sandgate_http_request_duration_seconds_bucket{method="GET",route="/v1/skills/{name}",le="+Inf"}' in text
    assert f"sandgate_evaluations_queue_depth {queued}\n" in text
    assert f'sandgate_evaluations_by_verdict{{verdict="passed"}} {passed}\n' in text
    assert "sandgate_store_up 1" in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_openapi_documents_every_operation(main):
    schema = httpx.get(f"{main.server.url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    submit = schema["paths"]["/v1/skills/{name}/versions"]["post"]
    assert set(submit["requestBody"]["content"]) >= {"application/json", "multipart/form-data",
                                                     "application/gzip", "application/zip"}
    assert "FilesSubmission" in schema["components"]["schemas"]
    assert "swagger" in httpx.get(f"{main.server.url}/docs").text.lower()


# --------------------------------------------------------------------------- a tight server


@pytest.fixture(scope="module")
def tight(pg_server, pg_template, tmp_path_factory):
    """64 KiB bodies, 5 failed authentications a minute."""
    url = pg_server.create_database("api_tight", template=pg_template)
    tokens = make_keys(url, {"sub": "submitter"})
    server = ApiServer(url, home=tmp_path_factory.mktemp("api-tight"), env={
        "SANDGATE_API_MAX_BODY_BYTES": str(64 * 1024),
        "SANDGATE_API_AUTH_FAILURES_PER_MINUTE": "5"}).start()
    try:
        yield type("Tight", (), {"url": url, "server": server, "tokens": tokens})
    finally:
        server.stop()
        pg_server.drop_database("api_tight")


def _raw(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_413_from_content_length_and_while_streaming(tight):
    s, limit = tight.server, 64 * 1024
    with s.client(tight.tokens["sub"]) as c:
        files = skill_files("big", "x")
        files["data.txt"] = "y" * (limit + 10)
        r = c.post("/v1/skills/big/versions", json={"files": files})
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "too_large" and str(limit) in err["message"]
        assert r.headers["connection"] == "close"

        def chunks():  # no Content-Length: counted while it streams
            for _ in range(20):
                yield b"z" * 8192

        r = c.post("/v1/skills/big/versions", content=chunks(),
                   headers={"Content-Type": "application/gzip"})
        assert r.status_code == 413 and "more than that was sent" in r.json()["error"]["message"]

        # just under the limit: not refused for its size
        files["data.txt"] = "y" * 1000
        r = c.post("/v1/skills/big/versions", json={"files": files})
        assert r.status_code == 202, r.text
    # a huge declared length is refused before the body is sent at all
    head = (f"POST /v1/skills/big/versions HTTP/1.1\r\nHost: x\r\nContent-Type: application/gzip\r\n"
            f"Content-Length: {10**12}\r\n\r\n").encode()
    t0 = time.monotonic()
    answer = _raw(s.port, head)
    assert answer.startswith(b"HTTP/1.1 413") and b"too_large" in answer
    assert time.monotonic() - t0 < 5
    answer = _raw(s.port, b"POST /v1/skills/big/versions HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: -5\r\n\r\n")
    assert answer.split(b" ", 2)[1].startswith(b"4")


def test_failed_authentications_are_rate_limited_per_address(tight):
    s = tight.server
    bad = {"Authorization": "Bearer sg_0123456789ab_" + "B" * 43}
    statuses = [httpx.get(f"{s.url}/v1/skills", headers=bad).status_code for _ in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    r = httpx.get(f"{s.url}/v1/skills", headers=bad)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "failed authentications" in r.json()["error"]["message"]


def test_readyz_reports_why_not_ready(tmp_path):
    """A dead database and a missing engine: 503 with both reasons; liveness still 200."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    server = ApiServer(f"postgresql+psycopg://postgres@127.0.0.1:{dead_port}/none", home=tmp_path,
                       env={"SANDGATE_API_READY_REQUIRES_ENGINE": "true",
                            "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}).start()
    try:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        r = httpx.get(f"{server.url}/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        checks = r.json()["checks"]
        assert not checks["database"]["ok"] and "cannot open the store" in checks["database"]["reason"]
        assert not checks["engine"]["ok"] and checks["engine"]["required"]
        r = httpx.get(f"{server.url}/v1/skills", headers={"Authorization": "Bearer sg_0123456789ab_" + "C" * 43})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store"
        assert "sandgate_store_up 0" in httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()


def test_readyz_ready_with_database_and_engine(main, docker_client):
    drain_queue(main.url, evaluate=fake_evaluate("passed"))  # queued without a worker: not ready
    r = httpx.get(f"{main.server.url}/readyz")
    assert r.status_code == 200
    assert r.json()["checks"]["database"] == {"ok": True, "required": True}
    assert r.json()["checks"]["engine"]["ok"] is True


# --------------------------------------------------------------------------- the commands


def _run(env: dict[str, str], *args: str):
    import subprocess

    from tests.integration.api_harness import REPO, sandgate_argv

    return subprocess.run(sandgate_argv(*args), env=env, cwd=str(REPO), capture_output=True,
                          text=True, timeout=120, check=False)


def test_keys_commands_against_a_running_server(main, tmp_path):
    from tests.integration.api_harness import base_env

    env = base_env(main.url, tmp_path, SANDGATE_ACTOR="cli:ops")
    r = _run(env, "keys", "create", "ops-bot", "--role", "promoter", "--rate", "5", "--burst", "10")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("sg_") and "\n" not in token and "shown once" in r.stderr
    with main.server.client(token) as c:
        who = c.get("/v1/whoami").json()
        assert who == {"name": "ops-bot", "role": "promoter", "actor": "key:ops-bot"}
    listed = json.loads(_run(env, "keys", "list", "--json").stdout)
    bot = next(k for k in listed if k["name"] == "ops-bot")
    assert bot["created_by"] == "cli:ops" and bot["rate_per_second"] == 5 and "token" not in bot
    assert token not in _run(env, "keys", "list").stdout
    r = _run(env, "keys", "revoke", "ops-bot")
    assert r.returncode == 0 and "revoked key ops-bot" in r.stdout
    with main.server.client(token) as c:
        assert c.get("/v1/whoami").status_code == 401  # at once: no cache
    r = _run(env, "keys", "create", "ops-bot", "--role", "reader")
    assert r.returncode == 1 and "never reused" in r.stderr
    r = _run(env, "keys", "create", "x", "--role", "root")
    assert r.returncode == 2 and "unknown role" in r.stderr


def test_serve_refuses_a_taken_port(tmp_path):
    from tests.integration.api_harness import base_env

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        r = _run(base_env(f"sqlite:///{tmp_path / 's.db'}", tmp_path), "serve", "--port", str(port))
    assert r.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in r.stderr
