"""The embedded store's read commands over the standard library's ``sqlite3``.

``sandgate skills``, ``versions``, ``show`` and ``history`` on the embedded
SQLite store would otherwise import SQLAlchemy's engine, its ORM and the
store's models (~0.4 s of a 0.65 s start-up) to run four small queries. This
module runs the same queries with :mod:`sqlite3` and builds the same records
(:mod:`sandgate.records`), with the same :class:`~sandgate.errors.NotFound`
messages, so the CLI prints the same output either way (a test compares the
two paths on one store).

It only ever reads, and only a store that needs nothing else: :func:`open_reader`
returns None — and the CLI takes the full path (:mod:`sandgate.service.embedded`,
whose errors and migrations apply) — unless the configured store is an
existing SQLite file whose schema is stamped at the head revision of the
migration files. The connection is opened read-only (``mode=ro``); a read
transaction sees one snapshot (WAL).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandgate.errors import NotFound
from sandgate.migration_heads import scripted_heads
from sandgate.records import EvaluationRecord, EventRecord, SkillRecord, VersionRecord
from sandgate.service import VersionDetail, version_detail

__all__ = ["LiteReader", "open_reader", "scripted_head"]

#: the store's Alembic scripts (read as text: no import of the store package)
#: as the store's own connections (sandgate.store.engine.SQLITE_BUSY_TIMEOUT_MS)
BUSY_TIMEOUT_S = 30.0


def scripted_head() -> str | None:
    """The head revision of the migration files (as ``sandgate.store.migrate.scripted_head``);
    None when the files have no single head."""
    heads = scripted_heads()
    return next(iter(heads)) if len(heads) == 1 else None


def _utc(value: str | None) -> datetime | None:
    """A stored timestamp (SQLAlchemy writes ``YYYY-MM-DD HH:MM:SS[.ffffff]``, UTC) as an aware datetime."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _json(value: str | bytes | None) -> Any:
    return None if value is None else json.loads(value)


