"""Canary faces over real HTTP (``sandgate serve``, SQLite and PostgreSQL): start, status, abort, SSE,
and an HTTP registry that routes by weight and reports its counts with ``POST /v1/runtime``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandgate
from sandgate.client import SandgateClient
from sandgate.errors import (
    ApiError,
    InvalidCanaryInput,
    InvalidTransition,
    SandgateError,
)
from tests.integration.api_harness import (
    ApiServer,
    drain_queue,
    fake_evaluate,
    make_keys,
    skill_files,
    sse_events,
)

pytest_plugins = ["tests.integration.conftest_store"]

SKILL = "greet"


class World:
    def __init__(self, db_url: str, home: Path) -> None:
        self.db_url = db_url
        self.tokens = make_keys(db_url, {"reader": "reader", "ci": "submitter", "ops": "promoter"},
                                rate=1000, burst=1000)
        self.server = ApiServer(db_url, home=home).start()

    def api(self, role: str = "ops") -> SandgateClient:
        return SandgateClient(self.server.url, self.tokens[role])


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp(f"canary-api-{request.param}")
    if request.param == "sqlite":
        url, drop = f"sqlite:///{home / 'sandgate.db'}", None
    else:
        pg, template = request.getfixturevalue("pg_server"), request.getfixturevalue("pg_template")
        url, drop = pg.create_database("canary_api", template=template), pg
    w = World(url, home)
    try:
        with w.api("ci") as ci:
            for i in (1, 2):
                files = {p: t.encode() for p, t in skill_files(SKILL, f"v{i}:").items()}
                assert ci.submit_files(files)["version"] == i
        drain_queue(url, evaluate=fake_evaluate("passed"))  # the default policy promotes 1, then 2
        with w.api() as ops:
            ops.rollback(SKILL, reason="make room for a canary of v2")
        yield w
    finally:
        w.server.stop()
        if drop is not None:
            drop.drop_database("canary_api")


def test_roles_and_validation(world: World) -> None:
    with world.api("reader") as reader:
        with pytest.raises(ApiError) as exc:
            reader.start_canary(SKILL, 2, weight=50)
        assert exc.value.status == 403 and "promoter" in str(exc.value)
        with pytest.raises(ApiError, match="batch_id") as exc:
            reader._json("POST", "/v1/runtime", json={"batch_id": "short", "reports": []})
        assert exc.value.status == 422
        # well-formed JSON that does not add up: refused by the store's checks, the error table's 422
        with pytest.raises(InvalidCanaryInput, match="2 errors in 1 calls") as exc:
            reader._json("POST", "/v1/runtime", json={"batch_id": "x" * 16, "reports": [
                {"skill": SKILL, "version": 1, "generation": 1, "calls": 1, "errors": 2}]})
        assert exc.value.code == "invalid_report"
    with world.api() as ops, pytest.raises(SandgateError, match="1..99|less than or equal"):
        ops.start_canary(SKILL, 2, weight=100)


def test_start_route_report_status_sse_abort(world: World, tmp_path: Path) -> None:
    with world.api() as ops:
        record = ops.start_canary(SKILL, 2, weight=50, reason="try v2 on half the calls")
    assert (record.candidate, record.baseline, record.weight, record.state) == (2, 1, 50, "running")
    with world.api("reader") as reader:
        assert reader._json("GET", "/v1/canaries", params={"names": f"{SKILL},other"}) == {
            "canaries": {SKILL: {"candidate": 2, "weight": 50, "fallback": False, "sample_io": 0}}}
    with sandgate.connect(world.server.url, api_key=world.tokens["reader"], cache_dir=tmp_path / "cache",
                          poll_interval=5.0, report_interval=60) as registry:
        registry.call(SKILL, 0)
        deadline = time.monotonic() + 10
        while registry.canary(SKILL) is None and time.monotonic() < deadline:
            registry.refresh()
        assert registry.canary(SKILL)["weight"] == 50
        seen = Counter(registry.call(SKILL, 0) for _ in range(2000))
        assert 0.4 < seen["v2:0"] / 2000 < 0.6, seen
        assert registry.flush_evidence(10), registry.runtime_stats()
        with world.api("reader") as reader:
            status = reader.canary_status(SKILL)
        assert status["candidate"] == 2 and status["weight"] == 50
        assert status["versions"]["2"]["calls"] + status["versions"]["1"]["calls"] >= 2000
        assert status["decision"]["action"] == "promote"  # ~1000 candidate calls at the last step (50 %): due
        # the decision stream: canary_started is an event like a move
        with world.api("reader") as reader:
            headers = {"Authorization": f"Bearer {world.tokens['reader']}"}
            import httpx

            with httpx.Client(base_url=world.server.url) as http:
                events = sse_events(http, f"/v1/watch?after=0&skills={SKILL}", count=6, timeout=10,
                                    headers=headers)
        assert "canary_started" in [kind for kind, _, _ in events]
        # abort: the HTTP registry stops routing to the candidate by push, well within its 5 s poll
        with world.api() as ops:
            t0 = time.monotonic()
            aborted = ops.abort_canary(SKILL, reason="enough")
        assert aborted.state == "aborted" and aborted.finished_at is not None
        while registry.canary(SKILL) is not None and time.monotonic() - t0 < 4:
            time.sleep(0.01)
        assert registry.canary(SKILL) is None, "the abort did not reach the registry by push"
        assert {registry.call(SKILL, 0) for _ in range(200)} == {"v1:0"}
    with world.api() as ops, pytest.raises(InvalidTransition, match="no canary") as exc:
        ops.abort_canary(SKILL, reason="again")
    assert exc.value.code == "no_canary"  # rebuilt from the error table: 409 and the code


def test_cli_in_remote_mode_uses_the_same_service(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """``promote --canary``, ``status`` and ``abort`` with ``SANDGATE_URL``: the remote service, same output."""
    import json

    import typer
    from typer.testing import CliRunner

    from sandgate.cli import canary as canary_cli
    from sandgate.cli import store as store_cli

    app = typer.Typer(pretty_exceptions_enable=False)
    store_cli.register(app)
    canary_cli.register(app)
    monkeypatch.setenv("SANDGATE_URL", world.server.url)
    monkeypatch.setenv("SANDGATE_API_KEY", world.tokens["ops"])
    # proof that remote mode never opens a store
    monkeypatch.setenv("SANDGATE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    runner = CliRunner()
    r = runner.invoke(app, ["promote", SKILL, "2", "--canary", "30", "--reason", "remote canary"])
    assert r.exit_code == 0, r.output
    assert f"{SKILL}@2: canary at 30 % beside {SKILL}@1" in r.stdout
    r = runner.invoke(app, ["promote", SKILL, "2", "--canary", "30", "--actor", "someone"])
    assert r.exit_code == 2 and "--actor is for embedded mode" in r.output
    assert runner.invoke(app, ["promote", SKILL, "2", "--canary", "30"]).exit_code == 1  # one at a time
    data = json.loads(runner.invoke(app, ["status", SKILL, "--json"]).stdout)
    assert (data["candidate"], data["weight"], data["canary"]["actor"]) == (2, 30, "key:ops")
    r = runner.invoke(app, ["status", SKILL])
    assert r.exit_code == 0 and f"candidate {SKILL}@2 (30 %)" in r.stdout
    r = runner.invoke(app, ["abort", SKILL, "--reason", "remote abort"])
    assert r.exit_code == 0 and f"canary aborted; {SKILL}@1 serves every call" in r.stdout
    r = runner.invoke(app, ["abort", SKILL, "--reason", "again"])
    assert r.exit_code == 1 and "no canary" in r.output
    assert runner.invoke(app, ["status", "nope"]).exit_code == 1


def test_a_consumer_cannot_speak_for_another_or_for_the_future(world: World) -> None:
    """Runtime counts are recorded under the sending key's name, whatever the batch claims about itself;
    a report for a generation the pointer never had and a replayed batch are not counted."""
    with world.api() as ops:
        record = ops.start_canary(SKILL, 2, weight=20, reason="forgery test")
    g = record.generation
    forged = {"batch_id": "forged-batch-0001", "consumer": "scheduler:canary", "reports": [
        {"skill": SKILL, "version": 2, "generation": g, "calls": 500, "errors": 0},
        {"skill": SKILL, "version": 2, "generation": g + 1, "calls": 9999, "errors": 0},  # the next step, early
        {"skill": SKILL, "version": 1, "generation": g, "calls": 100, "errors": 0}]}
    with world.api("reader") as reader:
        assert reader._json("POST", "/v1/runtime", json=forged) == {
            "stored": 2, "skipped": 1, "duplicate": 0, "samples": 0}
        assert reader._json("POST", "/v1/runtime", json=forged)["duplicate"] == 1  # replay: ignored
        status = reader.canary_status(SKILL)
    assert status["consumers"] == {"key:reader": 600}  # not "scheduler:canary"
    assert status["versions"]["2"]["calls"] == 500
    with world.api() as ops:
        ops.abort_canary(SKILL, reason="forgery test done")
