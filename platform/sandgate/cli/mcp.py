"""``sandgate mcp``: the active skills as MCP tools (stdio or streamable HTTP).

Local mode reads the store of ``--url`` (a database URL) or of the settings;
remote mode (``--url http(s)://… --api-key …``, or ``$SANDGATE_URL`` /
``$SANDGATE_API_KEY``) reads a sandgate API server through the HTTP registry.
Every other option has a ``SANDGATE_MCP_*`` variable (:mod:`sandgate.mcp.settings`);
``--skill`` (repeatable, or comma-separated) is the allowlist. Over HTTP the
server binds 127.0.0.1 by default; any other address needs ``--token``, a
bearer token every request must carry.

Logs are JSON lines on stderr (stdout is the protocol on stdio). Exit codes:
0 stopped, 2 bad configuration or the port is taken.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sandgate.cli.common import EXIT_ERROR, errors, fail_with

__all__ = ["register", "mcp"]


def mcp(
    transport: Annotated[str | None, typer.Option("--transport", "-t",
                                                  help="stdio (default) or http (streamable HTTP).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Database URL, or http(s):// URL of a sandgate server "
                                                          "(default: $SANDGATE_URL, else the settings' store).",
                                            )] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key for an http(s) --url "
                                                                  "(default: $SANDGATE_API_KEY).")] = None,
    skill: Annotated[list[str] | None, typer.Option("--skill", "-s", help="Offer only these skills (repeatable, "
                                                                          "or comma-separated).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds a tool call may take "
                                                                    "(default 30).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="HTTP bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="HTTP port (default 8765).")] = None,
    path: Annotated[str | None, typer.Option("--path", help="HTTP endpoint path (default /mcp).")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token HTTP clients must send.")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="Log level on stderr "
                                                                      "(default warning).")] = None,
) -> None:
    """Serve the active skills as MCP tools (hot-reloaded; clients are told when the list changes).

    Each option but --url and --api-key has a SANDGATE_MCP_* variable (SANDGATE_MCP_SKILLS,
    SANDGATE_MCP_CALL_TIMEOUT_SECONDS, SANDGATE_MCP_TOKEN, ...); the option wins.
    """
    # lazy: the MCP SDK and the registry load for this command only, not for every `sandgate` start-up
    from sandgate.logs import configure_logging
    from sandgate.mcp.settings import McpSettings

    given: dict[str, Any] = {"transport": transport, "skills": skill or None, "call_timeout_seconds": timeout,
                             "host": host, "port": port, "path": path, "token": token, "log_level": log_level}
    with errors():
        settings = McpSettings.load(**{k: v for k, v in given.items() if v is not None})
    configure_logging(settings.log_level, loggers=("sandgate", "mcp", "uvicorn", "uvicorn.error"))

    import anyio

    from sandgate.mcp import open_server

    with errors():
        server = open_server(url, api_key=api_key, skills=settings.skills or None,
                             timeout=settings.call_timeout_seconds)
    try:
        if settings.transport == "stdio":
            anyio.run(server.run_stdio)
        else:
            _serve_http(server, settings)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _serve_http(server: Any, settings: Any) -> None:
    import uvicorn  # lazy: HTTP transport only

    app = server.http_app(host=settings.host, path=settings.path, token=settings.token)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,  # JSON: configure_logging
                            access_log=False, server_header=False, lifespan="on")
    uv = uvicorn.Server(config)
    try:
        uv.run()
    except SystemExit:  # uvicorn exits when it cannot bind (it logged why)
        if not uv.started:
            fail_with(f"cannot serve on {settings.host}:{settings.port} (the log above says why)", EXIT_ERROR)
        raise
    except OSError as exc:
        fail_with(f"cannot serve on {settings.host}:{settings.port}: {exc}", EXIT_ERROR)


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)
