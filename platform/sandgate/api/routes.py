"""The ``/v1`` routes: thin over :class:`sandgate.service.embedded.EmbeddedService`.

Each route authenticates (``require(role)``), validates, makes the same
service call the embedded CLI makes, and returns the record's ``to_dict()``
(the record is the response shape; ``response_model`` only documents it). No
route catches a library error: :mod:`sandgate.api.errors` maps them.

Sync routes run in the server's thread pool (the library is blocking); the
submit route is async only to take the raw body, and does its intake and
database work in the pool.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from sandgate.api.auth import REQUIRED_ROLE, Promoter, Reader, Submitter
from sandgate.api.deps import StoreDep, resolve_policy
from sandgate.api.errors import ApiError
from sandgate.api.intake import parse_submission_body
from sandgate.api.schemas import (
    EVALUATION_ID_PATTERN,
    INT32,
    INT64,
    POLICY_NAME_PATTERN,
    SKILL_NAME_PATTERN,
    EvaluationStatusOut,
    EventOut,
    FileDiffOut,
    GenerateRequest,
    GenerationOut,
    MoveOut,
    PointersOut,
    PromoteRequest,
    RollbackRequest,
    SkillOut,
    SubmitOut,
    VersionDetailOut,
    VersionFilesOut,
    VersionOut,
    WhoAmIOut,
    YankOut,
    YankRequest,
)
from sandgate.api.watch import ALL_ACTIONS, DEFAULT_ACTIONS, event_stream
from sandgate.errors import ConfigError, NotFound
from sandgate.service import embedded
from sandgate.service.embedded import EmbeddedService
from sandgate.store.canary import canary_routes
from sandgate.store.keys import role_allows

__all__ = ["router"]

router = APIRouter(prefix="/v1")

SkillName = Annotated[str, Path(pattern=SKILL_NAME_PATTERN, description="skill name")]
VersionNumber = Annotated[int, Path(ge=1, le=INT32, description="version number")]


def _role(role: str) -> dict[str, Any]:
    return {"openapi_extra": {REQUIRED_ROLE: role, "security": [{"bearerAuth": []}]}}


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers (``e409="..."``), with the error body."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {int(k.removeprefix("e")): {"description": d, "content": body} for k, d in described.items()}


_MISSING = "no skill or version by that name or number"
_INCOMPLETE = "a required field is missing or invalid (reason code in error.code)"


def _service(store: Any, request: Request | None = None) -> EmbeddedService:
    """The service over this process's store; policies are the ones this server offers."""
    if request is None:
        return EmbeddedService(store)
    return EmbeddedService(store, load_policy=lambda name: resolve_policy(request, name))


def tenant_queue_cap(key: Any, settings: Any) -> tuple[int | None, str]:
    """The queued cap of ``key`` (None: no cap) and where it comes from (for the error message)."""
    if key.max_queued is not None:
        return int(key.max_queued), f"the key's own max_queued, {key.max_queued}"
    cap = int(settings.tenant_max_queued)
    return (cap or None), f"SANDGATE_API_TENANT_MAX_QUEUED={cap}"


def _log(request: Request, **fields: Any) -> None:
    ctx = request.scope.get("sandgate")
    if isinstance(ctx, dict):
        ctx.setdefault("log", {}).update({k: v for k, v in fields.items() if v is not None})


# --------------------------------------------------------------------------- identity


@router.get("/whoami", response_model=WhoAmIOut, tags=["keys"], **_role("reader"))
def whoami(key: Reader) -> dict[str, Any]:
    """The calling key: its name, role and the actor recorded for its actions."""
    return {"name": key.name, "role": key.role, "actor": key.actor}


# --------------------------------------------------------------------------- skills


