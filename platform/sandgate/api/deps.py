"""Shared dependencies: the store (opened lazily, retried), the policy a request may use.

``StoreDep`` is the :class:`~sandgate.store.Store` of this process. It is opened
(and migrated) on first use, not at start-up, so the server starts and answers
``/healthz`` and ``/readyz`` (503, with the reason) while the database is
still coming up; every request that needs the store then gets a 503 with
``Retry-After`` until it answers.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from fastapi import Depends, Request

from sandgate.api.errors import ApiError
from sandgate.errors import StoreError
from sandgate.store.engine import Store

__all__ = ["StoreHolder", "get_store", "StoreDep", "resolve_policy", "RETRY_OPEN_SECONDS"]

#: after a failed open, other requests fail fast for this long before trying again
RETRY_OPEN_SECONDS = 1.0


class StoreHolder:
    def __init__(self, url: str, store: Store | None = None) -> None:
        self.url = url
        self._store = store
        self._owned = store is None
        self._lock = threading.Lock()
        self._failed_at = 0.0
        self._error: str | None = None

    def get(self) -> Store:
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is not None:
                return self._store
            if self._error and time.monotonic() - self._failed_at < RETRY_OPEN_SECONDS:
                raise StoreError(self._error)
            from sandgate.store import open_store

            try:
                self._store = open_store(self.url)
            except StoreError as exc:
                self._error, self._failed_at = str(exc), time.monotonic()
                raise
            self._error = None
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None and self._owned:
                self._store.close()
            self._store = None


def get_store(request: Request) -> Store:
    holder: StoreHolder = request.app.state.stores
    return holder.get()


StoreDep = Annotated[Store, Depends(get_store)]


def resolve_policy(request: Request, name: str | None) -> Any:
    """The policy ``name`` if this server offers it (default: the configured one)."""
    from sandgate import lifecycle

    settings = request.app.state.settings
    offered = [settings.policy, *[p for p in request.app.state.api.policies if p != settings.policy]]
    if name is None or name == settings.policy:
        return lifecycle.load_policy(settings.policy)
    if name not in offered:
        raise ApiError(400, f"policy {name!r} is not offered by this server "
                            f"(offered: {', '.join(offered)})", code="unknown_policy")
    return lifecycle.load_policy(name)
