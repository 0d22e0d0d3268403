"""The console's pages and actions (``/console/...``), over the same service the API uses.

==========================================  ======  =====================================
route                                        role    what
==========================================  ======  =====================================
``GET  /console/login``, ``POST`` (form)     -       sign in with an API key
``POST /console/logout``                     -       sign out (drops the session)
``GET  /console/skills?q=``                  reader  skills, filtered by name
``GET  /console/skills/{name}``              reader  versions, canary, audit timeline
``GET  /console/skills/{name}/versions/{n}`` reader  the version's evaluation report
``GET  /console/evaluations/{id}``           reader  an evaluation's report
``GET  /console/skills/{name}/diff?a=&b=``   reader  two versions side by side
``GET  /console/live``                       reader  the event feed
``GET  /console/events``                     reader  the feed as SSE (``/v1/watch``'s stream)
``GET  /console/skills/{name}/confirm/{op}`` promoter  the confirmation form of an action
``POST /console/skills/{name}/{op}``         promoter  promote | rollback | yank | abort
==========================================  ======  =====================================

An action answers ``303`` to the skill page with ``?event=ID``: the page shows the
event it caused (and a reload does not repeat it).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from sandgate.api.deps import resolve_policy
from sandgate.api.limits import RateLimiter
from sandgate.api.watch import ALL_ACTIONS, event_stream
from sandgate.console import CSP, PREFIX
from sandgate.console.present import ago, annotate, pretty_json, side_by_side
from sandgate.console.session import COOKIE, IDLE_SECONDS, Session, Sessions, same_origin, secure_request
from sandgate.errors import InvalidRequest, NotFound, SandgateError, status_of
from sandgate.names import SKILL_NAME_PATTERN
from sandgate.oracle_report import call_input
from sandgate.service import embedded as queries
from sandgate.service.embedded import EmbeddedService
from sandgate.store import canary as canary_store
from sandgate.store import evaluations as evaluation_store
from sandgate.store import keys as key_store
from sandgate.store.keys import role_allows

__all__ = ["router", "ACTIONS", "LIVE_ACTIONS"]

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_NAME = re.compile(SKILL_NAME_PATTERN)
_EVALUATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: the console's actions: the role each needs, and whether a reason is required
ACTIONS: dict[str, dict[str, Any]] = {
    "promote": {"role": "promoter", "reason": False, "title": "Promote"},
    "rollback": {"role": "promoter", "reason": True, "title": "Roll back"},
    "yank": {"role": "promoter", "reason": True, "title": "Yank"},
    "abort": {"role": "promoter", "reason": True, "title": "Abort the canary"},
}
#: what the live pages listen to (submissions too: a new version shows at once)
LIVE_ACTIONS: tuple[str, ...] = ALL_ACTIONS
MAX_REASON = 2000
#: events that move a skill's pointer, and how many of a skill's newest events the list looks through
MOVES = frozenset({"promoted", "rolled_back", "canary_completed", "canary_rolled_back"})
MOVE_LOOKBACK = 200
#: how often an open event stream checks that its session still holds
SESSION_RECHECK_SECONDS = 5.0
#: events the live page shows from before it opened
RECENT_EVENTS = 50

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,  # every template, whatever its name: submissions are hostile text
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["ago"] = ago
_env.filters["pretty"] = pretty_json
_env.filters["call_input"] = lambda c: call_input(list(c.args), dict(c.kwargs))
_env.globals["prefix"] = PREFIX
_env.globals["live_actions"] = ",".join(LIVE_ACTIONS)


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        self.to = to


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
            "Cache-Control": "no-store"}


def _page(request: Request, template: str, *, status: int = 200, session: Session | None = None,
          **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(request=request, session=session, path=request.url.path,
                                              **context)
    return HTMLResponse(html, status_code=status, headers=_headers())


def _error(request: Request, status: int, message: str, session: Session | None = None) -> HTMLResponse:
    return _page(request, "error.html", status=status, session=session, status_code=status, message=message)


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.console_sessions
    return sessions


def _session(request: Request) -> Session | None:
    """The signed-in session of a live key (a revoked or rotated key ends it)."""
    sessions = _sessions(request)
    session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    try:
        key = key_store.get_key(request.app.state.stores.get(), name=session.key_name)
    except NotFound:
        key = None
    if key is None or key.revoked or key.key_id != session.key_id:
        sessions.drop(session.id)
        return None
    session.role = key.role
    ctx = request.scope.get("sandgate")
    if isinstance(ctx, dict):
        ctx["key"] = session.key_name  # the access log names the key, as for the API
    return session


def _require(request: Request, role: str = "reader") -> Session:
    session = _session(request)
    if session is None:
        raise _Redirect(f"{PREFIX}/login")
    if not role_allows(session.role, role):
        raise SandgateForbidden(f"this needs the {role} role; key {session.key_name!r} has role {session.role}")
    return session


class SandgateForbidden(Exception):
    pass


def _service(request: Request) -> EmbeddedService:
    store = request.app.state.stores.get()
    return EmbeddedService(store, load_policy=lambda name: resolve_policy(request, name))


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise NotFound(f"no skill {name[:70]!r}")
    return name


async def _guard(request: Request, fn: Callable[[], Response], *, session: Session | None = None) -> Response:
    """Run a page in the thread pool; library errors become error pages, sign-in a redirect."""
    try:
        return await run_in_threadpool(fn)
    except _Redirect as r:
        return RedirectResponse(r.to, status_code=303, headers=_headers())
    except SandgateForbidden as exc:
        return _error(request, 403, str(exc), session or _sessions(request).get(request.cookies.get(COOKIE)))
    except SandgateError as exc:
        return _error(request, status_of(exc), str(exc),
                      session or _sessions(request).get(request.cookies.get(COOKIE)))


# --------------------------------------------------------------------------- sign-in


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/skills", status_code=303, headers=_headers())


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _page(request, "login.html", problem=None)


@router.post("/login")
async def login(request: Request) -> Response:
    if not same_origin(request):
        return _error(request, 403, "this form must be sent from this server's own page (Origin)")
    form = await request.form()
    token = str(form.get("api_key") or "").strip()
    auth = request.app.state.auth
    ip_bucket = f"ip:{request.client.host if request.client else 'unknown'}"
    per_minute = auth.settings.auth_failures_per_minute
    rate, burst = per_minute / 60.0, per_minute
    wait = auth.limiter.peek(ip_bucket, rate=rate, burst=burst)
    if wait > 0:
        return _page(request, "login.html", status=429, problem=(
            f"too many failed sign-ins from this address; retry in {RateLimiter.retry_after(wait)} s"))
    if not token:
        return _page(request, "login.html", status=422, problem="enter an API key")
    key = await run_in_threadpool(key_store.authenticate, request.app.state.stores.get(), token)
    if key is None:
        auth.limiter.take(ip_bucket, rate=rate, burst=burst)
        auth.metrics.inc("sandgate_http_auth_failures_total", {"reason": "invalid"})
        return _page(request, "login.html", status=401, problem="invalid or revoked API key")
    old = request.cookies.get(COOKIE)
    _sessions(request).drop(old)  # a new id at every sign-in (no fixation)
    session = _sessions(request).create(key_name=key.name, key_id=key.key_id, role=key.role)
    ctx = request.scope.get("sandgate")
    if isinstance(ctx, dict):
        ctx["key"] = key.name
    response = RedirectResponse(f"{PREFIX}/skills", status_code=303, headers=_headers())
    response.set_cookie(COOKIE, session.id, max_age=IDLE_SECONDS, path=PREFIX, httponly=True,
                        samesite="strict", secure=secure_request(request))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = _sessions(request).get(request.cookies.get(COOKIE))
    form = await request.form()
    if session is not None:
        if not same_origin(request) or not session.csrf_ok(form.get("csrf")):
            return _error(request, 403, "the sign-out form is stale or not from this server", session)
        _sessions(request).drop(session.id)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=_headers())
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict",
                           secure=secure_request(request))
    return response


# --------------------------------------------------------------------------- pages


@router.get("/skills")
async def skills(request: Request, q: str = "") -> Response:
    def render() -> Response:
        session = _require(request)
        service = _service(request)
        prefix = q.strip().lower()
        rows = []
        records = service.list_skills()
        if prefix:
            records = [r for r in records if prefix in r.name]
        routes = canary_store.canary_routes(service.store, names=[r.name for r in records])
        for record in records:
            versions = service.list_versions(record.name)
            latest = versions[-1] if versions else None
            moves = [e for e in service.history(record.name, limit=MOVE_LOOKBACK) if e.action in MOVES]
            route = routes.get(record.name)
            rows.append({"skill": record, "latest": latest, "last_move": moves[-1] if moves else None,
                         "moved_long_ago": not moves and record.generation > 0,
                         "candidate": route[0] if route else None, "weight": route[1] if route else None})
        return _page(request, "skills.html", session=session, rows=rows, q=q, live=True)

    return await _guard(request, render)


@router.get("/skills/{name}")
async def skill(request: Request, name: str, event: int | None = None) -> Response:
    def render() -> Response:
        session = _require(request)
        service = _service(request)
        record = service.get_skill(_name(name))
        versions = list(reversed(service.list_versions(name)))
        history = list(reversed(service.history(name, limit=500)))
        status = service.canary_status(name)
        done = next((e for e in history if e.id == event), None) if event is not None else None
        return _page(request, "skill.html", session=session, skill=record, versions=versions,
                     history=history, canary=status, done=done, live=True, skill_name=name,
                     can_act=role_allows(session.role, "promoter"))

    return await _guard(request, render)


def _report_context(service: EmbeddedService, name: str, number: int, evaluation: Any) -> dict[str, Any]:
    version, files = service.version_files(name, number)
    report = evaluation.report_model() if evaluation is not None else None
    sources = []
    if report is not None:
        coverage = {f.path: f for f in (report.coverage.files if report.coverage else [])}
        findings: dict[str, list[dict[str, Any]]] = {}
        for f in report.findings:
            findings.setdefault(f.path, []).append(f.model_dump(mode="json"))
        survivors: dict[str, list[dict[str, Any]]] = {}
        for s in (report.mutation.survivors if report.mutation else []):
            survivors.setdefault(s.file, []).append(s.model_dump(mode="json"))
        for path in sorted(set(coverage) | set(findings) | set(survivors)):
            data = files.get(path)
            text = data.decode("utf-8", errors="replace") if data is not None else ""
            cov = coverage.get(path)
            sources.append({"path": path, "coverage": cov, "present": data is not None,
                            "lines": annotate(text, missed=cov.missed_lines if cov else (),
                                              partial=cov.missed_branch_lines if cov else (),
                                              findings=findings.get(path, ()),
                                              survivors=survivors.get(path, ()))})
    timings = report.timings if report is not None else {}
    total = max([v for v in timings.values()] or [0.0])
    return {"version": version, "evaluation": evaluation, "report": report, "sources": sources,
            "timings": timings, "timing_total": total or 1.0}


@router.get("/skills/{name}/versions/{number}")
async def version_report(request: Request, name: str, number: int) -> Response:
    def render() -> Response:
        session = _require(request)
        service = _service(request)
        detail = service.show(_name(name), number)
        evaluation = detail.evaluation
        if evaluation is None:  # not finished: the one queued or running under the server's policy, if any
            policy = resolve_policy(request, None)
            evaluation = evaluation_store.pending_evaluation(service.store, name=name, number=number,
                                                             policy_hash=policy.hash)
        return _page(request, "report.html", session=session, live=True, skill_name=name,
                     **_report_context(service, name, number, evaluation))

    return await _guard(request, render)


@router.get("/evaluations/{evaluation_id}")
async def evaluation_report(request: Request, evaluation_id: str) -> Response:
    def render() -> Response:
        session = _require(request)
        if not _EVALUATION_ID.match(evaluation_id):
            raise NotFound(f"no evaluation {evaluation_id[:70]!r}")
        service = _service(request)
        evaluation = service.get_evaluation(evaluation_id)
        return _page(request, "report.html", session=session, live=True, skill_name=evaluation.skill,
                     **_report_context(service, evaluation.skill, evaluation.version, evaluation))

    return await _guard(request, render)


@router.get("/skills/{name}/diff")
async def diff(request: Request, name: str, a: int | None = None, b: int | None = None) -> Response:
    def render() -> Response:
        session = _require(request)
        service = _service(request)
        versions = service.list_versions(_name(name))
        numbers = [v.number for v in versions]
        left = a if a is not None else (numbers[-2] if len(numbers) > 1 else (numbers[0] if numbers else 1))
        right = b if b is not None else (numbers[-1] if numbers else 1)
        files = [{"diff": d, "rows": side_by_side(d.diff)} for d in service.diff(name, left, right)]
        return _page(request, "diff.html", session=session, skill_name=name, numbers=numbers, a=left, b=right,
                     files=files)

    return await _guard(request, render)


@router.get("/live")
async def live(request: Request) -> Response:
    def render() -> Response:
        session = _require(request)
        store = request.app.state.stores.get()
        latest = queries.latest_event_id(store)
        recent = list(reversed(queries.events_after(store, after=max(0, latest - RECENT_EVENTS),
                                                    limit=RECENT_EVENTS)))
        return _page(request, "live.html", session=session, live=True, recent=recent)

    return await _guard(request, render)


@router.get("/events")
async def events(request: Request, skills: str | None = None) -> Response:
    """The event feed for the console's script: ``/v1/watch``'s stream, authenticated by the session."""
    session = await run_in_threadpool(_session, request)
    if session is None:
        return Response("sign in first", status_code=401, media_type="text/plain", headers=_headers())
    wanted = None
    if skills:
        wanted = {s for s in skills.split(",") if _NAME.match(s)}
    app = request.app
    api = app.state.api
    last = request.headers.get("last-event-id", "").strip()
    after = int(last) if last.isdigit() and len(last) < 19 else None
    stream = event_stream(app.state.hub, app.state.stores.get, after=after, skills=wanted,
                          actions=set(LIVE_ACTIONS), keepalive=api.watch_keepalive_seconds,
                          gap_grace=api.watch_gap_grace_seconds, batch=api.watch_batch,
                          is_disconnected=request.is_disconnected)

    async def while_signed_in() -> AsyncIterator[str]:
        """The stream, ended once the session is (sign-out, revoked or rotated key): checked between writes."""
        checked = time.monotonic()
        try:
            async for chunk in stream:
                if time.monotonic() - checked >= SESSION_RECHECK_SECONDS:
                    checked = time.monotonic()
                    if await run_in_threadpool(_session, request) is None:
                        return
                yield chunk
        finally:
            if isinstance(stream, AsyncGenerator):  # end the inner stream now, not at garbage collection
                await stream.aclose()

    return StreamingResponse(while_signed_in(), media_type="text/event-stream",
                             headers={**_headers(), "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------- actions


@router.get("/skills/{name}/confirm/{op}")
async def confirm(request: Request, name: str, op: str, version: int | None = None) -> Response:
    def render() -> Response:
        session = _require(request, ACTIONS[op]["role"] if op in ACTIONS else "promoter")
        if op not in ACTIONS:
            raise NotFound(f"no action {op[:40]!r}: use {', '.join(ACTIONS)}")
        service = _service(request)
        record = service.get_skill(_name(name))
        versions = service.list_versions(name)
        if op in ("promote", "yank") and version is None:
            raise InvalidRequest(f"{op} needs ?version=N")
        if version is not None:
            service.show(name, version)  # 404 now, not after the confirmation
        status = service.canary_status(name) if op == "abort" else None
        return _page(request, "confirm.html", session=session, skill=record, op=op, action=ACTIONS[op],
                     version=version, versions=versions, canary=status, problem=None, reason="")

    return await _guard(request, render)


@router.post("/skills/{name}/{op}")
async def act(request: Request, name: str, op: str) -> Response:
    form = await request.form()

    def run() -> Response:
        session = _require(request, ACTIONS[op]["role"] if op in ACTIONS else "promoter")
        if not same_origin(request) or not session.csrf_ok(form.get("csrf")):
            return _error(request, 403, "the form is stale or not from this server (CSRF check failed): "
                                        "reload the page and try again", session)
        if op not in ACTIONS:
            raise NotFound(f"no action {op[:40]!r}: use {', '.join(ACTIONS)}")
        service = _service(request)
        _name(name)
        reason = str(form.get("reason") or "").strip()
        if len(reason) > MAX_REASON:
            raise InvalidRequest(f"the reason is longer than {MAX_REASON} characters")
        version_text = str(form.get("version") or "").strip()
        version = int(version_text) if version_text.isdigit() and len(version_text) < 10 else None
        if version_text and version is None:
            raise InvalidRequest(f"not a version number: {version_text[:20]!r}")
        if ACTIONS[op]["reason"] and not reason:
            return _page(request, "confirm.html", status=422, session=session, skill=service.get_skill(name),
                         op=op, action=ACTIONS[op], version=version, versions=service.list_versions(name),
                         canary=service.canary_status(name) if op == "abort" else None,
                         problem=f"{ACTIONS[op]['title']} needs a reason: say why, for the audit trail",
                         reason=reason)
        if op == "promote":
            if version is None:
                raise InvalidRequest("promote needs a version")
            event_id = service.promote(name, version, actor=session.actor, reason=reason or None, policy=None,
                                       expected_generation=None, force=False).event_id
        elif op == "rollback":
            event_id = service.rollback(name, to=version, actor=session.actor, reason=reason,
                                        expected_generation=None).event_id
        elif op == "yank":
            if version is None:
                raise InvalidRequest("yank needs a version")
            event_id = service.yank(name, version, actor=session.actor, reason=reason,
                                    rollback=form.get("rollback") == "on").event_id
        else:
            service.abort_canary(name, actor=session.actor, reason=reason)
            aborted = [e for e in service.history(name, limit=20) if e.action == "canary_aborted"]
            event_id = aborted[-1].id if aborted else 0
        return RedirectResponse(f"{PREFIX}/skills/{quote(name)}?event={event_id}#event-{event_id}",
                                status_code=303, headers=_headers())

    return await _guard(request, run)
