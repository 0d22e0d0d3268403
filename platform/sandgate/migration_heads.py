"""The head revisions of the store's migration files, read as text (standard library only).

The store's ``migrate.scripted_head`` (every open's fast path) and the CLI's
SQLite read path (``service.lite``, which must not load SQLAlchemy) both ask
this one reader; a test pins its answer to Alembic's own head.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

__all__ = ["MIGRATIONS_DIR", "scripted_heads"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "store" / "migrations"

_REVISION = re.compile(r'^(down_)?revision(?:: [^=]+)? = "([^"]+)"', re.M)


@lru_cache(maxsize=1)
def scripted_heads() -> frozenset[str]:
    """Every revision of ``MIGRATIONS_DIR/versions`` that no other revision names as its ``down_revision``."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for down, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            (downs if down else revisions).add(value)
    return frozenset(revisions - downs)
