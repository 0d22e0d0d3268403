"""Policy data: the validated content of a ``policies/<name>.toml`` file.

Loading the file is the only I/O in :mod:`sandgate.policy`; everything else is
pure. Validation is strict (TOML has real types, so ``min_tests = "1"`` is an
error, not a coercion) and unknown keys are refused, so a typo in a gate name
cannot silently disable the gate.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandgate.config import get_settings
from sandgate.errors import PolicyError
from sandgate.limits import Limits, Runtime
from sandgate.names import SKILL_NAME, SKILL_NAME_PATTERN

__all__ = [
    "Severity",
    "SEVERITIES",
    "Runtime",
    "PromotionMode",
    "Gates",
    "Limits",
    "Mutation",
    "OracleLimits",
    "Promotion",
    "CanaryPolicy",
    "CanarySkill",
    "Policy",
    "parse_policy",
    "load_policy",
]

Severity = Literal["info", "low", "medium", "high", "critical"]
#: lowest to highest; the same words as :class:`sandgate.report.Finding`
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
PromotionMode = Literal["auto", "manual", "canary"]


def _default_blocked_severities() -> list[Severity]:
    return ["critical", "high"]


_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Gates(_Strict):
    """What an evaluation must show for the verdict ``passed``."""

    #: any failed or erroring test fails the gate
    tests_must_pass: bool = True
    #: fewer tests collected (or passed, see :func:`sandgate.policy.decide`) → ``no_tests``
    min_tests: int = Field(default=1, ge=0)
    #: percent of statements covered
    min_line_coverage: float = Field(default=80.0, ge=0.0, le=100.0)
    #: percent of branches covered; 0 disables the gate
    min_branch_coverage: float = Field(default=0.0, ge=0.0, le=100.0)
    #: percent of the mutants run that the tests kill (timed-out mutants count as killed);
    #: 0 disables the gate
    min_mutation_score: float = Field(default=60.0, ge=0.0, le=100.0)
    #: the mutant whose entrypoint body is ``return None`` must be killed
    #: (``null_entrypoint_survived``); applies when the mutation phase ran
    null_entrypoint_must_be_killed: bool = True
    #: skipped, xfailed and xpassed tests are tolerated (never counted); false → ``skipped_tests``
    allow_skips: bool = False
    #: findings of these severities fail the evaluation with ``policy_violation``
    blocked_severities: list[Severity] = Field(default_factory=_default_blocked_severities)
    # -- the oracle phase (evidence judged by the controller) --
    #: a wrong answer to a declared example or to the operator's acceptance set fails the gate
    examples_must_pass: bool = True
    #: examples the submission must declare (``[[examples]]`` + ``examples.jsonl``); 0: none
    min_examples: int = Field(default=0, ge=0)
    #: generated contract-check inputs that must run and hold (declared return type, only
    #: declared exceptions, the same answer twice, the per-call limit); 0: reported, not gated
    contract_checks: int = Field(default=0, ge=0)
    #: behaviour changes against the active version that the manifest does not declare;
    #: omitted: reported, not gated
    max_behaviour_changes: int | None = Field(default=None, ge=0)

    @field_validator("blocked_severities")
    @classmethod
    def _normalise_severities(cls, value: list[str]) -> list[str]:
        # order and repetition are cosmetic: normalise so the hash ignores them
        return sorted(set(value), key=SEVERITIES.index, reverse=True)


class Mutation(_Strict):
    """The mutation phase's budget (see ``sandgate_harness.mutation``)."""

    #: mutants run at most, the null entrypoint included; 0 turns the phase off
    max_mutants: int = Field(default=20, ge=0, le=1000)
    #: seconds the phase may take at most (also bounded by ``limits.timeout_seconds``)
    seconds: float = Field(default=20.0, gt=0, le=3600)
    #: stop once the mutants left cannot change the gates' outcome (the verdict is the
    #: same; fewer survivors are listed); false runs every selected mutant
    stop_when_decided: bool = True


class OracleLimits(_Strict):
    """The oracle phase's clock and budget (its sandbox has the policy's :class:`Limits`)."""

    #: one call, from request sent to answer read
    call_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    #: the whole phase, server start-up included
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    #: contract-check inputs generated when ``gates.contract_checks`` asks for fewer
    contract_inputs: int = Field(default=20, ge=0, le=1000)
    #: calls sent to one served version, all sources together
    max_calls: int = Field(default=600, gt=0, le=10000)


class CanarySkill(_Strict):
    """Per-skill canary settings (``[promotion.canary.skills.NAME]``)."""

    #: retry a failed candidate call on the active version (only for skills safe to call twice)
    fallback: bool | None = None
    #: JSON input/output samples kept per version (0: none)
    sample_io: int | None = Field(default=None, ge=0, le=1000)


