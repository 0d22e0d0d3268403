"""The API against its own OpenAPI document, by schemathesis, over real HTTP.

A real ``sandgate serve`` (SQLite, no in-process worker) with an admin key;
for every operation of ``/openapi.json`` schemathesis generates a few
requests from the schema (seeded: every run sends the same ones) and checks
each answer: never a 5xx, a status code the operation documents, its content
type, and a body that conforms to the documented schema. ``/v1/watch`` (an
endless event stream) is left out; ``/generate`` answers its documented 503
``generation_unavailable`` here (no LLM is configured).

Bounded: ``MAX_EXAMPLES`` per operation keeps the run well under a minute.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.api_harness import ApiServer, make_key, skill_files

MAX_EXAMPLES = 10
SKIPPED = {("GET", "/v1/watch")}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{home / 'store.db'}"
    token = make_key(url, "fuzz", "admin", rate=100_000, burst=100_000)
    server = ApiServer(url, home=home / "home",
                       env={"SANDGATE_API_AUTH_FAILURES_PER_MINUTE": "100000"}).start()
    with server.client(token) as c:  # one skill, so some generated names exist
        assert c.post("/v1/skills/greet/versions", json={"files": skill_files("greet")}).status_code == 202
    try:
        yield server, token
    finally:
        server.stop()


def no_server_error(ctx, response, case):  # type: ignore[no-untyped-def]
    """schemathesis's not_a_server_error, except two documented 503s: ``/generate`` without an LLM
    and ``/readyz`` while evaluations are queued and no worker runs (the server has none here)."""
    if response.status_code == 503 and case.operation.path.endswith("/generate"):
        assert response.json()["error"]["code"] == "generation_unavailable", response.text
        return True
    if response.status_code == 503 and case.operation.path == "/readyz":
        assert "no worker is alive" in response.json()["checks"]["workers"]["reason"], response.text
        return True
    return not_a_server_error(ctx, response, case)


def test_every_operation_answers_as_its_schema_says(served) -> None:  # type: ignore[no-untyped-def]
    server, token = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        ran += 1

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                                   checks=checks, timeout=30)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {' '.join(str(exc).split())[:1500]}")
    assert ran >= 20, ran
    assert not failures, "\n\n".join(failures)
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert not [line for line in server.log_lines() if line.get("message") == "unhandled error"]


def test_options_names_every_method_of_the_path(served) -> None:  # type: ignore[no-untyped-def]
    server, token = served
    r = httpx.options(f"{server.url}/v1/skills/greet/versions")
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, POST"
    r = httpx.delete(f"{server.url}/v1/skills/greet/versions", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 405 and r.headers["allow"] == "GET, OPTIONS, POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert httpx.options(f"{server.url}/v1/skills/greet/versions/1").headers["allow"] == "GET, OPTIONS"
    assert httpx.options(f"{server.url}/nope").status_code == 404
    # every path of the schema: OPTIONS names exactly its documented methods
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path, ops in paths.items():
        concrete = path.replace("{name}", "greet").replace("{number}", "1").replace(
            "{evaluation_id}", "0" * 32).replace("{job_id}", "0" * 32)
        r = httpx.options(f"{server.url}{concrete}")
        documented = sorted({m.upper() for m in ops} | {"OPTIONS"})
        assert r.status_code == 204 and r.headers["allow"].split(", ") == documented, (path, r.headers)


