"""Worker processes (``python -m sandgate worker``) against one real PostgreSQL, real Docker.

* several workers cooperate: every queued evaluation completed exactly once;
* a worker killed with SIGKILL mid-evaluation: after its lease lapses another
  worker claims the job again and completes it once; the dead worker's sandbox
  is removed;
* a restart (SIGTERM, then a new worker) loses nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandgate import lifecycle
from sandgate.policy import load_policy
from sandgate.sandbox.runner import CONTROLLER_LABEL, MANAGED_LABEL, reap
from sandgate.store import Store, audit, evaluations, open_store, pointers
from sandgate.submission import submission_from_files

pytest_plugins = ["tests.integration.conftest_store"]
pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
SKILL = ROOT / "examples" / "skills" / "text_stats"
HOST = socket.gethostname()

# ``python -m sandgate worker`` once cli/__init__.py registers the command; until
# then the same Typer app with the worker commands registered by hand.
_WIRED = "worker" in (ROOT / "platform" / "sandgate" / "cli" / "__init__.py").read_text()
_MAIN = (
    "from sandgate.cli import app, _register\n"
    "_register()\n"
    "if not any(c.name == 'worker' for c in app.registered_commands):\n"
    "    from sandgate.cli import worker\n"
    "    worker.register(app)\n"
    "app(prog_name='sandgate')\n"
)


def text_stats(i: int) -> Any:
    files = {str(p.relative_to(SKILL)): p.read_bytes() for p in sorted(SKILL.rglob("*")) if p.is_file()}
    files["text_stats.py"] += f"\n# variant {i}\n".encode()
    return submission_from_files(files)


def slow_skill(seconds: float = 5.0) -> Any:
    return submission_from_files({
        "skill.toml": b'name = "slow_skill"\ndescription = "slow tests"\nentrypoint = "slow_skill:run"\n'
                      b"requirements = []\n",
        "slow_skill.py": b"def run(x):\n    return x + 1\n",
        # the assert first: a mutant fails at once, only the dynamic phase and the
        # mutation phase's controls (the unmutated skill) sleep
        "tests/test_slow_skill.py": (
            "import time\n\nfrom slow_skill import run\n\n\ndef test_run():\n"
            "    assert run(1) == 2\n"
            f"    for _ in range({int(seconds * 10)}):\n        time.sleep(0.1)\n"
        ).encode(),
    })  # fmt: skip


class WorkerProcess:
    def __init__(self, url: str, log: Path, *args: str) -> None:
        argv = [sys.executable, "-m", "sandgate"] if _WIRED else [sys.executable, "-c", _MAIN]
        env = {**os.environ, "SANDGATE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1",
               "SANDGATE_HOME": str(log.parent / ".sandgate")}
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*argv, "worker", "--poll-interval", "0.1", *args],
            cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.controller = f"{HOST}:{self.proc.pid}"

    def owns(self, owner: str | None) -> bool:
        return bool(owner) and owner.startswith(self.controller + ":")

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._out.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, procs: list[WorkerProcess] = (),
             tails: Callable[[], str] | None = None) -> Any:
    """``cond()``'s first truthy value within ``timeout`` s, else fail with the workers' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    logs = tails() if tails is not None else "\n".join(f"--- worker {p.proc.pid}\n{p.tail()}" for p in procs)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs}")


def containers_of(docker_client: Any, procs: list[WorkerProcess]) -> list[str]:
    found = []
    for p in procs:
        found += [c["Id"] for c in docker_client.api.containers(
            all=True, filters={"label": [f"{MANAGED_LABEL}=true", f"{CONTROLLER_LABEL}={p.controller}"]})]
    return found


@pytest.fixture
def pg_store(pg_server: Any, pg_template: str) -> Iterator[Store]:
    name = f"w_{os.getpid()}_{time.monotonic_ns()}"
    url = pg_server.create_database(name, template=pg_template)
    store = open_store(url)
    yield store
    store.close()
    pg_server.drop_database(name)


@pytest.fixture
def workers(docker_client: Any, sandbox_image: str) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.kill()
    for p in started:  # never leave a sandbox behind, even when the test failed
        reap(docker_client, controller=p.controller)


def evaluated_ids(store: Store, name: str) -> Counter[str]:
    return Counter(e.evidence["evaluation_id"] for e in audit.history(store, name=name) if e.action == "evaluated")


