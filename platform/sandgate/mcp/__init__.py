"""Active skills as MCP tools, hot-reloaded (``sandgate mcp``).

::

    from sandgate.mcp import open_server

    server = open_server()                      # the settings' store; or url="http://…", api_key=…
    anyio.run(server.run_stdio)                 # or uvicorn on server.http_app()
    server.close()

Each active skill (or those of ``skills=``) is a tool named after the skill:
its description is the manifest's (cleaned: :func:`sandgate.mcp.schema.clean_text`),
its input schema comes from the entrypoint's signature and type hints, its
output schema from the return annotation where there is one, and its
``_meta`` carries ``sandgate/version``, ``sandgate/content_hash`` and
``sandgate/digest`` (the sha256 of the definition a client sees). Calls go
through ``registry.acall`` with a per-call timeout; a skill's exception is a
tool error (``isError``) saying ``Type: message``. A promotion, rollback or
yank changes the list and connected clients are notified.

Trust model: the registry's (:mod:`sandgate.registry`): promoted code runs in
this server's process with its privileges.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandgate.mcp.catalog import HttpCatalog, StoreCatalog
from sandgate.mcp.server import DEFAULT_TIMEOUT, SkillServer, SkillTools
from sandgate.registry import StoreBackend, connect

__all__ = ["open_server", "SkillServer", "SkillTools", "DEFAULT_TIMEOUT"]


def open_server(
    url: str | None = None,
    *,
    api_key: str | None = None,
    skills: Iterable[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cache_dir: str | Path | None = None,
    poll_interval: float | None = None,
    discover_interval: float | None = None,
    **server_kwargs: Any,
) -> SkillServer:
    """A :class:`SkillServer` over a registry of ``url`` (a database or ``http(s)://`` server URL).

    The registry and the catalog are closed by ``server.close()``.
    """
    if url is None:
        from sandgate.client import URL_ENV  # lazy: httpx, for remote mode only

        url = os.environ.get(URL_ENV, "").strip() or None
    remote = url is not None and url.split("://", 1)[0].lower() in ("http", "https")
    holder: list[SkillServer] = []

    def on_event(event: Any) -> None:
        if holder:
            holder[0].on_registry_event(event)

    registry = connect(  # an api_key with a database URL is refused here (ConfigError)
        url, api_key=api_key, poll_interval=poll_interval, cache_dir=cache_dir,
        on_event=on_event,
    )
    catalog: Any = None
    try:
        backend = registry.backend
        if remote:
            assert url is not None
            catalog = HttpCatalog(url, api_key)
        elif isinstance(backend, StoreBackend):
            catalog = StoreCatalog(backend.store)
        else:
            raise TypeError(f"no catalog for a registry backend of type {type(backend).__name__}")
        if discover_interval is None:
            discover_interval = 2.0 if remote else 1.0
        server = SkillServer(
            registry, catalog, skills=skills, timeout=timeout, discover_interval=discover_interval,
            **server_kwargs,
        )
    except BaseException:
        if catalog is not None:
            catalog.close()
        registry.close()
        raise
    holder.append(server)
    server.closers += [registry.close, catalog.close]  # popped from the end: the catalog first
    return server
