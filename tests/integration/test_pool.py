"""The warm pool against the real Docker engine: used once, same hardening, drained on a new
image, reaped after its owner is killed, the same verdicts as cold sandboxes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandgate.config import Settings
from sandgate.evaluation import evaluate, evaluate_path
from sandgate.limits import Limits
from sandgate.policy import effective_limits, load_policy, parse_policy
from sandgate.report import EvaluationReport
from sandgate.sandbox import pool as warm_pools
from sandgate.sandbox.runner import (
    CONTROLLER_LABEL,
    MANAGED_LABEL,
    POOL_LABEL,
    controller_id,
    create_sandbox,
    remove_container,
)
from sandgate.store import open_store
from sandgate.submission import load_submission, submission_from_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "skills"
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("sandbox_image", "no_leftovers")]


def policy(**limits: Any):
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"].update({"timeout_seconds": 30, **limits})
    return parse_policy(data, name="test-pool")


def wait_for(predicate: Any, seconds: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def manager() -> Iterator[warm_pools.PoolManager]:
    """A manager installed as this process's pool (what a worker runs), drained after the test."""
    assert warm_pools.current() is None
    made = warm_pools.PoolManager(size=1, max_age=120)
    warm_pools._current = made
    try:
        yield made
    finally:
        warm_pools._current = None
        made.close()


def warm_pool(manager: warm_pools.PoolManager, docker_client: Any, limits: Limits) -> warm_pools.WarmPool:
    found = manager.pool(docker_client, image=Settings().image, limits=limits)
    assert found is not None
    wait_for(lambda: len(found.idle()) == found.size, what="the pool to fill")
    return found


def was_warm(report: EvaluationReport) -> bool:
    return report.timings.get("sandbox_create") == 0.0


# --------------------------------------------------------------------------- used once

LEAVER_MANIFEST = b'name = "leaver"\ndescription = "leaves things behind"\nentrypoint = "leaver:run"\n'
LEAVER = b'''import os
import subprocess


def run(x):
    return x + 1


def leave():
    # the sandbox's working tree is named through the cwd: a literal of it is an environment probe
    work = os.path.dirname(os.getcwd())
    for path in (os.path.join(work, "left_behind"), "/tmp/left_behind", os.path.join(os.getcwd(), "left_behind")):
        with open(path, "w") as handle:
            handle.write("secret of the previous evaluation")
    # a background process in its own session, as a daemon would be
    subprocess.Popen(["sleep", "3600"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''
LEAVER_TESTS = b'''import os

from leaver import leave, run


def test_run():
    assert run(1) == 2


def test_leave():
    leave()
    assert os.path.exists(os.path.join(os.path.dirname(os.getcwd()), "left_behind"))
    assert os.path.exists("/tmp/left_behind")
'''
SEEKER_MANIFEST = b'name = "seeker"\ndescription = "looks for leftovers"\nentrypoint = "seeker:run"\n'
SEEKER = b'''import os


def run(x):
    return x + 1


def leftovers():
    work = os.path.dirname(os.getcwd())
    candidates = (os.path.join(work, "left_behind"), "/tmp/left_behind", os.path.join(os.getcwd(), "left_behind"))
    found = [p for p in candidates if os.path.exists(p)]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if b"sleep" in handle.read():
                        found.append(f"process {pid}")
            except OSError:
                pass
    return found
'''
SEEKER_TESTS = b'''from seeker import leftovers, run


def test_run():
    assert run(1) == 2


def test_nothing_left_behind():
    assert leftovers() == []
