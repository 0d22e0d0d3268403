"""Schema migrations, run programmatically and safely on open.

The Alembic scripts live in this package (``store/migrations``); no
``alembic.ini`` is needed. :func:`upgrade` is safe when several processes open
the same database at once:

* PostgreSQL: the whole upgrade runs in one transaction that first takes
  ``pg_advisory_xact_lock`` (released by the commit); DDL is transactional, so
  a crash mid-upgrade leaves the previous revision intact.
* SQLite: the whole upgrade runs in one ``BEGIN IMMEDIATE`` transaction (the
  store's connections emit their own BEGIN, so SQLite's transactional DDL is
  real); a second opener waits on the write lock (``busy_timeout``) and then
  finds the schema at head.

Either way the second process re-reads the revision *after* it holds the lock,
so it never replays a migration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from sandgate.migration_heads import MIGRATIONS_DIR, scripted_heads

if TYPE_CHECKING:  # pragma: no cover
    from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "alembic_config", "head_revision", "current_revision", "upgrade"]


#: pg_advisory lock key (any fixed bigint; this one is reserved for sandgate's migrations)
_PG_LOCK_KEY = 0x5A6E_D6A7_E5C0_11E1


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def scripted_head() -> str:
    """The head revision read straight from the migration files (no Alembic import).

    Every open takes the fast path with this; Alembic is imported only when a
    migration has to run. A test pins it to :func:`head_revision`.
    """
    heads = scripted_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return next(iter(heads))


def _stamped_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: head) under the migration lock."""
    target = scripted_head() if revision == "head" else revision
    with engine.connect() as conn:
        # fast path: already there (every open after the first), without importing Alembic
        if _stamped_revision(conn) == target:
            conn.rollback()
            return
        conn.rollback()
        dialect = conn.dialect.name
        if dialect == "sqlite":
            conn.execution_options(sqlite_immediate=True)
        with conn.begin():
            if dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            if current_revision(conn) != target:
                from alembic import command

                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
