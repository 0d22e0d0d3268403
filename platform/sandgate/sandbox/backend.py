"""The sandbox backend: the few engine operations the evaluation path uses.

The runner (:mod:`sandgate.sandbox.runner`), the warm pool
(:mod:`sandgate.sandbox.pool`), the reaper (:mod:`sandgate.sandbox.reaper`) and
the doctor go through a :class:`SandboxBackend`; what a sandbox *is* (the
hardening, the labels, the payload and the signed result lines) is decided
above it and is the same on every backend. The one implementation is
:class:`sandgate.sandbox.docker_backend.DockerBackend`, the only module of the
package's evaluation path that imports the Docker SDK; a Kubernetes backend
(docs/scale.md) would be a second implementation of this protocol, not a
rewrite of the runner.

Every operation raises :class:`~sandgate.errors.InfrastructureError` (or its
subclass :class:`~sandgate.errors.RuntimeUnavailable` when the requested
runtime is missing) when the engine fails, never an SDK's own exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sandgate.limits import Limits

__all__ = ["EngineInfo", "Listed", "SandboxBackend", "SandboxSpec", "SandboxState"]


@dataclass(frozen=True)
class EngineInfo:
    """An engine's identity and abilities, as the doctor reports them."""

    version: str
    api_version: str
    runtimes: list[str] = field(default_factory=list)
    default_runtime: str = "runc"
    cgroup_version: str | None = None
    security_options: list[str] = field(default_factory=list)
    architecture: str = ""


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """One sandbox to make: everything the backend needs, decided by the runner."""

    image: str
    limits: Limits
    #: every label the sandbox carries (``sandgate.managed``, evaluation, controller, pool, ...)
    labels: Mapping[str, str]
    #: the engine-side name (unique; ``sandgate-<evaluation>-<random>``)
    name: str
    #: the hostname the skill sees (fresh and production-looking per sandbox)
    hostname: str
    #: ``uid:gid`` the sandbox's process runs as (never root)
    user: str
    #: replaces the image's entrypoint (benchmarks' bare floor, the oracle's server)
    entrypoint: list[str] | None = None


@dataclass(frozen=True, slots=True)
class SandboxState:
    """What the engine says about one sandbox now."""

    #: running and not paused
    running: bool
    #: the kernel's OOM killer ended it
    oom_killed: bool
    #: the id of the image it was made from (``sha256:...``)
    image_id: str


@dataclass(frozen=True, slots=True)
class Listed:
    """A managed sandbox as listing by labels returns it (for the reaper)."""

    sandbox_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    #: when the engine created it, seconds since the epoch, if it says
    created: float | None = None
    #: whether it runs now (False: created, exited or dead — e.g. stopped by an engine restart)
    running: bool | None = None


@runtime_checkable
class SandboxBackend(Protocol):
    """Make, feed, wait for, read, kill, remove and list sandboxes on one engine."""

    #: the engine kind, e.g. ``"docker"``
    kind: str

    def create(self, spec: SandboxSpec) -> str:
        """Make the hardened sandbox (not started) with ``spec.limits``; return its id."""
        ...

    def start(self, sandbox_id: str, limits: Limits) -> None:
        """Start it: its process runs and blocks reading its payload from stdin."""
        ...

    def feed(self, sandbox_id: str, payload: bytes) -> None:
        """Write ``payload`` to the started sandbox's stdin, then close stdin (EOF)."""
        ...

    def wait(self, sandbox_id: str, timeout: float) -> int | None:
        """Its exit code once it stopped, or None when it still runs after ``timeout`` seconds."""
        ...

    def kill(self, sandbox_id: str) -> None:
        """Kill its processes (SIGKILL); one already stopped or gone is fine."""
        ...

    def state(self, sandbox_id: str) -> SandboxState:
        ...

    def oom_event(self, sandbox_id: str, since: float) -> bool:
        """Whether the engine reported it out of memory since ``since`` (a wall-clock time),
        waiting briefly for an event still on its way: an engine can handle the exit before
        the out-of-memory event, and then its state never says so."""
        ...

    def stdout(self, sandbox_id: str) -> bytes:
        """Everything it wrote to stdout (read after it stopped: the harness's signed lines)."""
        ...

    def stderr_tail(self, sandbox_id: str, lines: int) -> bytes:
        """The last ``lines`` lines it wrote to stderr (explains a missing result)."""
        ...

    def remove(self, sandbox_id: str) -> None:
        """Remove it, killing it if it runs, retrying the engine briefly; gone is fine.

        Raises :class:`~sandgate.errors.SandboxFailure` when it cannot be removed."""
        ...

    def list(self, labels: Sequence[str]) -> list[Listed]:
        """Every sandbox (running or not) carrying all ``labels`` (``key=value``)."""
        ...

    def image_id(self, image: str) -> str:
        """The id of the image behind the tag ``image`` now."""
        ...

    def info(self) -> EngineInfo:
        """The engine's identity and abilities (version, runtimes, seccomp), for the doctor."""
        ...
