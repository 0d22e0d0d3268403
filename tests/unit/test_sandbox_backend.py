"""The runner, warm pool and reaper over a fake :class:`SandboxBackend` (fast), and the pin
that only the Docker backend (and the Docker-only image/serve modules) import the SDK.

The same code against the real engine: tests/integration/test_evaluate.py, test_pool.py,
tests/security/.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker
import pytest

from sandgate.errors import InfrastructureError
from sandgate.limits import Limits
from sandgate.names import controller_id
from sandgate.sandbox import pool as warm_pools
from sandgate.sandbox import reaper, runner
from sandgate.sandbox.backend import EngineInfo, Listed, SandboxBackend, SandboxSpec, SandboxState
from sandgate.sandbox.docker_backend import DockerBackend, as_backend

SANDBOX = Path(__file__).resolve().parents[2] / "platform" / "sandgate" / "sandbox"
KEY = b"k" * 32


def signed(kind: str, body: dict[str, Any], key: bytes = KEY) -> bytes:
    text = json.dumps(body).encode()
    mac = hmac.new(key, kind.encode() + b" " + text, hashlib.sha256).hexdigest().encode()
    return b"SGH1 " + kind.encode() + b" " + mac + b" " + text + b"\n"


class FakeBackend:
    """Sandboxes in a dict; each one's stdout is what ``answer(payload)`` returns."""

    kind = "fake"

    def __init__(self, answer: Any = None, *, hang: int = 0, exit_code: int = 0, oom: bool = False,
                 fail_feed: bool = False, late_oom: bool = False) -> None:
        self.answer = answer or (lambda payload: signed("final", {"ok": True, "got": len(payload)}))
        self.hang, self.exit_code, self.oom, self.fail_feed = hang, exit_code, oom, fail_feed
        #: an out-of-memory event the state does not show (the engine handled the exit first)
        self.late_oom = late_oom
        self.boxes: dict[str, dict[str, Any]] = {}
        #: every spec given, kept after the sandbox is removed
        self.specs: dict[str, SandboxSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.image = "sha256:one"
        self.lock = threading.Lock()
        self.n = 0

    def _call(self, op: str, sid: str) -> dict[str, Any]:
        self.calls.append((op, sid))
        return self.boxes[sid]

    def create(self, spec: SandboxSpec) -> str:
        with self.lock:
            self.n += 1
            sid = f"box{self.n}"
            self.boxes[sid] = {"spec": spec, "running": False, "payload": None, "killed": False,
                               "image": self.image, "created": time.time()}
            self.specs[sid] = spec
        self.calls.append(("create", sid))
        return sid

    def start(self, sandbox_id: str, limits: Limits) -> None:
        self._call("start", sandbox_id)["running"] = True

    def feed(self, sandbox_id: str, payload: bytes) -> None:
        box = self._call("feed", sandbox_id)
        if self.fail_feed:
            raise InfrastructureError("could not send the payload to the sandbox: broken pipe")
        assert box["running"], "fed before started"
        box["payload"] = payload

    def wait(self, sandbox_id: str, timeout: float) -> int | None:
        box = self._call("wait", sandbox_id)
        box.setdefault("timeouts", []).append(timeout)
        if self.hang and not (box["killed"] and self.hang == 1):
            return None
        box["running"] = False
        return 137 if box["killed"] else self.exit_code

    def kill(self, sandbox_id: str) -> None:
        self._call("kill", sandbox_id)["killed"] = True

    def state(self, sandbox_id: str) -> SandboxState:
        box = self._call("state", sandbox_id)
        return SandboxState(running=box["running"], oom_killed=self.oom, image_id=box["image"])

    def oom_event(self, sandbox_id: str, since: float) -> bool:
        self._call("oom_event", sandbox_id)
        return self.late_oom

    def stdout(self, sandbox_id: str) -> bytes:
        box = self._call("stdout", sandbox_id)
        return bytes(self.answer(box["payload"] or b""))

    def stderr_tail(self, sandbox_id: str, lines: int) -> bytes:
        self._call("stderr_tail", sandbox_id)
        return b"Traceback: the harness broke"

    def remove(self, sandbox_id: str) -> None:
        self.calls.append(("remove", sandbox_id))
        with self.lock:
            self.boxes.pop(sandbox_id, None)

    def list(self, labels: Sequence[str]) -> list[Listed]:
        wanted = dict(label.split("=", 1) for label in labels)
        return [Listed(sid, dict(b["spec"].labels), b["created"]) for sid, b in list(self.boxes.items())
                if all(b["spec"].labels.get(k) == v for k, v in wanted.items())]

    def image_id(self, image: str) -> str:
        return self.image

    def info(self) -> EngineInfo:
        return EngineInfo(version="fake", api_version="0", runtimes=["runc"])


def ops(backend: FakeBackend, sid: str) -> list[str]:
    return [op for op, s in backend.calls if s == sid]


def test_the_fake_is_a_backend_and_is_used_as_is() -> None:
    fake = FakeBackend()
    assert isinstance(fake, SandboxBackend)
    assert as_backend(fake) is fake
    assert isinstance(as_backend(docker.APIClient(base_url="unix:///nonexistent", version="1.41")), DockerBackend)


def test_a_run_makes_one_hardened_labelled_sandbox_feeds_it_reads_it_and_removes_it() -> None:
    fake = FakeBackend()
    limits = Limits(timeout_seconds=7)
    run = runner.run_sandbox(fake, image="img:tag", payload=b"tar bytes", limits=limits,
                             evaluation_id="ev123", kill_grace=2.0, channel_key=KEY)
    assert run.harness == {"ok": True, "got": len(b"tar bytes")}
    assert not run.tampered and not run.timed_out and run.exit_code == 0 and run.problem is None
    sid = run.container_id
    assert sid is not None
    assert ops(fake, sid) == ["create", "start", "feed", "wait", "state", "stdout", "remove"]
    spec = fake.specs[sid]
    assert spec.image == "img:tag" and spec.limits == limits and spec.entrypoint is None
    assert spec.user == "10001:10001"
    assert dict(spec.labels) == {runner.MANAGED_LABEL: "true", runner.EVALUATION_LABEL: "ev123",
                                 runner.CONTROLLER_LABEL: controller_id()}
    assert spec.name.startswith("sandgate-ev123-")
    assert re.fullmatch(r"[a-z]+-[b-z2-9]{9}-[b-z2-9]{5}", spec.hostname)
    assert fake.boxes == {}  # removed
    assert set(run.timings) == {"create", "start", "wait", "collect", "remove"}


def test_a_line_not_signed_with_the_runs_key_is_tampering_and_no_result() -> None:
    fake = FakeBackend(lambda payload: signed("final", {"verdict": "pass"}, key=b"x" * 32))
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), channel_key=KEY)
    assert run.harness is None and run.tampered
    assert run.problem == "the harness wrote no authenticated result"
    assert fake.boxes == {}


