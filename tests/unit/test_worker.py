"""sandgate.worker with a fake evaluate and a fake Docker client, on a real SQLite store.

The real-Docker, real-PostgreSQL, several-processes behaviour is in
tests/integration/test_worker_processes.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from sandgate import lifecycle
from sandgate.errors import PolicyError
from sandgate.logs import JsonFormatter, configure_logging
from sandgate.names import controller_alive
from sandgate.names import owner_id as make_owner_id
from sandgate.policy import Policy, parse_policy
from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict, gave_up
from sandgate.store import Store, audit, evaluations, open_store, pointers, versions
from sandgate.store.models import Evaluation
from sandgate.submission import submission_from_files
from sandgate.worker import (
    Worker,
    default_concurrency,
)

ROOT = Path(__file__).resolve().parents[2]
SKILL = ROOT / "examples" / "skills" / "text_stats"


def skill_files(i: int, name: str = "text_stats") -> dict[str, bytes]:
    """Distinct, valid content number ``i`` of the example skill (optionally renamed)."""
    files = {
        str(p.relative_to(SKILL)): p.read_bytes() for p in sorted(SKILL.rglob("*")) if p.is_file()
    }
    files["text_stats.py"] += f"\n# variant {i}\n".encode()
    if name != "text_stats":
        files["skill.toml"] = files["skill.toml"].replace(b'name = "text_stats"', f'name = "{name}"'.encode())
    return files


def policy(mode: str = "auto", **gates: Any) -> Policy:
    return parse_policy({"promotion": {"mode": mode}, "gates": gates}, name="unit")


class FakeEvaluate:
    def __init__(self, verdict: str = "passed", gate: threading.Event | None = None) -> None:
        self.verdict = verdict
        self.gate = gate
        self.calls: list[str] = []
        self.started = threading.Event()

    def __call__(self, submission: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
        self.calls.append(evaluation_id or "")
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        reasons = [] if self.verdict == "passed" else [Reason(code=ReasonCode.tests_failed, message="x")]
        return EvaluationReport(
            evaluation_id=evaluation_id or "", verdict=Verdict(self.verdict), reasons=reasons,
            skill=submission.name, content_hash=submission.content_hash,
            policy=policy.name, policy_hash=policy.hash, output="lots of output",
        )  # fmt: skip


class FakeDocker:
    """Enough of docker.DockerClient for the worker's clean-up calls."""

    class _Api:
        def __init__(self) -> None:
            self.listed: list[dict[str, Any]] = []

        def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
            self.listed.append(filters)
            return []

    def __init__(self) -> None:
        self.api = self._Api()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def queue(store: Store, i: int, pol: Policy, name: str = "text_stats") -> str:
    sub = submission_from_files(skill_files(i, name))
    r = lifecycle.submit(store, submission=sub, policy=pol, actor="test", wait=False)
    assert r.queued
    return r.evaluation.id


def make_worker(store: Store, pol: Policy, **kw: Any) -> Worker:
    kw.setdefault("evaluate", FakeEvaluate())
    kw.setdefault("concurrency", 2)
    return Worker(store, load_policy=lambda name: pol, docker_client=FakeDocker(), **kw)


# --------------------------------------------------------------------------- processing


def test_run_once_evaluates_stores_and_auto_promotes(store):
    pol = policy("auto")
    ids = [queue(store, 1, pol), queue(store, 1, pol, name="other_skill")]
    ev = FakeEvaluate()
    w = make_worker(store, pol, evaluate=ev)
    outcomes = w.run_once()
    w.close()
    assert sorted(o.evaluation_id for o in outcomes) == sorted(ids)
    assert all(o.status == "done" and o.verdict == "passed" and o.promoted == 1 for o in outcomes)
    assert sorted(ev.calls) == sorted(ids)
    for eid in ids:
        rec = evaluations.get_evaluation(store, evaluation_id=eid)
        assert rec.status == "done" and rec.attempts == 1 and rec.lease_owner == w.owner
        assert rec.lease_expires_at is None
    events = audit.history(store, name="text_stats")
    assert [e.action for e in events] == ["submitted", "evaluated", "promoted"]
    assert events[1].evidence["worker"] == w.owner and events[1].evidence["attempt"] == 1
    assert events[2].actor == "policy:unit" and events[2].reason == "auto-promotion: passed unit"
    assert w.run_once() == []  # nothing left


