"""Run one sandbox: an ephemeral, hardened container, used once, always removed.

The payload (skill files, rules, run config) goes in as a tar stream on the
container's stdin; the harness's single JSON line comes back on its stdout and
is read only after the container has stopped.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from sandgate.errors import InfrastructureError, RuntimeUnavailable, SandboxFailure
from sandgate.limits import Limits
from sandgate.names import controller_id

__all__ = [
    "CONTROLLER_LABEL",
    "MANAGED_LABEL",
    "controller_id",
    "EVALUATION_LABEL",
    "POOL_LABEL",
    "SANDBOX_UID",
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


SANDBOX_UID = 10001
MAX_HARNESS_OUTPUT = 32 * 1024 * 1024


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


def hardened_host_config(api: docker.APIClient, limits: Limits) -> dict[str, Any]:
    """Network none, read-only root, no capabilities, no new privileges, default seccomp,
    memory = memory+swap, pids/CPU/file-size limits, size-capped tmpfs, no mounts."""
    memory = int(limits.memory_mb) * 1024 * 1024
    disk = int(limits.work_disk_mb) * 1024 * 1024
    ulimits = [
        docker.types.Ulimit(name="nofile", soft=256, hard=256),
        docker.types.Ulimit(name="fsize", soft=disk, hard=disk),
        docker.types.Ulimit(name="core", soft=0, hard=0),
    ]
    pids = int(limits.pids)
    if limits.runtime == "runsc":
        # gVisor's sentry and (ptrace platform) one host stub per guest process all
        # count against the container's pids cgroup: a guest fork bomb would kill the
        # sentry itself. The guest limit is enforced inside gVisor's kernel with
        # RLIMIT_NPROC (per sandbox there, unlike runc where it is per host uid);
        # the cgroup keeps a host-side ceiling.
        ulimits.append(docker.types.Ulimit(name="nproc", soft=pids, hard=pids))
        pids = max(1024, pids * 16)
    tmpfs_opts = f"rw,nosuid,nodev,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700"
    return api.create_host_config(
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        mem_limit=memory,
        memswap_limit=memory,
        pids_limit=pids,
        nano_cpus=int(limits.cpus * 1e9),
        tmpfs={
            "/work": f"{tmpfs_opts},size={disk}",
            "/tmp": f"{tmpfs_opts},noexec,size={disk}",
        },
        shm_size=16 * 1024 * 1024,
        ulimits=ulimits,
        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "64m", "max-file": "1"}),
        runtime=limits.runtime,
        init=False,
        privileged=False,
        ipc_mode="private",
    )


def _stdin_write(api: docker.APIClient, container_id: str, payload: bytes) -> None:
    sock = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
    raw = getattr(sock, "_sock", sock)
    try:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
    finally:
        sock.close()


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
    api: docker.APIClient,
    *,
    image: str,
    limits: Limits,
    evaluation_id: str,
    entrypoint: list[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Create one hardened container (not started); return its id.

    The one place a sandbox's container is made: ordinary runs and warm pools alike.
    """
    try:
        created = api.create_container(
            image,
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            stdin_open=True,
            network_disabled=True,
            hostname=plausible_hostname(),
            entrypoint=entrypoint,
            environment={},
            labels={**(labels or {}), MANAGED_LABEL: "true", EVALUATION_LABEL: evaluation_id,
                    CONTROLLER_LABEL: controller_id()},
            name=f"sandgate-{evaluation_id[:24]}-{uuid.uuid4().hex[:6]}",
            host_config=hardened_host_config(api, limits),
        )
    except APIError as exc:
        if "runtime" in str(exc).lower() and limits.runtime != "runc":
            raise RuntimeUnavailable(
                f"the Docker engine has no runtime {limits.runtime!r}: {exc.explanation}"
            ) from exc
        raise InfrastructureError(f"could not create the sandbox: {exc.explanation or exc}") from exc
    return str(created["Id"])


def start_sandbox(api: docker.APIClient, container_id: str, limits: Limits) -> None:
    try:
        api.start(container_id)
    except APIError as exc:
        if limits.runtime != "runc" and "runtime" in str(exc).lower():
            raise RuntimeUnavailable(f"runtime {limits.runtime!r} failed to start: {exc}") from exc
        raise InfrastructureError(f"could not start the sandbox: {exc.explanation or exc}") from exc


