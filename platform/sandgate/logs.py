"""One log format for every sandgate process (API server, workers, scheduler, CLI).

One JSON object per line::

    {"ts": "2026-01-02T03:04:05.678+00:00", "level": "info", "logger": "sandgate.worker",
     "message": "evaluated", "msg": "evaluated", "evaluation_id": "...", ...}

``ts`` (UTC, milliseconds), ``level``, ``logger``, ``message`` — and ``msg``,
the same text under the short key that worker logs have always carried, so
queries written against either keep working — then every field of the record:
those passed as ``extra={"fields": {...}}`` (the API's way) and those passed as
plain ``extra={...}`` keys (the workers' way). Fields whose value is None are
left out. A traceback goes under ``exception``. While traces are on
(:mod:`sandgate.tracing`) and a span is current, ``trace_id`` and ``span_id``
(hex, as in the W3C ``traceparent``) follow ``msg``.

Ground floor: standard library only.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "configure_logging", "HANDLER_NAME", "context_fields"]

#: the name of the handler :func:`configure_logging` installs (so it replaces, never stacks)
HANDLER_NAME = "sandgate-json"

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", "fields"}
)

#: set by :mod:`sandgate.tracing` while traces are on: the current span's ``trace_id`` and
#: ``span_id`` (None: no span). None while traces are off: nothing is looked up.
context_fields: Callable[[], Mapping[str, str] | None] | None = None


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line (the schema is in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            "msg": message,
        }
        if context_fields is not None:
            out.update(context_fields() or {})
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            out.update({str(k): v for k, v in fields.items() if v is not None})
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int = "info",
    stream: Any = None,
    *,
    loggers: Iterable[str] = ("sandgate",),
) -> None:
    """Send ``loggers`` (default: ``sandgate``'s) to ``stream`` (stderr) as JSON lines (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name(HANDLER_NAME)
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != HANDLER_NAME]
        logger.addHandler(handler)
        logger.setLevel(level if isinstance(level, int) else level.upper())
        logger.propagate = False
