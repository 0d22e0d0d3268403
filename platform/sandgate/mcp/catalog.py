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

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["Catalog", "StoreCatalog", "HttpCatalog", "catalog_for"]


class Catalog(Protocol):
    def active(self, names: Iterable[str] | None = None) -> Mapping[str, tuple[int, int]]: ...

    def manifest(self, name: str, number: int) -> tuple[str, Mapping[str, Any]]: ...

    def close(self) -> None: ...


def _store_module(*candidates: str) -> Any:
    """The store module holding a function (the store's rooms, or the single repository module)."""
    import importlib

    for mod in candidates:
        try:
            return importlib.import_module(f"sandgate.store.{mod}")
        except ImportError:
            continue
    raise ImportError(f"none of sandgate.store.{{{','.join(candidates)}}} is importable")


class StoreCatalog:
    """The embedded store (an open :class:`~sandgate.store.Store`; not closed here)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._pointers = _store_module("pointers", "repository")
        self._versions = _store_module("versions", "repository")

    def active(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        wanted = None if names is None else list(names)
        return dict(self._pointers.active_pointers(self.store, names=wanted))

    def manifest(self, name: str, number: int) -> tuple[str, Mapping[str, Any]]:
        v = self._versions.get_version(self.store, name=name, number=number)
        return v.content_hash, dict(v.manifest or {})

    def close(self) -> None:
        pass


class HttpCatalog:
    """A sandgate API server, read with :class:`~sandgate.client.SandgateClient` (reader role is enough)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 10.0) -> None:
        import os

        from sandgate.client import KEY_ENV, SandgateClient

        key = api_key or os.environ.get(KEY_ENV, "").strip() or None
        self.client = SandgateClient(url, key, timeout=timeout, user_agent="sandgate-mcp")

    def active(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        return dict(self.client.pointers(None if names is None else list(names)))

    def manifest(self, name: str, number: int) -> tuple[str, Mapping[str, Any]]:
        v = self.client.get_version(name, number)["version"]
        return str(v.content_hash), dict(v.manifest or {})

    def close(self) -> None:
        self.client.close()


def catalog_for(registry: Any, *, url: str | None = None, api_key: str | None = None) -> Catalog:
    """The catalog matching a registry's backend (its store, or the server at ``url``)."""
    from sandgate.registry import HttpBackend, StoreBackend

    backend = registry.backend
    if isinstance(backend, StoreBackend):
        return StoreCatalog(backend.store)
    if isinstance(backend, HttpBackend):
        if url is None:
            raise ValueError("an HTTP registry needs the server's url for its catalog")
        return HttpCatalog(url, api_key)
    raise TypeError(f"no catalog for a registry backend of type {type(backend).__name__}")