def test_manual_mode_and_failed_verdicts_do_not_promote(store):
    queue(store, 1, policy("manual"))
    w = make_worker(store, policy("manual"))
    [o] = w.run_once()
    assert o.verdict == "passed" and o.promoted is None
    queue(store, 2, policy("auto"))
    w2 = make_worker(store, policy("auto"), evaluate=FakeEvaluate("failed"))
    [o2] = w2.run_once()
    assert o2.verdict == "failed" and o2.promoted is None
    assert pointers.active_pointer(store, name="text_stats") is None
    w.close(), w2.close()


def test_no_auto_promotion_over_a_newer_active_version(store):
    pol = policy("auto")
    first = queue(store, 1, pol)
    queue(store, 2, pol)
    w = make_worker(store, pol, concurrency=1)
    # v2 finishes first: claim v1, hand it back, so v2 runs before it
    claimed = evaluations.claim_evaluation(store, give_up=gave_up, owner="someone", lease_seconds=30)
    assert claimed.id == first
    [o2] = w.run_once()
    assert o2.version == 2 and o2.promoted == 2
    assert evaluations.release_evaluation(store, evaluation_id=first, owner="someone")
    [o1] = w.run_once()
    w.close()
    assert o1.version == 1 and o1.verdict == "passed" and o1.promoted is None
    assert "text_stats@2 is active and newer" in o1.note
    assert pointers.active_pointer(store, name="text_stats")[0] == 2


def test_policy_drift_records_the_hash_actually_used(store):
    queued_under = policy("auto")
    eid = queue(store, 1, queued_under)
    current = policy("auto", min_line_coverage=50.0)
    assert current.hash != queued_under.hash
    w = make_worker(store, current)
    [o] = w.run_once()
    w.close()
    rec = evaluations.get_evaluation(store, evaluation_id=eid)
    assert o.verdict == "passed" and rec.policy_hash == current.hash
    evaluated = [e for e in audit.history(store, name="text_stats") if e.action == "evaluated"][0]
    assert evaluated.evidence["policy_hash"] == current.hash
    assert evaluated.evidence["queued_policy_hash"] == queued_under.hash
    assert o.promoted == 1  # promote under the current policy finds the evaluation


def test_unloadable_policy_is_an_error_verdict_never_failed(store):
    eid = queue(store, 1, policy())

    def broken(name: str) -> Policy:
        raise PolicyError("policy file not found: nowhere.toml")

    w = Worker(store, evaluate=FakeEvaluate(), load_policy=broken, concurrency=1, docker_client=FakeDocker())
    [o] = w.run_once()
    w.close()
    rec = evaluations.get_evaluation(store, evaluation_id=eid)
    assert o.status == "done" and rec.verdict == "error"
    assert rec.reasons[0]["code"] == "infrastructure" and "cannot be loaded" in rec.reasons[0]["message"]
    assert versions.get_version(store, name="text_stats", number=1).status == "pending"


def test_corrupted_stored_bytes_are_an_error(store):
    eid = queue(store, 1, policy())
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE version_files SET content = CAST(? AS BLOB) WHERE path = 'text_stats.py'",
            (b"def analyse(text):\n    return {}\n",),
        )
    w = make_worker(store, policy())
    [o] = w.run_once()
    w.close()
    rec = evaluations.get_evaluation(store, evaluation_id=eid)
    assert rec.verdict == "error" and "stored bytes hash to" in rec.reasons[0]["message"]


