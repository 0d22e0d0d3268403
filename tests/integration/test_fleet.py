"""A fleet: two Docker engines on this machine (tests/fleet.py), a worker on each, one real PostgreSQL.

* a host killed with SIGKILL (its worker, engine, containerd, shims and
  sandboxes at once) a third of the way through: every evaluation completes
  exactly once on the other host after the lease, none ``failed``; when the host
  comes back, its new worker's start-up reap (by host id) removes what the dead
  engine left, and no container is left anywhere;
* an engine that dies under a running evaluation while its worker lives: the
  job is requeued (attempt counted) and completed by the other host — never a
  verdict stored because the engine died; the worker waits for its engine and,
  once it is back, removes its own stopped leftovers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandgate import lifecycle
from sandgate.policy.model import load_policy
from sandgate.store import Store, evaluations, open_store
from tests.fleet import Fleet, fleet_policy, managed_containers
from tests.integration import test_worker_processes as worker_processes
from tests.integration.test_worker_processes import evaluated_ids, slow_skill, text_stats

pytest_plugins = ["tests.integration.conftest_store"]
pytestmark = pytest.mark.postgres

WORKER = ["--concurrency", "1", "--poll-interval", "0.1", "--lease-seconds", "3"]


@pytest.fixture(scope="module")
def two_hosts(docker_client: Any, sandbox_image: str) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("the fleet tests start Docker engines: they need root", pytrace=False)
    policies = fleet_policy(Path(tempfile.mkdtemp(prefix="fleet-policies-")))
    try:
        with Fleet(2, database_url="", image=sandbox_image, worker_args=WORKER, start_workers=False) as fleet:
            for host in fleet.hosts:
                host.env["SANDGATE_POLICIES_DIR"] = str(policies)
            fleet.policy = load_policy("fleet", policies_dir=policies)
            yield fleet
    finally:
        shutil.rmtree(policies, ignore_errors=True)


@pytest.fixture
def fleet(two_hosts: Fleet, pg_server: Any, pg_template: str) -> Iterator[tuple[Fleet, Store]]:
    name = f"fleet_{os.getpid()}_{time.monotonic_ns()}"
    url = pg_server.create_database(name, template=pg_template)
    for host in two_hosts.hosts:
        host.database_url = url
    store = open_store(url)
    try:
        yield two_hosts, store
    finally:
        for host in two_hosts.hosts:
            host.stop_worker()
        store.close()
        pg_server.drop_database(name)


def wait_for(cond: Any, timeout: float, what: str, fleet: Fleet) -> Any:
    return worker_processes.wait_for(cond, timeout, what, tails=fleet.tails)


def statuses(store: Store, ids: list[str]) -> Counter[str]:
    return Counter(evaluations.get_evaluation(store, evaluation_id=e).status for e in ids)


def test_engine_dying_under_a_job_requeues_it_for_another_host(fleet):
    f, store = fleet
    a, b = f.hosts
    a.start_worker()
    eid = lifecycle.submit(store, submission=slow_skill(4.0), policy=f.policy, actor="test",
                           wait=False).evaluation.id
    wait_for(lambda: a.owns(evaluations.get_evaluation(store, evaluation_id=eid).lease_owner), 30,
             "host A to claim the evaluation", f)
    wait_for(lambda: any(c["State"] == "running" and c["Labels"].get("sandgate.evaluation") == eid
                         for c in managed_containers(a.client())), 30, "A's sandbox running the job", f)
    b.start_worker()
    a.kill_engine()  # the engine (containerd, shims, sandboxes) dies; A's worker lives on

    done = wait_for(lambda: (r := evaluations.get_evaluation(store, evaluation_id=eid)).status == "done" and r,
                    180, "host B to complete the requeued evaluation", f)
    assert done.verdict == "passed", done.reasons  # never a verdict of the dead engine
    assert b.owns(done.lease_owner) and done.attempts == 2  # A's attempt counted
    assert evaluated_ids(store, "slow_skill") == Counter([eid])
    assert '"requeued: ' in a.log_text() and a.worker is not None and a.worker.poll() is None, a.tail()

    a.start_engine()  # back: its worker (still the same process) removes its stopped leftovers
    assert any(c["State"] != "running" for c in managed_containers(a.client()))
    wait_for(lambda: all(c["State"] == "running" for c in managed_containers(a.client())), 30,
             "A's stopped leftovers to be removed", f)  # its warm pool starts new ones: those run
    assert "the Docker engine answers again" in a.log_text()
    assert a.stop_worker() == 0, a.tail()
    assert b.stop_worker() == 0, b.tail()
    assert f.leftovers() == {"fleet-0": 0, "fleet-1": 0}


def test_engine_restarted_under_a_job_requeues_it_never_a_verdict_of_the_restart(fleet):
    # the engine dies under the sandbox and is started again at once (a restart): the run is not
    # the skill's timeout or failure; the job is requeued and this same host evaluates it again
    f, store = fleet
    a, _ = f.hosts
    a.start_worker()
    eid = lifecycle.submit(store, submission=slow_skill(4.0), policy=f.policy, actor="test",
                           wait=False).evaluation.id
    wait_for(lambda: any(c["State"] == "running" and c["Labels"].get("sandgate.evaluation") == eid
                         for c in managed_containers(a.client())), 30, "A's sandbox running the job", f)
    a.kill_engine()
    for attempt in range(3):  # a containerd killed a moment ago can make the first start time out
        try:
            a.start_engine()
            break
        except RuntimeError:
            if attempt == 2:
                raise
            time.sleep(2)

    done = wait_for(lambda: (r := evaluations.get_evaluation(store, evaluation_id=eid)).status == "done" and r,
                    180, "host A to complete the requeued evaluation", f)
    assert done.verdict == "passed", done.reasons
    assert a.owns(done.lease_owner) and done.attempts == 2, (done.attempts, a.tail())
    assert evaluated_ids(store, "slow_skill") == Counter([eid])
    # requeued as lost whether the engine was still starting when the run was judged or already
    # back (that second path, "during the sandbox's run", is pinned by tests/unit/test_fleet_identity.py)
    assert '"requeued: the Docker engine stopped answering during' in a.log_text(), a.tail()
    assert a.stop_worker() == 0, a.tail()
    assert f.leftovers()["fleet-0"] == 0


def test_host_killed_a_third_through_every_evaluation_completes_once(fleet):
    f, store = fleet
    a, b = f.hosts
    policy = f.policy
    n = 6
    ids = [lifecycle.submit(store, submission=text_stats(500 + i), policy=policy, actor="test",
                            wait=False).evaluation.id for i in range(n)]
    a.start_worker()
    b.start_worker()

    def a_third_done_and_a_busy() -> bool:
        running = [evaluations.get_evaluation(store, evaluation_id=e) for e in ids]
        return (sum(r.status == "done" for r in running) >= n // 3
                and any(r.status == "running" and a.owns(r.lease_owner) for r in running))

    wait_for(a_third_done_and_a_busy, 300, "a third done with host A busy", f)
    dead = a.controller
    a.kill()  # the whole host: worker, engine, containerd, shims, sandboxes
    held = [e for e in ids if (r := evaluations.get_evaluation(store, evaluation_id=e)).status == "running"
            and a.owns(r.lease_owner)]
    assert held, "host A held no lease when it died: nothing was tested"
    wait_for(lambda: statuses(store, ids)["done"] == n, 300, "every evaluation done on host B", f)

    records = [evaluations.get_evaluation(store, evaluation_id=e) for e in ids]
    assert {r.verdict for r in records} == {"passed"}, [r.reasons for r in records]
    assert evaluated_ids(store, "text_stats") == Counter(ids)  # each exactly once, none lost
    for r in records:
        if r.id in held:  # A's jobs: claimed again by B once A's lease lapsed
            assert r.attempts == 2 and b.owns(r.lease_owner), r

    a.start_engine()  # the host comes back: the dead engine's containers are still there, stopped
    left = managed_containers(a.client())
    assert left and all(c["Labels"]["sandgate.controller"] == dead for c in left), left
    a.start_worker()  # its start-up reap (host id fleet-0, the old pid dead) removes them
    wait_for(lambda: all(c["Labels"]["sandgate.controller"] != dead for c in managed_containers(a.client())),
             30, "the start-up reap of host A", f)
    assert a.stop_worker() == 0, a.tail()
    assert b.stop_worker() == 0, b.tail()
    assert f.leftovers() == {"fleet-0": 0, "fleet-1": 0}