@router.get("/skills", response_model=list[SkillOut], tags=["skills"], **_role("reader"))
def list_skills(
    key: Reader,
    store: StoreDep,
    prefix: Annotated[str | None, Query(max_length=63, pattern=r"^[a-z0-9_]*$")] = None,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> list[dict[str, Any]]:
    """All skills with their active version and generation, by name."""
    return [r.to_dict() for r in _service(store).list_skills(prefix=prefix, limit=limit)]


@router.get("/skills/{name}", response_model=SkillOut, tags=["skills"], **_role("reader"))
def get_skill(name: SkillName, key: Reader, store: StoreDep) -> dict[str, Any]:
    return _service(store).get_skill(name).to_dict()


@router.get("/skills/{name}/versions", response_model=list[VersionOut], tags=["versions"],
            **_role("reader"))
def list_versions(name: SkillName, key: Reader, store: StoreDep) -> list[dict[str, Any]]:
    return [v.to_dict() for v in _service(store).list_versions(name)]


_SUBMIT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/FilesSubmission"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["archive"],
            "properties": {"archive": {"type": "string", "format": "binary"},
                           "policy": {"type": "string", "pattern": POLICY_NAME_PATTERN},
                           "provenance": {"type": "string", "description": "a JSON object"}}}},
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/skills/{name}/versions",
    response_model=SubmitOut,
    status_code=202,
    tags=["versions"],
    responses={200: {"model": SubmitOut, "description": "same content already evaluated "
                                                        "under this policy (reused)"},
               **_errors(e400="a policy this server does not offer",
                         e409="this content is a yanked version",
                         e429="the key's queue is full (error.code queue_full, with Retry-After) "
                              "or its rate limit is spent",
                         e413="the body is larger than the server's limit",
                         e415="unsupported content type",
                         e422="invalid submission (reason code in error.code)")},
    openapi_extra={**_role("submitter")["openapi_extra"], "requestBody": _SUBMIT_BODY},
)
async def submit_version(
    name: SkillName,
    request: Request,
    response: Response,
    key: Submitter,
    store: StoreDep,
    policy: Annotated[str | None, Query(pattern=POLICY_NAME_PATTERN)] = None,
) -> dict[str, Any]:
    """Store a new version (idempotent on content) and queue its evaluation.

    Answers once the version is stored and its evaluation is queued in the
    database (202): a worker runs it; poll ``GET /v1/evaluations/{id}`` or
    watch ``/v1/watch``. The manifest's name must be ``{name}``. A key that
    already has its cap of queued evaluations gets 429 ``queue_full`` with
    ``Retry-After``, and nothing is stored.
    """
    body = await request.body()
    parsed = parse_submission_body(request.headers.get("content-type"), body, policy=policy)
    submission = await run_in_threadpool(parsed.submission)
    if submission.name != name:
        raise ApiError(422, f"the manifest names skill {submission.name!r}, but this is "
                            f"POST /v1/skills/{name}/versions", code="name_mismatch")
    pol = await run_in_threadpool(resolve_policy, request, parsed.policy)
    provenance = {**(parsed.provenance or {}), "client": "api", "key": key.name,
                  "format": parsed.source}
    max_queued, limit_setting = tenant_queue_cap(key, request.app.state.api)
    result = await run_in_threadpool(
        lambda: _service(store).submit_submission(submission, policy=pol, actor=key.actor,
                                                  wait=False, provenance=provenance, tenant=key.tenant,
                                                  max_queued=max_queued, limit_setting=limit_setting))
    data = result.to_dict()
    _log(request, skill=name, version=result.version.number, evaluation_id=data["evaluation_id"])
    if result.evaluation is None:
        raise ApiError(409, result.promotion_note or f"{result.version.ref} is yanked",
                       code="yanked")
    data["links"] = {
        "evaluation": f"/v1/evaluations/{result.evaluation.id}",
        "version": f"/v1/skills/{name}/versions/{result.version.number}",
    }
    response.status_code = 200 if result.reused_evaluation else 202
    return data


@router.get("/skills/{name}/versions/{number}", response_model=VersionDetailOut, tags=["versions"],
            **_role("reader"))
def get_version(name: SkillName, number: VersionNumber, key: Reader, store: StoreDep) -> dict[str, Any]:
    """A version: its record, manifest, latest finished evaluation and file list."""
    return _service(store).show(name, number).to_dict()


@router.get("/skills/{name}/versions/{number}/files", response_model=VersionFilesOut,
            tags=["versions"], **_role("reader"))
def get_version_files(name: SkillName, number: VersionNumber, key: Reader,
                      store: StoreDep) -> dict[str, Any]:
    """The exact stored bytes (base64), for registries: verify them against ``content_hash``."""
    version, files = embedded.version_with_files(store, name=name, number=number)
    return {
        "skill": name,
        "version": number,
        "content_hash": version.content_hash,
        "entrypoint": version.manifest.get("entrypoint"),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256,
                   "content_base64": base64.b64encode(f.content).decode("ascii")} for f in files],
    }


@router.post("/skills/{name}/versions/{number}/yank", response_model=YankOut, tags=["pointer"],
             responses=_errors(e404=_MISSING, e409="the version is active (roll back first, or rollback: true)",
                               e422=_INCOMPLETE),
             **_role("promoter"))
def yank_version(name: SkillName, number: VersionNumber, body: YankRequest, key: Promoter,
                 store: StoreDep, request: Request) -> dict[str, Any]:
    """Never promote this version again (``rollback: true`` first moves the pointer off it)."""
    result = _service(store).yank(name, number, actor=key.actor, reason=body.reason,
                                  rollback=body.rollback)
    _log(request, skill=name, version=number)
    return result.to_dict()


