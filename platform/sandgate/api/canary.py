"""The canary routes: start, abort, status, the registries' view, and runtime evidence from consumers.

=====================================  ========  ===============================================
route                                  role      what
=====================================  ========  ===============================================
``POST /v1/skills/{name}/canary``      promoter  start a canary (``sandgate promote N --canary W``)
``POST /v1/skills/{name}/canary/abort``  promoter  drop the candidate (``sandgate abort``)
``GET  /v1/skills/{name}/status``      reader    pointer state, counts per version, the decision
``GET  /v1/canaries?names=…``          reader    candidates and weights (HTTP registries)
``POST /v1/runtime``                   reader    one batch of runtime counts (HTTP registries)
=====================================  ========  ===============================================

Every canary decision is an event, so ``GET /v1/watch`` streams them (actions
``canary_*``; in the default set). Runtime batches are recorded with the
calling key's name as the consumer: a key that may read may report, so the
counts are as trustworthy as the consumers' keys (see
:mod:`sandgate.registry.evidence`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from sandgate.api.auth import REQUIRED_ROLE, Promoter, Reader
from sandgate.api.deps import StoreDep
from sandgate.api.errors import ApiError
from sandgate.api.routes import _errors, _names, _service
from sandgate.api.schemas import SKILL_NAME_PATTERN, Generation, PolicyName, Text, Version
from sandgate.store import canary as cs
from sandgate.store.keys import role_allows

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["canary"])

SkillName = Annotated[str, Path(pattern=SKILL_NAME_PATTERN, description="skill name")]


def _role(role: str) -> dict[str, Any]:
    return {"openapi_extra": {REQUIRED_ROLE: role, "security": [{"bearerAuth": []}]}}


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Version
    weight: int | None = Field(default=None, ge=1, le=99, description="percent (default: the policy's first step)")
    reason: Text | None = None
    force: bool = Field(default=False, description="without a passed evaluation (admin role and a reason)")
    expected_generation: Generation | None = None
    policy: PolicyName | None = None


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text


class RuntimeReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skill: Annotated[str, Field(pattern=SKILL_NAME_PATTERN)]
    version: Version
    generation: Generation
    calls: int = Field(ge=0, le=2**53)
    errors: int = Field(ge=0, le=2**53)
    error_types: dict[Annotated[str, Field(max_length=200)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, max_length=50)
    latency: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=400)
    fallbacks: int = Field(default=0, ge=0, le=2**53)
    samples: list[dict[str, Any]] = Field(default_factory=list, max_length=100)


class RuntimeBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    consumer: Annotated[str, Field(max_length=200)] | None = None
    sent_at: float | None = None
    reports: list[RuntimeReport] = Field(max_length=1000)


@router.post("/skills/{name}/canary", **_role("promoter"),
             responses=_errors(e400="a policy this server does not offer",
                               e409="a concurrent move won, or the state forbids it (not passed, a canary runs)"))
def start_canary(name: SkillName, body: CanaryRequest, key: Promoter, store: StoreDep,
                 request: Request) -> dict[str, Any]:
    """Make a passed version the candidate beside the active one, at ``weight`` % of calls."""
    if body.force and not role_allows(key.role, "admin"):
        raise ApiError(403, f"forcing a canary needs the admin role; key {key.name!r} has role {key.role}",
                       code="forbidden")
    record = _service(store, request).start_canary(
        name, body.version, weight=body.weight, actor=key.actor, reason=body.reason, policy=body.policy,
        expected_generation=body.expected_generation, force=body.force)
    return record.to_dict()


@router.post("/skills/{name}/canary/abort", **_role("promoter"))
def abort_canary(name: SkillName, body: AbortRequest, key: Promoter, store: StoreDep) -> dict[str, Any]:
    """Drop the candidate now: every call goes to the active version again."""
    return _service(store).abort_canary(name, actor=key.actor, reason=body.reason).to_dict()


@router.get("/skills/{name}/status", **_role("reader"))
def canary_status(name: SkillName, key: Reader, store: StoreDep) -> dict[str, Any]:
    """Versions, weights, calls, error rates, latency, and the current decision with its reason."""
    return _service(store).canary_status(name)


@router.get("/canaries", **_role("reader"))
def canaries(key: Reader, store: StoreDep,
             names: Annotated[str, Query(max_length=64_000, description="comma-separated skill names")],
             ) -> dict[str, Any]:
    """The candidate, weight, fallback and sample size of those of ``names`` that have a candidate."""
    rows = cs.canary_routes(store, names=_names(names))
    return {"canaries": {n: {"candidate": c, "weight": w, "fallback": f, "sample_io": s}
                         for n, (c, w, f, s) in sorted(rows.items())}}


@router.post("/runtime", **_role("reader"))
def runtime(body: RuntimeBatch, key: Reader, store: StoreDep) -> dict[str, Any]:
    """Record one consumer batch of runtime counts (idempotent on ``batch_id``)."""
    return cs.record_runtime(store, batch=body.model_dump(mode="json"), consumer=f"key:{key.name}")