def test_several_workers_complete_each_evaluation_exactly_once(pg_store, workers, docker_client, tmp_path):
    policy = load_policy("default")
    ids = [
        lifecycle.submit(pg_store, submission=text_stats(i), policy=policy, actor="test", wait=False).evaluation.id
        for i in range(9)
    ]
    for k in range(3):
        workers.append(WorkerProcess(pg_store.url, tmp_path / f"w{k}.log", "--concurrency", "1"))

    def all_done() -> bool:
        return all(evaluations.get_evaluation(pg_store, evaluation_id=e).status == "done" for e in ids)

    wait_for(all_done, 90, "all evaluations done", workers)
    records = [evaluations.get_evaluation(pg_store, evaluation_id=e) for e in ids]
    assert {r.verdict for r in records} == {"passed"}, [r.reasons for r in records]
    assert evaluated_ids(pg_store, "text_stats") == Counter(ids)  # each exactly once, none lost
    assert all(r.attempts == 1 for r in records)
    owners = {r.lease_owner for r in records}
    assert all(any(p.owns(o) for p in workers) for o in owners)
    assert len(owners) >= 2, owners  # they shared the work
    assert pointers.active_pointer(pg_store, name="text_stats") is not None  # auto-promoted
    for p in workers:
        assert p.stop() == 0, p.tail()
    assert containers_of(docker_client, workers) == []


def test_kill_9_mid_evaluation_is_reclaimed_and_completed_once(pg_store, workers, docker_client, tmp_path):
    policy = load_policy("default")
    eid = lifecycle.submit(pg_store, submission=slow_skill(5.0), policy=policy, actor="test", wait=False).evaluation.id
    a = WorkerProcess(pg_store.url, tmp_path / "a.log", "--concurrency", "1", "--lease-seconds", "3")
    workers.append(a)
    wait_for(lambda: a.owns(evaluations.get_evaluation(pg_store, evaluation_id=eid).lease_owner), 30,
             "worker A to claim the evaluation", workers)
    wait_for(lambda: containers_of(docker_client, [a]), 30, "worker A's sandbox", workers)
    assert evaluations.get_evaluation(pg_store, evaluation_id=eid).status == "running"
    a.kill()  # SIGKILL: no clean-up, the lease is left to lapse, the sandbox is orphaned
    assert containers_of(docker_client, [a])

    b = WorkerProcess(pg_store.url, tmp_path / "b.log", "--concurrency", "1", "--lease-seconds", "3")
    workers.append(b)
    # B's start-up reap removes A's sandbox (A is dead on this host) ...
    wait_for(lambda: not containers_of(docker_client, [a]), 30, "A's orphaned sandbox to be removed", workers)
    # ... and once A's lease lapses, B claims the evaluation again and finishes it
    done = wait_for(
        lambda: (r := evaluations.get_evaluation(pg_store, evaluation_id=eid)).status == "done" and r, 60,
        "the evaluation to be completed by worker B", workers,
    )
    assert done.verdict == "passed", done.reasons
    assert done.attempts == 2 and b.owns(done.lease_owner)
    assert evaluated_ids(pg_store, "slow_skill") == Counter([eid])  # exactly once
    assert b.stop() == 0, b.tail()
    assert containers_of(docker_client, [a, b]) == []


def test_restart_loses_nothing(pg_store, workers, docker_client, tmp_path):
    policy = load_policy("default")
    ids = [
        lifecycle.submit(
            pg_store, submission=text_stats(100 + i), policy=policy, actor="test", wait=False
        ).evaluation.id
        for i in range(5)
    ]
    first = WorkerProcess(pg_store.url, tmp_path / "first.log", "--concurrency", "1", "--drain-seconds", "0")
    workers.append(first)

    def statuses() -> Counter[str]:
        return Counter(evaluations.get_evaluation(pg_store, evaluation_id=e).status for e in ids)

    wait_for(
        lambda: statuses()["done"] >= 1 and statuses()["running"] == 1,
        60,
        "one evaluation done and the next one running",
        workers,
    )
    assert first.stop() == 0, first.tail()  # SIGTERM mid-evaluation: the running one is handed back
    after_stop = statuses()
    assert after_stop["running"] == 0 and after_stop["done"] + after_stop["queued"] == len(ids)
    assert containers_of(docker_client, [first]) == []

    second = WorkerProcess(pg_store.url, tmp_path / "second.log", "--concurrency", "2")
    workers.append(second)
    wait_for(lambda: statuses()["done"] == len(ids), 90, "every evaluation done after the restart", workers)
    assert evaluated_ids(pg_store, "text_stats") == Counter(ids)
    records = [evaluations.get_evaluation(pg_store, evaluation_id=e) for e in ids]
    assert {r.verdict for r in records} == {"passed"}
    assert all(r.attempts == 1 for r in records)  # a handed-back job does not use up an attempt
    assert second.stop() == 0, second.tail()
    assert containers_of(docker_client, [first, second]) == []
