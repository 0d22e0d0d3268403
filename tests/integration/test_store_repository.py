"""Every repository function, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import pytest

from sandgate.errors import Conflict, InvalidTransition, NotFound, StoreError
from sandgate.report import gave_up
from sandgate.store import audit, evaluations, pointers, versions
from tests.integration.conftest_store import (
    make_policy,
    make_report,
    make_submission,
    passed_version,
    variant,
)

pytest_plugins = ["tests.integration.conftest_store"]


def moves(store, name):
    return [e for e in audit.history(store, name=name) if e.action in ("promoted", "rolled_back")]


# --------------------------------------------------------------------------- versions


def test_create_version_stores_exact_bytes_and_one_event(store):
    sub = make_submission(
        "greet", {"skill.py": b"print('hi')\r\n", "data.bin": bytes(range(256)), "a/b.py": b""}
    )
    v, created = versions.create_version(store, submission=sub, actor="alice", provenance={"via": "test"})
    assert created and v.number == 1 and v.skill == "greet"
    assert v.content_hash == sub.content_hash
    assert v.file_count == 3 and v.total_bytes == len(b"print('hi')\r\n") + 256
    assert v.status == "pending" and not v.active and not v.yanked
    assert v.manifest["entrypoint"] == "skill:run"
    assert v.provenance == {"via": "test"}
    assert versions.get_version_files(store, name="greet", number=1) == dict(sorted(sub.files.items()))
    events = audit.history(store, name="greet")
    assert [(e.action, e.version, e.actor) for e in events] == [("submitted", 1, "alice")]


def test_files_of_versions_reads_the_named_paths_of_every_version_in_one_read(store, policy):
    from sandgate.lifecycle import load_baseline

    examples = b'{"args": [1], "expect": 2}\n'
    one = make_submission("greet", {"skill.py": b"x = 1\n", "examples.jsonl": examples})
    two = make_submission("greet", {"skill.py": b"x = 2\n", "skill.toml": b"name = 'greet'\n"})
    three = make_submission("greet", {"skill.py": b"x = 3\n", "examples.jsonl": b'{"args": [5], "expect": 6}\n'})
    other = make_submission("other", {"skill.py": b"x = 9\n", "examples.jsonl": b'{"args": [9], "expect": 10}\n'})
    for sub in (one, two, three, other):
        versions.create_version(store, submission=sub, actor="t")
    wanted = ("skill.toml", "examples.jsonl")
    assert versions.get_files_of_versions(store, name="greet", paths=wanted) == {
        1: {"examples.jsonl": examples}, 2: {"skill.toml": b"name = 'greet'\n"},
        3: {"examples.jsonl": b'{"args": [5], "expect": 6}\n'}}
    assert versions.get_files_of_versions(store, name="greet", paths=("nothing.py",)) == {}
    with pytest.raises(NotFound):
        versions.get_files_of_versions(store, name="absent", paths=wanted)
    # the baseline: every earlier version's example inputs (not the candidate's own), and the
    # active version's whole file set
    baseline = load_baseline(store, skill="greet", content_hash=three.content_hash)
    assert baseline.history_inputs == (([1], {}),) and baseline.active_files is None
    evaluations.record_evaluation(
        store, name="greet", number=1, report=make_report("passed", evaluation_id="p1"),
        policy_name=policy.name, policy_hash=policy.hash,
    )  # fmt: skip
    pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    baseline = load_baseline(store, skill="greet", content_hash=three.content_hash)
    assert baseline.active_version == 1 and baseline.active_files == dict(sorted(one.files.items()))
    assert load_baseline(store, skill="greet", content_hash=one.content_hash).history_inputs == (([5], {}),)


def test_create_version_is_idempotent_and_numbers_are_contiguous(store):
    a, b = variant("greet", 1), variant("greet", 2)
    v1, c1 = versions.create_version(store, submission=a, actor="t")
    v2, c2 = versions.create_version(store, submission=b, actor="t")
    again, c3 = versions.create_version(store, submission=a, actor="someone-else")
    assert (v1.number, c1, v2.number, c2) == (1, True, 2, True)
    assert again.number == 1 and c3 is False and again.id == v1.id
    assert [v.number for v in versions.list_versions(store, name="greet")] == [1, 2]
    assert len(audit.history(store, name="greet")) == 2  # no event for the idempotent resubmit


def test_same_content_under_two_skills_is_two_versions(store):
    files = {"skill.py": b"x = 1\n"}
    v1, _ = versions.create_version(store, submission=make_submission("one", files), actor="t")
    v2, created = versions.create_version(store, submission=make_submission("two", files), actor="t")
    assert created and v1.id != v2.id and v2.number == 1


def test_create_version_validates(store):
    with pytest.raises(InvalidTransition, match="invalid skill name"):
        versions.create_version(store, submission=make_submission("Bad-Name"), actor="t")
    with pytest.raises(InvalidTransition, match="actor"):
        versions.create_version(store, submission=make_submission("ok"), actor="  ")
    with pytest.raises(StoreError, match="no files"):
        versions.create_version(store, submission=make_submission("ok", {}), actor="t")


def test_get_and_list(store):
    with pytest.raises(NotFound, match="no skill named 'nope'"):
        versions.get_skill(store, name="nope")
    assert versions.list_skills(store) == []
    passed_version(store, "beta", 1)
    passed_version(store, "alpha", 1)
    passed_version(store, "alpha", 2)
    skills = versions.list_skills(store)
    assert [(s.name, s.latest_version, s.active_version, s.generation) for s in skills] == [
        ("alpha", 2, None, 0),
        ("beta", 1, None, 0),
    ]
    assert [s.name for s in versions.list_skills(store, prefix="al")] == ["alpha"]
    assert versions.get_skill(store, name="alpha").latest_version == 2
    assert versions.get_version(store, name="alpha", number=2).status == "passed"
    with pytest.raises(NotFound, match=r"alpha@9 does not exist \(latest is alpha@2\)"):
        versions.get_version(store, name="alpha", number=9)
    with pytest.raises(NotFound):
        versions.get_version_files(store, name="alpha", number=9)
    assert versions.get_active_version(store, name="alpha") is None


# --------------------------------------------------------------------------- evaluations


def test_evaluation_lifecycle(store, policy):
    v, _ = versions.create_version(store, submission=variant("greet", 1), actor="t")
    queued = evaluations.queue_evaluation(
        store, name="greet", number=1, policy_name=policy.name, policy_hash=policy.hash
    )
    assert queued.status == "queued" and queued.verdict is None and queued.version == 1
    assert evaluations.pending_evaluation(store, name="greet", number=1, policy_hash=policy.hash).id == queued.id
    running = evaluations.start_evaluation(store, evaluation_id=queued.id)
    assert running.status == "running" and running.started_at is not None
    with pytest.raises(Conflict, match="already running"):
        evaluations.start_evaluation(store, evaluation_id=queued.id)
    done = evaluations.finish_evaluation(
        store, evaluation_id=queued.id, report=make_report("failed", evaluation_id=queued.id)
    )
    assert done.status == "done" and done.verdict == "failed"
    assert done.reasons[0]["code"] == "tests_failed"
    assert done.report_model().verdict.value == "failed"
    with pytest.raises(Conflict, match="already done"):
        evaluations.finish_evaluation(store, evaluation_id=queued.id, report=make_report("passed"))
    assert evaluations.get_evaluation(store, evaluation_id=queued.id).finished_at is not None
    assert versions.get_version(store, name="greet", number=1).status == "failed"
    assert evaluations.pending_evaluation(store, name="greet", number=1, policy_hash=policy.hash) is None
    with pytest.raises(NotFound):
        evaluations.get_evaluation(store, evaluation_id="nope")
    assert [e.action for e in audit.history(store, name="greet")] == ["submitted", "evaluated"]


def test_error_verdict_never_changes_version_status(store, policy):
    passed_version(store, "greet", 1, policy)
    evaluations.record_evaluation(
        store, name="greet", number=1, report=make_report("error", evaluation_id="err-1"),
        policy_name=policy.name, policy_hash=policy.hash,
    )  # fmt: skip
    assert versions.get_version(store, name="greet", number=1).status == "passed"
    latest_any = evaluations.latest_evaluation(store, name="greet", number=1)
    latest_conclusive = evaluations.latest_evaluation(store, name="greet", number=1, conclusive=True)
    assert latest_any.verdict == "error" and latest_conclusive.verdict == "passed"
    # and it does not block promotion under the same policy
    assert pointers.promote(store, name="greet", number=1, actor="t", policy=policy).to_version == 1


def test_claim_evaluation_takes_oldest_queued(store, policy):
    versions.create_version(store, submission=variant("greet", 1), actor="t")
    assert evaluations.claim_evaluation(store, give_up=gave_up) is None
    first = evaluations.queue_evaluation(store, name="greet", number=1, policy_name="p", policy_hash="h")
    second = evaluations.queue_evaluation(store, name="greet", number=1, policy_name="p", policy_hash="h")
    got = evaluations.claim_evaluation(store, give_up=gave_up)
    assert got.id == first.id and got.status == "running"
    assert evaluations.claim_evaluation(store, give_up=gave_up).id == second.id
    assert evaluations.claim_evaluation(store, give_up=gave_up) is None


# --------------------------------------------------------------------------- promote


def test_promote_requires_passed_under_current_policy(store, policy):
    versions.create_version(store, submission=variant("greet", 1), actor="t")
    with pytest.raises(InvalidTransition, match="no finished evaluation under policy default"):
        pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    evaluations.record_evaluation(
        store, name="greet", number=1, report=make_report("failed", evaluation_id="f1"),
        policy_name=policy.name, policy_hash=policy.hash,
    )  # fmt: skip
    with pytest.raises(InvalidTransition, match="did not pass.*verdict failed"):
        pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    # passed under an OLD policy hash does not count under the current one
    old = make_policy(hash="sha256:old")
    evaluations.record_evaluation(
        store, name="greet", number=1, report=make_report("passed", evaluation_id="p-old"),
        policy_name=old.name, policy_hash=old.hash,
    )  # fmt: skip
    with pytest.raises(InvalidTransition, match="did not pass"):
        pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    assert pointers.promote(store, name="greet", number=1, actor="t", policy=old).to_version == 1
    assert moves(store, "greet")[0].evidence["policy_hash"] == "sha256:old"


def test_promote_moves_pointer_with_one_event(store, policy):
    passed_version(store, "greet", 1)
    passed_version(store, "greet", 2)
    m1 = pointers.promote(store, name="greet", number=1, actor="alice", reason="first", policy=policy)
    assert (m1.from_version, m1.to_version, m1.generation, m1.forced) == (None, 1, 1, False)
    m2 = pointers.promote(store, name="greet", number=2, actor="bob", policy=policy, expected_generation=1)
    assert (m2.from_version, m2.to_version, m2.generation) == (1, 2, 2)
    assert pointers.active_pointer(store, name="greet") == (2, 2)
    assert versions.get_active_version(store, name="greet").number == 2
    assert [v.active for v in versions.list_versions(store, name="greet")] == [False, True]
    events = moves(store, "greet")
    assert [(e.actor, e.before, e.after) for e in events] == [
        ("alice", {"version": None, "generation": 0}, {"version": 1, "generation": 1}),
        ("bob", {"version": 1, "generation": 1}, {"version": 2, "generation": 2}),
    ]
    assert events[0].reason == "first"
    assert events[1].evidence["evaluation_id"] and events[1].evidence["forced"] is False


def test_promote_refusals(store, policy):
    passed_version(store, "greet", 1)
    passed_version(store, "greet", 2)
    pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    with pytest.raises(InvalidTransition, match="already the active version") as info:
        pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    assert info.value.code == "already_active"
    with pytest.raises(Conflict, match="skill greet moved concurrently: expected generation 0, now 1"):
        pointers.promote(store, name="greet", number=2, actor="t", policy=policy, expected_generation=0)
    with pytest.raises(NotFound):
        pointers.promote(store, name="greet", number=7, actor="t", policy=policy)
    with pytest.raises(NotFound):
        pointers.promote(store, name="nope", number=1, actor="t", policy=policy)
    with pytest.raises(ValueError, match="needs the current policy"):
        pointers.promote(store, name="greet", number=2, actor="t")
    assert len(moves(store, "greet")) == 1


def test_force_promote_is_recorded(store, policy):
    versions.create_version(store, submission=variant("greet", 1), actor="t")
    with pytest.raises(InvalidTransition, match="needs a reason"):
        pointers.promote(store, name="greet", number=1, actor="t", policy=policy, force=True)
    m = pointers.promote(
        store, name="greet", number=1, actor="oncall:ann", reason="hotfix", policy=policy, force=True
    )
    assert m.forced
    (event,) = moves(store, "greet")
    assert event.evidence["forced"] is True and event.actor == "oncall:ann" and event.reason == "hotfix"


# --------------------------------------------------------------------------- rollback


def _promote_all(store, policy, name="greet", n=4):
    for i in range(1, n + 1):
        passed_version(store, name, i)
        pointers.promote(store, name=name, number=i, actor="t", policy=policy)


def test_repeated_rollback_walks_back_through_history(store, policy):
    _promote_all(store, policy)
    walked = [pointers.rollback(store, name="greet", actor="oncall", reason="bad").to_version for _ in range(3)]
    assert walked == [3, 2, 1]
    with pytest.raises(InvalidTransition, match="nothing to roll back to") as info:
        pointers.rollback(store, name="greet", actor="oncall")
    assert info.value.code == "nothing_to_roll_back"
    assert pointers.active_pointer(store, name="greet") == (1, 7)


def test_rollback_after_promote_returns_to_the_promoted_from_version(store, policy):
    _promote_all(store, policy, n=3)  # 1 -> 2 -> 3
    assert pointers.rollback(store, name="greet", actor="t").to_version == 2
    pointers.promote(store, name="greet", number=3, actor="t", policy=policy)  # 2 -> 3 again
    # back to 2 (what was active before the last move), then 1: not 3<->2 flapping
    assert pointers.rollback(store, name="greet", actor="t").to_version == 2
    assert pointers.rollback(store, name="greet", actor="t").to_version == 1


def test_rollback_to_and_then_continue(store, policy):
    _promote_all(store, policy, n=4)
    m = pointers.rollback(store, name="greet", to=2, actor="t", reason="v3 and v4 bad")
    assert (m.from_version, m.to_version) == (4, 2)
    assert pointers.rollback(store, name="greet", actor="t").to_version == 1


def test_rollback_to_a_version_that_was_never_active(store, policy):
    passed_version(store, "greet", 1)
    passed_version(store, "greet", 2)  # passed, never promoted
    passed_version(store, "greet", 3)
    pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    pointers.promote(store, name="greet", number=3, actor="t", policy=policy)
    assert pointers.rollback(store, name="greet", to=2, actor="t").to_version == 2
    assert pointers.rollback(store, name="greet", actor="t").to_version == 1


def test_rollback_refusals(store, policy):
    with pytest.raises(NotFound):
        pointers.rollback(store, name="nope", actor="t")
    passed_version(store, "greet", 1)
    with pytest.raises(InvalidTransition, match="no active version"):
        pointers.rollback(store, name="greet", actor="t")
    pointers.promote(store, name="greet", number=1, actor="t", policy=policy)
    versions.create_version(store, submission=variant("greet", 2), actor="t")  # never evaluated
    passed_version(store, "greet", 3)
    pointers.promote(store, name="greet", number=3, actor="t", policy=policy)
    with pytest.raises(InvalidTransition, match="never passed"):
        pointers.rollback(store, name="greet", to=2, actor="t")
    with pytest.raises(InvalidTransition, match="already the active"):
        pointers.rollback(store, name="greet", to=3, actor="t")
    passed_version(store, "greet", 4)
    with pytest.raises(InvalidTransition, match="only goes back"):
        pointers.rollback(store, name="greet", to=4, actor="t")
    with pytest.raises(NotFound):
        pointers.rollback(store, name="greet", to=99, actor="t")
    with pytest.raises(Conflict, match="expected generation 0, now 2"):
        pointers.rollback(store, name="greet", actor="t", expected_generation=0)
    assert pointers.rollback(store, name="greet", actor="t", expected_generation=2).to_version == 1


def test_rollback_skips_yanked(store, policy):
    _promote_all(store, policy, n=3)
    pointers.yank(store, name="greet", number=2, actor="t", reason="leaks secrets")
    assert pointers.rollback(store, name="greet", actor="t").to_version == 1
    pointers.promote(store, name="greet", number=3, actor="t", policy=policy)
    with pytest.raises(InvalidTransition, match="yanked"):
        pointers.rollback(store, name="greet", to=2, actor="t")


# --------------------------------------------------------------------------- yank


def test_yank(store, policy):
    _promote_all(store, policy, n=2)
    with pytest.raises(InvalidTransition, match="needs a reason"):
        pointers.yank(store, name="greet", number=1, actor="t", reason=" ")
    result = pointers.yank(store, name="greet", number=1, actor="sec", reason="CVE-1")
    assert result.rollback is None and result.version.yanked and result.version.yank_reason == "CVE-1"
    with pytest.raises(InvalidTransition, match="already yanked"):
        pointers.yank(store, name="greet", number=1, actor="t", reason="again")
    with pytest.raises(InvalidTransition, match="is yanked"):
        pointers.promote(store, name="greet", number=1, actor="t", policy=policy, force=True, reason="x")
    with pytest.raises(NotFound):
        pointers.yank(store, name="greet", number=9, actor="t", reason="x")
    last = audit.history(store, name="greet")[-1]
    assert (last.action, last.actor, last.reason, last.version) == ("yanked", "sec", "CVE-1", 1)


def test_yank_active_needs_rollback(store, policy):
    _promote_all(store, policy, n=2)
    with pytest.raises(InvalidTransition, match="roll back first") as info:
        pointers.yank(store, name="greet", number=2, actor="t", reason="broken")
    assert info.value.code == "yank_active"
    assert pointers.active_pointer(store, name="greet") == (2, 2)
    result = pointers.yank(store, name="greet", number=2, actor="t", reason="broken", rollback=True)
    assert result.rollback.to_version == 1 and result.version.yanked and not result.version.active
    assert pointers.active_pointer(store, name="greet") == (1, 3)
    assert [e.action for e in audit.history(store, name="greet")][-2:] == ["rolled_back", "yanked"]
    # nothing to roll back to: yank of the only active version is refused atomically
    with pytest.raises(InvalidTransition, match="nothing to roll back to"):
        pointers.yank(store, name="greet", number=1, actor="t", reason="x", rollback=True)
    assert not versions.get_version(store, name="greet", number=1).yanked


# --------------------------------------------------------------------------- audit, diff, pointers


def test_history_limit_and_order(store, policy):
    _promote_all(store, policy, n=3)
    events = audit.history(store, name="greet")
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert audit.history(store, name="greet", limit=2) == events[-2:]


def test_diff(store):
    versions.create_version(
        store,
        submission=make_submission("greet", {"a.py": b"x = 1\ny = 2\n", "gone.py": b"bye\n", "b.bin": b"\xff\x00"}),
        actor="t",
    )
    versions.create_version(
        store,
        submission=make_submission("greet", {"a.py": b"x = 1\ny = 3\n", "new.py": b"hi", "b.bin": b"\xff\x01"}),
        actor="t",
    )
    diffs = {d.path: d for d in versions.diff(store, name="greet", a=1, b=2)}
    assert {p: d.change for p, d in diffs.items()} == {
        "a.py": "modified",
        "gone.py": "removed",
        "new.py": "added",
        "b.bin": "modified",
    }
    assert "-y = 2\n+y = 3\n" in diffs["a.py"].diff and diffs["a.py"].diff.startswith("--- a/a.py\n+++ b/a.py\n")
    assert diffs["new.py"].diff.startswith("--- /dev/null\n+++ b/new.py")
    assert "\\ No newline at end of file" in diffs["new.py"].diff
    assert diffs["b.bin"].binary and diffs["b.bin"].diff == ""
    assert versions.diff(store, name="greet", a=2, b=2) == []


def test_active_pointers(store, policy):
    assert pointers.active_pointers(store) == {}
    _promote_all(store, policy, name="one", n=2)
    _promote_all(store, policy, name="two", n=1)
    passed_version(store, "three", 1)  # never promoted: not listed
    assert pointers.active_pointers(store) == {"one": (2, 2), "two": (1, 1)}
    assert pointers.active_pointers(store, names=["two", "three"]) == {"two": (1, 1)}
    assert pointers.active_pointers(store, names=[]) == {}
    assert pointers.active_pointer(store, name="three") is None
    with pytest.raises(NotFound):
        pointers.active_pointer(store, name="nope")


def test_records_are_plain_and_json_ready(store, policy):
    import json

    _promote_all(store, policy, n=1)
    v = versions.get_version(store, name="greet", number=1)
    for record in (v, versions.get_skill(store, name="greet"), audit.history(store, name="greet")[0]):
        json.dumps(record.to_dict())
    with pytest.raises(AttributeError):
        v.number = 3  # frozen
