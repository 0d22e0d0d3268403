"""The store CLI via typer's CliRunner, on a real SQLite store, with a fake evaluator.

The command's collaborators (``load_submission``, ``load_policy``, ``evaluate``)
are passed as click's context object (:class:`sandgate.cli.common.Collaborators`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sandgate.cli import store as store_cli
from sandgate.cli.common import Collaborators
from sandgate.config import get_settings
from sandgate.errors import SubmissionError
from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict

app = typer.Typer(pretty_exceptions_enable=False)  # only this module's commands
store_cli.register(app)
class _Runner(CliRunner):
    """Invokes with the collaborators the ``env`` fixture chose (click's context object)."""

    obj: Collaborators | None = None

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("obj", self.obj)
        return super().invoke(*args, **kwargs)


runner = _Runner()


@dataclass(frozen=True)
class _Sub:
    name: str
    files: dict[str, bytes]
    manifest: dict[str, Any]
    content_hash: str


def _load_dir(path: Path) -> _Sub:
    if not path.is_dir():
        raise SubmissionError(f"{path}: not a directory", code="invalid_submission")
    files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    h = hashlib.sha256(b"".join(k.encode() + b"\0" + v for k, v in files.items())).hexdigest()
    manifest = {"name": path.name, "description": "cli test", "entrypoint": f"{path.name}:run",
                "requirements": [], "tests": ["test_it.py"]}  # fmt: skip
    return _Sub(path.name, files, manifest, "sha256:" + h)


class _Evaluator:
    verdict = "passed"
    calls = 0

    def __call__(self, submission: Any, *, policy: Any, evaluation_id: str | None = None,
                 baseline: Any = None) -> EvaluationReport:
        type(self).calls += 1
        reasons = [] if self.verdict == "passed" else [Reason(code=ReasonCode.tests_failed, message="1 failed")]
        return EvaluationReport(
            evaluation_id=evaluation_id or "x", verdict=Verdict(self.verdict), reasons=reasons,
            skill=submission.name,
        )  # fmt: skip


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SANDGATE_DATABASE_URL", raising=False)
    monkeypatch.setenv("SANDGATE_ACTOR", "tester")
    get_settings.cache_clear()
    mode = {"value": "manual"}
    policy = SimpleNamespace(
        name="default", hash="sha256:p1", promotion=SimpleNamespace(mode_for=lambda _: mode["value"])
    )
    evaluator = _Evaluator()
    _Evaluator.verdict, _Evaluator.calls = "passed", 0
    runner.obj = Collaborators(load_submission=_load_dir, load_policy=lambda name=None: policy, evaluate=evaluator)

    def skill(name: str, body: str) -> Path:
        d = tmp_path / "src" / body.replace(" ", "_") / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.py").write_text(f"def run():\n    return {body!r}\n")
        (d / "test_it.py").write_text("def test_it():\n    assert True\n")
        return d

    yield SimpleNamespace(tmp=tmp_path, mode=mode, evaluator=_Evaluator, skill=skill)
    runner.obj = None
    get_settings.cache_clear()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_submit_manual_then_promote_show_history(env):
    src = env.skill("greet", "v1")
    r = run("submit", str(src))
    assert r.exit_code == 0, r.output
    assert "greet@1" in r.stdout and "verdict: passed" in r.stdout and "sandgate promote greet 1" in r.stdout
    assert (env.tmp / "home" / "sandgate.db").exists()

    r = run("promote", "greet", "1", "--reason", "ship it")
    assert r.exit_code == 0 and "promoted greet: active nothing -> greet@1" in r.stdout

    r = run("show", "greet", "--json")
    data = json.loads(r.stdout)
    assert data["version"]["active"] and data["evaluation"]["verdict"] == "passed"
    assert [f["path"] for f in data["files"]] == ["greet.py", "test_it.py"]
    assert "greet@1" in run("show", "greet@1").stdout

    events = json.loads(run("history", "greet", "--json").stdout)
    assert [e["action"] for e in events] == ["submitted", "evaluated", "promoted"]
    assert events[-1]["actor"] == "tester" and events[-1]["reason"] == "ship it"
    assert "promoted" in run("history", "greet").stdout


def test_submit_json_and_auto_promotion_and_idempotence(env):
    env.mode["value"] = "auto"
    src = env.skill("greet", "v1")
    data = json.loads(run("submit", str(src), "--json").stdout)
    assert data["verdict"] == "passed" and data["created"] and data["promoted"]["to_version"] == 1
    again = run("submit", str(src), "--json")
    assert again.exit_code == 0
    data = json.loads(again.stdout)
    assert not data["created"] and data["reused_evaluation"] and data["version"] == 1
    assert env.evaluator.calls == 1


def test_submit_exit_codes(env):
    env.evaluator.verdict = "failed"
    r = run("submit", str(env.skill("greet", "bad")))
    assert r.exit_code == 1 and "verdict: failed" in r.stdout and "tests_failed" in r.stdout
    env.evaluator.verdict = "error"
    assert run("submit", str(env.skill("greet", "flaky"))).exit_code == 2
    r = run("submit", str(env.tmp / "missing"))
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and "not a directory" in r.stderr
    r = run("submit", str(env.skill("greet", "later")), "--no-wait", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "queued"


def test_versions_skills_rollback_yank_diff(env):
    for body in ("v1", "v2", "v3"):
        assert run("submit", str(env.skill("greet", body))).exit_code == 0
        n = body[1]
        assert run("promote", "greet", n).exit_code == 0
    rows = json.loads(run("versions", "greet", "--json").stdout)
    assert [(v["number"], v["active"]) for v in rows] == [(1, False), (2, False), (3, True)]
    assert "greet" in run("versions", "greet").stdout
    skills = json.loads(run("skills", "--json").stdout)
    assert skills == [
        {**skills[0], "name": "greet", "active_version": 3, "latest_version": 3, "generation": 3}
    ]
    assert "greet" in run("skills").stdout

    r = run("rollback", "greet", "--reason", "500s")
    assert r.exit_code == 0 and "rolled back greet: active greet@3 -> greet@2" in r.stdout
    move = json.loads(run("rollback", "greet", "--json").stdout)
    assert move["to_version"] == 1 and move["action"] == "rolled_back"
    r = run("rollback", "greet")
    assert r.exit_code == 1 and "nothing to roll back to" in r.stderr

    r = run("yank", "greet", "1", "--reason", "cve")
    assert r.exit_code == 1 and "roll back first" in r.stderr
    assert run("promote", "greet", "3").exit_code == 0
    r = run("yank", "greet", "3", "--reason", "cve", "--rollback", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["version"]["yank_reason"] == "cve" and data["rollback"]["to_version"] == 1
    r = run("promote", "greet", "3")
    assert r.exit_code == 1 and "yanked" in r.stderr

    r = run("diff", "greet", "1", "2")
    assert r.exit_code == 0 and "-    return 'v1'" in r.stdout and "+    return 'v2'" in r.stdout
    assert json.loads(run("diff", "greet", "1", "2", "--json").stdout)[0]["path"] == "greet.py"


def test_refusals_are_one_line_on_stderr_with_exit_1(env):
    run("submit", str(env.skill("greet", "v1")))  # a store to ask (read commands never create one)
    for args in (
        ("versions", "nope"),
        ("show", "nope"),
        ("history", "nope"),
        ("promote", "nope", "1"),
        ("rollback", "nope"),
        ("diff", "nope", "1", "2"),
        ("yank", "nope", "1", "--reason", "x"),
    ):
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.stderr == "error: no skill named 'nope'\n"
    r = run("promote", "greet", "1", "--expected-generation", "5")
    assert r.exit_code == 1 and "moved concurrently: expected generation 5, now 0" in r.stderr
    r = run("promote", "greet", "1", "--force")
    assert r.exit_code == 1 and "needs a reason" in r.stderr
    r = run("show", "greet@x")
    assert r.exit_code == 2


def test_config_and_infrastructure_errors_exit_2(env, monkeypatch):
    monkeypatch.setenv("SANDGATE_DATABASE_URL", "mysql://nope/none")
    get_settings.cache_clear()
    r = run("skills")
    assert r.exit_code == 2 and r.stderr.startswith("error: unsupported database")


def test_actor_option_and_default(env, monkeypatch):
    run("submit", str(env.skill("greet", "v1")), "--actor", "agent:42")
    assert json.loads(run("history", "greet", "--json").stdout)[0]["actor"] == "agent:42"
    monkeypatch.delenv("SANDGATE_ACTOR")
    assert store_cli.default_actor().startswith("cli:")