def test_no_result_line_is_explained_by_the_stderr_tail() -> None:
    fake = FakeBackend(lambda payload: b"", exit_code=1)
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), channel_key=KEY)
    assert run.harness is None and not run.tampered and run.exit_code == 1
    assert run.problem == "the harness wrote no authenticated result: Traceback: the harness broke"
    assert ("stderr_tail", "box1") in fake.calls


def test_a_sandbox_past_its_timeout_is_killed_and_reported_timed_out() -> None:
    fake = FakeBackend(hang=1)
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(timeout_seconds=3),
                             kill_grace=1.5, channel_key=KEY)
    assert run.timed_out and run.exit_code == 137
    sid = run.container_id
    assert sid is not None
    assert ops(fake, sid)[:6] == ["create", "start", "feed", "wait", "kill", "wait"]
    assert fake.boxes == {}


def test_a_sandbox_that_does_not_stop_after_the_kill_is_an_infrastructure_error_and_still_removed() -> None:
    fake = FakeBackend(hang=2)
    with pytest.raises(InfrastructureError, match="did not stop"):
        runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), channel_key=KEY)
    assert fake.boxes == {} and ("remove", "box1") in fake.calls


def test_a_failed_feed_raises_and_the_sandbox_is_removed() -> None:
    fake = FakeBackend(fail_feed=True)
    with pytest.raises(InfrastructureError, match="payload"):
        runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), evaluation_id="evf", channel_key=KEY)
    assert fake.boxes == {}
    assert runner.reap(fake, evaluation_id="evf", controller=controller_id()) == []  # not tracked any more


def test_a_warm_sandbox_is_fed_not_made_and_removed_like_a_cold_one() -> None:
    fake = FakeBackend()
    warm = runner.create_sandbox(fake, image="img", limits=Limits(), evaluation_id="pool-x",
                                 labels={runner.POOL_LABEL: "pool-x"})
    runner.start_sandbox(fake, warm, Limits())
    fake.calls.clear()
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), container=warm, channel_key=KEY)
    assert run.harness is not None and run.timings["create"] == 0.0
    assert ops(fake, warm) == ["feed", "wait", "state", "stdout", "remove"]


