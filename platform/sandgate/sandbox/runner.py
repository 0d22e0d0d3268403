"""Run one sandbox: an ephemeral, hardened container, used once, always removed.

The payload (skill files, rules, run config) goes in as a tar stream on the
container's stdin; the harness's single JSON line comes back on its stdout and
is read only after the container has stopped.

Every engine call goes through a :class:`~sandgate.sandbox.backend.SandboxBackend`
(:mod:`sandgate.sandbox.docker_backend` for a Docker client, which every caller
may keep passing): what a sandbox is — labels, name, user, hostname, limits, the
payload and the signed lines — is decided here, the same on every backend.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandgate.errors import InfrastructureError
from sandgate.limits import Limits
from sandgate.names import controller_id
from sandgate.sandbox.backend import SandboxBackend, SandboxSpec
from sandgate.sandbox.docker_backend import SANDBOX_UID, as_backend, hardened_host_config, remove_container

__all__ = [
    "CONTROLLER_LABEL",
    "MANAGED_LABEL",
    "controller_id",
    "EVALUATION_LABEL",
    "HARNESS_ENTRYPOINT",
    "NO_MUTATION_SERVER",
    "harness_args",
    "POOL_LABEL",
    "SANDBOX_UID",
    "SandboxBackend",
    "SandboxRun",
    "create_sandbox",
    "hardened_host_config",
    "make_payload",
    "reap",
    "remove_container",
    "run_sandbox",
    "start_sandbox",
]

MANAGED_LABEL = "sandgate.managed"
EVALUATION_LABEL = "sandgate.evaluation"
#: which controller process started the sandbox (host:pid), so a reaper or a test
#: can tell its own leftovers from those of another live controller
CONTROLLER_LABEL = "sandgate.controller"


_POD_ROLES = ("api", "web", "worker", "app", "backend", "jobs", "service")
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names


def plausible_hostname() -> str:
    """A fresh, production-looking hostname per sandbox (``worker-7d9f8b6c4-x2kqz``), so a
    skill cannot tell the evaluation from production by a fixed name."""
    pick = secrets.choice
    return (f"{pick(_POD_ROLES)}-{''.join(pick(_POD_ALPHABET) for _ in range(9))}-"
            f"{''.join(pick(_POD_ALPHABET) for _ in range(5))}")


MAX_HARNESS_OUTPUT = 32 * 1024 * 1024
#: the image's ENTRYPOINT (``sandbox_images/python/Dockerfile``): the evaluation harness
HARNESS_ENTRYPOINT: tuple[str, ...] = ("python3", "-I", "-m", "sandgate_harness")
#: the harness's argument when it is not to prepare a mutation server before its payload (an
#: interpreter that imports pytest and runs a warm-up session: ≈ 0.25 CPU-s a sandbox); a
#: payload with a mutation phase then gets a server started when that phase begins
NO_MUTATION_SERVER = "--no-mutation-server"


def harness_args(*, mutation: bool, pooled: bool = True) -> tuple[str, ...]:
    """The harness's arguments for an evaluation with (``mutation``) or without a mutation phase,
    in a warm pool's sandbox (``pooled``) or in one made for it.

    Only a pool's sandbox prepares the mutation server ahead: it does so while it waits for a
    payload. A sandbox made for one evaluation has its payload at once, so preparing ahead
    would share the sandbox's one CPU with the static phase and the tests, and be wasted on
    every submission that a blocked finding, a failing test or too little coverage keeps out
    of the mutation phase (measured: 0.73 -> 0.52 CPU-s, 0.85 -> 0.65 s for a skill the static
    phase blocks; within noise for a passing one, whose mutation phase starts the server).
    """
    return () if mutation and pooled else (NO_MUTATION_SERVER,)
#: how long a killed (timed out) sandbox may take to stop before the engine is blamed
KILLED_WAIT_SECONDS = 30.0


@dataclass
class SandboxRun:
    harness: dict[str, Any] | None
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    wall_seconds: float
    container_id: str | None
    runtime: str
    image: str
    timings: dict[str, float] = field(default_factory=dict)
    problem: str | None = None
    #: the static phase's line, kept even when the final line never came
    static: dict[str, Any] | None = None
    #: a line on the harness's channel failed verification (someone else wrote it)
    tampered: bool = False


def make_payload(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of regular files, deterministic (mtime 0, root-owned, 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


#: extra label of a warm pool's sandbox: which pool made it (see :mod:`sandgate.sandbox.pool`)
POOL_LABEL = "sandgate.pool"

#: the sandboxes this process is running now, by evaluation id (a warm pool's sandbox is
#: labelled with its pool's name, not the evaluation it ends up serving)
_in_use: dict[str, set[str]] = {}
_in_use_lock = threading.Lock()


def _track(evaluation_id: str, container_id: str, add: bool) -> None:
    with _in_use_lock:
        ids = _in_use.setdefault(evaluation_id, set())
        if add:
            ids.add(container_id)
        else:
            ids.discard(container_id)
            if not ids:
                _in_use.pop(evaluation_id, None)


def create_sandbox(
    client: Any,
    *,
    image: str,
    limits: Limits,
    evaluation_id: str,
    entrypoint: list[str] | None = None,
    labels: Mapping[str, str] | None = None,
    harness_argv: tuple[str, ...] = (),
) -> str:
    """Create one hardened sandbox (not started) on ``client`` (a backend or a Docker
    client); return its id.

    The one place a sandbox is made: ordinary runs and warm pools alike. ``harness_argv``:
    the harness's arguments (:func:`harness_args`; with ``entrypoint`` None only).
    """
    if harness_argv and entrypoint is None:
        entrypoint = [*HARNESS_ENTRYPOINT, *harness_argv]
    return as_backend(client).create(SandboxSpec(
        image=image,
        limits=limits,
        labels={**(labels or {}), MANAGED_LABEL: "true", EVALUATION_LABEL: evaluation_id,
                CONTROLLER_LABEL: controller_id()},
        name=f"sandgate-{evaluation_id[:24]}-{uuid.uuid4().hex[:6]}",
        hostname=plausible_hostname(),
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        entrypoint=entrypoint,
    ))


def start_sandbox(client: Any, container_id: str, limits: Limits) -> None:
    as_backend(client).start(container_id, limits)


def run_sandbox(
    client: Any,
    *,
    image: str,
    payload: bytes,
    limits: Limits,
    evaluation_id: str | None = None,
    kill_grace: float = 5.0,
    entrypoint: list[str] | None = None,
    channel_key: bytes | None = None,
    on_started: Callable[[], None] | None = None,
    container: str | None = None,
    harness_argv: tuple[str, ...] = (),
) -> SandboxRun:
    """Run the harness once on ``client`` (a :class:`SandboxBackend`, or a Docker client
    wrapped in :class:`~sandgate.sandbox.docker_backend.DockerBackend`). Raises
    InfrastructureError when the sandbox itself failed.

    ``entrypoint`` replaces the harness (benchmarks use it to measure a bare floor
    under the same hardening); the result is then the raw stdout under ``{"stdout": ...}``.
    ``channel_key`` is the key the harness signs its lines with (sent in the payload).
    ``on_started`` is called once the container runs with its payload (the oracle
    starts its own sandbox then, so the two starts do not contend).
    ``container`` is an already started, never used sandbox of a warm pool
    (:meth:`sandgate.sandbox.pool.WarmPool.take`) made with the same image and
    limits: it gets the payload instead of a new container being made. Either
    way the container is removed at the end. ``harness_argv``: the harness's arguments for a
    new container (:func:`harness_args`; a pool's sandbox was made with its own).
    """
    backend = as_backend(client)
    evaluation_id = evaluation_id or uuid.uuid4().hex
    timings: dict[str, float] = {}
    started = time.monotonic()
    container_id: str | None = container
    try:
        if container_id is None:
            container_id = create_sandbox(backend, image=image, limits=limits, evaluation_id=evaluation_id,
                                          entrypoint=entrypoint, harness_argv=harness_argv)
            _track(evaluation_id, container_id, True)
            timings["create"] = time.monotonic() - started
            t = time.monotonic()
            backend.start(container_id, limits)
        else:
            _track(evaluation_id, container_id, True)
            timings["create"] = 0.0
            t = time.monotonic()
        fed_at = time.time()
        backend.feed(container_id, payload)
        timings["start"] = time.monotonic() - t
        if on_started is not None:
            on_started()

        t = time.monotonic()
        timed_out = False
        exit_code = backend.wait(container_id, limits.timeout_seconds + kill_grace)
        if exit_code is None:
            timed_out = True
            backend.kill(container_id)
            exit_code = backend.wait(container_id, KILLED_WAIT_SECONDS)
            if exit_code is None:
                raise InfrastructureError(f"the sandbox did not stop within {KILLED_WAIT_SECONDS:.0f}s "
                                          "of being killed")
        timings["wait"] = time.monotonic() - t

        t = time.monotonic()
        state = backend.state(container_id)
        oom_killed = state.oom_killed
        logs = backend.stdout(container_id)
        reported = b"SGH1 final " in logs
        # stderr only explains a missing result: fetched only then (one API call less per run)
        stderr = b"" if reported else backend.stderr_tail(container_id, 50)
        if exit_code == 137 and not timed_out and not oom_killed and not reported:
            # killed with no result, and the engine's state does not say out of memory: it may
            # have handled the exit before the out-of-memory event (seen under gVisor, whose
            # whole sandbox the host's OOM killer ends); the event says which it was
            oom_killed = backend.oom_event(container_id, fed_at)
        timings["collect"] = time.monotonic() - t
    finally:
        if container_id is not None:
            pending = sys.exc_info()[1]
            t = time.monotonic()
            try:
                backend.remove(container_id)
            except InfrastructureError:
                if pending is None:
                    raise
                # the run already failed (the engine went away, say): that error is the one
                # the report keeps; the container is the reaper's once the engine is back
            finally:
                _track(evaluation_id, container_id, False)
            timings["remove"] = time.monotonic() - t

    static: dict[str, Any] | None = None
    tampered = False
    harness: dict[str, Any] | None
    problem: str | None
    if entrypoint is not None:
        harness, problem = {"stdout": logs.decode("utf-8", "replace")}, None
    else:
        lines = read_signed_lines(logs, channel_key or b"")
        harness, static, tampered = lines.get("final"), lines.get("static"), bool(lines.get("tampered"))
        problem = None
        if harness is None:
            tail = stderr.decode("utf-8", "replace").strip()[-1500:]
            problem = "the harness wrote no authenticated result" + (f": {tail}" if tail else "")
    return SandboxRun(
        harness=harness,
        static=static,
        tampered=tampered,
        exit_code=exit_code,
        timed_out=timed_out,
        oom_killed=oom_killed,
        wall_seconds=time.monotonic() - started,
        container_id=container_id,
        runtime=limits.runtime,
        image=image,
        timings=timings,
        problem=problem,
    )


def read_signed_lines(logs: bytes, key: bytes) -> dict[str, Any]:
    """The harness's verified lines by kind (``static``, ``final``), plus ``tampered``.

    A line that does not verify — written by anything but the harness — is never
    used, and marks the run as tampered.
    """
    found: dict[str, Any] = {}
    if len(logs) > MAX_HARNESS_OUTPUT:
        return {"tampered": True}
    for raw in logs.splitlines():
        if not raw.strip():
            continue
        parts = raw.split(b" ", 3)
        if len(parts) != 4 or parts[0] != b"SGH1" or not key:
            found["tampered"] = True
            continue
        kind, mac, text = parts[1], parts[2], parts[3]
        expected = hmac.new(key, kind + b" " + text, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, expected):
            found["tampered"] = True
            continue
        try:
            body = json.loads(text)
        except ValueError:
            found["tampered"] = True
            continue
        name = kind.decode()
        if name in found or not isinstance(body, dict):
            found["tampered"] = True  # the harness writes each kind once
            continue
        found[name] = body
    return found


def reap(client: Any, *, evaluation_id: str | None = None,
         controller: str | None = None, labels: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Remove every container labelled ``sandgate.managed=true``.

    ``evaluation_id`` / ``controller`` narrow it to one evaluation's or one
    controller process's containers; ``labels`` (``key=value``) narrow it further.
    """
    backend = as_backend(client)
    wanted = [f"{MANAGED_LABEL}=true", *labels]
    if evaluation_id:
        wanted.append(f"{EVALUATION_LABEL}={evaluation_id}")
    if controller:
        wanted.append(f"{CONTROLLER_LABEL}={controller}")
    removed = []
    for sandbox in backend.list(wanted):
        backend.remove(sandbox.sandbox_id)
        removed.append(sandbox.sandbox_id)
    if evaluation_id and (controller is None or controller == controller_id()):
        # this process's warm-pool sandbox serving that evaluation (labelled with its pool)
        with _in_use_lock:
            mine = sorted(_in_use.get(evaluation_id, ()))
        for container_id in mine:
            if container_id not in removed:
                backend.remove(container_id)
                removed.append(container_id)
    return removed
