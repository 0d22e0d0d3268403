"""Malformed requests get a 4xx with a reason, never a 5xx: a schema-driven fuzzer over real HTTP.

Reads the server's own ``/openapi.json`` and, for every operation, sends
(seeded, so every run sends the same requests):

* a valid request, then the request with each path parameter, query
  parameter and body field replaced by hostile values: wrong types, huge and
  negative numbers, ``1e400``, NUL and other control characters, lone
  surrogates (``"\\ud800"``), 10 000-character strings, path traversal,
  percent-encoded bytes, deep nesting;
* bodies with a required field missing, an unknown field added, not an object
  at all, not JSON at all (truncated, invalid UTF-8, 50 000 nested brackets),
  empty, under the wrong content type (``text/plain``, XML, multipart without a
  boundary or with garbage, gzip that is not);
* random mutations (byte flips, truncation, insertion) of the valid body.

Every answer must be below 500 — the one exception is the documented 503
``generation_unavailable`` of ``/generate`` when no LLM is configured — and
every error must carry ``{"error": {"code", "message"}}``. Afterwards the
server is healthy and its log has no unhandled error.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

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

SEED = 20251124
RANDOM_MUTATIONS = 12

#: raw JSON texts of hostile values (sent verbatim inside bodies)
HOSTILE_JSON = [
    "null", "true", "0", "-1", "1.5", "1e400", "-1e400", "9223372036854775808",
    "100000000000000000000000000000", "-100000000000000000000000000000", '""', '"x"',
    '"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff\\ud800"', '"\\u202e\\u2066evil"',
    json.dumps("x" * 10_000), '"../../etc/passwd"', '"%00"', '"😀"', "[]", "{}", '[1, "a", null]',
    '{"a": {"b": {"c": [1, 2, {"d": "\\u0000"}]}}}', '"NaN"', "NaN", "Infinity",
]
HOSTILE_PATH = [
    "A", "a" * 100, "%00", "%2e%2e", "..", "%2F", "-1", "0", "1e9", "99999999999999999999999",
    "%F0%9F%98%80", "%ED%A0%80", "%FF%FE", "%20", "x%0Ay", "true", "null", "'", "%27%20OR%201%3D1",
]
HOSTILE_QUERY = [
    "", "-1", "0", "abc", "1.5", "99999999999999999999999999", "%00", "%ED%A0%80", "a" * 5000,
    "%2C%2C%2C", "all", "A,B", "greet,%00",
]
WRONG_BODIES: list[tuple[str, bytes]] = [
    ("application/json", b""),
    ("application/json", b"{"),
    ("application/json", b'{"version": }'),
    ("application/json", b"\xff\xfe\x00{"),
    ("application/json", b"[" * 50_000 + b"]" * 50_000),
    ("application/json", b'{"a":' * 3000 + b"1" + b"}" * 3000),
    ("application/json", b"[]"),
    ("application/json", b'"just a string"'),
    ("application/json", b"12345678901234567890123456789"),
    ("application/json", b"null"),
    ("text/plain", b"hello"),
    ("application/xml", b"<a/>"),
    ("multipart/form-data", b"--x\r\n\r\n"),
    ("multipart/form-data; boundary=zz", b"garbage without boundaries"),
    ("multipart/form-data; boundary=zz",
     b'--zz\r\nContent-Disposition: form-data; name="archive"; filename="a"\r\n\r\nnot an archive\r\n--zz--\r\n'),
    ("multipart/form-data; boundary=zz",
     b'--zz\r\nContent-Disposition: form-data; name="archive"\r\n\r\nx\r\n--zz\r\n'
     b'Content-Disposition: form-data; name="archive"\r\n\r\ny\r\n--zz--\r\n'),
    ("multipart/form-data; boundary=zz",
     b'--zz\r\nContent-Disposition: form-data; name="provenance"\r\n\r\n{\r\n--zz--\r\n'),
    ("application/gzip", b"\x1f\x8b\x08\x00garbage"),
    ("application/zip", b"PK\x03\x04" + b"\x00" * 100),
    ("application/octet-stream", b"\x00" * 1000),
    ("application/json; charset=utf-16", '{"version": 1}'.encode("utf-16")),
    ("", b'{"version": 1}'),
]


@pytest.fixture(scope="module")
def target(pg_server, pg_template, tmp_path_factory):
    url = pg_server.create_database("api_fuzz", template=pg_template)
    tokens = make_keys(url, {"admin": "admin"}, rate=100_000, burst=100_000)
    server = ApiServer(url, home=tmp_path_factory.mktemp("api-fuzz")).start()
    with server.client(tokens["admin"]) as c:
        ids = []
        for body in ("a", "b"):
            r = c.post("/v1/skills/greet/versions", json={"files": skill_files("greet", body)})
            assert r.status_code == 202, r.text
            ids.append(r.json()["evaluation_id"])
        drain_queue(url, evaluate=fake_evaluate("passed"))
        r = c.post("/v1/skills/greet/versions", json={"files": skill_files("greet", "c")})
        ids.append(r.json()["evaluation_id"])  # stays queued
    try:
        yield type("Target", (), {"url": url, "server": server, "token": tokens["admin"],
                                  "evaluation_ids": ids})
    finally:
        server.stop()
        pg_server.drop_database("api_fuzz")


# --------------------------------------------------------------------------- schema walking


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root["components"]["schemas"][name]
    if "anyOf" in schema:  # Optional[X]: the non-null branch
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if options:
            return _resolve(options[0], root)
    return schema


def _sample(schema: dict, root: dict, name: str = "") -> Any:
    """A valid value for ``schema`` (enough for the fuzzer's starting point)."""
    schema = _resolve(schema, root)
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _sample(v, root, k) for k, v in props.items() if k in schema.get("required", [])}
    return {"reason": "fuzz", "description": "a skill"}.get(name, "x")


