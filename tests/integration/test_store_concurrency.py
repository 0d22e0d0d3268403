"""Concurrent pointer moves and killed writers, on real SQLite and real PostgreSQL.

Invariants checked after every storm:

* the chain of move events is gapless: each move's ``before`` is the previous
  move's ``after`` (version and generation), generations step by one;
* the last move's ``after`` is the skill's current pointer and generation;
* exactly one event per successful move, and none for a lost one.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sandgate.errors import Conflict, InvalidTransition
from sandgate.store import audit, open_store, pointers, versions
from sandgate.store.models import Version, VersionFile
from tests.integration.conftest_store import passed_version, variant

pytest_plugins = ["tests.integration.conftest_store"]

N = 8


def move_events(store, name):
    return [e for e in audit.history(store, name=name) if e.action in ("promoted", "rolled_back")]


def assert_consistent(store, name, winners: list[int]) -> None:
    events = move_events(store, name)
    for prev, cur in zip(events, events[1:], strict=False):
        assert cur.before == prev.after, (prev, cur)
        assert cur.after["generation"] == cur.before["generation"] + 1
    skill = versions.get_skill(store, name=name)
    assert events[-1].after == {"version": skill.active_version, "generation": skill.generation}
    assert skill.generation == len(events)
    assert sorted(winners) == [e.id for e in events]


def _setup(store, policy, versions=5) -> None:
    for i in range(1, versions + 1):
        passed_version(store, "greet", i)
    pointers.promote(store, name="greet", number=1, actor="setup", policy=policy)
    pointers.promote(store, name="greet", number=2, actor="setup", policy=policy)


def _attempt(store, policy, op: str, expected: int | None) -> tuple[str, object]:
    try:
        if op == "rollback":
            m = pointers.rollback(store, name="greet", actor="t", expected_generation=expected)
        else:
            m = pointers.promote(
                store, name="greet", number=int(op), actor="t", policy=policy,
                expected_generation=expected,
            )  # fmt: skip
        return "ok", m.event_id
    except Conflict as exc:
        return "conflict", str(exc)
    except InvalidTransition as exc:
        return "invalid", str(exc)


def test_threads_same_expected_generation_exactly_one_wins(store, policy):
    _setup(store, policy)
    setup_ids = [e.id for e in move_events(store, "greet")]
    _, generation = pointers.active_pointer(store, name="greet")
    ops = ["rollback", "3", "4", "5", "1", "rollback", "3", "4"]  # all valid from the current state
    barrier = threading.Barrier(N)
    results: list[tuple[str, object]] = [("", None)] * N

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = _attempt(store, policy, ops[i], generation)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    kinds = [k for k, _ in results]
    assert kinds.count("ok") == 1, results
    assert kinds.count("conflict") == N - 1, results
    for kind, message in results:
        if kind == "conflict":
            assert f"expected generation {generation}, now {generation + 1}" in str(message)
    winners = setup_ids + [v for k, v in results if k == "ok"]  # type: ignore[misc]
    assert_consistent(store, "greet", winners)  # type: ignore[arg-type]


def test_threads_storm_without_expected_generation(store, policy):
    _setup(store, policy)
    winners = [e.id for e in move_events(store, "greet")]
    lock = threading.Lock()
    barrier = threading.Barrier(N)

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        barrier.wait()
        for _ in range(6):
            kind, value = _attempt(store, policy, rnd.choice(["rollback", "1", "2", "3", "4", "5"]), None)
            assert kind in ("ok", "conflict", "invalid")
            if kind == "ok":
                with lock:
                    winners.append(value)  # type: ignore[arg-type]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(winners) > 2
    assert_consistent(store, "greet", winners)


# --------------------------------------------------------------------------- processes

def _mover(url: str, mode: str, seed: int, barrier, queue) -> None:  # type: ignore[no-untyped-def]
    """One forked process: its own engine and connections, then moves at the barrier."""
    from types import SimpleNamespace

    policy = SimpleNamespace(name="default", hash="sha256:policy-1")
    store = open_store(url)
    out: list[tuple[str, object]] = []
    try:
        if mode == "race":
            _, generation = pointers.active_pointer(store, name="greet")
            ops = ["rollback", "3", "4", "5", "1"]
            barrier.wait(timeout=60)
            out.append(_attempt(store, policy, ops[seed % len(ops)], generation))
        else:
            rnd = random.Random(seed)
            barrier.wait(timeout=60)
            for _ in range(5):
                op = rnd.choice(["rollback", "1", "2", "3", "4", "5"])
                out.append(_attempt(store, policy, op, None))
    except BaseException as exc:  # report, never hang the parent
        out.append(("crash", repr(exc)))
    finally:
        store.close()
        queue.put(out)


def _run_movers(store, url: str, mode: str) -> list[tuple[str, object]]:
    """N forked processes (forked after the imports, so they start in milliseconds)."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(N), ctx.Queue()
    store.engine.dispose()  # no pooled connection crosses the fork
    procs = [ctx.Process(target=_mover, args=(url, mode, i, barrier, queue)) for i in range(N)]
    for p in procs:
        p.start()
    results: list[tuple[str, object]] = []
    for _ in procs:
        results.extend(queue.get(timeout=120))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert not [r for r in results if r[0] == "crash"], results
    return results


def test_processes_same_expected_generation_exactly_one_wins(store, store_url, policy):
    _setup(store, policy)
    winners = [e.id for e in move_events(store, "greet")]
    results = _run_movers(store, store_url, "race")
    kinds = [k for k, _ in results]
    assert kinds.count("ok") == 1 and kinds.count("conflict") == N - 1, results
    assert_consistent(store, "greet", winners + [v for k, v in results if k == "ok"])  # type: ignore[misc]


