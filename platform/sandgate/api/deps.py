"""Shared dependencies: the store (opened lazily, retried), the policy a request may use.

Policies are read once per process and kept (:class:`PolicyCache`): a request
costs one ``stat`` of the policy file, and the file is read, validated and
hashed again only when its modification time, size or inode changed.

``StoreDep`` is the :class:`~sandgate.store.Store` of this process. It is opened
(and migrated) on first use, not at start-up, so the server starts and answers
``/healthz`` and ``/readyz`` (503, with the reason) while the database is
still coming up; every request that needs the store then gets a 503 with
``Retry-After`` until it answers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from sandgate import lifecycle
from sandgate.api.errors import ApiError
from sandgate.errors import PolicyError, StoreError
from sandgate.policy.model import _resolve as policy_path
from sandgate.store import open_store
from sandgate.store.engine import Store

__all__ = ["StoreHolder", "get_store", "StoreDep", "PolicyCache", "resolve_policy",
           "RETRY_OPEN_SECONDS"]

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


class PolicyCache:
    """Policies by name, loaded again only when their file changes.

    The file is ``stat``-ed *before* it is read, so a change during the read
    is seen by the next request. A policy whose file cannot be ``stat``-ed is
    not kept (every request loads it, and gets its error).
    """

    def __init__(self, load: Callable[[str], Any] = lifecycle.load_policy) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[int, int, int, int], Any]] = {}
        #: how many times a policy file was loaded (read, validated, hashed)
        self.loads = 0

    @staticmethod
    def _signature(name: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(policy_path(name, None)[0])
        except (OSError, PolicyError):
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def get(self, name: str) -> Any:
        signature = self._signature(name)
        hit = self._entries.get(name)
        if hit is not None and signature is not None and hit[0] == signature:
            return hit[1]
        policy = self._load(name)
        with self._lock:
            self.loads += 1
            if signature is not None:
                self._entries[name] = (signature, policy)
        return policy


def resolve_policy(request: Request, name: str | None) -> Any:
    """The policy ``name`` if this server offers it (default: the configured one)."""
    settings = request.app.state.settings
    policies: PolicyCache = request.app.state.policies
    offered = [settings.policy, *[p for p in request.app.state.api.policies if p != settings.policy]]
    if name is None or name == settings.policy:
        return policies.get(settings.policy)
    if name not in offered:
        raise ApiError(400, f"policy {name!r} is not offered by this server "
                            f"(offered: {', '.join(offered)})", code="unknown_policy")
    return policies.get(name)
