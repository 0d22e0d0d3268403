"""The durable queue's repository functions on real SQLite and real PostgreSQL:
leases, heartbeat, compare-and-set finish, attempts, recovery, release, retention,
flags, and migration 0003 on existing data."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text, update

from sandgate import lifecycle
from sandgate.errors import Conflict
from sandgate.report import gave_up
from sandgate.store import audit, evaluations, open_store, pointers, versions
from sandgate.store.engine import _make_engine
from sandgate.store.migrate import current_revision, head_revision, upgrade
from sandgate.store.models import Evaluation
from tests.integration.conftest_store import (
    make_policy,
    make_report,
    passed_version,
    variant,
)

pytest_plugins = ["tests.integration.conftest_store"]


def _queue(store, name="greet", i=1, policy=None):
    policy = policy or make_policy()
    v, _ = versions.create_version(store, submission=variant(name, i), actor="t")
    return evaluations.queue_evaluation(
        store, name=name, number=v.number, policy_name=policy.name, policy_hash=policy.hash
    )


def _lapse(store, evaluation_id):
    """Make a lease lapse now (instead of sleeping through it)."""
    with store.write() as s:
        s.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=5))
        )


def _evaluated(store, name="greet"):
    return [e for e in audit.history(store, name=name) if e.action == "evaluated"]


# --------------------------------------------------------------------------- leases


def test_claim_leases_the_oldest_and_counts_attempts(store):
    first, second = _queue(store, i=1), _queue(store, i=2)
    a = evaluations.claim_evaluation(store, give_up=gave_up, owner="host:1:a", lease_seconds=30)
    assert a.id == first.id and a.status == "running" and a.attempts == 1
    assert a.lease_owner == "host:1:a" and a.lease_expires_at > datetime.now(UTC) + timedelta(seconds=20)
    b = evaluations.claim_evaluation(store, give_up=gave_up, owner="host:2:b", lease_seconds=30)
    assert b.id == second.id
    assert (
        evaluations.claim_evaluation(store, give_up=gave_up, owner="host:3:c", lease_seconds=30) is None
    )  # live leases


def test_a_lapsed_lease_is_claimed_again_before_queued_work(store):
    first = _queue(store, i=1)
    evaluations.claim_evaluation(store, give_up=gave_up, owner="w1", lease_seconds=30)
    later = _queue(store, i=2)
    _lapse(store, first.id)
    again = evaluations.claim_evaluation(store, give_up=gave_up, owner="w2", lease_seconds=30)
    assert again.id == first.id and again.attempts == 2 and again.lease_owner == "w2"
    assert evaluations.claim_evaluation(store, give_up=gave_up, owner="w3", lease_seconds=30).id == later.id


def test_lease_cas_a_taken_over_worker_cannot_finish(store):
    """Worker A stalls, B takes over: A's heartbeat and finish fail; only B's result counts."""
    ev = _queue(store)
    a = evaluations.claim_evaluation(store, give_up=gave_up, owner="A", lease_seconds=30)
    expires = evaluations.heartbeat(store, evaluation_id=a.id, owner="A", lease_seconds=60)
    assert expires > datetime.now(UTC) + timedelta(seconds=50)
    _lapse(store, ev.id)
    b = evaluations.claim_evaluation(store, give_up=gave_up, owner="B", lease_seconds=30)
    assert b.id == ev.id
    with pytest.raises(Conflict, match="lease lost") as lost:
        evaluations.heartbeat(store, evaluation_id=ev.id, owner="A", lease_seconds=30)
    assert lost.value.code == "lease_lost"
    with pytest.raises(Conflict, match="lease lost.*held by B"):
        evaluations.finish_evaluation(store, evaluation_id=ev.id, report=make_report("passed"), owner="A")
    with pytest.raises(Conflict, match="lease lost"):
        # the worker path: lifecycle.run_evaluation under A's lease
        lifecycle.run_evaluation(
            store, evaluation_id=ev.id, submission=variant("greet", 1), policy=make_policy(),
            evaluate=lambda sub, *, policy, evaluation_id=None: make_report("failed", evaluation_id),
            owner="A",
        )  # fmt: skip
    assert _evaluated(store) == [] and versions.get_version(store, name="greet", number=1).status == "pending"
    done = evaluations.finish_evaluation(store, evaluation_id=ev.id, report=make_report("passed", ev.id), owner="B")
    assert done.status == "done" and done.verdict == "passed" and done.lease_expires_at is None
    with pytest.raises(Conflict, match="lease lost"):
        evaluations.finish_evaluation(store, evaluation_id=ev.id, report=make_report("passed"), owner="B")
    [event] = _evaluated(store)
    assert event.evidence["worker"] == "B" and event.evidence["attempt"] == 2


def test_heartbeat_extends_a_lapsed_lease_nobody_took(store):
    ev = _queue(store)
    evaluations.claim_evaluation(store, give_up=gave_up, owner="A", lease_seconds=30)
    _lapse(store, ev.id)
    evaluations.heartbeat(store, evaluation_id=ev.id, owner="A", lease_seconds=30)
    assert evaluations.claim_evaluation(store, give_up=gave_up, owner="B", lease_seconds=30) is None


def test_max_attempts_ends_as_error_never_failed(store):
    ev = _queue(store)
    for attempt in (1, 2, 3):
        got = evaluations.claim_evaluation(
            store, give_up=gave_up, owner=f"w{attempt}", lease_seconds=30, max_attempts=3
        )
        assert got.id == ev.id and got.attempts == attempt
        _lapse(store, ev.id)
    assert evaluations.claim_evaluation(store, give_up=gave_up, owner="w4", lease_seconds=30, max_attempts=3) is None
    rec = evaluations.get_evaluation(store, evaluation_id=ev.id)
    assert rec.status == "done" and rec.verdict == "error" and rec.attempts == 3
    assert rec.reasons[0]["code"] == "infrastructure"
    assert rec.reasons[0]["message"].startswith("gave up after 3 attempts")
    assert rec.report_model().verdict.value == "error"
    assert versions.get_version(store, name="greet", number=1).status == "pending"  # not the skill's fault
    [event] = _evaluated(store)
    assert event.evidence["gave_up"] is True and event.after["verdict"] == "error"


def test_recover_leases(store):
    live, lapsed, exhausted, embedded = (_queue(store, i=i) for i in range(1, 5))
    for ev, owner in ((live, "a"), (lapsed, "b"), (exhausted, "c")):
        got = evaluations.claim_evaluation(store, give_up=gave_up, owner=owner, lease_seconds=30)
        assert got.id == ev.id
    with store.write() as s:
        s.execute(update(Evaluation).where(Evaluation.id == exhausted.id).values(attempts=3))
    _lapse(store, lapsed.id), _lapse(store, exhausted.id)
    # an embedded submit(wait=True) run: running without a lease, started long ago
    evaluations.start_evaluation(store, evaluation_id=embedded.id)
    with store.write() as s:
        s.execute(
            update(Evaluation)
            .where(Evaluation.id == embedded.id)
            .values(started_at=datetime.now(UTC) - timedelta(hours=2))
        )
    out = evaluations.recover_leases(store, give_up=gave_up, max_attempts=3, stale_seconds=3600)
    assert sorted(out["requeued"]) == sorted([lapsed.id, embedded.id])
    assert out["gave_up"] == [exhausted.id]
    assert evaluations.get_evaluation(store, evaluation_id=live.id).status == "running"
    requeued = evaluations.get_evaluation(store, evaluation_id=lapsed.id)
    assert requeued.status == "queued" and requeued.lease_owner is None and requeued.attempts == 1
    assert evaluations.get_evaluation(store, evaluation_id=exhausted.id).verdict == "error"
    assert evaluations.recover_leases(store, give_up=gave_up, max_attempts=3) == {"requeued": [], "gave_up": []}
    # the lapsed worker's late result is refused
    with pytest.raises(Conflict, match="lease lost"):
        evaluations.finish_evaluation(store, evaluation_id=lapsed.id, report=make_report("passed"), owner="b")


def test_release_hands_back_without_counting_the_attempt(store):
    ev = _queue(store)
    evaluations.claim_evaluation(store, give_up=gave_up, owner="A", lease_seconds=30)
    assert not evaluations.release_evaluation(store, evaluation_id=ev.id, owner="B")  # not B's
    assert evaluations.release_evaluation(store, evaluation_id=ev.id, owner="A")
    rec = evaluations.get_evaluation(store, evaluation_id=ev.id)
    assert rec.status == "queued" and rec.attempts == 0 and rec.lease_owner is None
    assert not evaluations.release_evaluation(store, evaluation_id=ev.id, owner="A")
    assert evaluations.claim_evaluation(store, give_up=gave_up, owner="C", lease_seconds=30).attempts == 1


def test_concurrent_claims_each_row_has_one_winner(store):
    ids = {_queue(store, i=i).id for i in range(1, 21)}
    got: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def claimer(k: int) -> None:
        barrier.wait()
        while True:
            rec = evaluations.claim_evaluation(store, give_up=gave_up, owner=f"w{k}", lease_seconds=30)
            if rec is None:
                return
            with lock:
                got.append(rec.id)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(ids)  # every one claimed, none twice


def test_finish_records_the_policy_hash_actually_used(store):
    ev = _queue(store, policy=make_policy(hash="sha256:queued"))
    evaluations.claim_evaluation(store, give_up=gave_up, owner="A", lease_seconds=30)
    report = make_report("passed", ev.id, policy="default", policy_hash="sha256:current")
    done = evaluations.finish_evaluation(store, evaluation_id=ev.id, report=report, owner="A")
    assert done.policy_hash == "sha256:current"
    [event] = _evaluated(store)
    assert event.evidence["policy_hash"] == "sha256:current"
    assert event.evidence["queued_policy_hash"] == "sha256:queued"


# --------------------------------------------------------------------------- retention


def test_retention_never_touches_active_or_ever_active_versions(store):
    policy = make_policy()
    old = datetime.now(UTC) - timedelta(days=90)

    def evaluation(number, verdict, age_days, output="captured output", name="greet"):
        ev = evaluations.record_evaluation(
            store, name=name, number=number, policy_name=policy.name, policy_hash=policy.hash,
            report=make_report(verdict, f"{name}-{number}-{verdict}-{age_days}", output=output),
        )  # fmt: skip
        with store.write() as s:
            at = datetime.now(UTC) - timedelta(days=age_days)
            s.execute(update(Evaluation).where(Evaluation.id == ev.id).values(finished_at=at, created_at=at))
        return ev.id

    # v1: promoted then rolled back from v2 → ever active; v2: rolled back → ever active
    passed_version(store, "greet", 1, policy)
    passed_version(store, "greet", 2, policy)
    pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    pointers.promote(store, name="greet", number=2, actor="t", policy=policy)
    pointers.rollback(store, name="greet", actor="t", reason="bad")
    v1_old = evaluation(1, "failed", 100)
    v2_old = evaluation(2, "error", 100)
    # v3: never active, several old evaluations and one recent
    v3, _ = versions.create_version(store, submission=variant("greet", 3), actor="t")
    v3_old_passed = evaluation(3, "passed", 120)  # latest conclusive: kept (output dropped)
    v3_old_failed = evaluation(3, "failed", 130)  # superseded: deleted
    v3_older_error = evaluation(3, "error", 125)  # superseded: deleted
    v3_error = evaluation(3, "error", 100)  # latest: kept (output dropped)
    v3_recent = _queue(store, i=99)  # another version, queued: untouched
    other = make_policy(hash="sha256:other")
    other_ev = evaluations.record_evaluation(
        store, name="greet", number=3, policy_name=other.name, policy_hash=other.hash,
        report=make_report("failed", "other-hash", output="o"),
    )  # fmt: skip
    with store.read() as s:
        before_versions = s.scalar(text("SELECT count(*) FROM versions"))
        before_events = s.scalar(text("SELECT count(*) FROM events"))
        before_files = s.scalar(text("SELECT count(*) FROM version_files"))

    out = evaluations.prune_evaluations(store, before=old)
    assert out == {"deleted": 2, "outputs_dropped": 2}
    ids = {eid for eid in (v1_old, v2_old, v3_old_passed, v3_old_failed, v3_older_error, v3_error)}

    def exists(eid):
        try:
            return evaluations.get_evaluation(store, evaluation_id=eid)
        except Exception:
            return None

    assert {eid for eid in ids if exists(eid)} == {v1_old, v2_old, v3_old_passed, v3_error}
    assert exists(v1_old).report["output"] == "captured output"  # ever active: untouched
    assert exists(v2_old).report["output"] == "captured output"
    assert exists(v3_old_passed).report["output"] == "" and exists(v3_error).report["output"] == ""
    assert exists(v3_old_passed).report_model().verdict.value == "passed"  # still a valid report
    assert exists(other_ev.id).report["output"] == "o"  # recent
    assert exists(v3_recent.id).status == "queued"
    # decisions unchanged: v3 is still promotable on its latest conclusive evaluation
    assert (
        evaluations.latest_evaluation(store, name="greet", number=3, conclusive=True, policy_hash=policy.hash).id
        == v3_old_passed
    )
    with store.read() as s:
        assert s.scalar(text("SELECT count(*) FROM versions")) == before_versions
        assert s.scalar(text("SELECT count(*) FROM events")) == before_events
        assert s.scalar(text("SELECT count(*) FROM version_files")) == before_files
    assert v3.number == 3
    assert evaluations.prune_evaluations(store, before=old) == {"deleted": 0, "outputs_dropped": 0}


# --------------------------------------------------------------------------- flags


def test_flag_dedupes_and_quarantine_rolls_back(store):
    policy = make_policy()
    for i in (1, 2):
        passed_version(store, "greet", i, policy)
        pointers.promote(store, name="greet", number=i, actor="t", policy=policy)
    evidence = {"fingerprint": "sha256:f1", "findings": [{"rule_id": "r"}]}
    flag = pointers.flag_version(
        store, name="greet", number=2, actor="scheduler:rescan", reason="new rule", evidence=evidence
    )
    assert flag.rollback is None and flag.note is None
    assert (
        pointers.flag_version(
            store, name="greet", number=2, actor="scheduler:rescan", reason="new rule", evidence=evidence
        )
        is None
    )  # same findings: not again
    q = pointers.flag_version(
        store, name="greet", number=2, actor="scheduler:rescan", reason="new rule",
        evidence={**evidence, "fingerprint": "sha256:f2"}, quarantine=True,
    )  # fmt: skip
    assert q.rollback is not None and q.rollback.to_version == 1
    assert pointers.active_pointer(store, name="greet")[0] == 1
    events = audit.history(store, name="greet")
    flagged = [e for e in events if e.action == "flagged"]
    assert len(flagged) == 2 and flagged[-1].evidence["rolled_back"] == q.rollback.event_id
    assert events[-1].action == "rolled_back" and events[-1].evidence["flagged_event"] == q.event_id
    # the only version: flagged, but the pointer never goes empty
    passed_version(store, "solo", 1, policy)
    pointers.promote(store, name="solo", number=1, actor="t", policy=policy)
    only = pointers.flag_version(
        store, name="solo", number=1, actor="scheduler:rescan", reason="x",
        evidence={"fingerprint": "sha256:s"}, quarantine=True,
    )  # fmt: skip
    assert only.rollback is None and "nothing to roll back" in only.note
    assert pointers.active_pointer(store, name="solo")[0] == 1


# --------------------------------------------------------------------------- migration


def test_migration_0004_on_existing_queue(empty_url):
    """A store with queued/running/done evaluations upgrades in place; the queue keeps working."""
    from alembic.script import ScriptDirectory

    from sandgate.store.migrate import alembic_config

    before_0004 = ScriptDirectory.from_config(alembic_config()).get_revision("0004").down_revision
    engine = _make_engine(empty_url)
    upgrade(engine, before_0004)
    with engine.connect() as conn:
        assert current_revision(conn) == before_0004
        assert "attempts" not in {c["name"] for c in inspect(conn).get_columns("evaluations")}
        conn.rollback()
        with conn.begin():
            conn.execute(
                text("INSERT INTO skills (id, name, created_at, generation) VALUES (1, 'greet', :t, 0)"),
                {"t": "2025-01-01 10:00:00+00:00"},
            )
            conn.execute(
                text(
                    "INSERT INTO versions (id, skill_id, number, content_hash, manifest, file_count, total_bytes,"
                    " created_at, created_by, status) VALUES (1, 1, 1, 'sha256:x', '{}', 1, 1, :t, 'old', 'pending')"
                ),
                {"t": "2025-01-01 10:00:00+00:00"},
            )
            for eid, status in (("q", "queued"), ("r", "running"), ("d", "done")):
                conn.execute(
                    text(
                        "INSERT INTO evaluations (id, version_id, policy_name, policy_hash, status, created_at,"
                        " started_at) VALUES (:id, 1, 'default', 'sha256:p', :st, :t, :s)"
                    ),
                    {
                        "id": eid,
                        "st": status,
                        "t": "2025-01-01 10:00:00+00:00",
                        "s": "2025-01-01 10:00:00+00:00" if status == "running" else None,
                    },
                )
    engine.dispose()
    store = open_store(empty_url)
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            columns = {c["name"] for c in inspect(conn).get_columns("evaluations")}
            assert {"lease_owner", "lease_expires_at", "attempts"} <= columns
            indexes = {i["name"] for i in inspect(conn).get_indexes("evaluations")}
            assert "ix_evaluations_status_lease_expires_at" in indexes
        old_running = evaluations.get_evaluation(store, evaluation_id="r")
        assert old_running.attempts == 0 and old_running.lease_owner is None
        got = evaluations.claim_evaluation(store, give_up=gave_up, owner="w", lease_seconds=30)
        assert got.id == "q" and got.attempts == 1  # an unleased running row is not claimed
        assert evaluations.recover_leases(store, give_up=gave_up, stale_seconds=60)["requeued"] == ["r"]
    finally:
        store.close()
