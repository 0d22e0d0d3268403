"""No full scans in the queue, retention and flag queries (SQLite's query planner says so).

Same method as tests/unit/test_store_plans.py: record every SELECT/UPDATE/DELETE
a repository call makes, run each through ``EXPLAIN QUERY PLAN``, and fail on
a ``SCAN`` of a store table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from sandgate.errors import QueueFull
from sandgate.report import EvaluationReport, Verdict, gave_up
from sandgate.store import Store, evaluations, open_store, pointers, versions
from sandgate.store.models import Evaluation
from tests.unit.query_plans import POLICY, SCAN, analysed, capture_plans, copied_store, submission


@pytest.fixture(scope="module")
def plans_db(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """The populated store, built once per module; each test gets a copy (see ``store``)."""
    path = tmp_path_factory.mktemp("plans") / "plans.db"
    s = open_store(f"sqlite:///{path}")
    for k in range(10):
        name = f"skill_{k}"
        for i in range(1, 4):
            v, _ = versions.create_version(s, submission=submission(name, i), actor="t")
            evaluations.record_evaluation(
                s, name=name, number=v.number,
                report=EvaluationReport(evaluation_id=f"{name}-{i}", verdict=Verdict.passed),
                policy_name=POLICY.name, policy_hash=POLICY.hash,
            )  # fmt: skip
            evaluations.queue_evaluation(s, name=name, number=v.number, policy_name="p", policy_hash="h",
                                  evaluation_id=f"q-{name}-{i}", tenant=("key:a", "key:b", "local")[k % 3])
        pointers.promote(s, name=name, number=1, actor="t", policy=POLICY)
    evaluations.record_evaluation(
        s, name="skill_5", number=2, report=EvaluationReport(evaluation_id="skill_5-2b", verdict=Verdict.failed),
        policy_name=POLICY.name, policy_hash=POLICY.hash,
    )  # fmt: skip
    for k in range(5):
        evaluations.claim_evaluation(s, give_up=gave_up, owner=f"w{k}", lease_seconds=3600)  # outlives the module
    old = datetime.now(UTC) - timedelta(days=40)
    with s.write() as session:
        session.execute(update(Evaluation).where(Evaluation.lease_owner == "w0")
                        .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=5)))
        # a few old evaluations of a never-active version: the retention candidates
        session.execute(update(Evaluation).where(Evaluation.id.in_(["skill_5-2", "skill_5-3"]))
                        .values(created_at=old, finished_at=old))
        session.execute(update(Evaluation).where(Evaluation.id == "skill_5-2b")
                        .values(created_at=old - timedelta(days=1), finished_at=old - timedelta(days=1)))
    analysed(s)
    return path


@pytest.fixture
def store(plans_db: Path, tmp_path: Path) -> Iterator[Store]:
    yield from copied_store(plans_db, tmp_path)



def _running_id(store: Store) -> str:
    with store.read() as s:
        return s.scalars(select(Evaluation.id).where(Evaluation.lease_owner == "w1")).one()


def _full(s: Store) -> None:
    try:
        evaluations.queue_evaluation(s, name="skill_7", number=3, policy_name="p", policy_hash="h2",
                                     tenant="key:a", max_queued=1)
    except QueueFull:
        return
    raise AssertionError("key:a has more than one queued: expected QueueFull")


CALLS = {
    "claim_evaluation(lapsed first)": lambda s, rid: evaluations.claim_evaluation(
        s, give_up=gave_up, owner="x", lease_seconds=30
    ),
    "claim_evaluation(fair, after the lapsed one)": lambda s, rid: [
        evaluations.claim_evaluation(s, give_up=gave_up, owner="x", lease_seconds=30) for _ in range(2)
    ],
    "queue_evaluation(max_queued)": lambda s, rid: evaluations.queue_evaluation(
        s, name="skill_7", number=3, policy_name="p", policy_hash="h2", tenant="key:c", max_queued=5
    ),
    "queue_evaluation(full: QueueFull)": lambda s, rid: _full(s),
    "heartbeat": lambda s, rid: evaluations.heartbeat(s, evaluation_id=rid, owner="w1", lease_seconds=30),
    "release_evaluation": lambda s, rid: evaluations.release_evaluation(s, evaluation_id=rid, owner="w1"),
    "finish_evaluation(owner)": lambda s, rid: evaluations.finish_evaluation(
        s, evaluation_id=rid, owner="w1", report=EvaluationReport(evaluation_id="x", verdict=Verdict.passed)
    ),
    "recover_leases": lambda s, rid: evaluations.recover_leases(s, give_up=gave_up, stale_seconds=60),
    "prune_evaluations": lambda s, rid: evaluations.prune_evaluations(s, before=datetime.now(UTC) - timedelta(days=30)),
    "flag_version": lambda s, rid: pointers.flag_version(
        s, name="skill_3", number=1, actor="t", reason="r", evidence={"fingerprint": "f"}, quarantine=True
    ),
}


def test_prune_fixture_has_work(store: Store) -> None:
    assert evaluations.prune_evaluations(store, before=datetime.now(UTC) - timedelta(days=30)) == {
        "deleted": 1,
        "outputs_dropped": 0,
    }


@pytest.mark.parametrize("op", list(CALLS))
def test_no_full_scans(store: Store, op: str) -> None:
    rid = _running_id(store)
    plans = capture_plans(store, lambda: CALLS[op](store, rid))
    assert plans, "no statements captured"
    scans = [(sql, plan) for sql, plan in plans if SCAN.search(plan)]
    assert not scans, "\n\n".join(f"{sql}\n--> {plan}" for sql, plan in scans)
