"""``ast.parse`` for a process with threads: one lock around every parse of the platform.

CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide
state (python/cpython#106905): when two threads turn parse trees into ``ast``
objects at once (a garbage collection or a finalizer can switch threads in the
middle), one of them fails with ``SystemError: AST constructor recursion depth
mismatch``. A worker parses in several threads (its evaluations, its oracle
phases), and such a failure was an ``error`` verdict of a sound submission
(seen under ``bench/bench_load.py``). Parses are short (milliseconds), so one
lock costs nothing measurable; every ``ast.parse`` of the platform goes
through :func:`parse` (a test fails on any other).
"""

from __future__ import annotations

import ast
import threading
from typing import Any

__all__ = ["parse"]

_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>", mode: str = "exec", **kwargs: Any) -> Any:
    """:func:`ast.parse`, never beside another parse of this process."""
    with _LOCK:
        return ast.parse(source, filename, mode, **kwargs)
