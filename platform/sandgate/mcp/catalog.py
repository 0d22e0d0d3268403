"""Which skills are active, and their manifests: the part the registry does not answer.

The registry follows the skills it is asked about; an MCP server has to find
them. A catalog answers two reads:

* ``active(names=None)`` — ``{skill: (active version, generation)}`` for every
  skill with an active version (or those of ``names``);
* ``manifest(name, number)`` — ``(content_hash, manifest dict)`` of a version
  (the server uses its ``description``, and checks the content hash against
  the one the registry loaded).

:class:`StoreCatalog` reads the embedded store the registry reads;
:class:`HttpCatalog` a sandgate API server (``sandgate serve``) with the same
API key as the registry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["Catalog", "StoreCatalog", "HttpCatalog"]


class Catalog(Protocol):
    def active(self, names: Iterable[str] | None = None) -> Mapping[str, tuple[int, int]]: ...

    def manifest(self, name: str, number: int) -> tuple[str, Mapping[str, Any]]: ...

    def close(self) -> None: ...


class StoreCatalog:
    """The embedded store (an open :class:`~sandgate.store.Store`; not closed here)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def active(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        from sandgate.store import pointers  # lazy: a remote-mode server never loads SQLAlchemy

        wanted = None if names is None else list(names)
        return dict(pointers.active_pointers(self.store, names=wanted))

    def manifest(self, name: str, number: int) -> tuple[str, Mapping[str, Any]]:
        from sandgate.store import versions  # lazy: as above

        v = versions.get_version(self.store, name=name, number=number)
        return v.content_hash, dict(v.manifest or {})

    def close(self) -> None:
        pass


class HttpCatalog:
    """A sandgate API server, read with :class:`~sandgate.client.SandgateClient` (reader role is enough)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 10.0) -> None:
        from sandgate.client import KEY_ENV, SandgateClient  # lazy: httpx, for remote mode only

        key = api_key or os.environ.get(KEY_ENV, "").strip() or None
        self.client = SandgateClient(url, key, timeout=timeout, user_agent="sandgate-mcp")

    def active(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        return dict(self.client.pointers(None if names is None else list(names)))

    def manifest(self, name: str, number: int) -> tuple[str, Mapping[str, Any]]:
        v = self.client.get_version(name, number).version  # a VersionDetail
        return str(v.content_hash), dict(v.manifest or {})

    def close(self) -> None:
        self.client.close()
