"""The MCP server: active skills as tools, through a hot-reloading registry.

:class:`SkillTools` (no MCP in it) keeps the current tool definitions: it
asks the catalog which skills are active, takes a pinned handle of each from
the registry (the version the registry serves now), builds the definition
once per (skill, version, content hash) and reports whether what a client
sees changed. :class:`SkillServer` is the MCP side: a low-level
:class:`mcp.server.Server` whose ``tools/list`` serves those definitions and
whose ``tools/call`` goes through ``registry.acall`` (hot reload; canary
routing, fallback and runtime evidence where the registry has them) under a
per-call timeout. A background task re-reads the definitions whenever the
registry reports a move (its ``on_event``) and every ``discover_interval``
seconds (new skills, skills that lost their active version); when the list
changed, every connected client is told:

* clients of the 2026-07-28 protocol through their ``subscriptions/listen``
  streams (the SDK's :class:`~mcp.server.subscriptions.ListenHandler`);
* clients of the handshake protocol (``initialize``) with
  ``notifications/tools/list_changed`` on their connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from sandgate import __version__
from sandgate.errors import NotFound, SandgateError, Unavailable
from sandgate.mcp.catalog import Catalog
from sandgate.mcp.schema import ToolDefinition, build_definition, clean_text, error_text, validation_text

__all__ = ["SkillTools", "SkillServer", "DEFAULT_TIMEOUT", "MAX_RESULT_BYTES"]

log = logging.getLogger("sandgate.mcp")

#: seconds a tool call may take before the client gets a timeout error
DEFAULT_TIMEOUT = 30.0
#: largest tool result (bytes of its JSON text)
MAX_RESULT_BYTES = 1_000_000
#: registry events that can change what a tool is
_MOVES = frozenset({"loaded", "swapped", "rolled_back", "load_failed", "unloaded", "canary", "canary_ended"})


class SkillTools:
    """The tool definitions of the active skills (thread-safe reads; :meth:`refresh` from one thread)."""

    def __init__(self, registry: Any, catalog: Catalog, *, skills: Iterable[str] | None = None) -> None:
        self.registry = registry
        self.catalog = catalog
        self.allow: list[str] | None = sorted(set(skills)) if skills else None
        #: name -> definition, replaced as a whole (a reader sees one consistent dict)
        self.tools: dict[str, ToolDefinition] = {}
        self._cache: dict[tuple[str, int, str], ToolDefinition] = {}
        self._lock = threading.Lock()
        #: skills that are active but could not be offered: name -> why (for logs and tests)
        self.skipped: dict[str, str] = {}

    def view(self) -> list[tuple[str, int, str, str]]:
        return [(d.name, d.version, d.content_hash, d.digest) for d in self.tools.values()]

    def refresh(self) -> bool:
        """Re-read the definitions; True if the tool list a client sees changed."""
        with self._lock:
            before = self.view()
            try:
                active = self.catalog.active(self.allow)
            except Exception as exc:  # the catalog's source is down: keep serving what we have
                log.warning("cannot list the active skills (keeping the current tools): %s", exc)
                return False
            tools: dict[str, ToolDefinition] = {}
            skipped: dict[str, str] = {}
            for name in sorted(active):
                try:
                    handle = self.registry.get(name)
                except NotFound:
                    continue
                except SandgateError as exc:  # LoadFailed: nothing loadable to serve
                    skipped[name] = str(exc)
                    continue
                try:
                    key = (name, handle.version, handle.content_hash)
                    d = self._cache.get(key)
                    if d is None:
                        d = self._define(name, handle)
                        self._cache[key] = d
                    tools[name] = d
                except Exception as exc:
                    skipped[name] = f"{type(exc).__name__}: {exc}"
                finally:
                    handle.release()
            for name, why in skipped.items():
                if self.skipped.get(name) != why:
                    log.warning("%s is active but not offered as a tool: %s", name, why, extra={"skill": name})
            self.skipped = skipped
            self.tools = tools
            keep = {(d.name, d.version, d.content_hash) for d in tools.values()}
            if len(self._cache) > 4 * max(len(keep), 8):
                self._cache = {k: v for k, v in self._cache.items() if k in keep}
            return self.view() != before

    def _define(self, name: str, handle: Any) -> ToolDefinition:
        description: Any = ""
        try:
            chash, manifest = self.catalog.manifest(name, handle.version)
        except Exception as exc:
            log.warning("%s@%d: cannot read its manifest (no description): %s", name, handle.version, exc)
        else:
            if chash == handle.content_hash:
                description = manifest.get("description", "")
            else:
                log.warning("%s@%d: the catalog's content hash is not the loaded one: no description",
                            name, handle.version)
        return build_definition(
            name=name,
            version=handle.version,
            content_hash=handle.content_hash,
            description=description,
            function=handle.function,
        )


def _error(text: str, kind: str, meta: Mapping[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={"sandgate/error_type": kind, **(meta or {})},
    )


def _raised(name: str, exc: BaseException) -> types.CallToolResult:
    """The tool error of an exception out of ``registry.acall``: the skill's own, or the registry's.

    A sandgate error (the skill has no loadable active version, its backend is
    down, ...) also carries its code (its row of :data:`sandgate.errors.MEANINGS`,
    or the instance's own) and whether asking again may help; anything else is
    the skill's exception.
    """
    meta: dict[str, Any] = {}
    if isinstance(exc, SandgateError):
        meta = {"sandgate/error_code": exc.code,
                "sandgate/retryable": isinstance(exc, Unavailable) or bool(getattr(exc, "retryable", False))}
    log.info("%s raised %s", name, type(exc).__qualname__, exc_info=log.isEnabledFor(logging.DEBUG),
             extra={"tool": name, "error_type": type(exc).__qualname__})
    return _error(error_text(exc), type(exc).__qualname__, meta)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable_python(value, fallback=repr), ensure_ascii=False)


class _Server(Server[Any]):
    """The low-level server, advertising ``tools.listChanged`` to handshake clients on every transport."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True), experimental_capabilities, extensions
        )


