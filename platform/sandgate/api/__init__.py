"""The HTTP API of ``sandgate serve``: FastAPI, thin over the same library functions as the CLI.

::

    from sandgate.api import create_app
    app = create_app()          # then: uvicorn, or `sandgate serve`

Modules: :mod:`.app` (the factory, operational endpoints), :mod:`.routes`
(``/v1``), :mod:`.auth` (keys, roles), :mod:`.limits` (rate limits),
:mod:`.middleware` (request ids, body limit, access log, last resort),
:mod:`.errors` (library errors → HTTP), :mod:`.intake` (request bodies →
submissions), :mod:`.watch` (server-sent events), :mod:`.observability`
(JSON logs, Prometheus metrics), :mod:`.schemas`, :mod:`.settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "ApiSettings"]

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.api.app import create_app
    from sandgate.api.settings import ApiSettings


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from sandgate.api.app import create_app

        return create_app
    if name == "ApiSettings":
        from sandgate.api.settings import ApiSettings

        return ApiSettings
    raise AttributeError(f"module 'sandgate.api' has no attribute {name!r}")