class CanaryPolicy(_Strict):
    """``[promotion.canary]``: how a candidate is stepped up and judged (:mod:`sandgate.policy.canary`)."""

    #: candidate weights in percent, increasing, below 100 (full promotion follows the last)
    steps: list[int] = Field(default_factory=lambda: [10, 50], min_length=1, max_length=10)
    #: candidate calls each step needs before it can advance
    min_calls: int = Field(default=200, ge=1)
    #: false-rollback bound of the error test over the whole canary
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    #: roll back when candidate p95 latency / baseline p95 exceeds this
    max_latency_ratio: float = Field(default=2.0, gt=1)
    #: calls each version needs before the latency limit applies
    latency_min_calls: int = Field(default=200, ge=1)
    #: the latency limit applies only once the candidate's p95 is at least this (milliseconds)
    latency_floor_ms: float = Field(default=1.0, ge=0)
    #: seconds the new active version is watched after full promotion (0: no bake window)
    bake_seconds: float = Field(default=600.0, ge=0)
    #: default for every skill: retry a failed candidate call on the active version
    fallback: bool = False
    #: default for every skill: JSON input/output samples kept per version (0: none)
    sample_io: int = Field(default=0, ge=0, le=1000)
    skills: dict[str, CanarySkill] = Field(default_factory=dict)

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if any(not 0 < w < 100 for w in value) or value != sorted(set(value)):
            raise ValueError("steps must be increasing percentages in 1..99 (full promotion follows the last)")
        return value

    @field_validator("skills")
    @classmethod
    def _skill_names(cls, value: dict[str, CanarySkill]) -> dict[str, CanarySkill]:
        for name in value:
            if not SKILL_NAME.match(name):
                raise ValueError(f"{name!r} is not a skill name ({SKILL_NAME_PATTERN})")
        return dict(sorted(value.items()))

    def for_skill(self, skill: str) -> dict[str, Any]:
        """The settings for ``skill`` as stored with a canary run (JSON)."""
        own = self.skills.get(skill) or CanarySkill()
        data = self.model_dump(mode="json", exclude={"skills"})
        data["fallback"] = self.fallback if own.fallback is None else own.fallback
        data["sample_io"] = self.sample_io if own.sample_io is None else own.sample_io
        return data


class Promotion(_Strict):
    """Whether a passing version becomes ``active`` by itself, waits for a human, or goes through a canary."""

    mode: PromotionMode = "auto"
    #: per-skill override of ``mode``
    skills: dict[str, PromotionMode] = Field(default_factory=dict)
    #: the canary's parameters (``mode = "canary"``, ``sandgate promote --canary``); None: the defaults
    canary: CanaryPolicy | None = None

    def canary_for(self, skill: str) -> dict[str, Any]:
        return (self.canary or CanaryPolicy()).for_skill(skill)

    @field_validator("skills")
    @classmethod
    def _skill_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not SKILL_NAME.match(name):
                raise ValueError(f"{name!r} is not a skill name ({SKILL_NAME_PATTERN})")
        return dict(sorted(value.items()))

    def mode_for(self, skill: str) -> PromotionMode:
        return self.skills.get(skill, self.mode)


class Policy(_Strict):
    """A named, validated policy. ``hash`` identifies its content."""

    #: the file name without ``.toml``; not part of the file, not part of the hash
    name: str = "default"
    description: str = ""
    gates: Gates = Field(default_factory=Gates)
    limits: Limits = Field(default_factory=Limits)
    mutation: Mutation = Field(default_factory=Mutation)
    oracle: OracleLimits = Field(default_factory=OracleLimits)
    promotion: Promotion = Field(default_factory=Promotion)

    def canonical_json(self) -> str:
        """The validated content (everything but ``name``) as canonical JSON."""
        data = self.model_dump(mode="json", exclude={"name"})
        if data["promotion"].get("canary") is None:  # a policy without [promotion.canary] keeps its hash
            data["promotion"].pop("canary", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def hash(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical_json`.

        Comments, key order, whitespace, ``60`` vs ``60.0`` and the order of
        ``blocked_severities`` do not change it; any value change does.
        """
        return "sha256:" + hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = repr(err["input"])
            if len(got) > 60:
                got = got[:57] + "..."
            parts.append(f"{key}: {msg} (got {got})")
    return "; ".join(parts)


def parse_policy(data: dict[str, Any] | str, *, name: str, source: str | None = None) -> Policy:
    """Validate policy content (a TOML string or the parsed table) into a :class:`Policy`.

    Raises :class:`PolicyError` naming ``source`` (default: the name) and the key.
    """
    where = source or f"policy {name!r}"
    if isinstance(data, str):
        try:
            data = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"invalid policy {where}: not valid TOML: {exc}") from exc
    if "name" in data:
        raise PolicyError(
            f"invalid policy {where}: name: unknown key (a policy's name is its file name)"
        )
    try:
        return Policy.model_validate({**data, "name": name})
    except ValidationError as exc:
        raise PolicyError(f"invalid policy {where}: {_format_errors(exc)}") from exc


def _resolve(name_or_path: str | Path, policies_dir: Path | None) -> tuple[Path, bool]:
    """(file, named) — ``named`` when resolved by name inside the policies directory."""
    if isinstance(name_or_path, Path):
        return name_or_path, False
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.endswith(".toml"):
        return Path(text), False
    if not _POLICY_NAME.match(text):
        raise PolicyError(f"invalid policy name {text!r}: use a file name without .toml, or a path")
    if policies_dir is None:
        policies_dir = get_settings().policies_dir
    return Path(policies_dir) / f"{text}.toml", True


def load_policy(name_or_path: str | Path, *, policies_dir: Path | None = None) -> Policy:
    """Load and validate a policy.

    ``"default"`` → ``policies_dir / "default.toml"``; a :class:`~pathlib.Path`,
    or a string containing a path separator or ending in ``.toml``, → that file.
    ``policies_dir`` defaults to ``get_settings().policies_dir``.
    """
    path, named = _resolve(name_or_path, policies_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        hint = ""
        if named and path.parent.is_dir():
            available = sorted(p.stem for p in path.parent.glob("*.toml"))
            hint = f" (available: {', '.join(available) or 'none'})"
        raise PolicyError(f"policy file not found: {path}{hint}") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"invalid policy {path}: not UTF-8 text: {exc}") from exc
    return parse_policy(text, name=path.stem, source=str(path))