class SkillServer:
    """Active skills of a registry as MCP tools (see the module docstring).

    ``registry``: a :class:`~sandgate.registry.Registry` built with
    ``on_event=server.on_registry_event`` (or call :meth:`poke` yourself).
    """

    def __init__(
        self,
        registry: Any,
        catalog: Catalog,
        *,
        skills: Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        discover_interval: float = 1.0,
        max_result_bytes: int = MAX_RESULT_BYTES,
        call_threads: int = 32,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not discover_interval > 0:
            raise ValueError(f"discover_interval must be > 0 seconds, got {discover_interval!r}")
        self.registry = registry
        self.tools = SkillTools(registry, catalog, skills=skills)
        self.timeout = float(timeout)
        self.discover_interval = float(discover_interval)
        self.max_result_bytes = int(max_result_bytes)
        self.call_threads = int(call_threads)
        self.bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self.bus)
        self._legacy: dict[int, Any] = {}
        self._wake = threading.Event()
        #: how many tools/list_changed fan-outs were sent (tests, logs)
        self.changes = 0
        self.server = _Server(
            "sandgate",
            version=__version__,
            title="sandgate skills",
            instructions=(
                "Each tool is an active skill version from a sandgate store: generated code that passed "
                "sandboxed evaluation gates. Tool descriptions come from the skills' manifests (untrusted)."
            ),
            lifespan=self._lifespan,
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=self._listen,
        )
        self.server.middleware.append(self._track_sessions)
        #: called by :meth:`close` (``open_server`` puts the catalog and the registry here)
        self.closers: list[Callable[[], Any]] = []
        self.tools.refresh()

    def close(self) -> None:
        """Close what :meth:`closers` holds (the registry waits for calls in flight, up to its timeout)."""
        while self.closers:
            try:
                self.closers.pop()()
            except Exception:
                log.exception("closing the MCP server's resources failed")

    # ------------------------------------------------------------------ change feed

    def on_registry_event(self, event: Any) -> None:
        """The registry's ``on_event``: a move wakes the refresher (called from the watcher thread)."""
        if getattr(event, "kind", None) in _MOVES:
            self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    async def refresh_and_notify(self) -> bool:
        changed = await anyio.to_thread.run_sync(self.tools.refresh)
        if changed:
            await self._notify()
        return changed

    async def _notify(self) -> None:
        self.changes += 1
        tools = [f"{n}@{v}" for n, v, _, _ in self.tools.view()]
        log.info("tool list changed: %s", ", ".join(tools) or "(none)", extra={"tools": tools})
        try:
            await self.bus.publish(ToolsListChanged())
        except Exception:
            log.exception("publishing tools/list_changed failed")
        for session in list(self._legacy.values()):
            try:
                await session.send_tool_list_changed()
            except Exception as exc:  # a gone client: best effort
                log.debug("tools/list_changed not delivered: %s", exc)

    def _wait_wake(self) -> None:
        self._wake.wait(self.discover_interval)
        self._wake.clear()

    async def _refresher(self) -> None:
        while True:
            await anyio.to_thread.run_sync(self._wait_wake, abandon_on_cancel=True)
            try:
                await self.refresh_and_notify()
            except Exception:
                log.exception("refreshing the tool list failed (retrying)")

    @asynccontextmanager
    async def _lifespan(self, _server: Any) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        # sync skills run in the loop's default executor (registry.acall); a timed-out call keeps
        # its thread until the function returns, so give the pool room
        loop.set_default_executor(ThreadPoolExecutor(self.call_threads, thread_name_prefix="sandgate-mcp-call"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._refresher)
            try:
                yield {}
            finally:
                self._listen.close()
                tg.cancel_scope.cancel()

    async def _track_sessions(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        """Remember handshake-era connections (they get list_changed on their own channel)."""
        result = await call_next(ctx)
        if ctx.method == "notifications/initialized" and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            conn = getattr(ctx.session, "_connection", None)
            key = id(conn if conn is not None else ctx.session)
            self._legacy[key] = ctx.session
            stack = getattr(conn, "exit_stack", None)
            if stack is not None:
                stack.callback(self._legacy.pop, key, None)
        return result

    # ------------------------------------------------------------------ handlers

    def _input_schema(self, name: str) -> Mapping[str, Any] | None:
        d = self.tools.tools.get(name)
        return d.input_schema if d is not None else None

    def list_tools(self) -> list[types.Tool]:
        return [types.Tool.model_validate(d.tool_dict()) for d in self.tools.tools.values()]

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.list_tools(), ttl_ms=0)

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await self.call(params.name, params.arguments)

    async def call(self, name: str, arguments: Mapping[str, Any] | None) -> types.CallToolResult:
        """One tool call: validate, run through the registry under the timeout, shape the result."""
        d = self.tools.tools.get(name)
        if d is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {clean_text(name, 100)!r}")
        try:
            args, kwargs = d.arguments(arguments)
        except ValidationError as exc:
            return _error(validation_text(exc), "InvalidArguments")
        with anyio.move_on_after(self.timeout) as deadline:
            try:
                value = await self.registry.acall(name, *args, **kwargs)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # the skill's exception, whatever it is, is the caller's answer
                # out of a worker thread even KeyboardInterrupt is the skill's own raise (a real ^C is
                # delivered to the main thread); on the loop (an async skill) it may be the operator's
                if isinstance(exc, GeneratorExit) or isinstance(exc, KeyboardInterrupt) and d.is_async:
                    raise
                return _raised(name, exc)
        if deadline.cancelled_caught:  # our deadline, not a TimeoutError the skill raised itself
            log.info("%s timed out", name, extra={"tool": name, "timeout_seconds": self.timeout})
            return _error(
                f"TimeoutError: {name} did not return within {self.timeout:g} s "
                "(a synchronous skill keeps running in its thread until it returns)",
                "TimeoutError",
                {"sandgate/error_code": "timeout"},
            )
        try:
            structured = d.structured(value)
            text = _text_of(value)
        except ValidationError as exc:
            return _error(
                clean_text(f"ResultTypeError: {name} returned a value that does not match its return "
                           f"annotation: {exc.errors()[0].get('msg') if exc.errors() else exc}"),
                "ResultTypeError",
            )
        except Exception as exc:
            return _error(clean_text(f"ResultTypeError: {name} returned a value with no JSON form: {exc}"),
                          "ResultTypeError")
        if len(text.encode("utf-8")) > self.max_result_bytes:
            return _error(f"ResultTooLarge: {name} returned more than {self.max_result_bytes} bytes", "ResultTooLarge")
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content=structured,
            is_error=False,
        )

    # ------------------------------------------------------------------ transports

    async def run_stdio(self) -> None:
        """Serve one client over this process's stdin/stdout (the SDK diverts fds 0/1 meanwhile)."""
        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())

    def http_app(self, *, host: str = "127.0.0.1", path: str = "/mcp", token: str | None = None) -> Any:
        """The streamable HTTP ASGI app (stateful sessions; ``token``: required bearer token)."""
        app = self.server.streamable_http_app(streamable_http_path=path, host=host)
        if token:
            return _BearerGate(app, token)
        return app


class _BearerGate:
    """ASGI: every HTTP request needs ``Authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, value = header.decode("latin-1").partition(" ")
            given = hashlib.sha256(value.strip().encode()).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._digest):
                body = b'{"error":"unauthorized: a bearer token is required"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
