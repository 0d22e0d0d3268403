"""One :class:`Store` per process: an engine, two session factories, migrations on open.

SQLite (the embedded default, a file under ``Settings.home``) is configured on
every new connection: WAL journal, ``foreign_keys=ON``, ``busy_timeout``, and
pysqlite's own transaction handling switched off so the store emits its own
``BEGIN``. Reads use a plain (deferred) ``BEGIN``; writes use
``BEGIN IMMEDIATE``, which takes the write lock up front — otherwise two
writers that both read first would deadlock on the lock upgrade and one would
fail at once with "database is locked" instead of waiting.

PostgreSQL runs at READ COMMITTED; pointer moves rely on compare-and-set
``UPDATE ... WHERE generation = ?`` (a concurrent update re-checks the WHERE
after the winner commits and matches nothing), and version numbering locks the
skill row (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import SQLAlchemyError as _SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from sandgate.config import get_settings
from sandgate.errors import StoreError
from sandgate.store.migrate import upgrade

__all__ = ["Store", "open_store", "default_url", "SQLITE_BUSY_TIMEOUT_MS"]

#: how long a SQLite connection waits for another writer before failing
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: how long a PostgreSQL connection attempt may take
PG_CONNECT_TIMEOUT_S = 10


def default_url() -> str:
    return get_settings().effective_database_url


@dataclass(eq=False)
class Store:
    """The skill store: pass it explicitly to every store function."""

    url: str
    engine: Engine
    _read: sessionmaker[Session] = field(repr=False)
    _write: sessionmaker[Session] = field(repr=False)
    #: callables run at named points inside write transactions, given the session
    #: ("create_version.files_inserted", "move.before_cas"): how tests stall or race a
    #: transaction at an exact point. Empty in production.
    hooks: dict[str, Callable[[Session], None]] = field(default_factory=dict, repr=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction (rolled back at the end)."""
        with self._read() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed if the block succeeds, else rolled back."""
        with self._write() as session, session.begin():
            session.info["sandgate.hooks"] = self.hooks
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sqlite_engine(url: str, *, create: bool = True, make_dirs: bool = True) -> Engine:
    u = make_url(url)
    database = u.database or ""
    memory = database in ("", ":memory:") or "mode=memory" in str(u.query)
    kwargs: dict[str, Any] = {}
    if memory:
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        path = Path(database).expanduser()
        if not path.exists():
            if not create:
                raise StoreError(f"no store at {path}: nothing has been submitted here yet (the default store "
                                 f"is ./.sandgate/sandgate.db under the current directory; set SANDGATE_HOME or "
                                 f"SANDGATE_DATABASE_URL to use another)", code="no_store")
            if not path.parent.is_dir():
                if not make_dirs:
                    raise StoreError(f"cannot create the store {path}: the directory {path.parent} does not "
                                     f"exist (create it, or fix SANDGATE_DATABASE_URL)", code="no_store")
                path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # we emit BEGIN ourselves (see module docstring)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not memory:
            cur.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a power loss may lose the last commits, never corrupts
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _make_engine(url: str, *, create: bool = True, make_dirs: bool = True) -> Engine:
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL {url!r}: {exc}") from exc
    if backend == "sqlite":
        return _sqlite_engine(url, create=create, make_dirs=make_dirs)
    if backend == "postgresql":
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
        )
    raise StoreError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


def open_store(
    url: str | None = None,
    *,
    migrate: bool = True,
    hooks: dict[str, Callable[[Session], None]] | None = None,
    create: bool = True,
    make_dirs: bool = True,
) -> Store:
    """Open (and by default migrate to head) the store at ``url``.

    ``url`` defaults to ``Settings.effective_database_url`` (SQLite under
    ``Settings.home``). Safe to call from several processes at once.
    ``create=False`` (read-only commands): a SQLite file that does not exist is
    :class:`StoreError` ``no_store``, never created. ``make_dirs=False``: a missing
    directory of a SQLite file is refused rather than created.
    """
    url = url or default_url()
    engine = _make_engine(url, create=create, make_dirs=make_dirs)
    try:
        if migrate:
            upgrade(engine)
    except OperationalError as exc:
        engine.dispose()
        raise StoreError(f"cannot open the store at {_safe(url)}: {exc.orig or exc}") from exc
    except _SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot migrate the store at {_safe(url)}: {exc}") from exc
    read = sessionmaker(engine, expire_on_commit=False, autoflush=True)
    write = sessionmaker(
        engine.execution_options(sqlite_immediate=True), expire_on_commit=False, autoflush=True
    )
    return Store(url=url, engine=engine, _read=read, _write=write, hooks=dict(hooks or {}))


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # pragma: no cover
        return "<invalid url>"
