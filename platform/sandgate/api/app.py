"""``create_app()``: the FastAPI application of ``sandgate serve``.

::

    from sandgate.api import create_app
    app = create_app()                          # Settings() + ApiSettings.load()
    app = create_app(settings, api=ApiSettings(rate_per_second=0), store=store)   # tests

Unversioned operational endpoints (no key needed): ``/healthz`` (the process
answers), ``/readyz`` (database, the Docker engine unless
``SANDGATE_API_READY_REQUIRES_ENGINE=false``, and a live queue worker while
evaluations are queued: 503 with the reasons),
``/metrics`` (Prometheus text; set ``SANDGATE_API_METRICS_PUBLIC=false`` to
require a reader key), ``/openapi.json`` and ``/docs``. The web console is
under ``/console`` (:mod:`sandgate.console`). Everything else is under ``/v1``
(:mod:`sandgate.api.routes`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

import sandgate
from sandgate.api.auth import Authenticator
from sandgate.api.canary import router as canary_router
from sandgate.api.deps import PolicyCache, StoreHolder
from sandgate.api.errors import install_handlers
from sandgate.api.limits import RateLimiter
from sandgate.api.middleware import EdgeMiddleware
from sandgate.api.observability import Metrics
from sandgate.api.routes import router
from sandgate.api.schemas import FilesSubmission
from sandgate.api.settings import ApiSettings
from sandgate.api.watch import EventHub
from sandgate.config import get_settings
from sandgate.service import embedded as queries
from sandgate.store import evaluations

__all__ = ["create_app"]

DESCRIPTION = """\
A gate between LLM-generated code and production: submit skills, read their
evaluations, promote and roll back the `active` pointer, watch the changes.

