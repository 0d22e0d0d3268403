"""``sandgate mcp``: the active skills as MCP tools (stdio or streamable HTTP).

Local mode reads the store of ``--url`` (a database URL) or of the settings;
remote mode (``--url http(s)://… --api-key …``, or ``$SANDGATE_URL`` /
``$SANDGATE_API_KEY``) reads a sandgate API server through the HTTP registry.
``--skill`` (repeatable) or ``$SANDGATE_MCP_SKILLS`` (comma-separated) limits
the tools to an allowlist. Over HTTP the server binds 127.0.0.1 by default;
any other address needs ``--token`` (``$SANDGATE_MCP_TOKEN``), a bearer token
every request must carry.

Logs go to stderr (stdout is the protocol on stdio). Exit codes: 0 stopped,
2 bad configuration or the port is taken.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from sandgate.cli.common import EXIT_ERROR, errors, fail_with

__all__ = ["register", "mcp"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _skills(values: list[str] | None) -> list[str] | None:
    names: list[str] = []
    for value in values or []:
        names += [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        env = os.environ.get("SANDGATE_MCP_SKILLS", "")
        names = [v.strip() for v in env.split(",") if v.strip()]
    return names or None


def mcp(
    transport: Annotated[str, typer.Option("--transport", "-t", help="stdio or http (streamable HTTP).")] = "stdio",
    url: Annotated[str | None, typer.Option("--url", help="Database URL, or http(s):// URL of a sandgate server "
                                                          "(default: $SANDGATE_URL, else the settings' store).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key for an http(s) --url "
                                                                  "(default: $SANDGATE_API_KEY).")] = None,
    skill: Annotated[list[str] | None, typer.Option("--skill", "-s", help="Offer only these skills (repeatable, "
                                                                          "or comma-separated; $SANDGATE_MCP_SKILLS).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds a tool call may take.")] = 30.0,
    host: Annotated[str, typer.Option("--host", help="HTTP bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port.")] = 8765,
    path: Annotated[str, typer.Option("--path", help="HTTP endpoint path.")] = "/mcp",
    token: Annotated[str | None, typer.Option("--token", envvar="SANDGATE_MCP_TOKEN", show_envvar=False,
                                              help="Bearer token HTTP clients must send ($SANDGATE_MCP_TOKEN).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level on stderr.")] = "WARNING",
) -> None:
    """Serve the active skills as MCP tools (hot-reloaded; clients are told when the list changes)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if transport not in ("stdio", "http"):
        fail_with(f"--transport must be stdio or http, not {transport!r}", EXIT_ERROR)
    if transport == "http" and host not in _LOOPBACK and not token:
        fail_with(f"--host {host} is not a loopback address: pass --token (or set SANDGATE_MCP_TOKEN) so that "
                  "only clients holding it can run skills in this process", EXIT_ERROR)
    if not path.startswith("/"):
        fail_with(f"--path must start with '/', got {path!r}", EXIT_ERROR)
    import anyio

    from sandgate.mcp import open_server

    with errors():
        server = open_server(url, api_key=api_key, skills=_skills(skill), timeout=timeout)
    try:
        if transport == "stdio":
            anyio.run(server.run_stdio)
        else:
            import uvicorn

            config = uvicorn.Config(server.http_app(host=host, path=path, token=token), host=host, port=port,
                                    log_config=None, access_log=False, server_header=False, lifespan="on")
            uv = uvicorn.Server(config)
            try:
                uv.run()
            except SystemExit:
                if not uv.started:
                    fail_with(f"cannot serve on {host}:{port} (the log above says why)", EXIT_ERROR)
                raise
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)
