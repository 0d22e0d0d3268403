"""Doctor and image build against the real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sandgate.config import Settings
from sandgate.sandbox import build_image, inspect_image
from sandgate.sandbox.image import definition_hash, pinned_requirements


def sandgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandgate", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_doctor_with_the_engine_up_is_ready(sandbox_image: str) -> None:
    proc = sandgate("doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ready"] is True
    assert "runc" in report["engine"]["runtimes"]
    assert "runsc" in report["engine"]["runtimes"], "CI registers gVisor; sandbox_images/engine.sh does it"
    assert report["image"]["toolchain"]["pytest"] == pinned_requirements()["pytest"]


def test_doctor_with_the_engine_down_says_so(tmp_path) -> None:
    proc = sandgate("doctor", "--json", env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ready"] is False
    engine = next(c for c in report["checks"] if c["name"] == "engine")
    assert not engine["ok"] and "no Docker engine answers" in engine["detail"]


def test_doctor_readable_output_names_each_check(sandbox_image: str) -> None:
    proc = sandgate("doctor")
    assert proc.returncode == 0
    for word in ("engine", "runtime runsc", "image", "ready"):
        assert word in proc.stdout


def test_rebuild_without_change_is_cached_and_labelled(docker_client, sandbox_image: str) -> None:
    before = inspect_image(docker_client, sandbox_image)
    info = build_image(settings=Settings(), client=docker_client)
    assert info.id == before.id, "an unchanged definition must hit the build cache"
    assert info.definition_hash == definition_hash()
    pins = pinned_requirements()
    for tool in ("pytest", "coverage", "semgrep"):
        assert info.toolchain[tool] == pins[tool]
    assert info.toolchain["python"].startswith("3.")


def test_image_is_non_root_without_shells_or_setuid(docker_client, sandbox_image: str) -> None:
    attrs = docker_client.images.get(sandbox_image).attrs["Config"]
    assert attrs["User"] == "10001:10001"
    script = (
        "import os, stat\n"
        "shells = [p for p in ('/bin/sh', '/bin/bash', '/bin/dash', '/usr/bin/apt') if os.path.exists(p)]\n"
        "setuid = []\n"
        "for d in ('/usr/bin', '/bin', '/usr/sbin', '/sbin'):\n"
        "    for n in os.listdir(d):\n"
        "        p = os.path.join(d, n)\n"
        "        try:\n"
        "            m = os.lstat(p).st_mode\n"
        "        except OSError:\n"
        "            continue\n"
        "        if stat.S_ISREG(m) and m & (stat.S_ISUID | stat.S_ISGID):\n"
        "            setuid.append(p)\n"
        "print(os.getuid(), shells, setuid)\n"
    )
    out = docker_client.containers.run(sandbox_image, ["-c", script], entrypoint=["python3"],
                                       network_mode="none", remove=True).decode().strip()
    assert out == "10001 [] []"


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_runtime_is_selectable(docker_client, sandbox_image: str, runtime: str) -> None:
    out = docker_client.containers.run(sandbox_image, ["-c", "print('ok')"], entrypoint=["python3"],
                                       network_mode="none", remove=True, runtime=runtime)
    assert out.decode().strip() == "ok"


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_an_out_of_memory_kill_is_an_engine_event_and_a_kill_from_outside_is_not(
        docker_client, sandbox_image: str, runtime: str) -> None:
    """What the runner asks when a sandbox died with 137, no result and a state that does not
    say out of memory (the engine handled the exit before the event)."""
    from sandgate.sandbox.docker_backend import DockerBackend

    backend = DockerBackend(docker_client)

    def died(code: str, kill: bool) -> bool:
        since = time.time()
        ct = docker_client.containers.create(sandbox_image, ["-c", code], entrypoint=["python3"],
                                             network_mode="none", runtime=runtime,
                                             mem_limit="64m", memswap_limit="64m")
        try:
            ct.start()
            if kill:
                time.sleep(0.3)
                ct.kill()
            assert ct.wait(timeout=60)["StatusCode"] == 137
            return backend.oom_event(ct.id, since)
        finally:
            ct.remove(force=True)

    assert died("x = []\nwhile True: x.append(bytearray(1 << 20))", kill=False) is True
    assert died("import time\ntime.sleep(60)", kill=True) is False