@router.post("/skills/{name}/promote", response_model=MoveOut, tags=["pointer"],
             responses=_errors(e400="a policy this server does not offer", e404=_MISSING,
                               e409="a concurrent move won, or the state forbids it (not passed, yanked)",
                               e422=_INCOMPLETE),
             **_role("promoter"))
def promote(name: SkillName, body: PromoteRequest, key: Promoter, store: StoreDep,
            request: Request) -> dict[str, Any]:
    """Make a version active (it must have passed under the current policy; ``force`` needs admin)."""
    if body.force and not role_allows(key.role, "admin"):
        raise ApiError(403, f"forcing a promotion needs the admin role; key {key.name!r} has "
                            f"role {key.role}", code="forbidden")
    move = _service(store, request).promote(name, body.version, actor=key.actor, reason=body.reason,
                                            policy=body.policy,
                                            expected_generation=body.expected_generation,
                                            force=body.force)
    _log(request, skill=name, version=body.version)
    return move.to_dict()


@router.post("/skills/{name}/rollback", response_model=MoveOut, tags=["pointer"],
             responses=_errors(e404=_MISSING, e409="nothing to roll back to, or a concurrent move won",
                               e422=_INCOMPLETE),
             **_role("promoter"))
def rollback(name: SkillName, key: Promoter, store: StoreDep, request: Request,
             body: Annotated[RollbackRequest | None, Body()] = None) -> dict[str, Any]:
    """Go back to what was active before the last move (or to ``to``). Never re-evaluates.
    Every field is optional, and so is the body."""
    body = body or RollbackRequest()
    move = _service(store).rollback(name, to=body.to, actor=key.actor, reason=body.reason,
                                    expected_generation=body.expected_generation)
    _log(request, skill=name, version=move.to_version)
    return move.to_dict()


@router.get("/skills/{name}/history", response_model=list[EventOut], tags=["audit"],
            **_role("reader"))
def history(name: SkillName, key: Reader, store: StoreDep,
            limit: Annotated[int | None, Query(ge=1, le=100_000)] = None) -> list[dict[str, Any]]:
    """The skill's audit events, oldest first (``limit``: only the newest N)."""
    return [e.to_dict() for e in _service(store).history(name, limit=limit)]


@router.get("/skills/{name}/diff", response_model=list[FileDiffOut], tags=["audit"],
            **_role("reader"))
def diff(name: SkillName, key: Reader, store: StoreDep,
         a: Annotated[int, Query(ge=1, le=INT32)], b: Annotated[int, Query(ge=1, le=INT32)],
         ) -> list[dict[str, Any]]:
    """Per changed file, a unified diff from version ``a`` to version ``b``."""
    return [d.to_dict() for d in _service(store).diff(name, a, b)]


# --------------------------------------------------------------------------- generation


@router.post("/skills/{name}/generate", response_model=GenerationOut, status_code=202,
             tags=["generation"],
             responses={503: {"description": "no LLM endpoint is configured on this server"}},
             **_role("submitter"))
def generate(name: SkillName, body: GenerateRequest, key: Submitter, store: StoreDep,
             request: Request) -> dict[str, Any]:
    """Start an LLM generation of the skill in the background (poll ``/v1/generations/{id}``).

    The passing version is submitted through the same lifecycle as any other.
    Jobs live in the server process that started them.
    """
    from sandgate.generation import GenerationSettings, start_generation

    try:
        settings = GenerationSettings.load()
        settings.require_endpoint()
    except ConfigError as exc:
        raise ApiError(503, f"generation is not available on this server: {exc}",
                       code="generation_unavailable") from exc
    pol = resolve_policy(request, body.policy)
    job = start_generation(name, body.description, requirements=body.requirements,
                           attempts=body.attempts, policy=pol, store=store, actor=key.actor,
                           settings=settings)
    _log(request, skill=name, generation_id=job.id)
    return job.snapshot()


@router.get("/generations/{job_id}", response_model=GenerationOut, tags=["generation"],
            **_role("reader"))
def get_generation(job_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], key: Reader) -> dict[str, Any]:
    """A generation job of this server process: status, progress events, result."""
    from sandgate.generation import get_job  # lazy: the LLM client is not loaded until used

    job = get_job(job_id)
    if job is None:
        raise NotFound(f"no generation job {job_id!r} on this server")
    return job.snapshot()


# --------------------------------------------------------------------------- evaluations, pointers


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationStatusOut,
            tags=["evaluations"], **_role("reader"))