def _operations(root: dict) -> list[tuple[str, str, dict]]:
    return [(m.upper(), p, op) for p, ops in root["paths"].items() for m, op in ops.items()]


def _concrete(path: str, target, overrides: dict[str, str] | None = None) -> str:
    values = {"name": "greet", "number": "1", "evaluation_id": target.evaluation_ids[0],
              "job_id": "0" * 32, **(overrides or {})}
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    return path


def _json_body(op: dict, root: dict) -> tuple[dict | None, dict | None]:
    body = op.get("requestBody")
    if not body:
        return None, None
    content = body.get("content", {})
    if "application/json" not in content:
        return None, None
    schema = _resolve(content["application/json"]["schema"], root)
    return schema, _sample(schema, root)


def _valid_body(path: str, schema: dict | None, sample: dict | None) -> dict | None:
    if schema is None:
        return None
    if path.endswith("/versions"):
        return {"files": skill_files("greet", "fuzz")}
    if path.endswith("/promote"):
        return {"version": 2}
    return sample


# --------------------------------------------------------------------------- the run


class Checker:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.count = 0
        self.by_status: dict[int, int] = {}

    def send(self, method: str, url: str, *, content: bytes | None = None,
             content_type: str | None = None, headers: dict[str, str] | None = None) -> int:
        h = dict(headers or {})
        if content_type is not None:
            h["Content-Type"] = content_type
        if url.startswith("/v1/watch"):
            with self.client.stream(method, url, headers=h, content=content,
                                    timeout=httpx.Timeout(10.0, read=5.0)) as r:
                status = r.status_code
                if status >= 400:
                    r.read()
                    self._check(method, url, r, content)
        else:
            r = self.client.request(method, url, content=content, headers=h)
            status = r.status_code
            self._check(method, url, r, content)
        self.count += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        return status

    def _check(self, method: str, url: str, r: httpx.Response, content: bytes | None) -> None:
        what = f"{method} {url[:200]} body={(content or b'')[:200]!r}"
        if r.status_code == 503 and url.split("?")[0].endswith("/readyz"):
            # documented: not ready while evaluations are queued and no worker is alive (the fuzz runs none)
            body = r.json()
            assert body["status"] == "not_ready" and body["checks"]["workers"]["ok"] is False, (what, r.text[:300])
            assert body["checks"]["workers"]["queued"] > 0, (what, r.text[:300])
            return
        documented = (r.status_code == 503 and url.endswith("/generate")
                      and r.json()["error"]["code"] == "generation_unavailable")
        assert r.status_code < 500 or documented, f"{r.status_code} for {what}: {r.text[:500]}"
        if r.status_code >= 400:
            err = r.json().get("error")
            assert isinstance(err, dict) and err.get("code") and err.get("message"), (what, r.text[:300])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "cut", "insert", "dup"))
        if not b:
            b = bytearray(b"{")
        i = rng.randrange(len(b))
        if op == "flip":
            b[i] = rng.randrange(256)
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = rng.choice([b"\x00", b'"', b"{", b"]", b"\\u", b"\xff", b",", b"9" * 30])
        else:
            b[i:i] = b[i:i + rng.randint(1, 50)]
    return bytes(b)


