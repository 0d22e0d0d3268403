"""Canary pointer state, runtime evidence and registry routing on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandgate.errors import Conflict, InvalidCanaryInput, InvalidTransition, status_of
from sandgate.registry import connect
from sandgate.registry.loader import content_hash
from sandgate.store import (
    Store,
    audit,
    evaluations,
    pointers,
    versions,
)
from sandgate.store import canary as cs
from tests.integration.conftest_store import make_policy, make_report

pytest_plugins = ["tests.integration.conftest_store"]

POLICY = make_policy()
CONFIG = {"steps": [10, 50], "min_calls": 50, "alpha": 0.01, "max_latency_ratio": 3.0, "latency_min_calls": 50,
          "bake_seconds": 0.0, "fallback": False, "sample_io": 0}


def files_for(tag: str, body: str | None = None) -> dict[str, bytes]:
    module = body if body is not None else f"def run(x=0):\n    return {tag!r}\n"
    return {"greet.py": module.encode(), "skill.toml": b'name = "greet"\nentrypoint = "greet:run"\n'}


def add_version(store: Store, tag: str, body: str | None = None) -> int:
    files = files_for(tag, body)
    sub = SimpleNamespace(name="greet", files=files, manifest={"name": "greet", "entrypoint": "greet:run"},
                          content_hash=content_hash(files))
    version, _ = versions.create_version(store, submission=sub, actor="test")
    evaluations.record_evaluation(store, name="greet", number=version.number,
                           report=make_report("passed", evaluation_id=f"greet-{tag}"),
                           policy_name=POLICY.name, policy_hash=POLICY.hash)
    return version.number


def setup_canary(store: Store, *, body: str | None = None, config: dict[str, Any] | None = None,
                 weight: int | None = None) -> cs.CanaryRecord:
    v1 = add_version(store, "v1")
    pointers.promote(store, name="greet", number=v1, actor="test", policy=POLICY)
    v2 = add_version(store, "v2", body)
    return cs.start_canary(store, name="greet", number=v2, actor="test", config=config or CONFIG, policy=POLICY,
                           weight=weight)


def test_start_canary_is_one_cas_and_one_event(store: Store) -> None:
    before = pointers.active_pointer(store, name="greet") if False else None
    c = setup_canary(store)
    assert (c.candidate, c.baseline, c.state, c.weight, c.active) == (2, 1, "running", 10, 1)
    assert cs.canary_routes(store, names=["greet", "other"]) == {"greet": (2, 10, False, 0)}
    assert pointers.active_pointer(store, name="greet") == (1, c.generation)
    events = audit.history(store, name="greet")
    started = [e for e in events if e.action == "canary_started"]
    assert len(started) == 1 and started[0].after["candidate"] == 2 and started[0].after["weight"] == 10
    assert before is None
    # a second canary is refused; so is a stale generation
    with pytest.raises(InvalidTransition, match="already has a canary"):
        cs.start_canary(store, name="greet", number=2, actor="t", config=CONFIG, policy=POLICY)
    with pytest.raises(Conflict):
        cs.set_weight(store, name="greet", canary_id=c.id, weight=50, actor="t", evidence={},
                      expected_generation=c.generation - 1)


def test_canary_needs_a_passed_version_and_an_active_one(store: Store) -> None:
    v1 = add_version(store, "v1")
    with pytest.raises(InvalidTransition, match="no active version"):
        cs.start_canary(store, name="greet", number=v1, actor="t", config=CONFIG, policy=POLICY)
    pointers.promote(store, name="greet", number=v1, actor="test", policy=POLICY)
    files = files_for("unevaluated")
    sub = SimpleNamespace(name="greet", files=files, manifest={"name": "greet", "entrypoint": "greet:run"},
                          content_hash=content_hash(files))
    v2, _ = versions.create_version(store, submission=sub, actor="test")
    with pytest.raises(InvalidTransition, match="no finished evaluation"):
        cs.start_canary(store, name="greet", number=v2.number, actor="t", config=CONFIG, policy=POLICY)
    with pytest.raises(InvalidCanaryInput, match="1..99"):
        cs.start_canary(store, name="greet", number=v2.number, actor="t", config=CONFIG, policy=POLICY, weight=100)


def test_advance_promote_and_the_rollback_stack(store: Store) -> None:
    c = setup_canary(store)
    c = cs.set_weight(store, name="greet", canary_id=c.id, weight=50, actor="t", evidence={"decision": {"x": 1}})
    assert c.weight == 50 and [s["weight"] for s in c.steps] == [10, 50]
    c = cs.promote_candidate(store, name="greet", canary_id=c.id, actor="t", evidence={})
    assert c.active == 2 and c.weight == 0 and c.state == "completed"
    assert cs.canary_routes(store, names=["greet"]) == {}
    # the full promotion is a normal move: a plain rollback goes back to v1
    move = pointers.rollback(store, name="greet", actor="t", reason="test")
    assert move.to_version == 1


def test_a_manual_move_ends_the_candidate(store: Store) -> None:
    c = setup_canary(store)
    v3 = add_version(store, "v3")
    pointers.promote(store, name="greet", number=v3, actor="person", policy=POLICY)
    assert cs.canary_routes(store, names=["greet"]) == {}
    with pytest.raises(Conflict, match="pointer moved"):
        cs.set_weight(store, name="greet", canary_id=c.id, weight=50, actor="t", evidence={})


def test_abort_drops_the_candidate_with_a_reason(store: Store) -> None:
    setup_canary(store)
    with pytest.raises(InvalidTransition, match="reason"):
        cs.drop_candidate(store, name="greet", actor="person", reason=None, evidence={}, automatic=False)
    c = cs.drop_candidate(store, name="greet", actor="person", reason="not today", evidence={}, automatic=False)
    assert c.state == "aborted" and c.weight == 0
    assert [e.action for e in audit.history(store, name="greet")][-1] == "canary_aborted"
    with pytest.raises(InvalidTransition, match="no canary"):
        cs.drop_candidate(store, name="greet", actor="person", reason="again", evidence={}, automatic=False)


def batch(reports: list[dict[str, Any]], batch_id: str | None = None) -> dict[str, Any]:
    return {"batch_id": batch_id or uuid.uuid4().hex, "consumer": "test", "reports": reports}


def test_runtime_batches_are_idempotent_and_validated(store: Store) -> None:
    c = setup_canary(store)
    rep = {"skill": "greet", "version": 2, "generation": c.generation, "calls": 10, "errors": 2,
           "error_types": {"ValueError": 2}, "latency": {"80": 10}, "fallbacks": 1,
           "samples": [{"input": {"args": [1]}, "output": "v2"}]}
    b = batch([rep, {**rep, "version": 99}, {**rep, "skill": "nope"}, {**rep, "generation": c.generation + 1}])
    assert cs.record_runtime(store, batch=b) == {"stored": 1, "skipped": 3, "duplicate": 0, "samples": 1}
    assert cs.record_runtime(store, batch=b)["duplicate"] == 1
    counts = cs.step_counts(store, canary=c)
    assert counts[0].candidate.calls == 10 and counts[0].candidate.errors == 2
    assert cs.runtime_samples(store, name="greet", number=2)[0]["output"] == "v2"
    for bad, msg in [({**rep, "errors": 11}, "errors in"), ({**rep, "calls": -1}, "calls"),
                     ({**rep, "latency": {"80": 11}}, "latency counts"), ({**rep, "latency": {"x": 1}}, "bucket"),
                     ({**rep, "skill": "Bad Name"}, "skill name"), ({**rep, "calls": True}, "calls")]:
        with pytest.raises(InvalidCanaryInput, match=msg) as exc:
            cs.record_runtime(store, batch=batch([bad]))
        assert exc.value.code == "invalid_report" and status_of(exc.value) == 422
    with pytest.raises(InvalidCanaryInput, match="batch_id"):
        cs.record_runtime(store, batch={"batch_id": "x", "reports": []})


def test_counts_are_grouped_by_the_step_they_were_routed_under(store: Store) -> None:
    c = setup_canary(store)
    g1 = c.generation
    c = cs.set_weight(store, name="greet", canary_id=c.id, weight=50, actor="t", evidence={})
    g2 = c.generation
    cs.record_runtime(store, batch=batch([
        {"skill": "greet", "version": 2, "generation": g1, "calls": 5, "errors": 0},
        {"skill": "greet", "version": 1, "generation": g1, "calls": 45, "errors": 0},
        {"skill": "greet", "version": 2, "generation": g2, "calls": 20, "errors": 1},
        {"skill": "greet", "version": 1, "generation": g2, "calls": 20, "errors": 0},
        {"skill": "greet", "version": 1, "generation": g1 - 1, "calls": 999, "errors": 0},  # before the canary
    ]))
    steps = cs.step_counts(store, canary=c)
    assert [(s.weight, s.candidate.calls, s.baseline.calls) for s in steps] == [(10, 5, 45), (50, 20, 20)]


def test_registry_routes_by_weight_sticky_keys_and_reports(store: Store, tmp_path: Path) -> None:
    c = setup_canary(store, weight=30)
    with connect(store.url, cache_dir=tmp_path / "cache", watch=False, report_interval=60) as registry:
        registry.refresh()
        assert registry.call("greet") in ("v1", "v2")
        registry.refresh()
        assert registry.canary("greet") == {"active": 1, "candidate": 2, "weight": 30, "fallback": False,
                                            "generation": c.generation}
        seen = Counter(registry.call("greet") for _ in range(4000))
        assert 0.25 < seen["v2"] / 4000 < 0.35, seen
        # sticky keys: the same key always lands on the same side
        for key in range(50):
            assert len({registry.call_keyed("greet", f"user-{key}") for _ in range(5)}) == 1
        keyed = Counter(registry.call_keyed("greet", f"user-{k}") for k in range(4000))
        assert 0.25 < keyed["v2"] / 4000 < 0.35, keyed
        on_candidate = {k for k in range(2000) if registry.call_keyed("greet", f"user-{k}") == "v2"}
        assert registry.flush_evidence(10)
        # raise the weight: every key on the candidate stays there
        c = cs.set_weight(store, name="greet", canary_id=c.id, weight=60, actor="t", evidence={})
        registry.refresh()
        assert registry.canary("greet")["weight"] == 60
        assert all(registry.call_keyed("greet", f"user-{k}") == "v2" for k in on_candidate)
        assert registry.flush_evidence(10)
        steps = cs.step_counts(store, canary=c)
        first = steps[0]
        assert first.candidate.calls + first.baseline.calls == 4000 + 250 + 4000 + 2000 + 1
        assert steps[1].candidate.calls >= len(on_candidate)
        # dropping the candidate: every call goes to v1 again after the next poll
        cs.drop_candidate(store, name="greet", actor="t", reason="test", evidence={}, automatic=False)
        registry.refresh()
        assert registry.canary("greet") is None
        assert {registry.call("greet") for _ in range(200)} == {"v1"}


def test_fallback_retries_a_failing_candidate_on_the_active_version(store: Store, tmp_path: Path) -> None:
    body = "def run(x=0):\n    if x % 2:\n        raise ValueError('odd input')\n    return 'v2'\n"
    c = setup_canary(store, body=body, config={**CONFIG, "fallback": True, "sample_io": 5}, weight=50)
    with connect(store.url, cache_dir=tmp_path / "cache", watch=False, report_interval=60) as registry:
        registry.refresh()
        registry.call("greet", 0)
        registry.refresh()
        results = [registry.call("greet", i) for i in range(400)]  # never raises
        assert set(results) <= {"v1", "v2"} and "v2" in results
        assert registry.flush_evidence(10)
    counts = cs.step_counts(store, canary=c)[0]
    assert counts.candidate.errors > 50 and counts.candidate.error_types == {"ValueError": counts.candidate.errors}
    assert counts.baseline.errors == 0
    samples = cs.runtime_samples(store, name="greet", number=2)
    assert 0 < len(samples) <= 5 and all("input" in s for s in samples)


def test_without_fallback_the_candidate_error_reaches_the_caller(store: Store, tmp_path: Path) -> None:
    body = "def run(x=0):\n    raise KeyError('boom')\n"
    setup_canary(store, body=body, weight=99)
    with connect(store.url, cache_dir=tmp_path / "cache", watch=False) as registry:
        registry.refresh()
        failures = 0
        for _ in range(100):
            try:
                registry.call("greet")
            except KeyError:
                failures += 1
        assert failures > 80


def test_a_lost_store_never_fails_a_call_and_counts_are_sent_later(store: Store, tmp_path: Path) -> None:
    c = setup_canary(store, weight=50)
    with connect(store.url, cache_dir=tmp_path / "cache", watch=False, report_interval=60) as registry:
        registry.refresh()
        registry.call("greet")
        registry.refresh()
        sink = registry._evidence.sink
        fail = threading.Event()
        fail.set()

        def flaky(b: dict[str, Any]) -> Any:
            if fail.is_set():
                raise OSError("store unreachable")
            return sink(b)

        registry._evidence.sink = flaky
        for _ in range(300):
            registry.call("greet")
        assert not registry.flush_evidence(0.2)
        stats = registry.runtime_stats()
        assert stats["pending_calls"] >= 300 and "unreachable" in stats["last_error"]
        fail.clear()
        assert registry.flush_evidence(10)
    steps = cs.step_counts(store, canary=c)
    assert steps[0].candidate.calls + steps[0].baseline.calls >= 300


def test_acall_routes_and_falls_back_too(store: Store, tmp_path: Path) -> None:
    import asyncio

    body = "def run(x=0):\n    if x % 2:\n        raise ValueError('odd input')\n    return 'v2'\n"
    c = setup_canary(store, body=body, config={**CONFIG, "fallback": True}, weight=50)
    with connect(store.url, cache_dir=tmp_path / "cache", watch=False, report_interval=60) as registry:
        registry.refresh()
        registry.call("greet", 0)
        registry.refresh()

        async def many() -> list[str]:
            return [await registry.acall("greet", i) for i in range(200)]

        results = asyncio.run(many())
        assert set(results) == {"v1", "v2"}
        assert registry.flush_evidence(10)
    counts = cs.step_counts(store, canary=c)[0]
    assert counts.candidate.errors > 10 and counts.baseline.errors == 0
    assert counts.candidate.calls + counts.baseline.calls >= 200
