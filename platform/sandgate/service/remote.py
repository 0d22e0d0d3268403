"""The remote skill service: a ``sandgate serve`` through :class:`~sandgate.client.SandgateClient`.

HTTP only (no SQLAlchemy, no FastAPI). The server records the API key as the
actor, so an explicit ``actor`` is refused; ``submit`` uploads and, with
``wait``, polls the evaluation until a worker has finished it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sandgate.errors import ConfigError, NotFound
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
from sandgate.service import VersionDetail
from sandgate.wire import plain_from_env, record_from_dict

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.client import SandgateClient
    from sandgate.lifecycle import SubmitResult

__all__ = ["RemoteService"]


def _no_actor(actor: str | None) -> None:
    if actor:
        raise ConfigError("--actor is for embedded mode: the server records the API key as the actor "
                          "(unset SANDGATE_URL to use the store directly)")


class RemoteService:
    """:class:`~sandgate.service.SkillService` over the HTTP API."""

    def __init__(self, client: SandgateClient) -> None:
        self.client = client

    @classmethod
    def from_env(cls) -> RemoteService:
        from sandgate.client import from_env  # httpx: for everything but the read commands

        client = from_env()
        if client is None:
            raise ConfigError("SANDGATE_URL is not set")
        return cls(client)

    @classmethod
    def reads_from_env(cls) -> RemoteService:
        """For the read commands (``skills``, ``versions``, ``show``, ``history``, ``diff``): the same
        service over :class:`~sandgate.wire.PlainClient`, the standard library's HTTP (GET requests only:
        a write through it raises TypeError)."""
        client = plain_from_env()
        if client is None:
            raise ConfigError("SANDGATE_URL is not set")
        return cls(cast("SandgateClient", client))  # it answers the reads exactly as SandgateClient

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -----------------------------------------------------------------------

    def list_skills(self) -> list[SkillRecord]:
        return self.client.list_skills()

    def list_versions(self, name: str) -> list[VersionRecord]:
        return self.client.list_versions(name)

    def show(self, name: str, number: int | None = None) -> VersionDetail:
        if number is None:
            skill = self.client.get_skill(name)
            number = skill.active_version or skill.latest_version
            if number is None:
                raise NotFound(f"{name} has no versions")
        return self.client.get_version(name, number)

    def history(self, name: str, *, limit: int | None = None) -> list[EventRecord]:
        return self.client.history(name, limit=limit)

    def diff(self, name: str, a: int, b: int) -> list[FileDiff]:
        return self.client.diff(name, a, b)

    # -- writes ----------------------------------------------------------------------

    def submit(self, path: Path, *, policy: str | None, actor: str | None, wait: bool,
               wait_timeout: float, provenance: Mapping[str, Any],
               progress: Callable[[str], None] | None = None) -> tuple[SubmitResult, str]:
        # lazy: the lifecycle (and with it the store) is imported only to build the result type
        from sandgate.lifecycle import SubmitResult

        _no_actor(actor)
        api = self.client
        data = api.submit_path(path, policy=policy, provenance=provenance)
        name, number = data["skill"], data["version"]
        status = api.get_evaluation_status(data["evaluation_id"]) if data.get("evaluation_id") else None
        if status is not None and wait and status.get("status") != "done":
            status = api.wait_evaluation(data["evaluation_id"], timeout=wait_timeout, progress=progress)
        evaluation = record_from_dict(EvaluationRecord, status) if status is not None else None
        moved = (status or {}).get("promoted")
        promoted = None
        if moved and evaluation is not None and not data["reused_evaluation"]:
            promoted = record_from_dict(PointerMove, moved)
        result = SubmitResult(
            version=api.get_version(name, number).version,
            created=data["created"],
            evaluation=evaluation,
            reused_evaluation=data["reused_evaluation"],
            promotion_mode=data["promotion_mode"],
            promoted=promoted,
            promotion_note=data.get("promotion_note"),
        )
        policy_name = evaluation.policy_name if evaluation is not None else (policy or "default")
        return result, policy_name

    def promote(self, name: str, number: int, *, actor: str | None, reason: str | None,
                policy: str | None, expected_generation: int | None, force: bool) -> PointerMove:
        _no_actor(actor)
        return self.client.promote(name, number, reason=reason, force=force,
                                   expected_generation=expected_generation, policy=policy)

    def rollback(self, name: str, *, to: int | None, actor: str | None, reason: str | None,
                 expected_generation: int | None) -> PointerMove:
        _no_actor(actor)
        return self.client.rollback(name, to=to, reason=reason, expected_generation=expected_generation)

    def yank(self, name: str, number: int, *, actor: str | None, reason: str,
             rollback: bool) -> YankResult:
        _no_actor(actor)
        return self.client.yank(name, number, reason=reason, rollback=rollback)

    # -- canary ----------------------------------------------------------------------

    def start_canary(self, name: str, number: int, *, weight: int | None, actor: str | None,
                     reason: str | None, policy: str | None, expected_generation: int | None,
                     force: bool) -> CanaryRecord:
        _no_actor(actor)
        return self.client.start_canary(name, number, weight=weight, reason=reason, force=force,
                                        expected_generation=expected_generation, policy=policy)

    def abort_canary(self, name: str, *, actor: str | None, reason: str) -> CanaryRecord:
        _no_actor(actor)
        return self.client.abort_canary(name, reason=reason)

    def canary_status(self, name: str) -> dict[str, Any]:
        return self.client.canary_status(name)
