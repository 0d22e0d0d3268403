"""What the store returns: plain frozen dataclasses, never ORM objects (ground floor: stdlib only).

Every record has ``to_dict()`` giving JSON-ready data (the CLI's ``--json``
and the API use it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "SkillRecord",
    "VersionRecord",
    "EvaluationRecord",
    "EventRecord",
    "PointerMove",
    "YankResult",
    "FileDiff",
    "FlagResult",
    "CanaryRecord",
    "MoveAction",
    "FileChange",
]

#: what moved a pointer (:attr:`PointerMove.action`)
MoveAction = Literal["promoted", "rolled_back"]
#: how a file differs between two versions (:attr:`FileDiff.change`)
FileChange = Literal["added", "removed", "modified"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return value


class _Record:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True, slots=True)
class SkillRecord(_Record):
    name: str
    created_at: datetime
    #: number of the active version (None: nothing promoted yet)
    active_version: int | None
    #: pointer-move counter: pass it back as ``expected_generation``
    generation: int
    #: highest version number (None: no versions)
    latest_version: int | None


@dataclass(frozen=True, slots=True)
class VersionRecord(_Record):
    id: int
    skill: str
    number: int
    content_hash: str
    manifest: dict[str, Any]
    file_count: int
    total_bytes: int
    created_at: datetime
    created_by: str
    #: latest conclusive verdict under any policy: pending | passed | failed | rejected
    status: str
    yanked_at: datetime | None
    yank_reason: str | None
    provenance: dict[str, Any] | None
    #: whether this is the skill's active version (at the time it was read)
    active: bool
    #: verdict of the version's latest finished evaluation under any policy, ``error`` included
    #: (None: never evaluated, or not read: only listings fill it)
    latest_verdict: str | None = None

    @property
    def display_status(self) -> str:
        """``status``, except ``error`` when the latest evaluation ended in error (stored: pending)."""
        if self.status == "pending" and self.latest_verdict == "error":
            return "error"
        return self.status

    @property
    def yanked(self) -> bool:
        return self.yanked_at is not None

    @property
    def ref(self) -> str:
        return f"{self.skill}@{self.number}"


@dataclass(frozen=True, slots=True)
class EvaluationRecord(_Record):
    id: str
    skill: str
    version: int
    policy_name: str
    policy_hash: str
    #: queued | running | done
    status: str
    #: passed | failed | rejected | error (None until done)
    verdict: str | None
    reasons: list[dict[str, Any]]
    report: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: how many times a worker claimed it (a lapsed lease is claimed again, up to a maximum)
    attempts: int = 0
    #: the worker holding it while running (``host:pid:random``); after that, the last one
    lease_owner: str | None = None
    #: while running under a lease: when it lapses unless heartbeated
    lease_expires_at: datetime | None = None
    #: the W3C ``traceparent`` of the span that queued it (None: traces were off)
    traceparent: str | None = None

    def report_model(self) -> Any:
        """The stored report as an ``EvaluationReport`` (None until done)."""
        if self.report is None:
            return None
        from sandgate.report import EvaluationReport

        return EvaluationReport.model_validate(self.report)


@dataclass(frozen=True, slots=True)
class EventRecord(_Record):
    id: int
    skill: str
    #: number of the version acted on (for moves: the version that became active)
    version: int | None
    actor: str
    action: str
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    evidence: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PointerMove(_Record):
    """The result of a promote or rollback: one event, one generation step."""

    skill: str
    action: MoveAction
    from_version: int | None
    to_version: int
    #: the generation after the move
    generation: int
    event_id: int
    forced: bool = False


@dataclass(frozen=True, slots=True)
class YankResult(_Record):
    version: VersionRecord
    #: set when ``rollback=True`` moved the pointer away first
    rollback: PointerMove | None
    event_id: int


@dataclass(frozen=True, slots=True)
class FileDiff(_Record):
    path: str
    change: FileChange
    #: unified diff text ("" for binary files; see ``binary``)
    diff: str
    binary: bool = False


@dataclass(frozen=True, slots=True)
class FlagResult(_Record):
    """A ``flagged`` event (a re-scan found blocked findings) and the quarantine it caused."""

    skill: str
    version: int
    event_id: int
    #: set when the flag quarantined the version by rolling the skill back
    rollback: PointerMove | None = None
    #: why a requested quarantine did not happen (e.g. nothing to roll back to)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CanaryRecord(_Record):
    """A canary run (``sandgate promote N --canary W``) and the skill's pointer state now."""

    id: int
    skill: str
    candidate: int
    baseline: int
    #: running | baking | completed | rolled_back | aborted
    state: str
    #: the policy's ``[promotion.canary]`` settings for this skill, as the run started
    config: dict[str, Any]
    #: ``{weight, generation, started_at}`` per step, oldest first
    steps: list[dict[str, Any]]
    last_decision: dict[str, Any] | None
    actor: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: the skill's pointer state now: active version, candidate weight, generation
    active: int | None
    weight: int
    generation: int
