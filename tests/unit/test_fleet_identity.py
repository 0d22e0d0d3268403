"""Host identity (``SANDGATE_HOST_ID``) and a worker whose engine dies under a job (fakes, real SQLite).

The same against real engines, worker processes and PostgreSQL: tests/integration/test_fleet.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandgate import names
from sandgate.config import load_settings
from sandgate.errors import ConfigError, EngineLost
from sandgate.names import controller_alive, controller_id, host_id, owner_id, set_host_id
from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict
from sandgate.sandbox import reaper
from sandgate.store import audit, evaluations
from tests.unit.test_worker import FakeEvaluate, make_worker, policy, queue, store  # noqa: F401 - fixture

__all__ = ["store"]


@pytest.fixture(autouse=True)
def _default_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SANDGATE_HOST_ID", raising=False)
    set_host_id(None)
    yield
    set_host_id(None)


def test_host_id_defaults_to_the_hostname_and_names_controllers_and_owners(monkeypatch):
    assert host_id() == socket.gethostname()
    monkeypatch.setenv("SANDGATE_HOST_ID", "rack2-node7")
    assert host_id() == "rack2-node7"
    assert controller_id() == f"rack2-node7:{os.getpid()}"
    assert owner_id().startswith(f"rack2-node7:{os.getpid()}:")
    set_host_id("from-settings")  # the CLI's long-running commands set it from the settings
    assert controller_id() == f"from-settings:{os.getpid()}"


@pytest.mark.parametrize("bad", ["a:b", "-lead", "", "x" * 65, "sp ace", "ü"])
def test_a_bad_host_id_is_refused_with_the_rule(monkeypatch, bad):
    with pytest.raises(ValueError, match="not a host id"):
        set_host_id(bad)
    if bad.strip():
        monkeypatch.setenv("SANDGATE_HOST_ID", bad)
        with pytest.raises(ConfigError, match="SANDGATE_HOST_ID"):
            load_settings()
        with pytest.raises(ValueError, match="SANDGATE_HOST_ID"):
            host_id()


def test_controllers_are_judged_by_host_id_not_hostname(monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hostname = socket.gethostname()
    monkeypatch.setenv("SANDGATE_HOST_ID", "fleet-1")
    # two simulated hosts on one kernel: fleet-0's dead pid is not fleet-1's to judge
    assert controller_alive(f"fleet-0:{dead.pid}") is None
    assert controller_alive(f"{hostname}:{dead.pid}") is None
    assert controller_alive(f"fleet-1:{dead.pid}") is False
    assert controller_alive(f"fleet-1:{os.getpid()}") is True


class DeadEngine:
    """A Docker client whose engine dies (``up = False``: ping fails); the listing (after it is back) is recorded."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.listed: list[Any] = []
        self.removed: list[str] = []
        outer = self

        class Api:
            def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
                outer.listed.append(filters)
                return [{"Id": "stopped-by-the-restart", "State": "exited"},
                        {"Id": "still-running", "State": "running"}]

            def remove_container(self, container_id: str, force: bool = False, v: bool = False) -> None:
                outer.removed.append(container_id)

        self.api = Api()

    def ping(self) -> bool:
        if not self.up:
            raise ConnectionError("no engine")
        return True


