"""The Docker engine: connect with a named timeout, describe it, fail clearly."""

from __future__ import annotations

import os
import threading
from typing import Any

import docker
from docker.errors import DockerException

from sandgate.config import Settings, get_settings
from sandgate.errors import EngineUnavailable
from sandgate.sandbox.backend import EngineInfo

__all__ = ["EngineInfo", "connect", "engine_info", "shared_client"]

ENGINE_HINT = (
    "start a Docker engine (on Debian as root, `bash sandbox_images/engine.sh` installs "
    "and starts one; elsewhere see https://docs.docker.com/engine/install/)"
)


def connect(settings: Settings | None = None) -> docker.DockerClient:
    """A client whose every API call times out after ``docker_api_timeout`` seconds.

    Raises :class:`EngineUnavailable` when no engine answers.
    """
    settings = settings or get_settings()
    try:
        client = docker.from_env(timeout=int(max(1, settings.docker_api_timeout)))
        client.ping()
    except Exception as exc:  # DockerException, and requests/urllib3 errors that docker-py does not wrap
        raise EngineUnavailable(engine_unavailable_message(exc)) from exc
    return client


def engine_address() -> str:
    """Where the Docker client looks for the engine, and why (``DOCKER_HOST`` or the default)."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    return f"{host} (DOCKER_HOST)" if host else "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)"


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a connection error, in a few words (not a chain of reprs)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[-1], BaseException):
            nxt = cur.args[-1]
        if nxt is None and cur.args and isinstance(cur.args[0], tuple):
            nxt = next((a for a in cur.args[0] if isinstance(a, BaseException)), None)
        cur = nxt
    last = seen[-1]
    if isinstance(last, OSError) and last.strerror:
        return last.strerror
    return str(last) or type(last).__name__


def engine_unavailable_message(exc: BaseException) -> str:
    return f"no Docker engine answers at {engine_address()}: {_root_cause(exc)}; {ENGINE_HINT}"


_shared: dict[tuple[str, int], docker.DockerClient] = {}
_shared_lock = threading.Lock()


def shared_client(settings: Settings | None = None) -> docker.DockerClient:
    """One client per engine address and timeout for this process (pinged once).

    Evaluations call this instead of :func:`connect` so a busy worker does not
    open a connection pool and ping the engine for every sandbox; a dead engine
    still surfaces, as an :class:`InfrastructureError` from the sandbox call.
    """
    settings = settings or get_settings()
    key = (os.environ.get("DOCKER_HOST", ""), int(max(1, settings.docker_api_timeout)))
    with _shared_lock:
        client = _shared.get(key)
        if client is None:
            client = _shared[key] = connect(settings)
        return client


def engine_info(client: docker.DockerClient) -> EngineInfo:
    try:
        info: dict[str, Any] = client.info()
        version: dict[str, Any] = client.version()
    except DockerException as exc:
        raise EngineUnavailable(f"the Docker engine stopped answering ({exc})") from exc
    return EngineInfo(
        version=str(version.get("Version", "?")),
        api_version=str(version.get("ApiVersion", "?")),
        runtimes=sorted((info.get("Runtimes") or {}).keys()),
        default_runtime=str(info.get("DefaultRuntime", "runc")),
        cgroup_version=info.get("CgroupVersion"),
        security_options=list(info.get("SecurityOptions") or []),
        architecture=str(info.get("Architecture", "")),
    )
