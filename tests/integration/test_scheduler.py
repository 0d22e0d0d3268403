"""Scheduler jobs, each called directly (no sleeping on APScheduler's timing):
lease recovery, the orphan reaper (real Docker), retention, the static re-scan
(real sandbox, a rule file added to a temporary policies directory), the wiring."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from sandgate import lifecycle
from sandgate.config import Settings
from sandgate.policy import load_policy
from sandgate.report import EvaluationReport, Verdict, gave_up
from sandgate.sandbox.runner import (
    CONTROLLER_LABEL,
    EVALUATION_LABEL,
    MANAGED_LABEL,
    controller_id,
)
from sandgate.scheduler import (
    JOBS,
    SchedulerSettings,
    apply_retention,
    build_scheduler,
    reap_orphans,
    recover_leases,
    rescan_active,
)
from sandgate.store import audit, evaluations, open_store, pointers, versions
from sandgate.store.models import Evaluation
from sandgate.submission import submission_from_files
from tests.integration.conftest_store import (
    make_policy,
    make_report,
    passed_version,
    variant,
)

pytest_plugins = ["tests.integration.conftest_store"]

ROOT = Path(__file__).resolve().parents[2]
SKILL = ROOT / "examples" / "skills" / "text_stats"


def text_stats(i: int) -> Any:
    files = {str(p.relative_to(SKILL)): p.read_bytes() for p in sorted(SKILL.rglob("*")) if p.is_file()}
    files["text_stats.py"] += f"\n# variant {i}\n".encode()
    return submission_from_files(files)


def _passed(submission: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
    return EvaluationReport(evaluation_id=evaluation_id or "", verdict=Verdict.passed,
                            policy=policy.name, policy_hash=policy.hash)


# --------------------------------------------------------------------------- lease recovery


def test_recover_leases_job(store):
    v, _ = versions.create_version(store, submission=variant("greet", 1), actor="t")
    ev = evaluations.queue_evaluation(store, name="greet", number=1, policy_name="p", policy_hash="h")
    evaluations.claim_evaluation(store, give_up=gave_up, owner="dead-worker", lease_seconds=30)
    assert recover_leases(store) == {"requeued": [], "gave_up": []}  # the lease is live
    with store.write() as s:
        s.execute(update(Evaluation).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert recover_leases(store, max_attempts=3) == {"requeued": [ev.id], "gave_up": []}
    for _ in range(2):
        evaluations.claim_evaluation(store, give_up=gave_up, owner="w", lease_seconds=30)
        with store.write() as s:
            s.execute(update(Evaluation).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert recover_leases(store, max_attempts=3) == {"requeued": [], "gave_up": [ev.id]}
    rec = evaluations.get_evaluation(store, evaluation_id=ev.id)
    assert rec.verdict == "error" and "gave up after 3 attempts" in rec.reasons[0]["message"]
    assert v.number == 1


@pytest.mark.postgres
def test_store_wide_jobs_run_on_one_scheduler_at_a_time(pg_server, pg_template):
    """PostgreSQL: while another scheduler holds a job's advisory lock, this one skips it."""
    import zlib

    url = pg_server.create_database("sched_lock", template=pg_template)
    store = open_store(url)
    try:
        versions.create_version(store, submission=variant("greet", 1), actor="t")
        ev = evaluations.queue_evaluation(store, name="greet", number=1, policy_name="p", policy_hash="h")
        evaluations.claim_evaluation(store, give_up=gave_up, owner="w", lease_seconds=30)
        with store.write() as s:
            s.execute(update(Evaluation).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        key = 0x5A6E_D000_0000_0000 | zlib.crc32(b"recover_leases")
        with store.engine.connect() as other:
            assert other.scalar(select(func.pg_try_advisory_lock(key)))
            assert recover_leases(store) == {"requeued": [], "gave_up": []}
            other.scalar(select(func.pg_advisory_unlock(key)))
        assert recover_leases(store) == {"requeued": [ev.id], "gave_up": []}
    finally:
        store.close()
        pg_server.drop_database("sched_lock")


# --------------------------------------------------------------------------- orphan reaper


def test_reap_orphans(docker_client, sandbox_image, tmp_path):
    """Dead controllers' sandboxes go at once; old ones go unless their evaluation still runs
    under their controller's lease; recent sandboxes of live controllers stay."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    tag = f"sandgate.test={uuid.uuid4().hex}"
    me = controller_id()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    versions.create_version(store, submission=variant("greet", 1), actor="t")
    held = evaluations.queue_evaluation(store, name="greet", number=1, policy_name="p", policy_hash="h")
    evaluations.claim_evaluation(store, give_up=gave_up, owner=f"{me}:abcd", lease_seconds=3600)

    def container(name: str, controller: str, evaluation: str) -> str:
        return docker_client.api.create_container(
            sandbox_image, entrypoint=["python3", "-c", "pass"], network_disabled=True,
            name=f"sandgate-test-{name}-{uuid.uuid4().hex[:6]}",
            labels={MANAGED_LABEL: "true", CONTROLLER_LABEL: controller, EVALUATION_LABEL: evaluation,
                    tag.split("=")[0]: tag.split("=")[1]},
        )["Id"]  # fmt: skip

    ids = {
        "dead": container("dead", f"{socket.gethostname()}:{dead.pid}", "ev-dead"),
        "live": container("live", me, "ev-unknown"),
        "held": container("held", me, held.id),
        "remote": container("remote", "some-other-host:1", "ev-remote"),
    }
    try:
        removed = reap_orphans(store, client=docker_client, labels=(tag,))
        assert removed == [ids["dead"]]
        # much later: past the longest policy timeout + grace
        later = time.time() + 3600
        removed = reap_orphans(store, client=docker_client, labels=(tag,), now=later)
        assert sorted(removed) == sorted([ids["live"], ids["remote"]])
        left = [c["Id"] for c in docker_client.api.containers(all=True, filters={"label": [tag]})]
        assert left == [ids["held"]]  # its evaluation still runs under this controller's lease
        evaluations.release_evaluation(store, evaluation_id=held.id, owner=f"{me}:abcd")
        assert reap_orphans(store, client=docker_client, labels=(tag,), now=later) == [ids["held"]]
    finally:
        for c in docker_client.api.containers(all=True, filters={"label": [tag]}):
            docker_client.api.remove_container(c["Id"], force=True)
        store.close()


# --------------------------------------------------------------------------- retention


def test_retention_job_respects_days_and_ever_active_versions(store):
    policy = make_policy()
    passed_version(store, "greet", 1, policy)
    pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    versions.create_version(store, submission=variant("greet", 2), actor="t")
    ids = []
    for k, verdict in enumerate(("failed", "error", "failed")):
        for number in (1, 2):
            ev = evaluations.record_evaluation(
                store, name="greet", number=number, policy_name=policy.name, policy_hash=policy.hash,
                report=make_report(verdict, f"e{number}-{k}", output="out"),
            )  # fmt: skip
            with store.write() as s:
                at = datetime.now(UTC) - timedelta(days=40, hours=k)
                s.execute(update(Evaluation).where(Evaluation.id == ev.id).values(created_at=at, finished_at=at))
            ids.append(ev.id)
    assert apply_retention(store, days=60) == {"deleted": 0, "outputs_dropped": 0}
    # v2 (never active): the newest conclusive (e2-0) and the newest (e2-0) stay; e2-1, e2-2 go
    assert apply_retention(store, days=30) == {"deleted": 2, "outputs_dropped": 1}
    v1 = [e for e in ids if e.startswith("e1-")]
    assert all(evaluations.get_evaluation(store, evaluation_id=e).report["output"] == "out" for e in v1)
    assert evaluations.get_evaluation(store, evaluation_id="e2-0").report["output"] == ""


# --------------------------------------------------------------------------- re-scan


NEW_RULE = b"""rules:
  - id: no-regex-compile
    languages: [python]
    severity: ERROR
    message: Compiled regular expressions are no longer allowed.
    metadata:
      severity: high
      category: resource-use
    pattern: re.compile(...)
"""


def test_rescan_flags_active_versions_when_a_new_rule_blocks_them(docker_client, sandbox_image, tmp_path, no_leftovers):
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    settings = Settings(policies_dir=policies, home=tmp_path / "home")
    policy = load_policy("default", policies_dir=policies)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        for i in (1, 2):
            r = lifecycle.submit(store, submission=text_stats(i), policy=policy, actor="t", evaluate=_passed)
            assert r.promoted is not None
        assert rescan_active(store, settings=settings, policy=policy) == [
            {"skill": "text_stats", "version": 2, "findings": [], "status": "clean"}
        ]

        (policies / "semgrep" / "no-regex-compile.yml").write_bytes(NEW_RULE)
        [flagged] = rescan_active(store, settings=settings, policy=policy, action="flag")
        assert flagged["status"] == "flagged" and flagged["version"] == 2
        assert {f["rule_id"] for f in flagged["findings"]} == {"no-regex-compile"}
        event = audit.history(store, name="text_stats")[-1]
        assert event.action == "flagged" and event.actor == "scheduler:rescan" and event.version == 2
        assert "no-regex-compile" in event.reason
        assert event.evidence["findings"][0]["path"] == "text_stats.py"
        assert event.evidence["rules_fingerprint"].startswith("sha256:")
        assert event.evidence["policy_hash"] == policy.hash and event.evidence["action"] == "flag"
        assert pointers.active_pointer(store, name="text_stats")[0] == 2  # flag only

        [again] = rescan_active(store, settings=settings, policy=policy, action="flag")
        assert again["status"] == "already_flagged"  # the same findings are not flagged twice

        # quarantine: the new findings on a new version roll the skill back
        (policies / "semgrep" / "no-regex-compile.yml").write_bytes(
            NEW_RULE.replace(b"pattern: re.compile(...)", b"pattern-either:\n      - pattern: re.compile(...)\n"
                             b"      - pattern: Counter(...)")
        )  # fmt: skip
        [q] = rescan_active(store, settings=settings, policy=policy, action="quarantine")
        assert q["status"] == "quarantined" and q["rolled_back_to"] == 1, q
        assert pointers.active_pointer(store, name="text_stats")[0] == 1
        moved = audit.history(store, name="text_stats")[-1]
        assert moved.action == "rolled_back" and moved.evidence["flagged_event"] == q["event_id"]
        # the version's own status and evaluations are untouched: a static scan is not an evaluation
        assert versions.get_version(store, name="text_stats", number=2).status == "passed"
    finally:
        store.close()


def test_rescan_reports_infrastructure_errors_without_flagging(store, tmp_path):
    policy = load_policy("default")
    lifecycle.submit(store, submission=text_stats(1), policy=policy, actor="t", evaluate=_passed)

    def broken(submission: Any, *, policy: Any, settings: Any) -> Any:
        from sandgate.errors import EngineUnavailable

        raise EngineUnavailable("no engine")

    [r] = rescan_active(store, settings=Settings(home=tmp_path), policy=policy, evaluate=broken)
    assert r["status"] == "error" and "no engine" in r["note"]
    assert [e.action for e in audit.history(store, name="text_stats")] == ["submitted", "evaluated", "promoted"]


# --------------------------------------------------------------------------- wiring


def test_build_scheduler_wires_every_job_at_its_interval(store):
    ss = SchedulerSettings(lease_recovery_seconds=7, reap_seconds=11, retention_seconds=13, rescan_seconds=17,
                           canary_seconds=3)
    scheduler = build_scheduler(store, scheduler_settings=ss)
    jobs = {j.id: j for j in scheduler.get_jobs()}
    assert set(jobs) == set(JOBS)
    assert {k: j.trigger.interval.total_seconds() for k, j in jobs.items()} == {
        "recover_leases": 7, "reap_orphans": 11, "apply_retention": 13, "rescan_active": 17,
        "run_canaries": 3,
    }  # fmt: skip
    assert all(j.max_instances == 1 and j.coalesce for j in jobs.values())


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("SANDGATE_SCHEDULER_RESCAN_ACTION", "quarantine")
    monkeypatch.setenv("SANDGATE_SCHEDULER_RETENTION_DAYS", "7")
    ss = SchedulerSettings()
    assert ss.rescan_action == "quarantine" and ss.retention_days == 7


def test_cli_scheduler_once_and_worker_once(tmp_path):
    """``sandgate scheduler --once`` and ``sandgate worker --once`` on an empty store."""
    cli = ROOT / "platform" / "sandgate" / "cli" / "__init__.py"
    main = (
        "from sandgate.cli import app, _register\n_register()\n"
        "if not any(c.name == 'worker' for c in app.registered_commands):\n"
        "    from sandgate.cli import worker\n    worker.register(app)\n"
        "app(prog_name='sandgate')\n"
    )
    argv = [sys.executable, "-m", "sandgate"] if "worker" in cli.read_text() else [sys.executable, "-c", main]
    env = {**os.environ, "SANDGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "SANDGATE_HOME": str(tmp_path)}
    out = subprocess.run([*argv, "scheduler", "--once", "--job", "recover_leases", "--job", "apply_retention"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "recover_leases": {"requeued": [], "gave_up": []},
        "apply_retention": {"deleted": 0, "outputs_dropped": 0},
    }
    bad = subprocess.run([*argv, "scheduler", "--once", "--job", "nope"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "unknown job" in bad.stderr
    once = subprocess.run([*argv, "worker", "--once", "--concurrency", "1"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert once.returncode == 0 and once.stdout == "", once.stderr