def test_lost_lease_discards_the_result(store):
    """The worker stalls past its lease; another worker takes over: one completion only."""
    pol = policy()
    eid = queue(store, 1, pol)
    gate = threading.Event()
    slow = FakeEvaluate(gate=gate)
    docker = FakeDocker()
    w = Worker(store, evaluate=slow, load_policy=lambda n: pol, concurrency=1, lease_seconds=0.3,
               docker_client=docker)
    # stall the heartbeat so the lease lapses while the evaluation runs
    real_heartbeat = evaluations.heartbeat

    def stalled(*a: Any, **kw: Any) -> Any:
        time.sleep(1.0)
        return real_heartbeat(*a, **kw)

    import sandgate.worker as worker_module

    def heard() -> bool:
        return any(f and f"sandgate.evaluation={eid}" in f["label"] for f in docker.api.listed)

    worker_module.evaluations.heartbeat = stalled  # type: ignore[attr-defined]
    try:
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.extend(w.run_once()))
        t.start()
        assert slow.started.wait(5)
        time.sleep(0.4)  # the lease (0.3 s) lapses while the heartbeat is stalled
        other = evaluations.claim_evaluation(store, give_up=gave_up, owner="worker-b", lease_seconds=30)
        assert other is not None and other.id == eid and other.attempts == 2
        # the heartbeat notices and asks Docker for this controller's sandbox of it
        deadline = time.monotonic() + 5
        while not heard() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert heard(), docker.api.listed
        gate.set()
        t.join(10)
    finally:
        worker_module.evaluations.heartbeat = real_heartbeat  # type: ignore[attr-defined]
    w.close()
    [o] = result
    assert o.status == "lost" and "lease lost" in o.note
    assert evaluations.get_evaluation(store, evaluation_id=eid).status == "running"  # still worker-b's
    assert [e.action for e in audit.history(store, name="text_stats")] == ["submitted"]
    # worker-b finishes it: exactly one evaluated event
    lifecycle.run_evaluation(store, evaluation_id=eid, submission=submission_from_files(skill_files(1)),
                             policy=pol, evaluate=FakeEvaluate(), owner="worker-b")
    assert [e.action for e in audit.history(store, name="text_stats")] == ["submitted", "evaluated"]