def get_evaluation(evaluation_id: Annotated[str, Path(pattern=EVALUATION_ID_PATTERN)],
                   key: Reader, store: StoreDep, request: Request) -> dict[str, Any]:
    """Status (``queued`` → ``running`` → ``done``), verdict, reasons and the full report."""
    ev = _service(store).get_evaluation(evaluation_id)
    data = ev.to_dict()
    move = None
    if ev.status == "done" and ev.verdict == "passed":
        move = embedded.auto_promotion_of(store, skill=ev.skill, evaluation_id=ev.id)
    data["promoted"] = move.to_dict() if move else None
    _log(request, evaluation_id=ev.id, skill=ev.skill)
    return data


@router.get("/pointers", response_model=PointersOut, response_model_exclude_unset=True,
            tags=["pointer"], **_role("reader"))
def pointers(key: Reader, store: StoreDep,
             names: Annotated[str | None, Query(max_length=64_000,
                                                description="comma-separated skill names")] = None,
             content: Annotated[bool, Query(description="also each active version's content_hash "
                                            "and entrypoint (what a registry loads)")] = False,
             ) -> dict[str, Any]:
    """Active version and generation of every skill (or of ``names``): cheap, for registries.

    With ``content=true`` each pointer also carries the active version's
    ``content_hash`` and ``entrypoint`` (same query) and its ``canary`` (the
    candidate, weight, fallback and sample size, or null: what ``/v1/canaries``
    says), so a registry that sees a move fetches the files at once (or
    nothing, on a cache hit) instead of first describing the version and
    asking for its canary.
    """
    wanted = _names(names) if names is not None else None
    last = embedded.latest_event_id(store)  # read first: a move after it is seen by /v1/watch
    if content:
        details = embedded.active_pointer_details(store, names=wanted)
        routes = canary_routes(store, names=list(details))
        return {"pointers": {n: {**p._asdict(), "canary": _route(routes.get(n))} for n, p in sorted(details.items())},
                "last_event_id": last}
    rows = _service(store).pointers(wanted)
    return {"pointers": {n: {"version": v, "generation": g} for n, (v, g) in sorted(rows.items())},
            "last_event_id": last}


def _route(row: tuple[int, int, bool, int] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    candidate, weight, fallback, sample_io = row
    return {"candidate": candidate, "weight": weight, "fallback": fallback, "sample_io": sample_io}


def _names(raw: str) -> list[str]:
    out = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in out if not re.match(SKILL_NAME_PATTERN, n)]
    if bad:
        raise ApiError(422, f"not a skill name: {bad[0][:70]!r}", code="invalid_request")
    return out


@router.get("/watch", tags=["pointer"],
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "server-sent events (see the API docs)"}},
            **_role("reader"))
async def watch(
    request: Request,
    key: Reader,
    after: Annotated[int | None, Query(ge=0, le=INT64, description="resume after this event id")] = None,
    skills: Annotated[str | None, Query(max_length=64_000, description="comma-separated names")] = None,
    actions: Annotated[str | None, Query(max_length=200, description="comma-separated: "
                                         "submitted, evaluated, promoted, rolled_back, yanked, flagged, "
                                         "or all")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> StreamingResponse:
    """Server-sent events of pointer moves and evaluation results, resumable by event id."""

    if after is None and last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit() or int(last_event_id) > INT64:
            raise ApiError(422, "Last-Event-ID must be an event id (a non-negative integer)",
                           code="invalid_request")
        after = int(last_event_id)
    wanted_actions: tuple[str, ...] = DEFAULT_ACTIONS
    if actions is not None:
        parts = [a.strip() for a in actions.split(",") if a.strip()]
        if parts == ["all"]:
            wanted_actions = ALL_ACTIONS
        else:
            unknown = [a for a in parts if a not in ALL_ACTIONS]
            if unknown or not parts:
                raise ApiError(422, f"unknown action {unknown[0][:40] if unknown else ''!r}: "
                                    f"use {', '.join(ALL_ACTIONS)} or all", code="invalid_request")
            wanted_actions = tuple(parts)
    wanted_skills = set(_names(skills)) if skills is not None else None
    app = request.app
    stores = app.state.stores
    await run_in_threadpool(stores.get)  # 503 now, not a broken stream, if the store is away
    api = app.state.api
    stream = event_stream(app.state.hub, stores.get, after=after, skills=wanted_skills,
                          actions=set(wanted_actions), keepalive=api.watch_keepalive_seconds,
                          gap_grace=api.watch_gap_grace_seconds, batch=api.watch_batch,
                          is_disconnected=request.is_disconnected)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