def test_oom_and_entrypoint_runs_come_through() -> None:
    fake = FakeBackend(lambda payload: b"bare floor\n", exit_code=1, oom=True)
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), entrypoint=["true"])
    assert run.harness == {"stdout": "bare floor\n"} and run.oom_killed and run.exit_code == 1
    assert fake.specs["box1"].entrypoint == ["true"]


@pytest.mark.parametrize("late", [True, False])
def test_a_kill_with_no_result_asks_the_engine_for_a_late_out_of_memory_event(late: bool) -> None:
    """Exit 137, no result, and a state that does not say out of memory: an engine that handled
    the exit before the event never sets it in the state, so the event decides."""
    fake = FakeBackend(lambda payload: b"", exit_code=137, late_oom=late)
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), channel_key=KEY)
    assert run.harness is None and run.exit_code == 137 and run.oom_killed is late
    assert "oom_event" in ops(fake, "box1")


@pytest.mark.parametrize(("exit_code", "oom", "answer"), [
    (137, True, b""),  # the state already says it
    (1, False, b""),  # not a kill
    (137, False, None),  # a result came: nothing to explain
])
def test_the_out_of_memory_event_is_asked_for_only_when_it_could_change_the_report(
        exit_code: int, oom: bool, answer: bytes | None) -> None:
    fake = FakeBackend(None if answer is None else (lambda payload: answer), exit_code=exit_code, oom=oom,
                       late_oom=True)
    run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), channel_key=KEY)
    assert "oom_event" not in ops(fake, "box1")
    assert run.oom_killed is oom


def test_reap_removes_only_the_labelled_sandboxes() -> None:
    fake = FakeBackend()
    a = runner.create_sandbox(fake, image="img", limits=Limits(), evaluation_id="ev-a")
    b = runner.create_sandbox(fake, image="img", limits=Limits(), evaluation_id="ev-b")
    assert runner.reap(fake, evaluation_id="ev-a") == [a]
    assert set(fake.boxes) == {b}
    assert runner.reap(fake, labels=["sandgate.pool=nope"]) == []
    assert runner.reap(fake) == [b] and fake.boxes == {}


def test_the_reaper_condemns_a_dead_controllers_sandbox_through_the_backend() -> None:
    fake = FakeBackend()
    mine = runner.create_sandbox(fake, image="img", limits=Limits(), evaluation_id="ev-1")
    seen = reaper.sandboxes(fake)
    assert [(s.container_id, s.evaluation_id, s.controller) for s in seen] == [(mine, "ev-1", controller_id())]
    assert reaper.reap(fake, alive=lambda controller, created: True) == []
    reaped = reaper.reap(fake, alive=lambda controller, created: False)
    assert [r.removed for r in reaped] == [[mine]] and fake.boxes == {}


def test_a_warm_pool_runs_on_the_backend() -> None:
    fake = FakeBackend()
    pool = warm_pools.WarmPool(fake, image="img", limits=Limits(), size=1, max_age=60)
    try:
        deadline = time.monotonic() + 10
        while not pool.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = pool.take("sha256:one")
        assert taken is not None and fake.boxes[taken]["running"]
        assert fake.specs[taken].labels[runner.POOL_LABEL] == pool.name
        run = runner.run_sandbox(fake, image="img", payload=b"p", limits=Limits(), container=taken,
                                 channel_key=KEY)
        assert run.harness is not None and taken not in fake.boxes
        pool.done(taken)
    finally:
        pool.close()
    assert fake.boxes == {}


def test_the_docker_backend_hands_the_spec_and_the_hardening_to_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    api = docker.APIClient(base_url="unix:///nonexistent", version="1.41")  # never connects
    made: dict[str, Any] = {}
    monkeypatch.setattr(api, "create_container", lambda image, **kw: made.update(image=image, **kw) or {"Id": "c1"})
    spec = SandboxSpec(image="img:tag", limits=Limits(memory_mb=256, runtime="runsc"), labels={"a": "b"},
                       name="sandgate-x", hostname="web-abc", user="10001:10001", entrypoint=None)
    assert DockerBackend(api).create(spec) == "c1"
    assert made["image"] == "img:tag" and made["labels"] == {"a": "b"} and made["user"] == "10001:10001"
    assert made["hostname"] == "web-abc" and made["name"] == "sandgate-x" and made["environment"] == {}
    assert made["network_disabled"] is True and made["stdin_open"] is True
    hc = made["host_config"]
    assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True and hc["CapDrop"] == ["ALL"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true"] and hc["Runtime"] == "runsc"
    assert hc["Memory"] == hc["MemorySwap"] == 256 * 1024 * 1024 and not hc.get("Privileged")
    assert hc["PidsLimit"] == max(1024, Limits().pids * 16) and hc["IpcMode"] == "private"
    assert set(hc["Tmpfs"]) == {"/work", "/tmp"} and "noexec" in hc["Tmpfs"]["/tmp"]


# -- which modules of the sandbox package import the Docker SDK ---------------------------------------

#: the Docker backend (the evaluation path's only one), the engine connection, image builds
#: and the interactive server (docs/scale.md: what a Kubernetes backend does not replace yet)
DOCKER_MODULES = {"docker_backend", "engine", "image", "deps_image", "serve"}
#: never: they go through the backend
BACKEND_CLIENTS = {"backend", "runner", "pool", "reaper", "doctor", "__init__"}


def docker_importers(sources: dict[str, str]) -> set[str]:
    """The modules whose source imports ``docker`` anywhere (module level, function, TYPE_CHECKING)."""
    found = set()
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == "docker" for n in names):
                found.add(name)
    return found


