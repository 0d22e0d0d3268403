"""The skill service: one protocol for what the CLI (and the API) ask of sandgate.

::

    SkillService (Protocol)
    ├── EmbeddedService   sandgate.service.embedded: over the store and the lifecycle
    │                     (SQLAlchemy; the API's routes and the CLI without SANDGATE_URL)
    └── RemoteService     sandgate.service.remote: over SandgateClient (HTTP only)

:func:`open_service` picks the implementation once (``SANDGATE_URL`` set:
remote) and imports only that one, so a remote command never loads SQLAlchemy.
Both return the same records, so the CLI formats one result whichever answered.
:func:`version_detail` is the one builder of a version's detail (record, latest
finished evaluation, file list) — the API's answer, the CLI's ``show``, and the
client's rebuild of that answer.

Registries read through their own, smaller protocol
(:class:`sandgate.registry.backends.RegistryBackend`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sandgate.records import (
    CanaryRecord,
    EvaluationRecord,
    EventRecord,
    FileDiff,
    PointerMove,
    SkillRecord,
    VersionRecord,
    YankResult,
)

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.lifecycle import SubmitResult

__all__ = ["SkillService", "FileEntry", "VersionDetail", "version_detail", "open_service", "open_remote_reads"]


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int = 0
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class VersionDetail:
    """A version, its latest finished evaluation, and its file list."""

    version: VersionRecord
    evaluation: EvaluationRecord | None
    files: list[FileEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.to_dict(),
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "files": [f.to_dict() for f in self.files],
        }


def version_detail(version: VersionRecord, evaluation: EvaluationRecord | None,
                   files: Mapping[str, bytes]) -> VersionDetail:
    """The one builder of a version detail from a version's record, evaluation and bytes."""
    return VersionDetail(version, evaluation, [
        FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()])


class SkillService(Protocol):
    """What a command asks of sandgate; every method is one call of an edge.

    ``policy`` is a policy *name* (None: the configured one); ``actor`` is who
    acts (None: the implementation's default; a remote service records its API
    key instead and refuses an explicit actor).
    """

    def list_skills(self) -> list[SkillRecord]: ...

    def list_versions(self, name: str) -> list[VersionRecord]: ...

    def show(self, name: str, number: int | None = None) -> VersionDetail:
        """Version ``number`` (None: the active one, else the latest)."""
        ...

    def submit(self, path: Path, *, policy: str | None, actor: str | None, wait: bool,
               wait_timeout: float, provenance: Mapping[str, Any],
               progress: Callable[[str], None] | None = None) -> tuple[SubmitResult, str]:
        """The result and the name of the policy that judged (or will judge) it. ``progress`` is told
        the phase (``sandbox``, ``static``, ... locally; ``queued``/``running`` remotely) as it changes."""
        ...

    def promote(self, name: str, number: int, *, actor: str | None, reason: str | None,
                policy: str | None, expected_generation: int | None, force: bool) -> PointerMove: ...

    def rollback(self, name: str, *, to: int | None, actor: str | None, reason: str | None,
                 expected_generation: int | None) -> PointerMove: ...

    def yank(self, name: str, number: int, *, actor: str | None, reason: str,
             rollback: bool) -> YankResult: ...

    def history(self, name: str, *, limit: int | None = None) -> list[EventRecord]: ...

    # -- canary (sandgate.delivery) --

    def start_canary(self, name: str, number: int, *, weight: int | None, actor: str | None,
                     reason: str | None, policy: str | None, expected_generation: int | None,
                     force: bool) -> CanaryRecord:
        """``name@number`` becomes the candidate beside the active version at ``weight`` % of calls
        (None: the policy's first step)."""
        ...

    def abort_canary(self, name: str, *, actor: str | None, reason: str) -> CanaryRecord:
        """Drop the candidate of the running canary: every call goes to the active version again."""
        ...

    def canary_status(self, name: str) -> dict[str, Any]:
        """Pointer state, the canary, counts per version and the decision now (``sandgate status``)."""
        ...

    def diff(self, name: str, a: int, b: int) -> list[FileDiff]: ...

    def close(self) -> None: ...

    def __enter__(self) -> SkillService: ...

    def __exit__(self, *exc: object) -> None: ...


def open_remote_reads() -> SkillService:
    """For the read commands with ``$SANDGATE_URL`` set: the remote service over the standard library's
    HTTP (:meth:`RemoteService.reads_from_env <sandgate.service.remote.RemoteService.reads_from_env>`:
    GET requests only, no httpx)."""
    from sandgate.service.remote import RemoteService

    return RemoteService.reads_from_env()


def open_service(*, default_actor: Callable[[], str],
                 embedded: Mapping[str, Any] | None = None) -> SkillService:
    """The remote service when ``$SANDGATE_URL`` is set, else the embedded one over the configured store.

    ``embedded``: collaborators for :meth:`EmbeddedService.open <sandgate.service.embedded.EmbeddedService.open>`
    (``load_policy``, ``load_submission``, ``evaluate``); the remote service has none."""
    from sandgate.environ import remote_url

    if remote_url():
        from sandgate.service.remote import RemoteService  # HTTP only

        return RemoteService.from_env()
    from sandgate.service.embedded import EmbeddedService  # SQLAlchemy, the lifecycle

    return EmbeddedService.open(default_actor=default_actor, **(embedded or {}))
