"""No full scans: every lookup the repository makes uses an index (SQLite's query planner says so).

Each repository call runs with a listener that records its SQL; every SELECT,
UPDATE and DELETE is then run through ``EXPLAIN QUERY PLAN`` (tests/unit/query_plans.py), and a ``SCAN`` of a store
table (a full table or full index scan) fails the test. ``list_skills`` and an
unfiltered ``active_pointers`` read every skill by design and are not checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandgate.report import EvaluationReport, Verdict, gave_up
from sandgate.store import Store, audit, evaluations, open_store, pointers, versions
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
        pointers.promote(s, name=name, number=1, actor="t", policy=POLICY)
        pointers.promote(s, name=name, number=2, actor="t", policy=POLICY)
    analysed(s)
    return path


@pytest.fixture
def store(plans_db: Path, tmp_path: Path) -> Iterator[Store]:
    yield from copied_store(plans_db, tmp_path)



CALLS = {
    "get_skill": lambda s: versions.get_skill(s, name="skill_7"),
    "get_version": lambda s: versions.get_version(s, name="skill_7", number=2),
    "get_active_version": lambda s: versions.get_active_version(s, name="skill_7"),
    "list_versions": lambda s: versions.list_versions(s, name="skill_7"),
    "get_version_files": lambda s: versions.get_version_files(s, name="skill_7", number=2),
    "latest_evaluation": lambda s: evaluations.latest_evaluation(s, name="skill_7", number=2, policy_hash="sha256:p"),
    "active_pointer": lambda s: pointers.active_pointer(s, name="skill_7"),
    "active_pointers(names)": lambda s: pointers.active_pointers(s, names=["skill_7", "skill_8"]),
    "history": lambda s: audit.history(s, name="skill_7", limit=10),
    "diff": lambda s: versions.diff(s, name="skill_7", a=1, b=2),
    "create_version": lambda s: versions.create_version(s, submission=submission("skill_7", 9), actor="t"),
    "promote": lambda s: pointers.promote(s, name="skill_7", number=3, actor="t", policy=POLICY),
    "rollback": lambda s: pointers.rollback(s, name="skill_7", actor="t"),
    "rollback(to)": lambda s: pointers.rollback(s, name="skill_7", to=1, actor="t"),
    "yank": lambda s: pointers.yank(s, name="skill_7", number=3, actor="t", reason="x"),
    "claim_evaluation": lambda s: evaluations.claim_evaluation(s, give_up=gave_up),
    "begin_evaluation": lambda s: evaluations.begin_evaluation(
        s, name="skill_7", number=3, policy_name="default", policy_hash="sha256:other"
    ),
    "promote(over_newer=False)": lambda s: pointers.promote(
        s, name="skill_7", number=3, actor="t", policy=POLICY, over_newer=False
    ),
}


@pytest.mark.parametrize("op", list(CALLS))
def test_no_full_scans(store: Store, op: str) -> None:
    plans = capture_plans(store, lambda: CALLS[op](store))
    assert plans, "no statements captured"
    scans = [(sql, plan) for sql, plan in plans if SCAN.search(plan)]
    assert not scans, "\n\n".join(f"{sql}\n--> {plan}" for sql, plan in scans)


def test_the_check_sees_a_full_scan(store: Store) -> None:
    """list_skills reads every skill by design: the detector must flag it (it is not vacuous)."""
    plans = capture_plans(store, lambda: versions.list_skills(store))
    assert any(SCAN.search(plan) for _, plan in plans)
