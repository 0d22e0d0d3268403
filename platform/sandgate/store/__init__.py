"""The versioned skill store: SQLAlchemy models, Alembic migrations, and its rooms.

::

    from sandgate.store import open_store, pointers, versions

    store = open_store()                      # SQLite under Settings.home, migrated
    version, created = versions.create_version(store, submission=sub, actor="cli:alice")
    pointers.promote(store, name="greet", number=version.number, actor="cli:alice",
                     reason="looks good", policy=policy)
    pointers.rollback(store, name="greet", actor="oncall:bob", reason="500s in prod")

The rooms, one concept each:

* :mod:`~sandgate.store.versions` — storing submissions as versions, reading versions and files, diffs;
* :mod:`~sandgate.store.evaluations` — the work queue (queue, claim, heartbeat, finish), results, retention;
* :mod:`~sandgate.store.pointers` — promote, rollback, yank, flag, and the ``active`` pointers;
* :mod:`~sandgate.store.audit` — the append-only events.

Their functions are keyword-only, take the :class:`Store` explicitly, run one
transaction each, and return plain records (:mod:`sandgate.records`), never ORM
objects. Refusals are :class:`~sandgate.errors.NotFound`,
:class:`~sandgate.errors.Conflict` or :class:`~sandgate.errors.InvalidTransition`.
``sandgate.lifecycle`` composes them with evaluation and policy.
"""

from __future__ import annotations

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
from sandgate.store import keys as _keys  # noqa: F401 - registers api_keys on the metadata
from sandgate.store.engine import Store, open_store

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
