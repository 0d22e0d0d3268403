"""The Docker backend: :class:`~sandgate.sandbox.backend.SandboxBackend` over one engine.

The only module of the evaluation path (runner, warm pool, reaper, doctor) that
imports the Docker SDK. A sandbox is one container made with
:func:`hardened_host_config`; the payload goes in over the container's attach
socket (stdin, then EOF) and stdout is read from the engine's log once the
container stopped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from sandgate.errors import EngineLost, InfrastructureError, RuntimeUnavailable, SandboxFailure
from sandgate.limits import Limits
from sandgate.sandbox.backend import EngineInfo, Listed, SandboxBackend, SandboxSpec, SandboxState
from sandgate.sandbox.engine import engine_info

__all__ = ["SANDBOX_UID", "DockerBackend", "as_backend", "hardened_host_config", "remove_container"]

SANDBOX_UID = 10001
#: a wait that fails this much before its timeout did not time out: the engine went away
WAIT_EARLY_SLACK_SECONDS = 1.0
#: how long after the exit an out-of-memory event is still waited for (see ``oom_event``): the
#: stream ends at the first one, so only a sandbox that had none waits it all. 0.25 s had been
#: too short on a loaded machine (a gVisor memory bomb's event came later, under CI's suite)
OOM_EVENT_WAIT = 1.5


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


def _infrastructure(exc: Exception) -> InfrastructureError:
    if isinstance(exc, DockerException):
        return InfrastructureError(f"the Docker engine failed during the sandbox run: {exc}")
    return InfrastructureError(f"the Docker engine stopped answering: {exc}")


@contextmanager
def _engine_errors() -> Iterator[None]:
    """The SDK's and the HTTP layer's exceptions as :class:`InfrastructureError`."""
    try:
        yield
    except (DockerException, requests.exceptions.RequestException) as exc:
        raise _infrastructure(exc) from exc


class DockerBackend:
    """Sandboxes as hardened containers on the engine behind ``client``.

    ``client`` is a ``docker.DockerClient`` or its low-level ``docker.APIClient``
    (anything with the ``APIClient`` calls used here; the unit tests pass fakes).
    """

    kind = "docker"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.api = getattr(client, "api", client)

    def create(self, spec: SandboxSpec) -> str:
        limits = spec.limits
        try:
            created = self.api.create_container(
                spec.image,
                user=spec.user,
                stdin_open=True,
                network_disabled=True,
                hostname=spec.hostname,
                entrypoint=spec.entrypoint,
                environment={},
                labels=dict(spec.labels),
                name=spec.name,
                host_config=hardened_host_config(self.api, limits),
            )
        except APIError as exc:
            if "runtime" in str(exc).lower() and limits.runtime != "runc":
                raise RuntimeUnavailable(
                    f"the Docker engine has no runtime {limits.runtime!r}: {exc.explanation}"
                ) from exc
            raise InfrastructureError(f"could not create the sandbox: {exc.explanation or exc}") from exc
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise _infrastructure(exc) from exc
        return str(created["Id"])

    def start(self, sandbox_id: str, limits: Limits) -> None:
        try:
            self.api.start(sandbox_id)
        except APIError as exc:
            if limits.runtime != "runc" and "runtime" in str(exc).lower():
                raise RuntimeUnavailable(f"runtime {limits.runtime!r} failed to start: {exc}") from exc
            raise InfrastructureError(f"could not start the sandbox: {exc.explanation or exc}") from exc
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise _infrastructure(exc) from exc

    def feed(self, sandbox_id: str, payload: bytes) -> None:
        try:
            sock = self.api.attach_socket(sandbox_id, params={"stdin": 1, "stream": 1})
            raw = getattr(sock, "_sock", sock)
            try:
                raw.sendall(payload)
                raw.shutdown(socket.SHUT_WR)
            finally:
                sock.close()
        except APIError as exc:
            raise InfrastructureError(f"could not send the payload to the sandbox: {exc.explanation or exc}") from exc
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise _infrastructure(exc) from exc

    def wait(self, sandbox_id: str, timeout: float) -> int | None:
        started = time.monotonic()
        try:
            status = self.api.wait(sandbox_id, timeout=timeout)
        except requests.exceptions.RequestException as exc:
            # The SDK reports its own read timeout as ReadTimeout or ConnectionError (over the
            # unix socket): only one that comes at the timeout means the sandbox still runs. A
            # transport error that comes early (connection reset or refused, a response cut
            # short) is the engine going away — killed, restarted — never the skill's timeout.
            if time.monotonic() - started < timeout - WAIT_EARLY_SLACK_SECONDS:
                raise EngineLost(f"{type(exc).__name__} after {time.monotonic() - started:.1f}s "
                                 f"of a {timeout:.0f}s wait") from exc
            if isinstance(exc, (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)):
                return None
            raise _infrastructure(exc) from exc
        except DockerException as exc:
            raise _infrastructure(exc) from exc
        return int(status.get("StatusCode", -1))

    def kill(self, sandbox_id: str) -> None:
        with _engine_errors():
            try:
                self.api.kill(sandbox_id)
            except (APIError, NotFound):
                pass

    def state(self, sandbox_id: str) -> SandboxState:
        with _engine_errors():
            found = self.api.inspect_container(sandbox_id)
        state = found.get("State") or {}
        return SandboxState(running=bool(state.get("Running")) and not state.get("Paused"),
                            oom_killed=bool(state.get("OOMKilled")),
                            image_id=str(found.get("Image", "")))

    def oom_event(self, sandbox_id: str, since: float) -> bool:
        # Docker sets OOMKilled only when the out-of-memory event reaches it before the exit;
        # the event itself is in its stream either way ("oom"). until: a late event's window.
        with _engine_errors():
            found = self.api.events(since=int(since) - 1, until=time.time() + OOM_EVENT_WAIT,
                                    filters={"container": sandbox_id, "event": "oom"}, decode=True)
            try:
                return any(e.get("status") == "oom" or e.get("Action") == "oom" for e in found)
            finally:
                close = getattr(found, "close", None)
                if close is not None:
                    close()

    def stdout(self, sandbox_id: str) -> bytes:
        with _engine_errors():
            return bytes(self.api.logs(sandbox_id, stdout=True, stderr=False))

    def stderr_tail(self, sandbox_id: str, lines: int) -> bytes:
        with _engine_errors():
            return bytes(self.api.logs(sandbox_id, stdout=False, stderr=True, tail=lines))

    def remove(self, sandbox_id: str) -> None:
        remove_container(self.api, sandbox_id)

    def list(self, labels: Sequence[str]) -> list[Listed]:
        with _engine_errors():
            found = self.api.containers(all=True, filters={"label": list(labels)})
        out = []
        for c in found:
            created = c.get("Created")
            out.append(Listed(sandbox_id=str(c["Id"]), labels=dict(c.get("Labels") or {}),
                              created=float(created) if created else None,
                              running=(c["State"] == "running") if c.get("State") else None))
        return out

    def image_id(self, image: str) -> str:
        with _engine_errors():
            return str(self.api.inspect_image(image)["Id"])

    def info(self) -> EngineInfo:
        return engine_info(self.client)


def as_backend(client: Any) -> SandboxBackend:
    """``client`` if it is a backend already, else a :class:`DockerBackend` over it
    (callers that hold a ``docker.DockerClient`` or ``APIClient`` keep passing it)."""
    if isinstance(client, SandboxBackend):
        return client
    return DockerBackend(client)