Authenticate with `Authorization: Bearer <token>` (`sandgate keys create NAME --role ROLE`).
Roles: `reader` < `submitter` < `promoter` < `admin`; each operation names its
role in `x-required-role`. Errors are `{"error": {"code", "message", "request_id"}}`.
"""


def create_app(settings: Any = None, *, api: ApiSettings | None = None, store: Any = None,
               load_policy: Callable[[str], Any] | None = None) -> FastAPI:
    """The application. ``settings``: :class:`~sandgate.config.Settings` (database, policy);
    ``api``: :class:`ApiSettings`; ``store``: an open store to use instead of opening one;
    ``load_policy``: a policy name -> policy (default :func:`sandgate.lifecycle.load_policy`)."""
    settings = settings if settings is not None else get_settings()
    api = api if api is not None else ApiSettings.load()
    metrics = Metrics()
    stores = StoreHolder(settings.effective_database_url, store=store)
    hub = EventHub(stores.get, poll_seconds=api.watch_poll_seconds, notify=api.watch_notify)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()
            stores.close()

    app = FastAPI(
        title="sandgate",
        version=sandgate.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,  # served below from the package's own copy: no CDN, works offline
        redoc_url=None,
    )
    _docs_routes(app)
    app.state.settings = settings
    app.state.api = api
    app.state.metrics = metrics
    app.state.stores = stores
    app.state.policies = PolicyCache(load_policy) if load_policy is not None else PolicyCache()
    app.state.hub = hub
    app.state.auth = Authenticator(store=stores.get, settings=api, metrics=metrics,
                                   limiter=RateLimiter())
    app.state.ready_cache = {}
    install_handlers(app)

    app.include_router(router)
    app.include_router(canary_router)  # canary routes (api/canary.py)
    _ops_routes(app)
    from sandgate.console import install as install_console  # the web console: /console (same auth, same calls)

    install_console(app)
    app.add_middleware(EdgeMiddleware, max_body_bytes=api.max_body_bytes, metrics=metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
    return app


#: Swagger UI shipped inside the package (``static/swagger-ui/VERSION`` says which release)
SWAGGER_UI = Path(__file__).with_name("static") / "swagger-ui"


def _docs_routes(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the package's own assets, so the page works without internet."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=SWAGGER_UI), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="sandgate API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png")


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http", "scheme": "bearer",
        "description": "an API key token from `sandgate keys create`"}
    schemas = components.setdefault("schemas", {})
    extra = FilesSubmission.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in extra.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas["FilesSubmission"] = extra
    schemas["Error"] = {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "request_id": {"type": "string"}, "path": {"type": "string"},
                           "details": {"type": "array", "items": {"type": "object"}},
                           # queue_full (429): the key's tenant, the cap and where it comes from
                           "tenant": {"type": "string"}, "limit": {"type": "integer"},
                           "queued": {"type": "integer"}, "limit_setting": {"type": "string"},
                           "retry_after": {"type": "integer"}}}},
    }
    common = {"401": "no, malformed, unknown or revoked API key",
              "403": "the key's role is below the operation's x-required-role",
              "429": "rate limited (see Retry-After)", "503": "the store is unavailable (retry)"}
    for path, ops in schema["paths"].items():
        for op in ops.values():
            if "x-required-role" not in op:
                continue
            responses = op.setdefault("responses", {})
            extra_codes = dict(common)
            if "{name}" in path or "{evaluation_id}" in path or "{job_id}" in path:
                extra_codes["404"] = "no such skill, version, evaluation or job"
            for code, meaning in extra_codes.items():
                responses.setdefault(code, {"description": meaning, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    app.openapi_schema = schema
    return schema


def _ops_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, Any]:
        """The process answers (liveness). No dependencies are checked."""
        return {"status": "ok", "version": sandgate.__version__}

    @app.get("/readyz", tags=["operations"],
             responses={503: {"description": "not ready: the reasons are in checks"}})
    async def readyz(request: Request) -> JSONResponse:
        """Ready for traffic: the database answers (and the Docker engine, if required), and a queue
        worker is alive unless nothing is queued (`checks.workers`: alive, slots, queued, running)."""
        checks = await _checks(request.app)
        ready = all(c["ok"] or not c["required"] for c in checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": "5"})

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests, latency, rate limiting, queue depth, verdicts."""
        state = request.app.state
        if not state.api.metrics_public:
            await run_in_threadpool(state.auth.check, request, "reader")
        extra = await _store_samples(request.app)
        state.metrics.set("sandgate_watch_streams", state.hub.streams)
        state.metrics.set("sandgate_watch_listening", 1 if state.hub.listening else 0)
        state.metrics.set("sandgate_watch_listener_connects_total", state.hub.listener_connects)
        state.metrics.set("sandgate_watch_notifications_total", state.hub.notifications)
        return PlainTextResponse(state.metrics.render(extra),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")


async def _cached(app: FastAPI, name: str, ttl: float, compute: Any) -> Any:
    cache = app.state.ready_cache
    hit = cache.get(name)
    now = time.monotonic()
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    value = await compute()
    cache[name] = (now, value)
    return value


async def _checks(app: FastAPI) -> dict[str, dict[str, Any]]:
    api: ApiSettings = app.state.api
    settings = app.state.settings

    def database() -> dict[str, Any]:
        try:
            store = app.state.stores.get()
            with store.read() as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:
            return {"ok": False, "required": True, "reason": " ".join(str(exc).split())[:500]}
        return {"ok": True, "required": True}

    def engine() -> dict[str, Any]:
        from sandgate.sandbox import connect  # lazy: the Docker adapter

        try:
            client = connect(settings.model_copy(
                update={"docker_api_timeout": api.ready_engine_timeout_seconds}))
            client.close()
        except Exception as exc:
            return {"ok": False, "required": api.ready_requires_engine,
                    "reason": " ".join(str(exc).split())[:500]}
        return {"ok": True, "required": api.ready_requires_engine}

    async def run(fn: Any) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(run_in_threadpool(fn),
                                          timeout=api.ready_engine_timeout_seconds + 2)
        except TimeoutError:
            return {"ok": False, "required": True, "reason": "the check timed out"}

    def workers() -> dict[str, Any]:
        try:
            live = evaluations.worker_liveness(app.state.stores.get())
        except Exception as exc:  # the database check says why
            return {"ok": False, "required": False, "reason": " ".join(str(exc).split())[:500]}
        out: dict[str, Any] = {"ok": live["alive"] > 0 or live["queued"] == 0, "required": True, **live}
        if not out["ok"]:
            out["reason"] = (f"no worker is alive and {live['queued']} evaluation(s) are queued: start "
                             "`sandgate worker` (or `sandgate serve` with --workers > 0)")
        elif live["alive"] == 0:
            out["note"] = "no worker is alive: submitted evaluations will wait for one"
        return out

    async def all_checks() -> dict[str, dict[str, Any]]:
        db, eng, wk = await asyncio.gather(run(database), run(engine), run(workers))
        eng["required"] = api.ready_requires_engine
        return {"database": db, "engine": eng, "workers": wk}

    return await _cached(app, "checks", api.ready_cache_seconds, all_checks)


async def _store_samples(app: FastAPI) -> list[tuple[str, str, str, dict[str, str], float]]:
    def compute() -> list[tuple[str, str, str, dict[str, str], float]]:
        try:
            counts = queries.evaluation_counts(app.state.stores.get())
        except Exception:
            return [("sandgate_store_up", "gauge", "1 when the database answered this scrape.", {}, 0)]
        by_status: dict[str, int] = {"queued": 0, "running": 0, "done": 0}
        by_verdict: dict[str, int] = {"passed": 0, "failed": 0, "rejected": 0, "error": 0}
        for (status, verdict), n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
            if status == "done" and verdict:
                by_verdict[verdict] = by_verdict.get(verdict, 0) + n
        out: list[tuple[str, str, str, dict[str, str], float]] = [
            ("sandgate_store_up", "gauge", "1 when the database answered this scrape.", {}, 1)]
        out += [("sandgate_evaluations", "gauge", "Evaluations in the store by status.",
                 {"status": s}, n) for s, n in sorted(by_status.items())]
        out.append(("sandgate_evaluations_queue_depth", "gauge",
                    "Evaluations queued and not yet claimed by a worker.", {}, by_status["queued"]))
        out += [("sandgate_evaluations_by_verdict", "gauge",
                 "Finished evaluations in the store by verdict.", {"verdict": v}, n)
                for v, n in sorted(by_verdict.items())]
        return out

    async def run() -> Any:
        return await run_in_threadpool(compute)

    return await _cached(app, "store_samples", 2.0, run)