def test_processes_storm(store, store_url, policy):
    _setup(store, policy)
    winners = [e.id for e in move_events(store, "greet")]
    results = _run_movers(store, store_url, "storm")
    assert {k for k, _ in results} <= {"ok", "conflict", "invalid"}
    assert_consistent(store, "greet", winners + [v for k, v in results if k == "ok"])  # type: ignore[misc]


# --------------------------------------------------------------------------- killed writer

_SUBMITTER = textwrap.dedent(
    """
    import hashlib, sys, time
    from types import SimpleNamespace
    from sandgate.store import open_store, audit, pointers, versions

    url, mode, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    files = {f"pkg/f{i:05d}.py": (b"# %d\\n" % i) + b"x" * size for i in range(count)}
    h = hashlib.sha256(b"".join(p.encode() + hashlib.sha256(d).digest() for p, d in files.items()))
    sub = SimpleNamespace(name="greet", files=files, manifest={"name": "greet"},
                          content_hash="sha256:" + h.hexdigest())
    store = open_store(url)
    if mode == "hook":
        def stall(session):
            print("INSIDE", flush=True)
            time.sleep(120)
        store.hooks["create_version.files_inserted"] = stall
    print("READY", flush=True)
    versions.create_version(store, submission=sub, actor="doomed")
    print("DONE", flush=True)
    """
)


def _half_versions(store) -> list[tuple[int, int, int]]:
    """Versions whose stored files do not match their file_count."""
    from sqlalchemy import func, select

    with store.read() as s:
        rows = s.execute(
            select(Version.id, Version.file_count, func.count(VersionFile.path))
            .outerjoin(VersionFile, VersionFile.version_id == Version.id)
            .group_by(Version.id, Version.file_count)
        ).all()
    return [(vid, want, have) for vid, want, have in rows if want != have]


def _spawn_submitter(url: str, mode: str, count: int, size: int) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", _SUBMITTER, url, mode, str(count), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "READY", (line, p.stderr.read() if p.poll() is not None else "")  # type: ignore[union-attr]
    return p


def _check_after_kill(store) -> None:
    assert _half_versions(store) == []
    numbers = [v.number for v in versions.list_versions(store, name="greet")]
    assert numbers == list(range(1, len(numbers) + 1))  # contiguous
    # the store is usable and the next version takes the next number, complete
    v, created = versions.create_version(store, submission=variant("greet", 99), actor="t")
    assert created and v.number == len(numbers) + 1
    assert _half_versions(store) == []
    events = audit.history(store, name="greet")
    assert all(e.actor != "doomed" or e.version in numbers for e in events)


def test_killed_inside_the_transaction_leaves_no_half_version(store, store_url, policy):
    passed_version(store, "greet", 1)
    p = _spawn_submitter(store_url, "hook", count=400, size=2000)
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "INSIDE"  # version row and all files written, not committed
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert [v.number for v in versions.list_versions(store, name="greet")] == [1]
    assert [e.actor for e in audit.history(store, name="greet")].count("doomed") == 0
    _check_after_kill(store)


@pytest.mark.parametrize("delay", [0.03, 0.1])
def test_killed_during_a_big_insert_leaves_no_half_version(store, store_url, delay):
    passed_version(store, "greet", 1)
    p = _spawn_submitter(store_url, "plain", count=3000, size=8000)
    time.sleep(delay)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    # killed before, during, or (rarely) after the commit: never half
    assert [v.number for v in versions.list_versions(store, name="greet")] in ([1], [1, 2])
    _check_after_kill(store)


def test_concurrent_submits_of_new_skill_and_new_versions(store_url):
    """Threads submitting the same and different content at once: numbers stay contiguous."""
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(N)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        s = stores[i % len(stores)]
        barrier.wait()
        v, created = versions.create_version(s, submission=variant("fresh", i % 4), actor=f"t{i}")
        with lock:
            results.append((v.number, created))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert sum(created for _, created in results) == 4
        stored = versions.list_versions(stores[0], name="fresh")
        assert [v.number for v in stored] == [1, 2, 3, 4]
        assert len({v.content_hash for v in stored}) == 4
        assert _half_versions(stores[0]) == []
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("mover", ["promote", "rollback"])
def test_yank_racing_a_move_to_the_same_version_never_leaves_it_active(store, policy, mover):
    """The move locks its target version; a concurrent yank waits, then sees it active."""
    _setup(store, policy)  # 1 -> 2 active; the target below is 3 (promote) or 1 (rollback)
    target = 3 if mover == "promote" else 1
    outcome: dict[str, object] = {}

    def yank_now() -> None:
        try:
            pointers.yank(store, name="greet", number=target, actor="sec", reason="race")
            outcome["yank"] = "yanked"
        except InvalidTransition as exc:
            outcome["yank"] = exc.code

    def start_yank_inside_the_move(session) -> None:  # type: ignore[no-untyped-def]
        store.hooks.clear()
        t = threading.Thread(target=yank_now)
        t.start()
        t.join(timeout=0.5)
        outcome["blocked"] = t.is_alive()  # waiting on our lock, not done
        outcome["thread"] = t

    store.hooks["move.before_cas"] = start_yank_inside_the_move
    try:
        if mover == "promote":
            pointers.promote(store, name="greet", number=target, actor="t", policy=policy)
        else:
            pointers.rollback(store, name="greet", actor="t")
    finally:
        store.hooks.clear()
    outcome["thread"].join(timeout=30)  # type: ignore[attr-defined]
    assert outcome["blocked"] is True
    assert outcome["yank"] == "yank_active"
    version = versions.get_version(store, name="greet", number=target)
    assert version.active and not version.yanked
