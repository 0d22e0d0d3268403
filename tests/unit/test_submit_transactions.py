"""One embedded submit is a handful of store transactions, not a conversation.

Counted with SQLAlchemy's ``begin`` event on a real SQLite store (the evaluator
is a fake: the sandbox is not what is counted).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from sandgate import lifecycle
from sandgate.policy import load_policy
from sandgate.report import EvaluationReport, Verdict
from sandgate.store import open_store
from sandgate.submission import load_submission

SKILLS = Path(__file__).resolve().parents[2] / "examples" / "skills"


def _passed(submission, *, policy, evaluation_id=None):  # type: ignore[no-untyped-def]
    return EvaluationReport(evaluation_id=evaluation_id or "x", verdict=Verdict.passed,
                            skill=submission.name, content_hash=submission.content_hash,
                            policy=policy.name, policy_hash=policy.hash)


@pytest.fixture
def counted(tmp_path):  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    begins = {"n": 0}
    event.listen(store.engine, "begin", lambda _conn: begins.__setitem__("n", begins["n"] + 1))
    yield store, begins
    store.close()


def test_a_fresh_submit_that_auto_promotes_is_five_transactions(counted) -> None:
    store, begins = counted
    policy = load_policy("default")
    # store the version · reuse/open the evaluation · store the report · promote · read the version
    for name in ("text_stats", "text_stats_v2"):
        begins["n"] = 0
        r = lifecycle.submit(store, submission=load_submission(SKILLS / name), policy=policy,
                             actor="t", evaluate=_passed)
        assert r.verdict == "passed" and r.promoted is not None
        assert begins["n"] == 5


def test_a_resubmit_and_a_queued_submit_are_two(counted) -> None:
    store, begins = counted
    policy = load_policy("default")
    lifecycle.submit(store, submission=load_submission(SKILLS / "text_stats"), policy=policy,
                     actor="t", evaluate=_passed)
    begins["n"] = 0
    again = lifecycle.submit(store, submission=load_submission(SKILLS / "text_stats"), policy=policy,
                             actor="t", evaluate=_passed)
    assert again.reused_evaluation and begins["n"] == 2
    begins["n"] = 0
    queued = lifecycle.submit(store, submission=load_submission(SKILLS / "csv_summary"), policy=policy,
                              actor="t", wait=False)
    assert queued.queued and begins["n"] == 2
