"""The versioned skill store: SQLAlchemy models, Alembic migrations, repository.

::

    from sandgate.store import open_store, repository

    store = open_store()                      # SQLite under Settings.home, migrated
    version, created = repository.create_version(store, submission=sub, actor="cli:alice")
    repository.promote(store, name="greet", number=version.number, actor="cli:alice",
                       reason="looks good", policy=policy)
    repository.rollback(store, name="greet", actor="oncall:bob", reason="500s in prod")

Repository functions are keyword-only, one transaction each, and return plain
records. ``sandgate.lifecycle`` composes them with evaluation and policy.
"""

from __future__ import annotations

from sandgate.store import keys as _keys  # noqa: F401 - registers api_keys on the metadata
from sandgate.store.engine import Store, open_store
from sandgate.records import (
    EvaluationRecord,
    EventRecord,
    FileDiff,
    FlagResult,
    PointerMove,
    SkillRecord,
    VersionRecord,
    YankResult,
)

__all__ = [
    "Store",
    "open_store",
    "SkillRecord",
    "VersionRecord",
    "EvaluationRecord",
    "EventRecord",
    "PointerMove",
    "YankResult",
    "FileDiff",
    "FlagResult",
]