def test_a_stalled_worker_reclaiming_its_own_job_does_not_run_it_twice(store):
    pol = policy()
    eid = queue(store, 1, pol)
    gate = threading.Event()
    slow = FakeEvaluate(gate=gate)
    w = Worker(store, evaluate=slow, load_policy=lambda n: pol, concurrency=2, lease_seconds=60,
               docker_client=FakeDocker())
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.extend(w.run_once(max_jobs=1)))
    t.start()
    assert slow.started.wait(5)
    with store.write() as s:  # the process stalled past its lease
        s.execute(update(Evaluation).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    again = w._claim()
    assert again is not None and again.id == eid and again.lease_owner == w.owner
    job = w._start(again)
    assert job.claimed.attempts == 1  # the job already running, not a second copy
    gate.set()
    t.join(10)
    w.close()
    assert slow.calls == [eid] and [o.status for o in result] == ["done"]
    assert [e.action for e in audit.history(store, name="text_stats")].count("evaluated") == 1


def test_graceful_stop_releases_running_jobs(store):
    pol = policy()
    eid = queue(store, 1, pol)
    gate = threading.Event()
    slow = FakeEvaluate(gate=gate)
    w = Worker(store, evaluate=slow, load_policy=lambda n: pol, concurrency=1, drain_seconds=0.2,
               poll_interval=0.05, docker_client=FakeDocker())
    t = threading.Thread(target=w.run_forever)
    t.start()
    assert slow.started.wait(5)
    w.stop()
    time.sleep(0.5)
    rec = evaluations.get_evaluation(store, evaluation_id=eid)
    assert rec.status == "queued" and rec.attempts == 0 and rec.lease_owner is None
    gate.set()
    t.join(10)
    assert not t.is_alive()
    # its late result was discarded; the next worker runs it from scratch
    assert [e.action for e in audit.history(store, name="text_stats")] == ["submitted"]
    w2 = make_worker(store, pol)
    [o] = w2.run_once()
    w2.close()
    assert o.status == "done" and o.attempt == 1


def test_run_forever_drains_finished_work_and_stops(store):
    pol = policy()
    ids = [queue(store, i, pol) for i in range(1, 6)]
    w = make_worker(store, pol, poll_interval=0.05)
    t = threading.Thread(target=w.run_forever)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(evaluations.get_evaluation(store, evaluation_id=e).status == "done" for e in ids):
            break
        time.sleep(0.05)
    w.stop()
    t.join(10)
    assert not t.is_alive()
    assert all(evaluations.get_evaluation(store, evaluation_id=e).status == "done" for e in ids)


# --------------------------------------------------------------------------- helpers


def test_default_concurrency_is_bounded_by_cpus_and_memory(monkeypatch):
    import sandgate.worker as worker_module

    monkeypatch.setattr(worker_module, "_cpu_count", lambda: 8)
    monkeypatch.setattr(worker_module, "_available_memory_bytes", lambda: 3 * 512 * 1024 * 1024)
    assert default_concurrency(policy()) == 3  # memory-bound
    monkeypatch.setattr(worker_module, "_available_memory_bytes", lambda: 100 * 1024**3)
    assert default_concurrency(policy()) == 12  # CPU-bound: 1.5 slots per CPU of sandbox quota
    half = parse_policy({"limits": {"cpus": 0.5}}, name="half")
    assert default_concurrency(half) == 24
    monkeypatch.setattr(worker_module, "_cpu_count", lambda: 2)
    assert default_concurrency(policy()) == 3
    monkeypatch.setattr(worker_module, "_available_memory_bytes", lambda: 1)
    assert default_concurrency(policy()) == 1  # never zero


def test_owner_id_names_host_and_pid():
    host, pid, rand = make_owner_id().rsplit(":", 2)
    assert host == socket.gethostname() and pid == str(os.getpid()) and len(rand) == 8
    assert make_owner_id() != make_owner_id()


def test_controller_alive():
    host = socket.gethostname()
    assert controller_alive(f"{host}:{os.getpid()}") is True
    assert controller_alive("some-other-host:1") is None  # not ours to judge
    assert controller_alive(None) is None and controller_alive("garbage") is None
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert controller_alive(f"{host}:{proc.pid}") is False
    # a live process that started after the container was created: a reused pid
    assert controller_alive(f"{host}:{os.getppid()}", created_epoch=time.time() - 5) is True
    assert controller_alive(f"{host}:{os.getpid()}", created_epoch=0.0) is True  # ourselves
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert controller_alive(f"{host}:{child.pid}", created_epoch=time.time() - 60) is False
        assert controller_alive(f"{host}:{child.pid}", created_epoch=time.time()) is True
    finally:
        child.kill()
        child.wait()


def test_json_log_lines_carry_the_evaluation_id():
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        logging.getLogger("sandgate.worker").info(
            "evaluated", extra={"evaluation_id": "e-1", "skill": "s", "version": 2}
        )
    finally:
        logging.getLogger("sandgate").handlers.clear()
    line = json.loads(out.getvalue().strip())
    assert line["msg"] == "evaluated" and line["evaluation_id"] == "e-1" and line["version"] == 2
    assert line["level"] == "info" and line["logger"] == "sandgate.worker" and "ts" in line
    record = logging.LogRecord("x", logging.ERROR, "", 0, "boom %s", ("!",), None)
    assert json.loads(JsonFormatter().format(record))["msg"] == "boom !"