def run_sandbox(
    client: docker.DockerClient,
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
) -> SandboxRun:
    """Run the harness once. Raises InfrastructureError when the sandbox itself failed.

    ``entrypoint`` replaces the harness (benchmarks use it to measure a bare floor
    under the same hardening); the result is then the raw stdout under ``{"stdout": ...}``.
    ``channel_key`` is the key the harness signs its lines with (sent in the payload).
    ``on_started`` is called once the container runs with its payload (the oracle
    starts its own sandbox then, so the two starts do not contend).
    ``container`` is an already started, never used sandbox of a warm pool
    (:meth:`sandgate.sandbox.pool.WarmPool.take`) made with the same image and
    limits: it gets the payload instead of a new container being made. Either
    way the container is removed at the end.
    """
    api = client.api
    evaluation_id = evaluation_id or uuid.uuid4().hex
    timings: dict[str, float] = {}
    started = time.monotonic()
    container_id: str | None = container
    try:
        if container_id is None:
            container_id = create_sandbox(api, image=image, limits=limits, evaluation_id=evaluation_id,
                                          entrypoint=entrypoint)
            _track(evaluation_id, container_id, True)
            timings["create"] = time.monotonic() - started
            t = time.monotonic()
            start_sandbox(api, container_id, limits)
        else:
            _track(evaluation_id, container_id, True)
            timings["create"] = 0.0
            t = time.monotonic()
        try:
            _stdin_write(api, container_id, payload)
        except APIError as exc:
            raise InfrastructureError(f"could not send the payload to the sandbox: {exc.explanation or exc}") from exc
        timings["start"] = time.monotonic() - t
        if on_started is not None:
            on_started()

        t = time.monotonic()
        timed_out = False
        try:
            status = api.wait(container_id, timeout=limits.timeout_seconds + kill_grace)
            exit_code: int | None = int(status.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            try:
                api.kill(container_id)
            except (APIError, NotFound):
                pass
            status = api.wait(container_id, timeout=30)
            exit_code = int(status.get("StatusCode", -1))
        timings["wait"] = time.monotonic() - t

        t = time.monotonic()
        state = api.inspect_container(container_id)["State"]
        logs = api.logs(container_id, stdout=True, stderr=False)
        # stderr only explains a missing result: fetched only then (one API call less per run)
        stderr = b"" if b"SGH1 final " in logs else api.logs(container_id, stdout=False, stderr=True, tail=50)
        timings["collect"] = time.monotonic() - t
    except DockerException as exc:
        raise InfrastructureError(f"the Docker engine failed during the sandbox run: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        raise InfrastructureError(f"the Docker engine stopped answering: {exc}") from exc
    finally:
        if container_id is not None:
            t = time.monotonic()
            try:
                remove_container(api, container_id)
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
        oom_killed=bool(state.get("OOMKilled")),
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


def remove_container(api: docker.APIClient, container_id: str) -> None:
    """Force-remove one container (and its volumes), retrying the engine briefly; gone is fine."""
    for attempt in range(3):
        try:
            api.remove_container(container_id, force=True, v=True)
            return
        except NotFound:
            return
        except (APIError, requests.exceptions.RequestException):
            time.sleep(0.2 * (attempt + 1))
    raise SandboxFailure(f"could not remove sandbox container {container_id[:12]}")


def reap(client: docker.DockerClient, *, evaluation_id: str | None = None,
         controller: str | None = None, labels: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Remove every container labelled ``sandgate.managed=true``.

    ``evaluation_id`` / ``controller`` narrow it to one evaluation's or one
    controller process's containers; ``labels`` (``key=value``) narrow it further.
    """
    filters = {"label": [f"{MANAGED_LABEL}=true", *labels]}
    if evaluation_id:
        filters["label"].append(f"{EVALUATION_LABEL}={evaluation_id}")
    if controller:
        filters["label"].append(f"{CONTROLLER_LABEL}={controller}")
    removed = []
    for container in client.api.containers(all=True, filters=filters):
        remove_container(client.api, container["Id"])
        removed.append(container["Id"])
    if evaluation_id and (controller is None or controller == controller_id()):
        # this process's warm-pool sandbox serving that evaluation (labelled with its pool)
        with _in_use_lock:
            mine = sorted(_in_use.get(evaluation_id, ()))
        for container_id in mine:
            if container_id not in removed:
                remove_container(client.api, container_id)
                removed.append(container_id)
    return removed
