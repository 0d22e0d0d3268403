"""Structured JSON logs and Prometheus metrics (the text format, hand-rolled: no dependency).

Logs: one JSON object per line on stderr (the one schema of :mod:`sandgate.logs`). Every request is logged once when
it ends (``"message": "request"``) with its ``request_id``, method, route,
status, duration, the API key's name, and what the route added (the
``evaluation_id`` of a submit or an evaluation lookup, the skill). Other log
records carry their ``extra={"fields": {...}}``.

Metrics (``GET /metrics``):

==============================================  =========  ===========================================
name                                            type       labels
==============================================  =========  ===========================================
``sandgate_http_requests_total``                counter    method, route (the template), status
``sandgate_http_request_duration_seconds``      histogram  method, route (``/v1/watch`` not observed)
``sandgate_http_rate_limited_total``            counter    kind (``key`` | ``auth_failures``)
``sandgate_http_auth_failures_total``           counter    reason (``missing`` | ``invalid`` | ``forbidden``)
``sandgate_watch_streams``                      gauge      open ``/v1/watch`` streams
``sandgate_watch_listening``                    gauge      1 while the feed's LISTEN connection is up (PostgreSQL)
``sandgate_watch_listener_connects_total``      counter    times that connection was opened (>1: it reconnected)
``sandgate_watch_notifications_total``          counter    NOTIFYs of new events it received
``sandgate_evaluations``                        gauge      status (``queued`` | ``running`` | ``done``)
``sandgate_evaluations_queue_depth``            gauge      queued evaluations
``sandgate_evaluations_by_verdict``             gauge      verdict (finished evaluations in the store)
``sandgate_store_up``                           gauge      1 when the database answered the scrape
==============================================  =========  ===========================================

The store gauges are read at scrape time (one grouped count, reused for a
couple of seconds); route labels are templates, so cardinality stays bounded.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sandgate import logs

__all__ = ["configure_logging", "Metrics", "DURATION_BUCKETS"]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def configure_logging(level: str = "info", stream: Any = None) -> None:
    """JSON lines (:mod:`sandgate.logs`) for sandgate's and uvicorn's loggers (idempotent)."""
    logs.configure_logging(level, stream, loggers=("sandgate", "uvicorn", "uvicorn.error"))
    # the API logs each request itself, with more fields
    logging.getLogger("uvicorn.access").disabled = True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Metrics:
    """Counters, gauges and histograms in memory; :meth:`render` writes the text format."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._buckets = buckets
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._hist: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = {}
        self.describe("sandgate_http_requests_total", "counter",
                      "HTTP requests by method, route template and status.")
        self.describe("sandgate_http_request_duration_seconds", "histogram",
                      "HTTP request latency by method and route template.")
        self.describe("sandgate_http_rate_limited_total", "counter",
                      "Requests refused with 429, by kind.")
        self.describe("sandgate_http_auth_failures_total", "counter",
                      "Requests refused with 401 or 403, by reason.")
        self.describe("sandgate_watch_streams", "gauge", "Open /v1/watch event streams.")
        self.describe("sandgate_watch_listening", "gauge",
                      "1 while the event feed's LISTEN connection to PostgreSQL is up.")
        self.describe("sandgate_watch_listener_connects_total", "counter",
                      "Times the event feed's LISTEN connection was opened (more than 1: it reconnected).")
        self.describe("sandgate_watch_notifications_total", "counter",
                      "Event notifications (NOTIFY) the event feed received.")

    def describe(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            self._values.setdefault(name, {})[key] = value

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            series = self._hist.setdefault(name, {})
            counts = series.get(key)
            if counts is None:
                # one slot per bucket, then +Inf, sum
                counts = series[key] = [0.0] * (len(self._buckets) + 2)
            for i, bound in enumerate(self._buckets):
                if value <= bound:
                    counts[i] += 1
            counts[-2] += 1
            counts[-1] += value

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        key = tuple(sorted((labels or {}).items()))
        with self._lock:
            return self._values.get(name, {}).get(key, 0.0)

    def render(self, extra: Iterable[tuple[str, str, str, Mapping[str, str], float]] = ()) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        ``extra``: ``(name, kind, help, labels, value)`` samples computed at scrape time.
        """
        lines: list[str] = []
        with self._lock:
            values = {n: dict(s) for n, s in self._values.items()}
            hists = {n: {k: list(v) for k, v in s.items()} for n, s in self._hist.items()}
        extra_by_name: dict[str, list[tuple[Mapping[str, str], float]]] = {}
        for name, kind, help_text, labels, value in extra:
            self._help.setdefault(name, (kind, help_text))
            extra_by_name.setdefault(name, []).append((labels, value))
        for name in sorted(set(self._help) | set(values) | set(hists) | set(extra_by_name)):
            kind, help_text = self._help.get(name, ("untyped", name))
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for key, value in sorted(values.get(name, {}).items()):
                lines.append(f"{name}{_labels(key)} {_num(value)}")
            for labels, value in extra_by_name.get(name, []):
                lines.append(f"{name}{_labels(sorted(labels.items()))} {_num(value)}")
            for key, counts in sorted(hists.get(name, {}).items()):
                for bound, count in zip(self._buckets, counts, strict=False):
                    lines.append(f"{name}_bucket{_labels([*key, ('le', _num(bound))])} {_num(count)}")
                lines.append(f"{name}_bucket{_labels([*key, ('le', '+Inf')])} {_num(counts[-2])}")
                lines.append(f"{name}_sum{_labels(key)} {_num(counts[-1])}")
                lines.append(f"{name}_count{_labels(key)} {_num(counts[-2])}")
        return "\n".join(lines) + "\n"
