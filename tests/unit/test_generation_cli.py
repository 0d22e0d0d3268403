"""``sandgate generate`` via typer's CliRunner: fake LLM server, fake evaluate, real SQLite store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sandgate.cli import generate as generate_cli
from sandgate.cli.common import Collaborators
from sandgate.config import get_settings
from tests.fakes.openai_server import (  # noqa: F401
    CLAMP_TESTS_WRONG,
    FakeOpenAIServer,
    Reply,
    clamp_files,
    fake_llm,
    skill_reply,
)
from tests.unit.test_generation_loop import FakeEvaluate

app = typer.Typer(pretty_exceptions_enable=False)
generate_cli.register(app)


@app.callback()
def _main() -> None:  # keep `generate` a sub-command, as in the real app
    pass


class _Runner(CliRunner):
    """Invokes with the collaborators the ``env`` fixture chose (click's context object)."""

    obj: Collaborators | None = None

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("obj", self.obj)
        return super().invoke(*args, **kwargs)


runner = _Runner()
GOOD = skill_reply(clamp_files())
WRONG = skill_reply(clamp_files(tests=CLAMP_TESTS_WRONG))
SECRET = "sk-cli-SECRET-99"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_llm: FakeOpenAIServer) -> FakeEvaluate:
    for var in list(os.environ):
        if var.startswith("SANDGATE_LLM_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SANDGATE_DATABASE_URL", raising=False)
    monkeypatch.setenv("SANDGATE_ACTOR", "tester")
    monkeypatch.setenv("SANDGATE_LLM_BASE_URL", fake_llm.url)
    monkeypatch.setenv("SANDGATE_LLM_MODEL", "fake-model")
    monkeypatch.setenv("SANDGATE_LLM_API_KEY", SECRET)
    monkeypatch.setenv("SANDGATE_LLM_BACKOFF_BASE_SECONDS", "0.01")
    get_settings.cache_clear()
    evaluate = FakeEvaluate()
    runner.obj = Collaborators(evaluate=evaluate)
    yield evaluate
    runner.obj = None
    get_settings.cache_clear()


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["generate", "clamp", "--description", "Clamp a number", *args])


def test_passing_generation_is_submitted(env: FakeEvaluate, fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(GOOD))
    result = invoke("-r", "raise ValueError when low > high", "--requirement", "be pure")
    assert result.exit_code == 0, result.output
    assert "attempt 1/3" in result.output and "FAILED" in result.output
    assert "PASSED  clamp  after 2 attempt(s)" in result.output
    assert "stored clamp@1 (new version), verdict passed" in result.output
    assert "promoted: clamp active -> clamp@1" in result.output
    assert "- raise ValueError when low > high\n- be pure" in fake_llm.requests[0].text
    assert SECRET not in result.output
    assert len(env.calls) == 2


def test_json_output_and_no_submit(env: FakeEvaluate, fake_llm: FakeOpenAIServer,
                                   tmp_path: Path) -> None:
    fake_llm.enqueue(Reply.chat(GOOD))
    result = runner.invoke(app, ["generate", "clamp", "-d", "Clamp", "--json", "--no-submit",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "passed" and data["submitted"] is None
    assert data["attempts"][0]["verdict"] == "passed" and data["model"] == "fake-model"
    assert data["files"] == ["clamp.py", "skill.toml", "tests/test_clamp.py"]
    assert (tmp_path / "out" / "tests" / "test_clamp.py").read_text() == clamp_files()["tests/test_clamp.py"]
    assert not (tmp_path / "home" / "sandgate.db").exists()


def test_all_attempts_failed_exits_1(env: FakeEvaluate, fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(WRONG))
    result = invoke("--attempts", "2")
    assert result.exit_code == 1, result.output
    assert "FAILED  clamp  after 2 attempt(s)" in result.output
    assert "no attempt passed the gate (2 attempt(s))" in result.output


def test_no_base_url_exits_2_naming_the_variable(env: FakeEvaluate,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDGATE_LLM_BASE_URL")
    result = invoke()
    assert result.exit_code == 2
    assert "SANDGATE_LLM_BASE_URL" in result.output and "Traceback" not in result.output


def test_provider_failure_exits_2(env: FakeEvaluate, fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.error(401, message=f"bad key {SECRET}"))
    result = invoke()
    assert result.exit_code == 2, result.output
    assert "refused the request: HTTP 401" in result.output and SECRET not in result.output


def test_sandbox_error_exits_2(env: FakeEvaluate, fake_llm: FakeOpenAIServer) -> None:
    env.verdict_error = True
    fake_llm.enqueue(Reply.chat(GOOD))
    result = invoke()
    assert result.exit_code == 2, result.output
    assert "verdict error" in result.output and len(fake_llm.requests) == 1


def test_unknown_policy_exits_2(env: FakeEvaluate) -> None:
    result = invoke("--policy", "no_such_policy")
    assert result.exit_code == 2 and "policy file not found" in result.output
