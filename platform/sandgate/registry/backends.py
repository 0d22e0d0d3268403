"""Where a registry reads pointers and version bytes from.

A backend answers three questions; everything else (caching, loading,
swapping, eviction) is the registry's::

    class RegistryBackend(Protocol):
        def pointers(self, names) -> {name: (active version number, generation)}
        def fetch(self, name, number) -> FetchedVersion(content_hash, entrypoint, files)
        def close(self) -> None

Optional methods, used when present:

``describe(name, number) -> VersionInfo(content_hash, entrypoint)``
    Metadata without the bytes. With it the registry fetches files only on a
    cache miss; without it every load calls ``fetch``.
``watch(timeout) -> bool``
    Block until the backend learns that a pointer may have moved (True) or
    ``timeout`` seconds pass (False). The watcher thread calls it instead of
    sleeping between polls, so a push-capable backend cuts the latency to the
    push delay; the poll still runs after every wake-up, so a lost
    notification costs at most one interval.

Implementations:

:class:`StoreBackend`
    The embedded store (SQLite or PostgreSQL, ``sandgate.store``). ``pointers``
    is one indexed join over the watched skills — cheap enough to poll every
    50 ms. It never migrates an existing store (the controller owns the
    schema); a database with no sandgate tables yet is created empty, so a
    consumer may start before the first submission.
:class:`HttpBackend`
    **Slot, not implemented yet** (its own issue): a consumer that talks to
    the sandgate API server instead of the database, through
    ``sandgate.client.SandgateClient`` (being built alongside). Intended
    mapping: ``pointers`` → ``GET /v1/pointers?names=…`` (``client.pointers``),
    ``describe`` → ``GET /v1/skills/{name}/versions/{n}`` (``client.get_version``),
    ``fetch`` → ``GET /v1/skills/{name}/versions/{n}/files``
    (``client.get_version_files``; the bytes are verified against the content
    hash like any backend's), and ``watch`` → a background reader of the
    server-sent-events stream ``GET /v1/watch?skills=…&actions=promoted,rolled_back``
    (resumed with ``Last-Event-ID``; ``/v1/pointers`` returns the
    ``last_event_id`` to start after) that sets an event the watcher waits on;
    the skills to follow are the names of the latest ``pointers`` call.
    Until then ``connect("http://…")`` raises
    :class:`~sandgate.errors.ConfigError` (code ``not_implemented``).

Backends raise :class:`~sandgate.errors.StoreError` (or a subclass) for
"the source is unreachable or broken"; the registry treats those as
retryable and keeps serving what it has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from sandgate.errors import ConfigError, NotFound, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.store import Store

__all__ = [
    "VersionInfo",
    "FetchedVersion",
    "RegistryBackend",
    "StoreBackend",
    "HttpBackend",
    "HTTP_NOT_IMPLEMENTED",
]


class VersionInfo(NamedTuple):
    content_hash: str
    #: ``module:function`` from the version's manifest
    entrypoint: str


class FetchedVersion(NamedTuple):
    content_hash: str
    entrypoint: str
    #: path -> exact bytes (``/``-separated relative paths)
    files: Mapping[str, bytes]


@runtime_checkable
class RegistryBackend(Protocol):
    """What a registry needs from its source of truth (see the module docstring)."""

    def pointers(self, names: Iterable[str]) -> Mapping[str, tuple[int, int]]:
        """``{name: (active version number, generation)}`` for those of ``names`` with an active version."""
        ...

    def fetch(self, name: str, number: int) -> FetchedVersion: ...

    def close(self) -> None: ...


HTTP_NOT_IMPLEMENTED = (
    "the HTTP registry backend (a consumer of the sandgate API server, with push via "
    "server-sent events) is not implemented yet: connect with a database URL "
    "(sqlite:///… or postgresql+psycopg://…) or pass backend=…"
)


class HttpBackend:
    """Slot for the remote backend (API server + server-sent events). Not implemented yet.

    See the module docstring for the intended endpoint mapping. Constructing
    it raises :class:`~sandgate.errors.ConfigError` (code ``not_implemented``).
    """

    def __init__(self, base_url: str, **_: Any) -> None:
        raise ConfigError(HTTP_NOT_IMPLEMENTED, code="not_implemented")

    def pointers(self, names: Iterable[str]) -> Mapping[str, tuple[int, int]]:  # pragma: no cover
        raise NotImplementedError

    def describe(self, name: str, number: int) -> VersionInfo:  # pragma: no cover
        raise NotImplementedError

    def fetch(self, name: str, number: int) -> FetchedVersion:  # pragma: no cover
        raise NotImplementedError

    def watch(self, timeout: float) -> bool:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        pass


class StoreBackend:
    """The embedded store, read with ``sandgate.store.repository`` (one read transaction per call).

    ``store`` is an open :class:`~sandgate.store.Store` (not closed by
    :meth:`close`) or a database URL (default: the settings' store; opened,
    and closed by :meth:`close`).
    """

    def __init__(self, store: Store | str | None = None) -> None:
        from sandgate.store import Store

        if isinstance(store, Store):
            self.store = store
            self._owned = False
        else:
            self.store = _open_for_reading(store)
            self._owned = True

    def pointers(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        from sandgate.store import repository as repo

        with _store_errors(self.store):
            return repo.active_pointers(self.store, names=list(names))

    def describe(self, name: str, number: int) -> VersionInfo:
        from sandgate.store import repository as repo

        with _store_errors(self.store):
            v = repo.get_version(self.store, name=name, number=number)
        return VersionInfo(v.content_hash, _entrypoint(v.manifest, f"{name}@{number}"))

    def fetch(self, name: str, number: int) -> FetchedVersion:
        from sandgate.store import repository as repo

        with _store_errors(self.store):
            v = repo.get_version(self.store, name=name, number=number)
            files = repo.get_version_files(self.store, name=name, number=number)
        return FetchedVersion(v.content_hash, _entrypoint(v.manifest, f"{name}@{number}"), files)

    def close(self) -> None:
        if self._owned:
            self.store.close()

    def __repr__(self) -> str:
        from sqlalchemy import make_url

        return f"StoreBackend({make_url(self.store.url).render_as_string(hide_password=True)!r})"


def _entrypoint(manifest: Mapping[str, Any] | None, ref: str) -> str:
    entrypoint = (manifest or {}).get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint:
        raise StoreError(f"{ref}: the stored manifest has no entrypoint")
    return entrypoint


@contextlib.contextmanager
def _store_errors(store: Store) -> Iterator[None]:
    """SQLAlchemy / driver errors become :class:`StoreError` (sandgate errors pass through)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (NotFound, StoreError):
        raise
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the skill store: {type(exc).__name__}: {exc}") from exc


def _open_for_reading(url: str | None) -> Store:
    """Open without migrating; create the schema only when the database has none at all."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from sandgate.store import open_store

    store = open_store(url, migrate=False)
    try:
        with store.engine.connect() as conn:
            empty = not inspect(conn).has_table("skills")
    except SQLAlchemyError as exc:
        store.close()
        raise StoreError(f"cannot open the skill store at {url or 'the default location'}: {exc}") from exc
    if empty:
        store.close()
        store = open_store(url)  # a fresh database: create it (concurrency-safe)
    return store