def test_only_the_docker_modules_of_the_sandbox_package_import_the_sdk() -> None:
    sources = {p.stem: p.read_text() for p in SANDBOX.glob("*.py")}
    assert BACKEND_CLIENTS <= sources.keys()
    assert docker_importers(sources) == DOCKER_MODULES
    assert not docker_importers({k: sources[k] for k in BACKEND_CLIENTS})


def test_the_import_check_sees_a_lazy_import() -> None:
    assert docker_importers({"runner": "def f():\n    from docker.errors import APIError\n"}) == {"runner"}
    assert docker_importers({"runner": "import dockerfile\nfrom . import docker_backend\n"}) == set()


# ---------------------------------------------------------------- the engine going away mid-run


class _WaitingAPI:
    """``APIClient.wait`` that fails as the SDK does: after ``after`` seconds, with ``exc``."""

    def __init__(self, exc: Exception, after: float) -> None:
        self.exc, self.after = exc, after

    def wait(self, sandbox_id: str, timeout: float) -> dict[str, int]:
        time.sleep(self.after)
        raise self.exc


def _backend(api: Any) -> DockerBackend:
    backend = DockerBackend.__new__(DockerBackend)
    backend.api = api
    return backend


@pytest.mark.parametrize("exc", ["ConnectionError", "ChunkedEncodingError", "ReadTimeout"])
def test_a_wait_that_fails_early_is_the_engine_going_away_not_a_timeout(exc: str) -> None:
    import requests

    from sandgate.errors import ENGINE_LOST, EngineLost

    error = getattr(requests.exceptions, exc)("Connection aborted: RemoteDisconnected")
    with pytest.raises(EngineLost) as caught:
        _backend(_WaitingAPI(error, 0.0)).wait("box", 30.0)
    assert str(caught.value).startswith(ENGINE_LOST) and "after 0.0s of a 30s wait" in str(caught.value)


@pytest.mark.parametrize("exc", ["ReadTimeout", "ConnectionError"])
def test_a_wait_that_fails_at_its_timeout_is_a_timeout(monkeypatch, exc: str) -> None:
    import requests

    from sandgate.sandbox import docker_backend

    monkeypatch.setattr(docker_backend, "WAIT_EARLY_SLACK_SECONDS", 0.05)
    error = getattr(requests.exceptions, exc)("UnixHTTPConnectionPool: Read timed out.")
    assert _backend(_WaitingAPI(error, 0.2)).wait("box", 0.2) is None


class _LosesEngine(FakeBackend):
    """The engine goes away during the wait and is not back for the removal."""

    def wait(self, sandbox_id: str, timeout: float) -> int | None:
        from sandgate.errors import EngineLost

        self._call("wait", sandbox_id)
        raise EngineLost("ConnectionError after 0.3s of a 32s wait")

    def remove(self, sandbox_id: str) -> None:
        self.calls.append(("remove", sandbox_id))
        raise InfrastructureError("could not remove sandbox container: connection refused")


def test_the_engine_lost_under_a_run_is_the_error_raised_not_the_failed_removal() -> None:
    from sandgate.errors import ENGINE_LOST, EngineLost

    fake = _LosesEngine()
    with pytest.raises(EngineLost) as caught:
        runner.run_sandbox(fake, image="img:tag", payload=b"tar", limits=Limits(timeout_seconds=30),
                           evaluation_id="ev-lost", kill_grace=2.0, channel_key=KEY)
    assert str(caught.value).startswith(ENGINE_LOST)
    assert [op for op, _ in fake.calls][-2:] == ["wait", "remove"]  # the removal was still tried
