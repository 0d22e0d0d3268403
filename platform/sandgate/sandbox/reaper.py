"""The reaper: remove sandboxes whose controller is gone (or that outlived any evaluation).

Every sandbox carries ``sandgate.managed=true``, its evaluation id and its
controller (``host:pid``). :func:`reap` lists them on one engine and removes
those the caller's callbacks condemn; the sandbox knows no database:

* ``alive(controller, created_epoch)`` — is the controller that started it
  alive? ``False`` condemns it; ``True`` or ``None`` ("not mine to judge", e.g.
  another host's) spares it (:func:`sandgate.names.controller_alive` answers
  for this host);
* ``max_age`` + ``held(sandbox)`` — a sandbox older than ``max_age`` seconds
  is condemned unless ``held`` says its evaluation still runs under its
  controller's lease (the scheduler asks the store). A warm pool's sandbox
  (label ``sandgate.pool``) whose controller is alive is never condemned by
  age: its evaluation label is the pool's, and its pool retires it
  (:mod:`sandgate.sandbox.pool`); a dead controller's is condemned as any other.

The workers (at start-up and periodically) and the scheduler's orphan job
both call it. :func:`remove_stopped` is a worker's clean-up after its engine
came back from the dead: its own containers that no longer run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sandgate.sandbox.docker_backend import as_backend
from sandgate.sandbox.runner import (
    CONTROLLER_LABEL,
    EVALUATION_LABEL,
    MANAGED_LABEL,
    POOL_LABEL,
)
from sandgate.sandbox.runner import (
    reap as remove_labelled,
)

__all__ = ["Sandbox", "Reaped", "AliveFn", "sandboxes", "remove", "reap", "remove_stopped"]

log = logging.getLogger("sandgate.sandbox")

#: ``alive(controller label, container created epoch)`` → True | False | None (not ours to judge)
AliveFn = Callable[[str | None, float | None], bool | None]


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A managed container as its labels describe it."""

    container_id: str
    controller: str | None
    evaluation_id: str | None
    #: when the engine created it (seconds since the epoch), if it says
    created: float | None
    #: the warm pool that made it (``sandgate.pool``), if any: its evaluation label is
    #: then the pool's, not that of the evaluation it may be serving
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class Reaped:
    sandbox: Sandbox
    #: why it was condemned
    why: str
    #: the container ids removed (the sandbox's, and any other of its evaluation and controller)
    removed: list[str]


def sandboxes(client: Any, *, labels: Iterable[str] = ()) -> list[Sandbox]:
    """The managed containers on ``client``'s engine (``labels``: extra ``key=value`` filters).

    ``client``: a :class:`~sandgate.sandbox.backend.SandboxBackend` or a Docker client."""
    out = []
    for c in as_backend(client).list([f"{MANAGED_LABEL}=true", *labels]):
        container_labels = c.labels
        out.append(
            Sandbox(
                container_id=c.sandbox_id,
                controller=container_labels.get(CONTROLLER_LABEL),
                evaluation_id=container_labels.get(EVALUATION_LABEL),
                created=c.created,
                pool=container_labels.get(POOL_LABEL),
            )
        )
    return out


def remove(client: Any, sandbox: Sandbox) -> list[str]:
    """Remove ``sandbox`` (with any other container of its evaluation and controller)."""
    ids: list[str] = []
    if sandbox.evaluation_id and sandbox.controller:
        ids = remove_labelled(client, evaluation_id=sandbox.evaluation_id, controller=sandbox.controller)
    if not ids:
        as_backend(client).remove(sandbox.container_id)
        ids = [sandbox.container_id]
    return ids


def reap(
    client: Any,
    *,
    alive: AliveFn,
    max_age: float | None = None,
    held: Callable[[Sandbox], bool] | None = None,
    labels: Iterable[str] = (),
    now: float | None = None,
) -> list[Reaped]:
    """Remove the sandboxes the callbacks condemn (see the module docstring); return what went.

    A container that cannot be removed is logged and left for the next run.
    """
    now = time.time() if now is None else now
    out: list[Reaped] = []
    for sandbox in sandboxes(client, labels=labels):
        created = sandbox.created if sandbox.created is not None else now
        why = None
        if alive(sandbox.controller, created) is False:
            why = "controller process is dead"
        elif (max_age is not None and now - created > max_age and not (held is not None and held(sandbox))
              and not (sandbox.pool and alive(sandbox.controller, created) is True)):
            why = f"older than {max_age:.0f}s and its evaluation is not running under its controller"
        if why is None:
            continue
        try:
            ids = remove(client, sandbox)
        except Exception as exc:
            log.warning("could not remove sandbox %s: %s", sandbox.container_id[:12], exc)
            continue
        out.append(Reaped(sandbox, why, ids))
    return out


def remove_stopped(client: Any, *, controller: str) -> list[str]:
    """Remove ``controller``'s managed containers that are not running (an engine restart stopped them)."""
    backend = as_backend(client)
    ids = [c.sandbox_id for c in backend.list([f"{MANAGED_LABEL}=true", f"{CONTROLLER_LABEL}={controller}"])
           if c.running is False]
    for sandbox_id in ids:
        backend.remove(sandbox_id)
    return ids