def test_fuzz_every_operation_no_5xx(target):
    rng = random.Random(SEED)
    s = target.server
    root = httpx.get(f"{s.url}/openapi.json").json()
    started = time.monotonic()
    with s.client(target.token) as client:
        check = Checker(client)
        for method, path, op in _operations(root):
            params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query", "header")]
            schema, sample = _json_body(op, root)
            body = _valid_body(path, schema, sample)
            body_bytes = json.dumps(body).encode() if body is not None else None
            ctype = "application/json" if body is not None else None
            base = _concrete(path, target)
            query_defaults = {"a": "1", "b": "1"} if path.endswith("/diff") else {}

            def url_with(query: dict[str, str], base: str = base) -> str:
                return base + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")

            # the valid request
            check.send(method, url_with(query_defaults), content=body_bytes, content_type=ctype)
            # hostile path parameters
            for p in (p for p in params if p["in"] == "path"):
                for bad in HOSTILE_PATH:
                    check.send(method, url_with(query_defaults) if False else
                               _concrete(path, target, {p["name"]: bad})
                               + ("?a=1&b=1" if path.endswith("/diff") else ""),
                               content=body_bytes, content_type=ctype)
            # hostile query parameters and headers
            for p in (p for p in params if p["in"] == "query"):
                for bad in HOSTILE_QUERY:
                    check.send(method, url_with({**query_defaults, p["name"]: bad}),
                               content=body_bytes, content_type=ctype)
                check.send(method, url_with(query_defaults) + f"&{p['name']}=1&{p['name']}=2"
                           if query_defaults else base + f"?{p['name']}=1&{p['name']}=x",
                           content=body_bytes, content_type=ctype)
            for p in (p for p in params if p["in"] == "header"):
                for bad in ("-1", "abc", "9" * 30, "", "1.5", "00000000000000000000000000001", "1e3"):
                    check.send(method, url_with(query_defaults), headers={p["name"]: bad})
            if method != "POST":
                continue
            # hostile body fields, missing and unknown fields
            fields = list((schema or {}).get("properties", {}))
            for field in fields:
                for raw in HOSTILE_JSON:
                    doc = json.dumps({**(body or {}), field: "__HOLE__"}).replace('"__HOLE__"', raw)
                    check.send(method, base, content=doc.encode(), content_type="application/json")
            for field in (schema or {}).get("required", []):
                doc = {k: v for k, v in (body or {}).items() if k != field}
                check.send(method, base, content=json.dumps(doc).encode(), content_type="application/json")
            check.send(method, base, content=json.dumps({**(body or {}), "extra": 1}).encode(),
                       content_type="application/json")
            if path.endswith("/versions"):  # the files map itself
                for raw_files in ('{"": "x"}', '{"\\u0000": "x"}', '{"a/../b.py": "x"}',
                                  '{"x.py": 5}', '{"x.py": "\\ud800"}', "[]", '{"x.py": null}',
                                  json.dumps({f"f{i}.py": "" for i in range(1500)})):
                    check.send(method, base, content=f'{{"files": {raw_files}}}'.encode(),
                               content_type="application/json")
                for enc_body in ({"files": {"skill.toml": "!!notbase64"}, "encoding": "base64"},
                                 {"files": {"skill.toml": "eA=="}, "encoding": "rot13"}):
                    check.send(method, base, content=json.dumps(enc_body).encode(),
                               content_type="application/json")
            # wrong bodies and content types
            for content_type, raw in WRONG_BODIES:
                check.send(method, base, content=raw, content_type=content_type or None)
            # random mutations of the valid body
            for _ in range(RANDOM_MUTATIONS):
                check.send(method, base, content=_mutate(rng, body_bytes or b"{}"),
                           content_type="application/json")
        elapsed = time.monotonic() - started
        assert check.count > 800, check.by_status
        # healthy afterwards, and nothing unhandled in the log
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/skills/greet").status_code == 200
    unhandled = [ln for ln in s.log_lines() if "unhandled" in ln.get("message", "")]
    assert not unhandled, unhandled[:3]
    print(f"fuzz: {check.count} requests in {elapsed:.1f}s: {dict(sorted(check.by_status.items()))}")


def test_unauthenticated_garbage_is_4xx(target):
    """Before authentication too: bad headers, methods and paths never reach a 5xx."""
    s = target.server
    cases = [
        ("GET", "/v1/skills", {"Authorization": "Bearer"}),
        ("GET", "/v1/skills", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("GET", "/v1/skills", {"Authorization": "Bearer " + "x" * 5000}),
        ("GET", "/v1/skills", {"Authorization": "Bearer sg_zzzzzzzzzzzz_" + "A" * 43}),
        ("DELETE", "/v1/skills/greet", {}),
        ("PUT", "/v1/pointers", {}),
        ("GET", "/v1/nope", {}),
        ("GET", "/%00", {}),
        ("POST", "/v1/skills/greet/promote", {"Content-Type": "application/json"}),
    ]
    for method, path, headers in cases:
        r = httpx.request(method, f"{s.url}{path}", headers=headers, content=b"{}")
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:200])
        assert r.json()["error"]["code"]
