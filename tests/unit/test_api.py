"""The API's parts in process: keys, limits, metrics, error mapping, intake, client, the app on SQLite.

The real server process, PostgreSQL and the sandbox are the integration tests'
(``tests/integration/test_api_*.py``); here the app runs under Starlette's
test client against a real SQLite store, with a fake evaluator where needed.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandgate.api.errors import ApiError, status_for
from sandgate.api.limits import RateLimiter
from sandgate.api.observability import Metrics
from sandgate.api.settings import ApiSettings
from sandgate.errors import (
    ConfigError,
    Conflict,
    EngineUnavailable,
    InfrastructureError,
    InvalidTransition,
    NotFound,
    PolicyError,
    SandgateError,
    StoreError,
    SubmissionError,
)
from sandgate.logs import JsonFormatter
from sandgate.store import keys, open_store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def files(name: str = "greet", body: str = "a") -> dict[str, str]:
    return {
        "skill.toml": f'name = "{name}"\nentrypoint = "{name}:run"\n',
        f"{name}.py": f"def run(x):\n    return {body!r} + str(x)\n",
        f"tests/test_{name}.py": f"from {name} import run\n\n\ndef test_run():\n    assert run(1) == {body!r} + '1'\n",
    }


def tar_gz(content: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in content.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --------------------------------------------------------------------------- keys


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def test_keys_create_authenticate_revoke_rotate(store):
    record, token = keys.create_key(store, name="ci-bot", role="submitter", actor="cli:alice")
    assert token.startswith(f"sg_{record.key_id}_") and len(token) == 3 + 12 + 1 + 43
    assert record.actor == "key:ci-bot" and not record.revoked
    assert keys.authenticate(store, token) == record
    assert keys.authenticate(store, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.authenticate(store, "sg_" + "0" * 12 + "_" + token[-43:]) is None
    for junk in ("", "Bearer x", token + "x", token.upper(), "sg__x"):
        assert keys.authenticate(store, junk) is None
    # only the hash is stored
    from sqlalchemy import text

    with store.read() as s:
        row = s.execute(text("SELECT token_hash FROM api_keys WHERE name = 'ci-bot'")).one()
    assert row[0] == keys.hash_token(token) and token not in row[0]

    new, token2 = keys.rotate_key(store, name="ci-bot")
    assert new.name == "ci-bot" and new.role == "submitter" and new.key_id != record.key_id
    assert keys.authenticate(store, token) is None and keys.authenticate(store, token2).name == "ci-bot"
    revoked = keys.revoke_key(store, name="ci-bot", actor="cli:bob")
    assert revoked.revoked and revoked.revoked_by == "cli:bob"
    assert keys.authenticate(store, token2) is None
    with pytest.raises(InvalidTransition, match="already revoked"):
        keys.revoke_key(store, name="ci-bot", actor="x")
    with pytest.raises(Conflict, match="never reused"):
        keys.create_key(store, name="ci-bot", role="reader", actor="x")
    with pytest.raises(NotFound):
        keys.revoke_key(store, name="nobody", actor="x")
    assert [k.name for k in keys.list_keys(store)] == ["ci-bot"]
    assert keys.list_keys(store, include_revoked=False) == []


@pytest.mark.parametrize("name,role,rate,burst", [
    ("Bad", "reader", None, None), ("x" * 64, "reader", None, None), ("ok", "root", None, None),
    ("ok", "reader", 0.0, None), ("ok", "reader", None, 0),
])
def test_keys_refuse_bad_input(store, name, role, rate, burst):
    with pytest.raises(InvalidTransition):
        keys.create_key(store, name=name, role=role, actor="t", rate_per_second=rate, burst=burst)


def test_roles_are_ordered():
    assert keys.role_allows("admin", "reader") and keys.role_allows("promoter", "submitter")
    assert not keys.role_allows("submitter", "promoter") and keys.role_allows("reader", "reader")


# --------------------------------------------------------------------------- limits, metrics, logs


def test_token_bucket_with_a_fake_clock():
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("k", rate=2, burst=3) for _ in range(3)] == [0, 0, 0]
    wait = limiter.take("k", rate=2, burst=3)
    assert wait == pytest.approx(0.5) and RateLimiter.retry_after(wait) == "1"
    now[0] += 0.5
    assert limiter.take("k", rate=2, burst=3) == 0
    assert limiter.peek("k", rate=2, burst=3) > 0
    now[0] += 100
    assert limiter.take("k", rate=2, burst=3) == 0  # refills up to burst, not beyond
    assert limiter.take("other", rate=2, burst=1) == 0 and limiter.take("other", rate=2, burst=1) > 0
    assert limiter.take("free", rate=0, burst=1) == 0 and limiter.take("free", rate=0, burst=1) == 0
    small = RateLimiter(clock=lambda: now[0], max_buckets=2)
    for key in "abc":
        small.take(key, rate=1, burst=1)
    assert len(small._buckets) == 2


def test_metrics_text_format():
    m = Metrics(buckets=(0.1, 1.0))
    m.inc("sandgate_http_requests_total", {"route": "/v1/x", "status": "200", "method": "GET"})
    m.inc("sandgate_http_requests_total", {"route": "/v1/x", "status": "200", "method": "GET"})
    m.observe("sandgate_http_request_duration_seconds", 0.05, {"route": "/v1/x", "method": "GET"})
    m.observe("sandgate_http_request_duration_seconds", 0.5, {"route": "/v1/x", "method": "GET"})
    text = m.render([("sandgate_q", "gauge", "a gauge", {"v": 'a"b\\c\nd'}, 3)])
    lines = text.splitlines()
    assert 'sandgate_http_requests_total{method="GET",route="/v1/x",status="200"} 2' in lines
    assert 'sandgate_http_request_duration_seconds_bucket{method="GET",route="/v1/x",le="0.1"} 1' in lines
    assert 'sandgate_http_request_duration_seconds_bucket{method="GET",route="/v1/x",le="1"} 2' in lines
    assert 'sandgate_http_request_duration_seconds_bucket{method="GET",route="/v1/x",le="+Inf"} 2' in lines
    assert 'sandgate_http_request_duration_seconds_count{method="GET",route="/v1/x"} 2' in lines
    assert 'sandgate_q{v="a\\"b\\\\c\\nd"} 3' in lines
    assert "# TYPE sandgate_http_requests_total counter" in lines and text.endswith("\n")


def test_json_log_lines():
    import logging

    record = logging.LogRecord("sandgate.api", logging.INFO, __file__, 1, "request", (), None)
    record.fields = {"request_id": "r1", "status": 200, "skip": None}
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "request" and data["request_id"] == "r1" and "skip" not in data
    assert data["level"] == "info" and data["ts"].endswith("+00:00")


# --------------------------------------------------------------------------- error mapping, settings


@pytest.mark.parametrize("exc,status", [
    (SubmissionError("x"), 422), (NotFound("x"), 404), (Conflict("x"), 409),
    (InvalidTransition("x", code="already_active"), 409), (InvalidTransition("x", code="yanked"), 409),
    (InvalidTransition("x", code="reason_required"), 422), (StoreError("x"), 503),
    (EngineUnavailable("x"), 503), (InfrastructureError("x"), 503), (PolicyError("x"), 500),
    (ConfigError("x"), 500), (SandgateError("x"), 500), (ApiError(429, "x"), 429),
])
def test_status_for(exc, status):
    assert status_for(exc) == status


def test_generation_errors_map():
    from sandgate.generation.errors import GenerationError, LLMUnavailable

    assert status_for(GenerationError("x", code="invalid_request")) == 400
    assert status_for(LLMUnavailable("x")) == 503  # also an InfrastructureError


def test_api_settings_from_environment(monkeypatch):
    monkeypatch.setenv("SANDGATE_API_POLICIES", "strict, default,")
    monkeypatch.setenv("SANDGATE_API_RATE_PER_SECOND", "0")
    s = ApiSettings.load()
    assert s.policies == ["strict", "default"] and s.rate_per_second == 0 and s.host == "127.0.0.1"
    monkeypatch.setenv("SANDGATE_API_RATE_PERSECOND", "1")
    with pytest.raises(ConfigError, match="SANDGATE_API_RATE_PERSECOND"):
        ApiSettings.load()
    monkeypatch.delenv("SANDGATE_API_RATE_PERSECOND")
    monkeypatch.setenv("SANDGATE_API_MAX_BODY_BYTES", "-1")
    with pytest.raises(ConfigError, match="MAX_BODY_BYTES"):
        ApiSettings.load()


# --------------------------------------------------------------------------- intake


def test_intake_by_content_type():
    from sandgate.api.intake import parse_submission_body

    p = parse_submission_body("application/json", json.dumps({"files": files()}).encode(), policy=None)
    assert p.source == "json" and p.files["greet.py"].startswith(b"def run")
    assert p.submission().name == "greet"
    b64 = {k: base64.b64encode(v.encode()).decode() for k, v in files().items()}
    p = parse_submission_body("application/json; charset=utf-8",
                              json.dumps({"files": b64, "encoding": "base64", "policy": "default",
                                          "provenance": {"run": 1}}).encode(), policy=None)
    assert p.policy == "default" and p.provenance == {"run": 1} and p.submission().name == "greet"
    archive = tar_gz(files())
    p = parse_submission_body("application/gzip", archive, policy="default")
    assert p.archive == archive and p.policy == "default" and p.submission().name == "greet"
    body = (b"--B\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"a.tgz\"\r\n"
            b"Content-Type: application/gzip\r\n\r\n" + archive + b"\r\n--B\r\n"
            b"Content-Disposition: form-data; name=\"provenance\"\r\n\r\n{\"agent\": \"x\"}\r\n--B--\r\n")
    p = parse_submission_body("multipart/form-data; boundary=B", body, policy=None)
    assert p.archive == archive and p.provenance == {"agent": "x"} and p.source == "multipart"


@pytest.mark.parametrize("ctype,body,status,needle", [
    ("application/json", b"", 422, "no body"),
    ("application/json", b"{", 422, "not valid JSON"),
    ("application/json", b'{"files": {}}', 422, "files"),
    ("application/json", b'{"files": {"a.py": "x"}, "encoding": "base64"}', 422, "base64"),
    ("application/json", b'{"files": {"a.py": "\\ud800"}}', 422, "surrogate"),
    ("application/json", b'{"files": {"a\\u0000.py": "x"}}', 422, "control character"),
    ("application/json", b'{"files": {"a.py": "x"}, "extra": 1}', 422, "extra"),
    ("application/json", b'{"files": {"a.py": "x"}, "provenance": {"k": "\\u0000"}}', 422, "control"),
    ("application/json", b'{"files": {"a.py": "x"}, "policy": "../etc"}', 422, "policy"),
    ("text/plain", b"x", 415, "unsupported content type"),
    ("multipart/form-data", b"x", 400, "boundary"),
    ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"nope\"\r\n\r\nx\r\n--B--\r\n",
     422, "unknown multipart field"),
    ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"policy\"\r\n\r\nx\r\n--B--\r\n",
     422, "no file field named 'archive'"),
])
def test_intake_refusals(ctype, body, status, needle):
    from sandgate.api.intake import parse_submission_body

    with pytest.raises(ApiError) as info:
        parse_submission_body(ctype, body, policy=None)
    assert info.value.status == status and needle in str(info.value) + json.dumps(info.value.details or [])


# --------------------------------------------------------------------------- the app in process


class _Env:
    def __init__(self, client: TestClient, store: Any, tokens: dict[str, str]) -> None:
        self.client, self.store, self.tokens = client, store, tokens

    def h(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch):
    from sandgate.api.app import create_app
    from sandgate.config import Settings, get_settings

    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path))
    monkeypatch.delenv("SANDGATE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    tokens = {r: keys.create_key(store, name=r, role=r, actor="t")[1]
              for r in ("reader", "submitter", "promoter", "admin")}
    api = ApiSettings(max_body_bytes=64 * 1024, ready_requires_engine=False, watch_poll_seconds=0.05)
    app = create_app(Settings(database_url=url), api=api, store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield _Env(client, store, tokens)
    store.close()
    get_settings.cache_clear()


def test_submit_queue_and_read_back(app_env):
    c, h = app_env.client, app_env.h
    r = c.post("/v1/skills/greet/versions", json={"files": files()}, headers=h("submitter"))
    assert r.status_code == 202, r.text
    data = r.json()
    assert data["status"] == "queued" and data["version"] == 1 and data["created"]
    ev = c.get(f"/v1/evaluations/{data['evaluation_id']}", headers=h("reader")).json()
    assert ev["status"] == "queued" and ev["promoted"] is None
    versions = c.get("/v1/skills/greet/versions", headers=h("reader")).json()
    assert versions[0]["created_by"] == "key:submitter"
    assert versions[0]["provenance"] == {"client": "api", "key": "submitter", "format": "json"}
    r = c.post("/v1/skills/greet/versions", content=tar_gz(files()), headers={
        **h("submitter"), "Content-Type": "application/gzip"})
    assert r.status_code == 202 and not r.json()["created"]  # same content, same version


def test_reused_evaluation_is_200_and_yanked_is_409(app_env):
    from sandgate import lifecycle
    from sandgate.report import gave_up
    from sandgate.store import evaluations

    c, h = app_env.client, app_env.h
    r = c.post("/v1/skills/greet/versions", json={"files": files()}, headers=h("submitter"))
    ev = evaluations.claim_evaluation(app_env.store, give_up=gave_up)
    from sandgate.report import EvaluationReport, Verdict

    evaluations.finish_evaluation(app_env.store, evaluation_id=ev.id,
                           report=EvaluationReport(evaluation_id=ev.id, verdict=Verdict.passed))
    r = c.post("/v1/skills/greet/versions", json={"files": files()}, headers=h("submitter"))
    assert r.status_code == 200 and r.json()["reused_evaluation"] and r.json()["verdict"] == "passed"
    lifecycle.yank(app_env.store, name="greet", number=1, actor="t", reason="bad")
    r = c.post("/v1/skills/greet/versions", json={"files": files()}, headers=h("submitter"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "yanked"


def test_body_limit_in_process(app_env):
    c, h = app_env.client, app_env.h
    big = files()
    big["data.txt"] = "x" * (70 * 1024)
    r = c.post("/v1/skills/greet/versions", json={"files": big}, headers=h("submitter"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = c.post("/v1/skills/greet/versions", content=iter([b"x" * 40_000, b"y" * 40_000]),
               headers={**h("submitter"), "Content-Type": "application/gzip"})
    assert r.status_code == 413 and "more than that was sent" in r.json()["error"]["message"]


def test_unhandled_errors_are_json_500_without_details(app_env, monkeypatch):
    from sandgate.store import versions

    def boom(*a, **k):
        raise RuntimeError("secret internals /etc/shadow")

    monkeypatch.setattr(versions, "list_skills", boom)
    r = app_env.client.get("/v1/skills", headers=app_env.h("reader"))
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal" and "secret" not in r.text
    assert err["request_id"] == r.headers["x-request-id"]


def test_database_errors_are_503(app_env, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from sandgate.store import versions

    def gone(*a, **k):
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(versions, "list_skills", gone)
    r = app_env.client.get("/v1/skills", headers=app_env.h("reader"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
    assert r.headers["retry-after"]


def test_policy_choices(app_env, tmp_path):
    from sandgate.api.app import create_app
    from sandgate.config import Settings

    c, h = app_env.client, app_env.h
    r = c.post("/v1/skills/greet/versions", json={"files": files(), "policy": "strict"},
               headers=h("submitter"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_policy"
    assert "offered: default" in r.json()["error"]["message"]

    def broken(name=None):
        raise PolicyError("policy file not found: /srv/policies/default.toml")

    api = ApiSettings(ready_requires_engine=False)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}"), api=api, store=app_env.store,
                     load_policy=broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/skills/greet/versions", json={"files": files()}, headers=h("submitter"))
    assert r.status_code == 500 and r.json()["error"]["code"] == "invalid_policy"
    assert r.json()["error"]["message"].startswith("the server is misconfigured")


def test_metrics_can_require_a_key(tmp_path, monkeypatch):
    from sandgate.api.app import create_app
    from sandgate.config import Settings

    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url)
    _, token = keys.create_key(store, name="r", role="reader", actor="t")
    app = create_app(Settings(database_url=url), store=store,
                     api=ApiSettings(metrics_public=False, ready_requires_engine=False))
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 401
        r = c.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "sandgate_store_up 1" in r.text
    store.close()


def test_generate_without_an_llm_is_503(app_env, monkeypatch):
    for var in ("SANDGATE_LLM_BASE_URL", "SANDGATE_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    r = app_env.client.post("/v1/skills/greet/generate", json={"description": "greets"},
                            headers=app_env.h("submitter"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "generation_unavailable"
    assert "SANDGATE_LLM_BASE_URL" in r.json()["error"]["message"]
    r = app_env.client.get("/v1/generations/" + "0" * 32, headers=app_env.h("reader"))
    assert r.status_code == 404


# --------------------------------------------------------------------------- the client


def _mock_client(handler) -> Any:
    from sandgate.client import SandgateClient

    return SandgateClient("http://sandgate.test", "tok", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status,code,exc", [
    (404, "not_found", NotFound), (409, "conflict", Conflict), (409, "already_active", InvalidTransition),
    (422, "syntax_error", SubmissionError), (422, "reason_required", InvalidTransition),
    (503, "store", StoreError), (503, "unavailable", InfrastructureError),
])
def test_client_rebuilds_library_errors(status, code, exc):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tok"
        return httpx.Response(status, json={"error": {"code": code, "message": "the server's words"}})

    with _mock_client(handler) as api, pytest.raises(exc, match="the server's words") as info:
        api.get_skill("greet")
    assert type(info.value) is exc or issubclass(type(info.value), exc)


def test_client_api_errors_and_unreachable():
    from sandgate.client import ApiError as ClientApiError
    from sandgate.client import SandgateClient

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "3"},
                              json={"error": {"code": "rate_limited", "message": "slow down"}})

    with _mock_client(handler) as api, pytest.raises(ClientApiError) as info:
        api.list_skills()
    assert info.value.status == 429 and info.value.retry_after == 3.0 and info.value.code == "rate_limited"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with SandgateClient("http://x", transport=httpx.MockTransport(refuse)) as api:
        with pytest.raises(InfrastructureError, match="cannot reach"):
            api.list_skills()


def test_client_records_round_trip():
    from datetime import UTC, datetime

    from sandgate.client import record_from_dict
    from sandgate.records import EventRecord, PointerMove, SkillRecord, VersionRecord, YankResult

    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    skill = SkillRecord(name="a", created_at=now, active_version=1, generation=2, latest_version=3)
    assert record_from_dict(SkillRecord, json.loads(json.dumps(skill.to_dict()))) == skill
    version = VersionRecord(id=1, skill="a", number=1, content_hash="sha256:x", manifest={"n": 1},
                            file_count=2, total_bytes=3, created_at=now, created_by="key:k",
                            status="passed", yanked_at=now, yank_reason="r", provenance=None, active=False)
    move = PointerMove(skill="a", action="rolled_back", from_version=2, to_version=1, generation=3,
                       event_id=9)
    yank = YankResult(version=version, rollback=move, event_id=10)
    assert record_from_dict(YankResult, json.loads(json.dumps(yank.to_dict()))) == yank
    event = EventRecord(id=1, skill="a", version=None, actor="x", action="promoted", reason=None,
                        before=None, after={"version": 1}, evidence=None, created_at=now)
    assert record_from_dict(EventRecord, {**event.to_dict(), "new_field": 1}) == event


def test_sse_parser():
    from sandgate.client import _parse_sse

    lines = ["retry: 2000", "", "id: 4", "event: ready", 'data: {"after": 4}', "", ": keepalive", "",
             "id: 5", "event: promoted", 'data: {"id": 5,', 'data:  "x": 1}', "", "data: plain", ""]
    assert list(_parse_sse(lines)) == [("ready", 4, {"after": 4}), ("promoted", 5, {"id": 5, "x": 1}),
                                       ("message", None, "plain")]


def test_client_from_env(monkeypatch):
    from sandgate.client import from_env

    monkeypatch.delenv("SANDGATE_URL", raising=False)
    assert from_env() is None
    monkeypatch.setenv("SANDGATE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("SANDGATE_API_KEY", "tok")
    client = from_env()
    assert client is not None and client.base_url == "http://127.0.0.1:9"
    client.close()


def test_every_record_field_is_declared_by_its_response_schema():
    """Responses are records: a field a record gains must be declared (no extra="allow" pass-through)."""
    import dataclasses

    from sandgate import records
    from sandgate.api import schemas
    from sandgate.service import FileEntry

    pairs = [(records.SkillRecord, schemas.SkillOut), (records.VersionRecord, schemas.VersionOut),
             (records.EvaluationRecord, schemas.EvaluationOut), (records.EventRecord, schemas.EventOut),
             (records.PointerMove, schemas.MoveOut), (records.YankResult, schemas.YankOut),
             (records.FileDiff, schemas.FileDiffOut), (FileEntry, schemas.FileOut)]
    for record, schema in pairs:
        assert {f.name for f in dataclasses.fields(record)} == set(schema.model_fields), record
        assert schema.model_config.get("extra") != "allow", schema


def test_policies_are_read_once_until_their_file_changes(tmp_path, monkeypatch):
    import os

    from sandgate.api.deps import PolicyCache
    from sandgate.config import get_settings
    from sandgate.policy import load_policy

    policies = tmp_path / "policies"
    policies.mkdir()
    path = policies / "p.toml"
    path.write_text('description = "one"\n')
    monkeypatch.setenv("SANDGATE_POLICIES_DIR", str(policies))
    get_settings.cache_clear()
    loaded: list[str] = []

    def load(name):
        loaded.append(name)
        return load_policy(name)

    cache = PolicyCache(load)
    first = cache.get("p")
    assert cache.get("p") is first and cache.get("p") is first and loaded == ["p"]
    path.write_text('description = "two, longer"\n')
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = cache.get("p")
    assert second.description == "two, longer" and second.hash != first.hash and cache.loads == 2
    path.unlink()
    with pytest.raises(PolicyError, match="not found"):
        cache.get("p")  # a file that went away is never served from the cache
    get_settings.cache_clear()


def test_one_policy_load_for_many_requests(app_env):
    c, h = app_env.client, app_env.h
    for i in range(3):
        r = c.post("/v1/skills/greet/versions", json={"files": files(body=f"v{i}")}, headers=h("submitter"))
        assert r.status_code == 202, r.text
        r = c.post("/v1/skills/greet/promote", json={"version": i + 1, "force": True, "reason": "t"},
                   headers=h("admin"))
        assert r.status_code == 200, r.text
    assert c.app.state.policies.loads == 1


def test_pointers_carry_content_only_when_asked(app_env):
    c, h = app_env.client, app_env.h
    r = c.post("/v1/skills/greet/versions", json={"files": files()}, headers=h("submitter"))
    r = c.post("/v1/skills/greet/promote", json={"version": 1, "force": True, "reason": "t"},
               headers=h("admin"))
    assert r.status_code == 200, r.text
    plain = c.get("/v1/pointers", headers=h("reader")).json()
    assert plain["pointers"] == {"greet": {"version": 1, "generation": 1}}
    full = c.get("/v1/pointers?content=true&names=greet", headers=h("reader")).json()
    version = c.get("/v1/skills/greet/versions/1", headers=h("reader")).json()["version"]
    assert full["pointers"] == {"greet": {"version": 1, "generation": 1,
                                          "content_hash": version["content_hash"],
                                          "entrypoint": "greet:run", "canary": None}}
    assert full["last_event_id"] == plain["last_event_id"] > 0


def test_error_table_branches_and_the_client_inverse():
    from sandgate import errors as e

    for cls, meaning in e.MEANINGS.items():
        if issubclass(cls, e.Refused):
            assert meaning.exit_code == e.EXIT_REFUSED and 400 <= (meaning.status or 0) < 500, cls
        if issubclass(cls, e.Unavailable) and cls.__module__ == "sandgate.errors":
            # retry later: 503, except a key's own full queue (429, Retry-After says when)
            status = 429 if cls is e.QueueFull else 503
            assert meaning.exit_code == e.EXIT_ERROR and meaning.status == status, cls
        assert cls.code == meaning.code or cls is e.ApiError, cls
    # what the server answers for each class, the client turns back into that class
    for exc in (e.NotFound("x"), e.Conflict("x"), e.InvalidTransition("x", code="yanked"),
                e.InvalidTransition("x", code="reason_required"), e.SubmissionError("x", code="syntax_error"),
                e.StoreError("x"), e.InfrastructureError("x"), e.QueueFull("x", retry_after=7)):
        back = e.error_from_status(e.status_of(exc), exc.code, "x", retry_after=getattr(exc, "retry_after", None))
        assert type(back) is type(exc) and back.code == exc.code, exc
    assert e.error_from_status(429, "queue_full", "x", retry_after=7.0).retry_after == 7.0
    assert isinstance(e.error_from_status(429, "rate_limited", "x"), e.ApiError)
    assert isinstance(e.InvalidTransition("x", code="actor_required"), e.InvalidRequest)
    assert not isinstance(e.InvalidTransition("x", code="yanked"), e.InvalidRequest)
    assert not isinstance(e.NotFound("x"), e.Unavailable) and not isinstance(e.StoreError("x"), e.Refused)
    assert isinstance(e.error_from_status(401, "unauthorized", "x"), e.ApiError)
