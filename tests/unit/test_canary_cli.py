"""``sandgate promote N --canary W``, ``status``, ``abort`` via typer's CliRunner on a real SQLite store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer

from sandgate.cli import canary as canary_cli
from sandgate.cli import store as store_cli
from sandgate.cli.common import Collaborators
from sandgate.config import get_settings
from sandgate.policy import parse_policy
from tests.unit.test_store_cli import _Evaluator, _load_dir, _Runner

app = typer.Typer(pretty_exceptions_enable=False)
store_cli.register(app)
canary_cli.register(app)
runner = _Runner()
POLICY = parse_policy('[promotion]\nmode = "manual"\n[promotion.canary]\nsteps = [10, 50]\nmin_calls = 50\n',
                      name="default")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SANDGATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("SANDGATE_URL", raising=False)
    monkeypatch.setenv("SANDGATE_ACTOR", "tester")
    get_settings.cache_clear()
    _Evaluator.verdict, _Evaluator.calls = "passed", 0
    runner.obj = Collaborators(load_submission=_load_dir, load_policy=lambda name=None: POLICY,
                               evaluate=_Evaluator())

    def skill(body: str) -> Path:
        d = tmp_path / "src" / body / "greet"
        d.mkdir(parents=True)
        (d / "greet.py").write_text(f"def run():\n    return {body!r}\n")
        (d / "test_it.py").write_text("def test_it():\n    assert True\n")
        return d

    yield SimpleNamespace(tmp=tmp_path, skill=skill)
    get_settings.cache_clear()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_promote_canary_status_abort(env: SimpleNamespace) -> None:
    assert run("submit", str(env.skill("v1"))).exit_code == 0
    assert run("promote", "greet", "1").exit_code == 0
    assert run("submit", str(env.skill("v2"))).exit_code == 0
    r = run("promote", "greet", "2", "--canary", "20")
    assert r.exit_code == 0, r.output
    assert "greet@2: canary at 20 % beside greet@1" in r.stdout and "steps 10, 50, 100 %" in r.stdout

    from sandgate.store import canary as cs
    from sandgate.store import open_store

    store = open_store(get_settings().effective_database_url)
    try:
        c = cs.get_canary(store, name="greet")
        cs.record_runtime(store, batch={"batch_id": uuid.uuid4().hex, "reports": [
            {"skill": "greet", "version": 2, "generation": c.generation, "calls": 30, "errors": 1,
             "error_types": {"KeyError": 1}, "latency": {"80": 30}},
            {"skill": "greet", "version": 1, "generation": c.generation, "calls": 120, "errors": 0}]})
    finally:
        store.close()
    r = run("status", "greet")
    assert r.exit_code == 0, r.output
    assert "candidate greet@2 (20 %)" in r.stdout and "30 calls, 1 errors" in r.stdout
    assert "[KeyError 1]" in r.stdout and "decision: hold (collecting)" in r.stdout and "30/50" in r.stdout
    data = json.loads(run("status", "greet", "--json").stdout)
    assert data["weight"] == 20 and data["decision"]["evidence"]["error_test"]["threshold"] == 100

    assert run("promote", "greet", "2", "--canary", "20").exit_code == 1  # one canary at a time
    assert run("promote", "greet", "2", "--canary", "100").exit_code == 2  # not a canary weight (usage)
    r = run("abort", "greet")
    assert r.exit_code != 0  # --reason is required
    r = run("abort", "greet", "--reason", "not now")
    assert r.exit_code == 0 and "canary aborted; greet@1 serves every call" in r.stdout
    assert run("abort", "greet", "--reason", "again").exit_code == 1
    events = json.loads(run("history", "greet", "--json").stdout)
    assert [e["action"] for e in events][-2:] == ["canary_started", "canary_aborted"]
    assert events[-2]["after"]["candidate"] == 2 and events[-2]["after"]["weight"] == 20
    assert events[-1]["reason"] == "not now" and events[-1]["actor"] == "tester"


def test_status_of_a_skill_without_canary(env: SimpleNamespace) -> None:
    assert run("submit", str(env.skill("v1"))).exit_code == 0
    assert run("promote", "greet", "1").exit_code == 0
    r = run("status", "greet")
    assert r.exit_code == 0 and "active greet@1" in r.stdout and "no canary so far" in r.stdout
    assert run("status", "nope").exit_code == 1