'''


def test_a_pool_sandbox_is_never_used_twice(manager, docker_client) -> None:
    """A skill leaves files in /work and /tmp and a background process; the next evaluation,
    also from the pool, sees none of it, and ran in another container."""
    chosen = policy()
    leaver = submission_from_files({"skill.toml": LEAVER_MANIFEST, "leaver.py": LEAVER,
                                    "tests/test_leaver.py": LEAVER_TESTS})
    seeker = submission_from_files({"skill.toml": SEEKER_MANIFEST, "seeker.py": SEEKER,
                                    "tests/test_seeker.py": SEEKER_TESTS})
    pool = warm_pool(manager, docker_client, effective_limits(chosen.limits, None))
    first = evaluate(leaver, policy=chosen)
    assert was_warm(first), first.timings
    assert first.tests.passed == 2, (first.tests, first.reasons)  # it did leave its files and its process
    wait_for(lambda: len(pool.idle()) == 1, what="the refill")
    second = evaluate(seeker, policy=chosen)
    assert was_warm(second), second.timings
    assert second.tests.collected == 2 and second.tests.passed == 2, [
        (c.nodeid, c.message) for c in second.tests.cases]
    assert first.sandbox.container_id != second.sandbox.container_id
    for report in (first, second):  # used once: removed after its evaluation
        assert not docker_client.api.containers(all=True, filters={"id": report.sandbox.container_id})
    assert pool.stats["taken"] == 2


# --------------------------------------------------------------------------- hardening

def test_pool_sandboxes_have_the_ordinary_hardening(manager, docker_client) -> None:
    limits = Limits(timeout_seconds=30, memory_mb=256, pids=64, cpus=0.5, work_disk_mb=32)
    pool = warm_pool(manager, docker_client, limits)
    [warm_id] = pool.idle()
    cold_id = create_sandbox(docker_client.api, image=Settings().image, limits=limits,
                             evaluation_id=f"test-{uuid.uuid4().hex}")
    try:
        warm, cold = (docker_client.api.inspect_container(c) for c in (warm_id, cold_id))
    finally:
        remove_container(docker_client.api, cold_id)
    host = warm["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["PidsLimit"] == 64 and host["NanoCpus"] == 500_000_000
    assert set(host["Tmpfs"]) == {"/work", "/tmp"} and "noexec" in host["Tmpfs"]["/tmp"]
    assert not host.get("Binds") and not warm.get("Mounts")
    assert warm["Config"]["User"] == "10001:10001"
    assert warm["Config"]["NetworkDisabled"] is True
    assert warm["State"]["Running"] is True
    labels = warm["Config"]["Labels"]
    assert labels[MANAGED_LABEL] == "true" and labels[CONTROLLER_LABEL] == controller_id()
    assert labels[POOL_LABEL] == pool.name
    # and exactly what an ordinary sandbox of the same limits gets
    for key in ("NetworkMode", "ReadonlyRootfs", "CapDrop", "SecurityOpt", "Memory", "MemorySwap",
                "PidsLimit", "NanoCpus", "Tmpfs", "Ulimits", "Runtime", "IpcMode", "ShmSize", "Privileged"):
        assert host[key] == cold["HostConfig"][key], key
    for key in ("User", "NetworkDisabled", "Env", "Entrypoint", "Cmd", "OpenStdin"):
        assert warm["Config"][key] == cold["Config"][key], key


# --------------------------------------------------------------------------- the mutation server

def harness_processes(docker_client: Any, container_id: str) -> list[str]:
    top = docker_client.api.top(container_id, ps_args="-eo pid,args")
    return [" ".join(row[1:]) for row in top["Processes"]]


def test_a_policy_without_a_mutation_phase_gets_sandboxes_without_the_mutation_server(
        manager, docker_client) -> None:
    """The pool of such a policy is its own; its sandboxes' harness prepares no mutation server
    (≈ 0.2 CPU-s each); an evaluation under the policy takes one and gets the same verdict."""
    from sandgate.sandbox.runner import HARNESS_ENTRYPOINT, NO_MUTATION_SERVER, harness_args

    lean_policy = policy()
    data = lean_policy.model_dump(mode="json", exclude={"name"})
    data["mutation"]["max_mutants"] = 0
    data["gates"]["min_mutation_score"] = 0
    data["gates"]["null_entrypoint_must_be_killed"] = False
    lean_policy = parse_policy(data, name="test-pool-no-mutation")
    limits = effective_limits(lean_policy.limits, None)
    full = warm_pool(manager, docker_client, limits)
    lean = manager.pool(docker_client, image=Settings().image, limits=limits,
                        harness_argv=harness_args(mutation=False))
    assert lean is not None and lean is not full
    wait_for(lambda: len(lean.idle()) == 1, what="the lean pool to fill")
    [full_id], [lean_id] = full.idle(), lean.idle()
    assert docker_client.api.inspect_container(lean_id)["Config"]["Entrypoint"] == [
        *HARNESS_ENTRYPOINT, NO_MUTATION_SERVER]
    wait_for(lambda: any("sandgate_harness.mutation" in p for p in harness_processes(docker_client, full_id)),
             what="the full sandbox's mutation server")
    time.sleep(0.5)  # the lean sandbox's harness has started everything it will start
    lean_processes = harness_processes(docker_client, lean_id)
    assert any("sandgate_harness" in p for p in lean_processes), lean_processes
    assert not any("sandgate_harness.mutation" in p for p in lean_processes), lean_processes

    report = evaluate(load_submission(EXAMPLES / "text_stats"), policy=lean_policy)
    assert was_warm(report) and report.sandbox.container_id == lean_id, report.timings
    assert report.verdict.value == "passed", report.reasons
    assert lean.stats["taken"] == 1 and full.stats["taken"] == 0


def test_a_sandbox_made_for_its_evaluation_starts_the_mutation_server_when_the_phase_begins(
        docker_client, monkeypatch) -> None:
    """Without a pool the sandbox is made with the argument (nothing is prepared ahead), and the
    payload's mutation phase gets a cold server: the argument only saves the preparation."""
    import sandgate.sandbox as sandbox
    from sandgate.sandbox.runner import NO_MUTATION_SERVER

    assert warm_pools.current() is None
    made: list[tuple[str, ...]] = []
    real = sandbox.harness_args

    def recorded(*, mutation: bool, pooled: bool = True) -> tuple[str, ...]:
        made.append(real(mutation=mutation, pooled=pooled))
        return made[-1]

    monkeypatch.setattr(sandbox, "harness_args", recorded)
    report = evaluate(load_submission(EXAMPLES / "text_stats"), policy=policy())
    assert made == [(NO_MUTATION_SERVER,)], made
    assert real(mutation=True) == () and real(mutation=False) == (NO_MUTATION_SERVER,)
    assert report.verdict.value == "passed", report.reasons
    assert report.mutation is not None and report.mutation.run > 0 and report.mutation.problem is None
    assert report.timings["mutation_warm"] == 0.0


def test_a_blocked_finding_stops_the_prepared_mutation_server_before_the_tests(manager, docker_client) -> None:
    """In a pool sandbox the server has prepared; a blocked finding means no mutation phase, so
    the harness discards it at once rather than waiting for it to be ready before the tests."""
    from tests.security.test_hostile_static import HONEST_ASSERT, skill

    working = 'import re\n\n\ndef slugify(text):\n    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")\n'
    tests = ("import os\nfrom slug import slugify\n\nLEAVE = getattr(os, 'tixe_'[::-1])\n\n\n"
             "def test_slug():\n    " + HONEST_ASSERT + "\n")  # passes, and is blocked
    warm_pool(manager, docker_client, effective_limits(policy().limits, None))
    report = evaluate(submission_from_files(skill(tests, module=working)), policy=policy())
    assert was_warm(report), report.timings
    assert report.verdict.value == "failed" and "policy_violation" in {r.code.value for r in report.reasons}
    assert report.mutation is not None and not report.mutation.ran
    assert report.mutation.skipped_reason == "static findings of a blocked severity"
    assert "mutation_ready_wait" not in report.timings, report.timings  # never waited for
    assert report.tests.collected >= 1, report.tests  # the dynamic phase still ran (no fail-fast)


# --------------------------------------------------------------------------- new image

@pytest.fixture
def own_tag(docker_client) -> Iterator[tuple[str, str, str]]:
    """A tag of our own on the sandbox image, and a second image (same content plus a label)
    to move it to; both removed afterwards."""
    base = Settings().image
    repository, tag = "sandgate-pool-test", uuid.uuid4().hex[:12]
    ref = f"{repository}:{tag}"
    docker_client.api.tag(base, repository, tag)
    dockerfile = f"FROM {base}\nLABEL sandgate.test.rebuild={tag}\n".encode()
    rebuilt, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), rm=True, forcerm=True)
    old_id = docker_client.api.inspect_image(ref)["Id"]
    try:
        yield ref, str(old_id), str(rebuilt.id)
    finally:
        for image in (ref, rebuilt.id):
            try:
                docker_client.api.remove_image(image, force=True)
            except Exception:
                pass


def test_a_pool_is_drained_when_its_image_is_rebuilt(docker_client, own_tag) -> None:
    ref, old_id, new_id = own_tag
    assert old_id != new_id
    pool = warm_pools.WarmPool(docker_client, image=ref, limits=Limits(timeout_seconds=30), size=2, max_age=120)
    try:
        wait_for(lambda: len(pool.idle()) == 2, what="the pool to fill")
        old = pool.idle()
        assert {docker_client.api.inspect_container(c)["Image"] for c in old} == {old_id}
        repository, tag = ref.split(":")
        docker_client.api.tag(new_id, repository, tag, force=True)  # the rebuild moves the tag
        # a caller that already resolved the new id never gets an old sandbox
        got = pool.take(new_id)
        assert got is None or docker_client.api.inspect_container(got)["Image"] == new_id
        if got is not None:
            remove_container(docker_client.api, got)
            pool.done(got)

        def drained_and_refilled() -> bool:
            idle = pool.idle()
            return len(idle) == 2 and not set(idle) & set(old)

        wait_for(drained_and_refilled, what="the drain and the refill with the new image")
        for container_id in old:  # removed, not merely forgotten
            assert not docker_client.api.containers(all=True, filters={"id": container_id})
        assert {docker_client.api.inspect_container(c)["Image"] for c in pool.idle()} == {new_id}
        assert pool.stats["drained"] >= 2
        # an old id asks for nothing the pool still has
        assert pool.take(old_id) is None
    finally:
        pool.close()
    assert pool.idle() == []


# --------------------------------------------------------------------------- kill -9

OWNER = r"""
import json, sys, time
from sandgate.limits import Limits
from sandgate.sandbox import pool
from sandgate.sandbox.engine import shared_client
from sandgate.config import get_settings
manager = pool.enable(size=2, max_age=600)
p = manager.pool(shared_client(get_settings()), image=get_settings().image, limits=Limits(timeout_seconds=30))
while len(p.idle()) < 2:
    time.sleep(0.1)
print(json.dumps({"pool": p.name, "containers": p.idle()}), flush=True)
time.sleep(3600)
"""


def start_owner() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the pool owner exited with {proc.wait()}"
    return proc, json.loads(line)


def pool_containers(docker_client: Any, name: str) -> list[str]:
    return [c["Id"] for c in docker_client.api.containers(
        all=True, filters={"label": [f"{MANAGED_LABEL}=true", f"{POOL_LABEL}={name}"]})]


def test_kill_9_of_the_pool_owner_leaves_sandboxes_the_reapers_remove(docker_client, tmp_path) -> None:
    from sandgate.scheduler import reap_orphans

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    owners = [start_owner(), start_owner()]
    try:
        for proc, info in owners:
            assert sorted(pool_containers(docker_client, info["pool"])) == sorted(info["containers"])
            assert info["containers"] and all(
                docker_client.api.inspect_container(c)["Config"]["Labels"][CONTROLLER_LABEL]
                == f"{socket.gethostname()}:{proc.pid}" for c in info["containers"])
        # alive owners: the scheduler's reaper leaves their pools alone, even much later
        (proc_a, a), (proc_b, b) = owners
        later = time.time() + 3600
        assert reap_orphans(store, client=docker_client, labels=(f"{POOL_LABEL}={a['pool']}",), now=later) == []
        assert len(pool_containers(docker_client, a["pool"])) == 2
        for proc, _ in owners:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # nothing drained them: they are still there
        assert len(pool_containers(docker_client, a["pool"])) == 2
        assert len(pool_containers(docker_client, b["pool"])) == 2
        # `sandgate reap` removes one pool's (narrowed by label: the engine is shared)
        done = subprocess.run([sys.executable, "-m", "sandgate", "reap", "--label", f"{POOL_LABEL}={a['pool']}"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "removed 2 container(s)" in done.stdout
        assert pool_containers(docker_client, a["pool"]) == []
        # the scheduler's orphan reaper removes the other's: its controller is dead
        removed = reap_orphans(store, client=docker_client, labels=(f"{POOL_LABEL}={b['pool']}",))
        assert sorted(removed) == sorted(b["containers"])
        assert pool_containers(docker_client, b["pool"]) == []
    finally:
        for proc, info in owners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for container_id in pool_containers(docker_client, info["pool"]):
                remove_container(docker_client.api, container_id)
        store.close()


def test_reap_label_must_be_key_value() -> None:
    done = subprocess.run([sys.executable, "-m", "sandgate", "reap", "--label", "sandgate.pool"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--label must be KEY=VALUE, got 'sandgate.pool'" in done.stderr


# --------------------------------------------------------------------------- same verdicts

def outcome(report: EvaluationReport) -> tuple[str, list[str], int, int]:
    return (report.verdict.value, sorted({r.code.value for r in report.reasons}),
            report.tests.passed, report.tests.failed)


def test_the_example_skills_get_the_same_verdicts_with_and_without_the_pool(manager, docker_client) -> None:
    chosen = load_policy("default")
    names = sorted(p.name for p in EXAMPLES.iterdir() if (p / "skill.toml").exists())
    assert len(names) >= 5
    cold: dict[str, EvaluationReport] = {}
    warm_pools._current = None  # pool off
    for name in names:
        report = evaluate_path(EXAMPLES / name, policy=chosen)
        assert not was_warm(report)
        cold[name] = report
    warm_pools._current = manager
    warm: dict[str, EvaluationReport] = {}
    for name in names:
        manifest = load_submission(EXAMPLES / name).manifest
        limits = effective_limits(chosen.limits, getattr(manifest, "sandbox", None))
        warm_pool(manager, docker_client, limits)
        report = evaluate_path(EXAMPLES / name, policy=chosen)
        # a skill with requirements runs cold in its derived image (the pool holds the plain image)
        assert was_warm(report) is not bool(manifest.requirements), (name, report.timings)
        warm[name] = report
    assert {n: outcome(r) for n, r in warm.items()} == {n: outcome(r) for n, r in cold.items()}
    assert {r.verdict.value for r in cold.values()} >= {"passed", "failed"}  # both kinds were compared
