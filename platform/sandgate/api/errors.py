"""The API's edge: library errors → HTTP statuses and one JSON error body.

Every error response is::

    {"error": {"code": "not_found", "message": "no skill named 'x'", "request_id": "..."}}

plus ``details`` (a list of ``{loc, message}``) for request validation errors
and ``path`` for a submission error that names a file.

The status of a library error is its row of the one table,
:data:`sandgate.errors.MEANINGS` (the CLI's exit codes and the client's
rebuild read the same rows): ``Refused`` is 4xx (``SubmissionError`` and
``InvalidRequest`` 422, ``NotFound`` 404, ``Conflict`` and
``InvalidTransition`` 409), ``Unavailable`` 503 (with ``Retry-After``),
``QueueFull`` 429 (with ``Retry-After`` and the key, limit and queued count in
the body), ``ConfigError`` 500 (the operator's configuration is broken: the message says
so), ``GenerationError`` 400, an ``ApiError`` its own status. Request
validation (path, query, body) is 422 ``invalid_request``; an unknown route or
method 404/405; anything else a 500 ``internal``, logged with the traceback,
its message never leaving the server.

Database failures that escape the library as SQLAlchemy ``OperationalError``
(the server went away mid-request) are 503 ``database_unavailable``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandgate.errors import HTTP_CODES, ApiError, ConfigError, SandgateError, status_of

__all__ = ["ApiError", "error_body", "status_for", "install_handlers", "json_error"]

log = logging.getLogger("sandgate.api")



def status_for(exc: BaseException) -> int:
    """The HTTP status of a library error (its row of :data:`sandgate.errors.MEANINGS`)."""
    return status_of(exc)


def request_id_of(request: Request) -> str | None:
    ctx = request.scope.get("sandgate")
    return ctx.get("request_id") if isinstance(ctx, dict) else None


def error_body(code: str, message: str, *, request_id: str | None = None,
               **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    err.update({k: v for k, v in extra.items() if v is not None})
    if request_id:
        err["request_id"] = request_id
    return {"error": err}


def json_error(status: int, code: str, message: str, *, request_id: str | None = None,
               headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, request_id=request_id, **extra),
                        status_code=status, headers=headers)


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _sandgate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SandgateError)
    status = status_for(exc)
    if status >= 500:
        ctx = request.scope.get("sandgate")
        log.warning("request failed: %s: %s", type(exc).__name__, exc,
                    extra={"fields": {"request_id": request_id_of(request), "status": status,
                                      "error_code": exc.code}})
        if isinstance(ctx, dict):
            ctx.setdefault("log", {})["error"] = f"{type(exc).__name__}: {exc}"[:500]
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 503:
        headers.setdefault("Retry-After", "5")
    message = _one_line(exc.message)
    if status == 500 and isinstance(exc, ConfigError):
        message = f"the server is misconfigured: {message}"
    extra = getattr(exc, "body", None)
    return json_error(status, exc.code, message, request_id=request_id_of(request),
                      headers=headers or None, path=getattr(exc, "path", None),
                      details=getattr(exc, "details", None),
                      **(extra if isinstance(extra, dict) else {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append({"loc": loc, "message": _one_line(str(err.get("msg", "invalid")), 300)})
    first = details[0] if details else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    message = f"{where}: {first['message']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return json_error(422, "invalid_request", message, request_id=request_id_of(request),
                      details=details[:50])


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    if status == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif status == 405:
        allowed = allowed_methods(request)
        if request.method == "OPTIONS" and allowed:
            return Response(status_code=204, headers={"Allow": ", ".join(allowed)})
        detail = f"method {request.method} is not allowed on {request.url.path}"
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    elif status == 400 and "parsing the body" in detail:
        detail = "the request body could not be parsed"
    return json_error(status, HTTP_CODES.get(status, "error"), _one_line(detail),
                      request_id=request_id_of(request), headers=getattr(exc, "headers", None))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application answers on this path (and OPTIONS), sorted.

    Starlette's 405 names only the methods of the first route matching the path; a path with
    one route per method (``GET`` and ``POST /v1/skills/{name}/versions``) has several.
    """
    from starlette.routing import Match

    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods | {"OPTIONS"}) if methods else []


def _leaf_routes(routes: Any) -> Any:
    """The routes themselves: FastAPI keeps an included router as one entry (``original_router``)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


async def _operational_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error: %s", _one_line(str(exc), 500),
                extra={"fields": {"request_id": request_id_of(request)}})
    return json_error(503, "database_unavailable", "the database is unavailable; retry later",
                      request_id=request_id_of(request), headers={"Retry-After": "5"})


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SandgateError, _sandgate_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # other database errors (DataError, ...) mean a value got past validation: a bug,
    # rendered as a 500 by the outer middleware, never with its message
    app.add_exception_handler(OperationalError, _operational_error)
