"""The outermost layer of every request: request id, body limit, metrics, log line, last resort.

A plain ASGI middleware (no Starlette ``BaseHTTPMiddleware``, which buffers
streaming responses). In order:

1. **Request id**: ``X-Request-ID`` from the client if it is sane
   (``[A-Za-z0-9._:-]{1,128}``), else a new one; echoed on every response and
   put in every log line and error body.
2. **Body limit**: a ``Content-Length`` above ``max_body_bytes`` is refused
   with 413 before a byte of the body is read; a body without one (chunked)
   is counted while it streams in and refused the moment it passes the limit.
   The body is read here, completely and bounded, before the application sees
   it; so no route can ever hold more than the limit, and a malformed upload
   can fail only with a 4xx. Up to one more limit's worth of an oversized body
   is drained (briefly) before answering, so the client is still listening
   and reads the 413 instead of a connection reset.
3. **Metrics and the access log**, with the route *template* as the label;
   with traces on (:mod:`sandgate.tracing`), a server span ``METHOD template``
   around the request that continues an incoming W3C ``traceparent`` (probes
   and ``/metrics`` are not traced), so the access log line carries its ids.
4. **Last resort**: an exception no handler took becomes a JSON 500 with the
   request id (its message and traceback go to the log only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any, TypedDict

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandgate import tracing
from sandgate.api.errors import error_body
from sandgate.api.observability import Metrics

__all__ = ["EdgeMiddleware", "REQUEST_ID_HEADER"]

log = logging.getLogger("sandgate.api")
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: paths never traced: probes and scrapes (a span a second per prober says nothing)
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
#: routes whose duration is a stream's lifetime, not a latency
_STREAMING_ROUTES = frozenset({"/v1/watch"})
#: how long an oversized body is drained at most before the 413 goes out
DRAIN_SECONDS = 2.0



class _ResponseState(TypedDict):
    #: the response's status once it started (None: not yet)
    status: int | None
    started: bool


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not tracing.enabled() or scope.get("path", "") in _UNTRACED:
            await self._handle(scope, receive, send, None)
            return
        # a server span around the request, continuing the caller's trace (its traceparent)
        carrier = {name: v for name in ("traceparent", "tracestate") if (v := _header(scope, name.encode()))}
        with tracing.server_span(f"{scope.get('method', 'GET')} {scope.get('path', '')[:100]}", carrier,
                                 {"http.request.method": scope.get("method")}) as span:
            await self._handle(scope, receive, send, span)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, span: Any) -> None:
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        ctx: dict[str, Any] = {"request_id": request_id, "log": {}}
        scope["sandgate"] = ctx
        start = time.perf_counter()
        state: _ResponseState = {"status": None, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            body = await self._read_body(scope, receive, send_wrapper, ctx)
            if body is not None:
                await self.app(scope, _replay(body, receive), send_wrapper)
        except Exception as exc:  # the last resort: never a bare 500 page, never a traceback out
            log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc,
                      extra={"fields": {"request_id": request_id}})
            ctx["log"]["error"] = f"{type(exc).__name__}"
            if not state["started"]:
                await _send_json(send_wrapper, 500, error_body(
                    "internal", "internal server error (it is logged under this request id)",
                    request_id=request_id))
            else:
                state["status"] = state["status"] or 500
        finally:
            self._finish(scope, ctx, state["status"], time.perf_counter() - start, span)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send,
                         ctx: dict[str, Any]) -> bytes | None:
        """The whole body (bounded), or None when a response was already sent / the client left."""
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _send_json(send, 400, error_body(
                    "bad_request", "invalid Content-Length header", request_id=ctx["request_id"]))
                return None
            size = int(declared)
            if size > self.max_body:
                if size <= 2 * self.max_body:
                    await self._drain(receive, self.max_body)
                await self._too_large(send, ctx, f"declared {size} bytes")
                return None
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ctx["log"]["disconnected"] = True
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                if message.get("more_body", False):
                    await self._drain(receive, self.max_body)
                await self._too_large(send, ctx, "more than that was sent")
                return None
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _drain(self, receive: Receive, limit: int) -> None:
        async def drain() -> None:
            seen = 0
            while seen <= limit:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                seen += len(message.get("body", b""))

        try:
            await asyncio.wait_for(drain(), timeout=DRAIN_SECONDS)
        except TimeoutError:
            pass

    async def _too_large(self, send: Send, ctx: dict[str, Any], what: str) -> None:
        await _send_json(send, 413, error_body(
            "too_large",
            f"request body too large: the limit is {self.max_body} bytes ({what})",
            request_id=ctx["request_id"]), extra_headers=[(b"connection", b"close")])

    def _finish(self, scope: Scope, ctx: dict[str, Any], status: int | None, seconds: float,
                span: Any = None) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "other"
        if span is not None:
            span.update_name(f"{method} {template}")
            span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", int(status or 0))
            span.set_attribute("sandgate.request_id", ctx["request_id"])
        code = str(status or 0)
        self.metrics.inc("sandgate_http_requests_total",
                         {"method": method, "route": template, "status": code})
        if template not in _STREAMING_ROUTES:
            self.metrics.observe("sandgate_http_request_duration_seconds", seconds,
                                 {"method": method, "route": template})
        client = scope.get("client")
        fields = {
            "request_id": ctx["request_id"],
            "method": method,
            "path": scope.get("path", "")[:300],
            "route": template,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": client[0] if client else None,
            "key": ctx.get("key"),
            **ctx.get("log", {}),
        }
        level = logging.WARNING if status is not None and status >= 500 else logging.INFO
        log.log(level, "request", extra={"fields": fields})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as usual

    return replay


async def _send_json(send: Send, status: int, data: dict[str, Any],
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(data).encode("utf-8")
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
