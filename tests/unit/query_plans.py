"""Shared by the no-full-scan tests: capture a call's SQL and its SQLite query plans.

Every SELECT (with or without WITH), UPDATE and DELETE a call makes is recorded and run through
``EXPLAIN QUERY PLAN``; :data:`SCAN` matches a full scan of a store table.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import event

from sandgate.store import Store, open_store

TABLES = ("skills", "versions", "version_files", "evaluations", "events")
SCAN = re.compile(rf"\bSCAN ({'|'.join(TABLES)})\b")
POLICY = SimpleNamespace(name="p", hash="sha256:p")


def submission(name: str, i: int) -> Any:
    files = {"skill.py": f"x = {i}\n".encode()}
    return SimpleNamespace(
        name=name, files=files, manifest={"name": name},
        content_hash="sha256:" + hashlib.sha256(files["skill.py"]).hexdigest(),
    )  # fmt: skip


def capture_plans(store: Store, call) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        head = statement.lstrip().split(None, 1)[0].upper()
        if head in ("SELECT", "UPDATE", "DELETE", "WITH") and not executemany:
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    out = []
    raw = store.engine.raw_connection()
    try:
        for statement, parameters in seen:
            rows = raw.cursor().execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            out.append((statement, "\n".join(r[-1] for r in rows)))
    finally:
        raw.close()
    return out


def analysed(s: Store) -> None:
    """The populated store's statistics for the planner (``ANALYZE``), then closed."""
    with s.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    s.close()


def copied_store(plans_db: Path, tmp_path: Path) -> Iterator[Store]:
    """A test's own copy of the module's populated store (the ``store`` fixtures)."""
    path = tmp_path / "plans.db"
    shutil.copyfile(plans_db, path)
    s = open_store(f"sqlite:///{path}")
    yield s
    s.close()