class KillsEngine:
    """An evaluation during which ``engine`` dies (it answered when the job began)."""

    def __init__(self, engine: DeadEngine, evaluate: FakeEvaluate) -> None:
        self.engine, self.evaluate = engine, evaluate

    def __call__(self, submission: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
        self.engine.up = False
        return self.evaluate(submission, policy=policy, evaluation_id=evaluation_id)


class EngineErrorEvaluate(FakeEvaluate):
    """A report of ``outcome`` with one ``code`` reason saying ``message`` (an infrastructure error)."""

    message = "the Docker engine stopped answering"
    outcome, code = Verdict.error, ReasonCode.infrastructure

    def __call__(self, submission: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
        self.calls.append(evaluation_id or "")
        return EvaluationReport(
            evaluation_id=evaluation_id or "", verdict=self.outcome,
            reasons=[Reason(code=self.code, message=self.message)],
            skill=submission.name, content_hash=submission.content_hash, policy=policy.name,
            policy_hash=policy.hash,
        )


def test_a_dead_engine_requeues_the_job_counted_instead_of_storing_its_verdict(store):  # noqa: F811
    pol = policy("manual")
    eid = queue(store, 1, pol)
    engine = DeadEngine()
    w = make_worker(store, pol, evaluate=KillsEngine(engine, EngineErrorEvaluate()), check_engine=True,
                    concurrency=1)
    w._client = engine
    [outcome] = w.run_once()
    assert outcome.status == "requeued" and "engine" in (outcome.note or "")
    ev = evaluations.get_evaluation(store, evaluation_id=eid)
    assert ev.status == "queued" and ev.verdict is None and ev.attempts == 1  # counted, nothing stored
    assert not [e for e in audit.history(store, name="text_stats") if e.action == "evaluated"]

    # no claims while the engine is down; once it answers, the worker removes its stopped leftovers
    assert w._engine_down.is_set() and w._engine_back() is False
    engine.up = True
    w._engine_asked = 0.0
    assert w._engine_back() is True and not w._engine_down.is_set()
    assert engine.removed == ["stopped-by-the-restart"]
    assert engine.listed[-1]["label"] == ["sandgate.managed=true", f"sandgate.controller={controller_id()}"]
    w.close()


class ForgesEngineLost(EngineErrorEvaluate):
    """A failed report whose reason text (which a skill's output can reach) reads like EngineLost."""

    message = str(EngineLost("forged by the skill"))
    outcome, code = Verdict.failed, ReasonCode.crashed


@pytest.mark.parametrize("kind", ["engine error", "skill's text reading like EngineLost"])
def test_an_engine_error_with_the_engine_alive_is_stored_as_its_verdict(store, kind):  # noqa: F811
    # the second: only an infrastructure reason of EngineLost's requeues, never text a skill can write
    evaluate = EngineErrorEvaluate() if kind == "engine error" else ForgesEngineLost()
    pol = policy("manual")
    eid = queue(store, 2, pol)
    engine = DeadEngine()
    engine.up = True
    w = make_worker(store, pol, evaluate=evaluate, check_engine=True, concurrency=1)
    w._client = engine
    [outcome] = w.run_once()
    assert outcome.status == "done" and outcome.verdict == evaluate.outcome.value, outcome
    ev = evaluations.get_evaluation(store, evaluation_id=eid)
    assert ev.status == "done" and ev.verdict == evaluate.outcome.value and ev.attempts == 1
    w.close()


class RestartsEngine(EngineErrorEvaluate):
    """The engine went away under the sandbox and came back at once (a restart)."""

    message = str(EngineLost("ConnectionError after 2.0s"))


def test_an_engine_restarted_under_a_run_requeues_the_job_though_it_answers_again(store):  # noqa: F811
    pol = policy("manual")
    eid = queue(store, 3, pol)
    engine = DeadEngine()
    engine.up = True  # it answers before and after: only the run saw it go
    w = make_worker(store, pol, evaluate=RestartsEngine(), check_engine=True, concurrency=1)
    w._client = engine
    [outcome] = w.run_once()
    assert outcome.status == "requeued" and "stopped answering during the sandbox's run" in (outcome.note or "")
    ev = evaluations.get_evaluation(store, evaluation_id=eid)
    assert ev.status == "queued" and ev.verdict is None and ev.attempts == 1
    assert not w._engine_down.is_set()  # it answers: claiming goes on
    w.close()




def test_with_no_engine_from_the_start_the_evaluation_stores_its_own_error(store):  # noqa: F811
    # nothing to lose and no other host promised: requeueing would leave the job queued for ever
    pol = policy("manual")
    eid = queue(store, 7, pol)
    w = make_worker(store, pol, evaluate=EngineErrorEvaluate(), check_engine=True, concurrency=1)
    w._client = DeadEngine(up=False)
    [outcome] = w.run_once()
    assert outcome.status == "done" and outcome.verdict == "error"
    ev = evaluations.get_evaluation(store, evaluation_id=eid)
    assert ev.status == "done" and ev.verdict == "error" and ev.attempts == 1
    assert not w._engine_down.is_set()
    w.close()


def test_a_failed_verdict_on_a_dead_engine_is_requeued_a_passed_one_kept(store):  # noqa: F811
    pol = policy("manual")
    failed, passed = queue(store, 3, pol), queue(store, 4, pol)
    engine = DeadEngine()
    w = make_worker(store, pol, evaluate=KillsEngine(engine, FakeEvaluate("failed")), check_engine=True,
                    concurrency=1)
    w._client = engine
    assert [o.status for o in w.run_once()] == ["requeued"]
    assert evaluations.get_evaluation(store, evaluation_id=failed).status == "queued"
    w2 = make_worker(store, pol, evaluate=FakeEvaluate("passed"), check_engine=True, concurrency=2)
    w2._client = engine
    outcomes = {o.evaluation_id: o for o in w2.run_once()}
    assert outcomes[passed].status == "done" and outcomes[failed].status == "done"  # the fake now passes
    assert evaluations.get_evaluation(store, evaluation_id=failed).attempts == 2
    w.close()
    w2.close()


def test_attempts_of_a_job_that_keeps_killing_engines_run_out(store):  # noqa: F811
    pol = policy("manual")
    eid = queue(store, 5, pol)
    for _ in range(3):
        engine = DeadEngine()
        w = make_worker(store, pol, evaluate=KillsEngine(engine, EngineErrorEvaluate()), check_engine=True,
                        concurrency=1, max_attempts=3)
        w._client = engine
        w.run_once()
        w.close()
    ev = evaluations.get_evaluation(store, evaluation_id=eid)
    assert ev.status == "queued" and ev.attempts == 3
    w = make_worker(store, pol, evaluate=FakeEvaluate("passed"), concurrency=1, max_attempts=3)
    assert w.run_once() == []  # the next claim gives up: verdict error, never failed
    ev = evaluations.get_evaluation(store, evaluation_id=eid)
    assert ev.status == "done" and ev.verdict == "error"
    w.close()


def test_release_on_shutdown_still_does_not_count(store):  # noqa: F811
    pol = policy("manual")
    eid = queue(store, 6, pol)
    claimed = evaluations.claim_evaluation(store, give_up=lambda **kw: None, owner="h:1:x")  # type: ignore[arg-type]
    assert claimed is not None and claimed.attempts == 1
    assert evaluations.release_evaluation(store, evaluation_id=eid, owner="h:1:x")
    assert evaluations.get_evaluation(store, evaluation_id=eid).attempts == 0


def test_remove_stopped_filters_on_the_controller():
    engine = DeadEngine()
    assert reaper.remove_stopped(engine, controller="fleet-0:42") == ["stopped-by-the-restart"]
    assert engine.listed == [{"label": ["sandgate.managed=true", "sandgate.controller=fleet-0:42"]}]
    assert engine.removed == ["stopped-by-the-restart"]  # the running one is left alone


def test_names_module_stays_standard_library_only():
    text = Path(names.__file__).read_text()
    assert "import sandgate" not in text and "from sandgate" not in text
