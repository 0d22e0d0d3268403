"""sandgate.lifecycle with a fake evaluate, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from sandgate import lifecycle
from sandgate.errors import EngineUnavailable, SubmissionError
from sandgate.report import gave_up
from sandgate.store import audit, evaluations, pointers
from tests.integration.conftest_store import FakeEvaluate, make_policy, variant

pytest_plugins = ["tests.integration.conftest_store"]

AUTO = make_policy(mode="auto")
MANUAL = make_policy(mode="manual")


def test_auto_promotion_on_pass(store):
    ev = FakeEvaluate("passed")
    r = lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="agent", evaluate=ev)
    assert r.created and r.verdict == "passed" and not r.reused_evaluation
    assert r.promotion_mode == "auto" and r.promoted is not None and r.promotion_note is None
    assert r.promoted.to_version == 1 and r.version.active
    assert len(ev.calls) == 1 and ev.calls[0][1] == r.evaluation.id
    assert r.report.verdict.value == "passed" and r.report.evaluation_id == r.evaluation.id
    events = audit.history(store, name="greet")
    assert [e.action for e in events] == ["submitted", "evaluated", "promoted"]
    promoted = events[-1]
    assert promoted.actor == "policy:default" and promoted.reason == "auto-promotion: passed default"
    assert promoted.evidence["evaluation_id"] == r.evaluation.id


def test_manual_mode_does_not_promote(store):
    r = lifecycle.submit(
        store, submission=variant("greet", 1), policy=MANUAL, actor="agent", evaluate=FakeEvaluate()
    )
    assert r.verdict == "passed" and r.promoted is None and r.promotion_mode == "manual"
    assert pointers.active_pointer(store, name="greet") is None
    m = lifecycle.promote(store, name="greet", number=1, actor="human", reason="ok", policy=MANUAL)
    assert m.to_version == 1


def test_idempotent_resubmit_reuses_version_and_evaluation(store):
    ev = FakeEvaluate("passed")
    first = lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=ev)
    again = lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="b", evaluate=ev)
    assert len(ev.calls) == 1
    assert not again.created and again.reused_evaluation
    assert again.version.number == first.version.number and again.evaluation.id == first.evaluation.id
    assert again.promoted is None  # already active: nothing to do
    # a new policy hash means a new evaluation of the same version
    other = make_policy(hash="sha256:policy-2", mode="manual")
    third = lifecycle.submit(store, submission=variant("greet", 1), policy=other, actor="c", evaluate=ev)
    assert len(ev.calls) == 2 and not third.reused_evaluation and third.version.number == 1
    auto2 = make_policy(hash="sha256:policy-3", mode="auto")
    fourth = lifecycle.submit(store, submission=variant("greet", 1), policy=auto2, actor="d", evaluate=ev)
    assert fourth.verdict == "passed" and fourth.promoted is None and fourth.promotion_note is None
    assert pointers.active_pointer(store, name="greet") == (1, 1)  # still active, no extra move


def test_resubmit_of_a_rolled_back_version_does_not_promote_it_again(store):
    ev = FakeEvaluate("passed")
    lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=ev)
    lifecycle.submit(store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=ev)
    lifecycle.rollback(store, name="greet", actor="oncall", reason="2 is bad")
    r = lifecycle.submit(store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=ev)
    assert r.reused_evaluation and r.promoted is None and "not promoted again" in r.promotion_note
    assert pointers.active_pointer(store, name="greet")[0] == 1


def test_failed_verdict_leaves_the_old_active_version(store):
    lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=FakeEvaluate())
    r = lifecycle.submit(
        store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=FakeEvaluate("failed")
    )
    assert r.verdict == "failed" and r.promoted is None and r.version.status == "failed"
    assert pointers.active_pointer(store, name="greet") == (1, 1)
    # a failed evaluation is conclusive: it is reused, not re-run
    ev = FakeEvaluate("passed")
    again = lifecycle.submit(store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=ev)
    assert again.reused_evaluation and again.verdict == "failed" and ev.calls == []


def test_error_verdict_never_promotes_and_is_retried(store):
    lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=FakeEvaluate())
    r = lifecycle.submit(
        store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=FakeEvaluate("error")
    )
    assert r.verdict == "error" and r.promoted is None
    assert r.version.status == "pending"  # not counted against the skill
    assert pointers.active_pointer(store, name="greet") == (1, 1)
    retry = lifecycle.submit(
        store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=FakeEvaluate()
    )
    assert not retry.reused_evaluation and retry.verdict == "passed" and retry.promoted.to_version == 2


def test_evaluator_exceptions_become_verdicts(store):
    def broken(submission, *, policy, evaluation_id=None):
        raise EngineUnavailable("no Docker engine answers")

    r = lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=broken)
    assert r.verdict == "error" and r.evaluation.reasons[0]["code"] == "infrastructure"
    assert "no Docker engine answers" in r.evaluation.reasons[0]["message"]

    def rejecting(submission, *, policy, evaluation_id=None):
        raise SubmissionError("bad manifest", code="invalid_submission")

    r = lifecycle.submit(store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=rejecting)
    assert r.verdict == "rejected" and r.version.status == "rejected"

    def buggy(submission, *, policy, evaluation_id=None):
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError):
        lifecycle.submit(store, submission=variant("greet", 3), policy=AUTO, actor="a", evaluate=buggy)
    latest = evaluations.latest_evaluation(store, name="greet", number=3)
    assert latest.status == "done" and latest.verdict == "error"  # never left dangling


def test_no_wait_only_queues_then_a_worker_finishes(store):
    ev = FakeEvaluate()
    r = lifecycle.submit(
        store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=ev, wait=False
    )
    assert r.queued and r.evaluation.status == "queued" and r.verdict is None and ev.calls == []
    again = lifecycle.submit(
        store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=ev, wait=False
    )
    assert again.evaluation.id == r.evaluation.id  # not queued twice
    # a worker's shape: claim, run, store
    claimed = evaluations.claim_evaluation(store, give_up=gave_up)
    assert claimed.id == r.evaluation.id
    done = lifecycle.run_evaluation(
        store, evaluation_id=claimed.id, submission=variant("greet", 1), policy=AUTO, evaluate=ev
    )
    assert done.verdict == "passed"
    # waiting submit picks up a queued evaluation instead of creating another
    r2 = lifecycle.submit(store, submission=variant("greet", 2), policy=MANUAL, actor="a", evaluate=ev, wait=False)
    r3 = lifecycle.submit(store, submission=variant("greet", 2), policy=MANUAL, actor="a", evaluate=ev)
    assert r3.evaluation.id == r2.evaluation.id and r3.verdict == "passed"


def test_lost_promotion_race_is_reported_not_raised(store):
    lifecycle.submit(store, submission=variant("greet", 1), policy=AUTO, actor="a", evaluate=FakeEvaluate())

    def concurrent_winner(session) -> None:
        # between our read of the generation and our compare-and-set, another
        # mover's committed UPDATE lands (emulated inside our transaction, so it
        # behaves the same on both backends and is rolled back with it)
        store.hooks.pop("move.before_cas")
        session.execute(text("UPDATE skills SET generation = generation + 1 WHERE name = 'greet'"))

    def evaluate(submission, *, policy, evaluation_id=None):
        store.hooks["move.before_cas"] = concurrent_winner
        return FakeEvaluate()(submission, policy=policy, evaluation_id=evaluation_id)

    try:
        r = lifecycle.submit(store, submission=variant("greet", 2), policy=AUTO, actor="a", evaluate=evaluate)
    finally:
        store.hooks.clear()
    assert r.verdict == "passed" and r.promoted is None
    assert r.promotion_note == (
        "auto-promotion did not happen: skill greet moved concurrently: expected generation 1, now 2"
    )
    assert pointers.active_pointer(store, name="greet") == (1, 1)
    assert [e.action for e in audit.history(store, name="greet")].count("promoted") == 1


def test_yanked_version_is_not_evaluated_again(store):
    lifecycle.submit(store, submission=variant("greet", 1), policy=MANUAL, actor="a", evaluate=FakeEvaluate())
    lifecycle.yank(store, name="greet", number=1, actor="sec", reason="leak")
    ev = FakeEvaluate()
    r = lifecycle.submit(
        store, submission=variant("greet", 1), policy=make_policy(hash="sha256:new"), actor="a", evaluate=ev
    )
    assert r.evaluation is None and ev.calls == [] and "yanked" in r.promotion_note
