"""The report's ``oracle`` section: evidence judged by the controller, outside the sandbox.

Part of the report contract (:mod:`sandgate.report`): fields are only
ever added. Ground floor: pydantic only. Everything here is *evidence*: the values were returned by the
skill's entrypoint served in a fresh sandbox and compared by the controller;
nothing the skill's tests or the harness said enters it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OracleSource", "OracleCall", "BehaviourChange", "OracleSummary", "SOURCES", "call_input"]

OracleSource = Literal["example", "acceptance", "contract", "replay"]
SOURCES: tuple[str, ...] = ("example", "acceptance", "contract", "replay")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OracleCall(_Model):
    """A call whose answer was wrong (or never came)."""

    source: OracleSource
    #: the example's name, or ``#n`` (its place in its source)
    name: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: what the judge wanted, as text (``3``, ``raises ValueError``, ``a value of list[int]``)
    expected: str
    #: what came back, as text (``4``, ``raises KeyError: 'x'``, ``timeout after 2.0s``)
    got: str
    #: wrong_value | wrong_exception | unexpected_exception | wrong_type | unserializable |
    #: timeout | transport | nondeterministic | not_run
    problem: str
    seconds: float = 0.0


class BehaviourChange(_Model):
    """An input on which the candidate answers differently from the active version."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    active: str
    candidate: str
    #: the manifest's ``[[oracle.changes]]`` or the candidate's own examples cover this input
    declared: bool = False
    reason: str | None = None


class OracleSummary(_Model):
    #: ran: calls were made · unsupported: the entrypoint is not servable as JSON (never
    #: passing evidence) · skipped: the phase did not run (see ``note``)
    status: Literal["ran", "unsupported", "skipped"]
    note: str = ""
    #: calls made, by source (example, acceptance, contract, replay)
    calls: dict[str, int] = Field(default_factory=dict)
    #: calls whose answer the controller accepted, by source
    passed: dict[str, int] = Field(default_factory=dict)
    #: examples the submission declares (manifest + examples.jsonl)
    examples: int = 0
    #: operator acceptance examples for this skill (policies/acceptance/NAME.jsonl)
    acceptance: int = 0
    #: generated inputs whose contract was checked (each called twice)
    contract_checks: int = 0
    #: contract checks that held with a returned value (the rest raised a declared exception);
    #: None: no contract check ran
    contract_values: int | None = None
    #: why contract checks could not run (unsupported type hints), if so
    contract_unsupported: str | None = None
    #: the declared signature, as the controller read it (``(text: str, top: int = …) -> dict[str, Any]``)
    signature: str | None = None
    failures: list[OracleCall] = Field(default_factory=list)
    #: contract inputs that got two different answers
    nondeterministic: list[OracleCall] = Field(default_factory=list)
    #: the active version the candidate was compared with (None: no active version)
    active_version: int | None = None
    behaviour_changes: list[BehaviourChange] = Field(default_factory=list)
    #: behaviour changes the manifest did not declare
    undeclared_changes: int = 0
    #: seconds: candidate_start, candidate_ready, calls, active_*, total
    timings: dict[str, float] = Field(default_factory=dict)

    def failed(self, *sources: str) -> list[OracleCall]:
        return [f for f in self.failures if f.source in sources]


def call_input(args: list[Any], kwargs: dict[str, Any]) -> str:
    """A call's arguments as text: ``1, "mi", top=3`` (for reports and repair prompts)."""
    parts = [json.dumps(a, ensure_ascii=False) for a in args]
    parts += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in kwargs.items()]
    return ", ".join(parts)