class LiteReader:
    """The read half of :class:`~sandgate.service.SkillService` over one SQLite file."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LiteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN")
        try:
            yield cur
        finally:
            cur.execute("ROLLBACK")
            cur.close()

    # -- rows (as sandgate.store._rows) -------------------------------------------------

    @staticmethod
    def _skill(cur: sqlite3.Cursor, name: str) -> tuple[int, str, str, int | None, int]:
        row = cur.execute(
            "SELECT id, name, created_at, active_version_id, generation FROM skills WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no skill named {name!r}")
        return row

    _VERSION_COLUMNS = ("id, number, content_hash, manifest, file_count, total_bytes, created_at, created_by, "
                        "status, yanked_at, yank_reason, provenance")

    @classmethod
    def _version_row(cls, cur: sqlite3.Cursor, skill: tuple[Any, ...], number: int) -> tuple[Any, ...]:
        row = cur.execute(f"SELECT {cls._VERSION_COLUMNS} FROM versions WHERE skill_id = ? AND number = ?",
                          (skill[0], number)).fetchone()
        if row is None:
            latest = cur.execute("SELECT max(number) FROM versions WHERE skill_id = ?", (skill[0],)).fetchone()[0]
            hint = f"latest is {skill[1]}@{latest}" if latest else "it has no versions yet"
            raise NotFound(f"{skill[1]}@{number} does not exist ({hint})")
        return row

    @staticmethod
    def _version_record(row: tuple[Any, ...], skill: tuple[Any, ...], latest_verdict: str | None = None
                        ) -> VersionRecord:
        return VersionRecord(
            id=row[0], skill=skill[1], number=row[1], content_hash=row[2], manifest=dict(_json(row[3]) or {}),
            file_count=row[4], total_bytes=row[5], created_at=_utc(row[6]),  # type: ignore[arg-type]
            created_by=row[7], status=row[8], yanked_at=_utc(row[9]), yank_reason=row[10],
            provenance=_json(row[11]), active=skill[3] == row[0], latest_verdict=latest_verdict,
        )

    # -- reads ---------------------------------------------------------------------------

    def list_skills(self) -> list[SkillRecord]:
        with self._read() as cur:
            rows = cur.execute(
                "SELECT s.name, s.created_at, (SELECT v.number FROM versions v WHERE v.id = s.active_version_id), "
                "s.generation, (SELECT max(v.number) FROM versions v WHERE v.skill_id = s.id) "
                "FROM skills s ORDER BY s.name"
            ).fetchall()
        return [SkillRecord(name=r[0], created_at=_utc(r[1]), active_version=r[2],  # type: ignore[arg-type]
                            generation=r[3], latest_version=r[4]) for r in rows]

    def list_versions(self, name: str) -> list[VersionRecord]:
        with self._read() as cur:
            skill = self._skill(cur, name)
            rows = cur.execute(f"SELECT {self._VERSION_COLUMNS} FROM versions WHERE skill_id = ? ORDER BY number",
                               (skill[0],)).fetchall()
            latest: dict[int, str] = {}
            if rows:
                marks = ",".join("?" * len(rows))
                for vid, verdict in cur.execute(
                    f"SELECT version_id, verdict FROM evaluations WHERE version_id IN ({marks}) AND status = 'done' "
                    "ORDER BY version_id, finished_at, created_at", [r[0] for r in rows]):
                    if verdict is not None:
                        latest[vid] = verdict
        return [self._version_record(r, skill, latest.get(r[0])) for r in rows]

    def show(self, name: str, number: int | None = None) -> VersionDetail:
        with self._read() as cur:
            skill = self._skill(cur, name)
            if number is None:
                if skill[3] is not None:
                    number = cur.execute("SELECT number FROM versions WHERE id = ?", (skill[3],)).fetchone()[0]
                else:
                    number = cur.execute("SELECT max(number) FROM versions WHERE skill_id = ?",
                                         (skill[0],)).fetchone()[0]
                if number is None:
                    raise NotFound(f"{name} has no versions")
            version = self._version_row(cur, skill, number)
            ev = cur.execute(
                "SELECT id, policy_name, policy_hash, status, verdict, reasons, report, created_at, started_at, "
                "finished_at, attempts, lease_owner, lease_expires_at FROM evaluations "
                "WHERE version_id = ? AND status = 'done' ORDER BY finished_at DESC, created_at DESC LIMIT 1",
                (version[0],)).fetchone()
            files = {path: bytes(content) for path, content in cur.execute(
                "SELECT path, content FROM version_files WHERE version_id = ? ORDER BY path", (version[0],))}
        evaluation = None if ev is None else EvaluationRecord(
            id=ev[0], skill=skill[1], version=version[1], policy_name=ev[1], policy_hash=ev[2], status=ev[3],
            verdict=ev[4], reasons=list(_json(ev[5]) or []), report=_json(ev[6]),
            created_at=_utc(ev[7]), started_at=_utc(ev[8]), finished_at=_utc(ev[9]),  # type: ignore[arg-type]
            attempts=ev[10] or 0, lease_owner=ev[11], lease_expires_at=_utc(ev[12]))
        return version_detail(self._version_record(version, skill), evaluation, files)

    def history(self, name: str, *, limit: int | None = None) -> list[EventRecord]:
        with self._read() as cur:
            skill = self._skill(cur, name)
            q = ("SELECT e.id, e.actor, e.action, e.reason, e.before, e.after, e.evidence, e.created_at, v.number "
                 "FROM events e LEFT OUTER JOIN versions v ON v.id = e.version_id WHERE e.skill_id = ? "
                 "ORDER BY e.id DESC")
            params: list[Any] = [skill[0]]
            if limit is not None:
                q += " LIMIT ?"
                params.append(limit)
            rows = cur.execute(q, params).fetchall()
        return [EventRecord(id=r[0], skill=skill[1], version=r[8], actor=r[1], action=r[2], reason=r[3],
                            before=_json(r[4]), after=_json(r[5]), evidence=_json(r[6]),
                            created_at=_utc(r[7]))  # type: ignore[arg-type]
                for r in reversed(rows)]


def open_reader(url: str) -> LiteReader | None:
    """A reader of the SQLite store at ``url``, or None when the full store must answer: not a
    SQLite file, no such file (the full path says so), or a schema not at head (it migrates)."""
    match = re.fullmatch(r"sqlite(?:\+pysqlite)?:///(.+)", url)
    head = scripted_head()
    if match is None or head is None or "?" in match.group(1) or match.group(1) == ":memory:":
        return None
    path = Path(match.group(1)).expanduser()
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        stamped = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        stamped = None
    if stamped is None or stamped[0] != head:
        conn.close()
        return None
    return LiteReader(conn)
