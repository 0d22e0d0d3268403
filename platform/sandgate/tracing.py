"""Traces: one OpenTelemetry trace per evaluation, across processes (off unless configured).

::

    tracing.configure(service="sandgate-worker", endpoint="http://127.0.0.1:4318")  # OTLP/HTTP
    with tracing.span("sandgate.submit", {"sandgate.skill": "text_stats"}):
        tracing.traceparent()          # "00-<trace id>-<span id>-01": stored on the queued row

Off by default, at no cost: until :func:`configure` succeeds, :func:`span` is
a shared no-op context manager, :func:`traceparent` is None, and the
OpenTelemetry SDK is never imported (the CLI's import sets are pinned by
``tests/unit/test_cli_imports.py``). :func:`configure_from_settings` turns it
on when ``SANDGATE_OTEL_EXPORTER_OTLP_ENDPOINT`` is set, or else the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (both a base URL: spans go to
``{endpoint}/v1/traces``); ``OTEL_SDK_DISABLED=true`` keeps it off. The SDK's
own ``OTEL_*`` variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY``…) apply as usual.

Across processes the W3C ``traceparent`` carries the trace: the API honours
an incoming header on submit (:func:`server_span`), the submitter's context
is stored on the queued evaluation row, and the worker that claims it
continues that trace (``parent=`` a traceparent). Spans whose timing was
measured elsewhere — the queue wait, the sandbox's phases as the harness
reports them — are recorded after the fact with :func:`record_span` (the
sandbox has no network and exports nothing).

While a span is current, every JSON log line (:mod:`sandgate.logs`) carries
its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sandgate import logs

__all__ = [
    "TRACEPARENT_PATTERN",
    "configure",
    "configure_from_settings",
    "enabled",
    "endpoint_from",
    "record_span",
    "server_span",
    "shutdown",
    "span",
    "start_span",
    "traceparent",
    "use_span",
    "valid_traceparent",
]

log = logging.getLogger("sandgate.tracing")

#: a W3C trace context ``traceparent`` of version 00 (ids not all zeros is checked too)
TRACEPARENT_PATTERN = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

_lock = threading.Lock()
_tracer: Any = None
_provider: Any = None
_NOOP: AbstractContextManager[None] = nullcontext()

Attributes = Mapping[str, Any] | None


def enabled() -> bool:
    """True once :func:`configure` installed a tracer in this process."""
    return _tracer is not None


def valid_traceparent(value: str | None) -> str | None:
    """``value`` when it is a well-formed version-00 ``traceparent`` with non-zero ids, else None."""
    if not value:
        return None
    value = value.strip().lower()
    m = TRACEPARENT_PATTERN.match(value)
    if m is None or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
        return None
    return value


def endpoint_from(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP/HTTP base URL to export to: ``configured`` (the setting), else the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; None when neither is set or ``OTEL_SDK_DISABLED`` is true."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return (configured or "").strip() or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None


def configure(*, service: str, endpoint: str | None = None, exporter: Any = None) -> bool:
    """Install this process's tracer: spans of ``service`` to the OTLP/HTTP ``endpoint`` (a base URL,
    batched) or to ``exporter`` (a ``SpanExporter``, sent one by one: tests). False: neither given.

    Idempotent for a process: a second call replaces the first (its spans are flushed)."""
    global _tracer, _provider
    if endpoint is None and exporter is None:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert endpoint is not None
        url = endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    with _lock:
        old = _provider
        _provider = provider
        # a tracer of our own provider, not the global one: a host application's
        # OpenTelemetry set-up (an embedding program) is left alone
        _tracer = provider.get_tracer("sandgate")
        logs.context_fields = _log_fields
    if old is not None:
        old.shutdown()
    return True


def configure_from_settings(settings: Any, *, service: str) -> bool:
    """:func:`configure` from ``settings.otel_exporter_otlp_endpoint`` (or the standard variable)."""
    endpoint = endpoint_from(getattr(settings, "otel_exporter_otlp_endpoint", None))
    if endpoint is None:
        return False
    configured = configure(service=service, endpoint=endpoint)
    log.info("traces exported", extra={"endpoint": endpoint.rstrip("/") + "/v1/traces", "service": service})
    return configured


def shutdown() -> None:
    """Flush the spans not yet exported and turn tracing off in this process."""
    global _tracer, _provider
    with _lock:
        provider, _provider, _tracer = _provider, None, None
        logs.context_fields = None
    if provider is not None:
        provider.shutdown()


# --------------------------------------------------------------------------- spans


def _context(parent: Any) -> Any:
    """An OpenTelemetry context from ``parent``: a traceparent string, a span, or None (the current one)."""
    if parent is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if isinstance(parent, str):
        tp = valid_traceparent(parent)
        return TraceContextTextMapPropagator().extract({"traceparent": tp}) if tp else None
    return trace.set_span_in_context(parent)


def _clean(attributes: Attributes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | bool | int | float) else str(value)
    return out


def span(name: str, attributes: Attributes = None, *, parent: Any = None) -> AbstractContextManager[Any]:
    """A span around a block, current while it runs (it records an exception that leaves it).
    ``parent``: a traceparent or a span (default: the current span). No-op while tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, context=_context(parent), attributes=_clean(attributes))


def start_span(name: str, attributes: Attributes = None, *, parent: Any = None, start_ns: int | None = None,
               kind: str | None = None) -> Any:
    """A span started now (or at ``start_ns``, epoch nanoseconds) and not made current: end it with
    :func:`use_span` or ``span.end()``. None while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return _tracer.start_span(name, context=_context(parent), attributes=_clean(attributes), start_time=start_ns,
                              kind=getattr(SpanKind, (kind or "internal").upper()))


def use_span(handle: Any, *, end: bool = True) -> AbstractContextManager[Any]:
    """Make a :func:`start_span` span current for a block (and end it after, unless ``end=False``)."""
    if handle is None or _tracer is None:
        return _NOOP
    from opentelemetry import trace

    return trace.use_span(handle, end_on_exit=end, record_exception=True, set_status_on_exception=True)


def record_span(name: str, start_ns: int, end_ns: int, attributes: Attributes = None, *,
                parent: Any = None) -> Any:
    """A span measured elsewhere, recorded after the fact (``end_ns`` is clamped to ``start_ns``)."""
    if _tracer is None:
        return None
    handle = _tracer.start_span(name, context=_context(parent), attributes=_clean(attributes), start_time=start_ns)
    handle.end(end_time=max(start_ns, end_ns))
    return handle


def traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent`` (None: tracing off or no span)."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return valid_traceparent(carrier.get("traceparent"))


@contextmanager
def _server(name: str, headers: Mapping[str, str], attributes: Attributes) -> Iterator[Any]:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}
    # a malformed header starts a new trace (the propagator ignores what it cannot parse)
    context = TraceContextTextMapPropagator().extract(carrier)
    with _tracer.start_as_current_span(name, context=context, kind=_server_kind(),
                                       attributes=_clean(attributes)) as current:
        yield current


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


def server_span(name: str, headers: Mapping[str, str], attributes: Attributes = None) -> AbstractContextManager[Any]:
    """A server span continuing the caller's trace (its ``traceparent`` header, when well-formed)."""
    if _tracer is None:
        return _NOOP
    return _server(name, headers, attributes)


def _log_fields() -> dict[str, str] | None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
