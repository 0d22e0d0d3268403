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
    A consumer of the sandgate API server (``sandgate serve``) through
    ``sandgate.client.SandgateClient``, authenticated with an API key (any
    role: reading needs ``reader``). ``pointers`` is one
    ``GET /v1/pointers?names=…&content=true``, whose answer also names each
    active version's content hash, entrypoint and canary route, so neither
    ``describe`` nor ``canaries`` costs a request for a skill a ``pointers``
    answer named (otherwise, e.g. against an older server, they are
    ``GET /v1/skills/{name}/versions/{n}`` and ``GET /v1/canaries``): a pointer
    move costs the poll and, on a cache miss, one ``fetch``; ``fetch`` is
    ``GET /v1/skills/{name}/versions/{n}/files`` (base64; the registry verifies
    the bytes against the content hash like any backend's, so a server can
    refuse to serve but cannot make a consumer run other bytes than the ones
    it names). ``watch`` is fed by a background thread reading the
    server-sent-events stream ``GET /v1/watch?skills=…&actions=promoted,rolled_back``
    (see :class:`HttpBackend` for reconnection, resumption and timeouts): a
    pointer move of a followed skill wakes the registry's watcher at once, so
    a swap reaches callers within the server's feed delay instead of a poll
    interval. Polling goes on underneath (every ``poll_interval``, default
    :data:`HTTP_POLL_INTERVAL` for HTTP): with the stream down, the registry
    behaves exactly as a polling one.

Backends raise :class:`~sandgate.errors.StoreError` (or a subclass) for
"the source is unreachable or broken"; the registry treats those as
retryable and keeps serving what it has.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from sandgate.errors import (
    ApiError,
    ConfigError,
    Conflict,
    InvalidTransition,
    NotFound,
    SandgateError,
    StoreError,
)

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.store import Store

__all__ = [
    "VersionInfo",
    "FetchedVersion",
    "CanaryRoute",
    "RegistryBackend",
    "StoreBackend",
    "HttpBackend",
    "HTTP_POLL_INTERVAL",
]

log = logging.getLogger("sandgate.registry")


class VersionInfo(NamedTuple):
    content_hash: str
    #: ``module:function`` from the version's manifest
    entrypoint: str


class FetchedVersion(NamedTuple):
    content_hash: str
    entrypoint: str
    #: path -> exact bytes (``/``-separated relative paths)
    files: Mapping[str, bytes]


class CanaryRoute(NamedTuple):
    """A skill's candidate (optional backend method ``canaries(names) -> {name: CanaryRoute}``)."""

    candidate: int
    #: percent of calls routed to the candidate
    weight: int
    #: retry a failed candidate call on the active version
    fallback: bool = False
    #: JSON input/output samples a consumer may take per version and generation (0: none)
    sample_io: int = 0


@runtime_checkable
class RegistryBackend(Protocol):
    """What a registry needs from its source of truth (see the module docstring)."""

    def pointers(self, names: Iterable[str]) -> Mapping[str, tuple[int, int]]:
        """``{name: (active version number, generation)}`` for those of ``names`` with an active version."""
        ...

    def fetch(self, name: str, number: int) -> FetchedVersion: ...

    def close(self) -> None: ...


#: the default poll interval of an HTTP registry (seconds): the safety net under push
HTTP_POLL_INTERVAL = 1.0
#: what the push stream asks for: pointer moves (and canary changes, which move the candidate)
_MOVES = ("promoted", "rolled_back", "canary_started", "canary_advanced", "canary_rolled_back", "canary_aborted")
#: above this many characters of names, the stream is not filtered by the server (URL length)
_MAX_SKILLS_PARAM = 4000
#: how often a waiting watch() looks at the registry's stop event (seconds)
_STOP_CHECK = 0.1


class HttpBackend:
    """A registry backend reading the sandgate API server over HTTP, with push.

    ::

        backend = HttpBackend("https://sandgate.internal", api_key="sg_…")
        registry = Registry(backend, cache_dir=...)        # or sandgate.connect(url, api_key=...)

    ``api_key`` defaults to ``$SANDGATE_API_KEY``; a key is required (every
    ``/v1`` route needs one; the ``reader`` role is enough). The key is sent
    as a bearer token and never logged, printed or put in a ``repr``.

    Requests: ``timeout`` seconds to read one answer, ``connect_timeout`` to
    open a connection. Errors: a refused key (401) or a key whose role may not
    read (403) is a :class:`~sandgate.errors.ConfigError` (codes
    ``unauthorized`` / ``forbidden``) — the first call of a skill raises it;
    the watcher keeps serving what it has and reports a ``backend_error``.
    An unreachable server, a timeout, a 5xx or a 429 is a
    :class:`~sandgate.errors.StoreError` (retryable: the old version keeps
    serving); an unknown version is :class:`~sandgate.errors.NotFound`.

    Push (``push=True``): once a ``pointers`` call has named skills, a daemon
    thread keeps ``GET /v1/watch?skills=<every name asked about so
    far>&actions=promoted,rolled_back`` open, starting after the
    ``last_event_id`` of that ``pointers`` answer (so no move between the poll
    and the stream's start is missed) and resuming after the last event id it
    received (``Last-Event-ID``) on every reconnection, so nothing is lost
    while it is away (the server replays what happened meanwhile). A move of a
    followed skill makes :meth:`watch` return True at once. The stream is
    opened with ``connect_timeout`` and read with ``watch_read_timeout`` (more
    than the server's keepalive interval, 15 s by default: a silent
    half-open connection is given up after it). A broken, refused or ended
    stream is reopened after a backoff: from ``reconnect_min`` doubling up to
    ``reconnect_max`` seconds, each delay drawn in [d/2, d] (jitter, so that
    consumers of a restarted server do not reconnect in lockstep); back to the
    minimum once a stream is up again. While there is no stream, :meth:`watch`
    simply waits its timeout: the registry polls, as without push. A new
    skill name restarts the stream at once with the wider filter (same resume
    point).

    Closing: ``connect`` hands the registry's stop event to :meth:`bind_stop`,
    so ``registry.close()`` returns within 0.1 s whatever the poll interval. A
    :class:`~sandgate.registry.Registry` built by hand around this backend
    should do the same (or close the backend first), else ``close`` waits for
    the current ``watch`` to time out.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        push: bool = True,
        watch_read_timeout: float = 45.0,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        transport: Any = None,
        stream_transport: Any = None,
    ) -> None:
        from sandgate.client import KEY_ENV, SandgateClient  # lazy: httpx, for HTTP consumers only

        parts = urlsplit(base_url or "")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) URL of a sandgate server: {_redact(base_url)!r}")
        if api_key is None:
            api_key = os.environ.get(KEY_ENV, "").strip() or None
        if not api_key:
            raise ConfigError(
                f"an API key is needed to read skills from {_redact(base_url)}: pass api_key=… or set "
                f"{KEY_ENV} (create one with `sandgate keys create NAME --role reader`)",
                code="unauthorized",
            )
        if not (timeout > 0 and connect_timeout > 0 and watch_read_timeout > 0):
            raise ValueError("timeouts must be > 0 seconds")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        self.url = _redact(base_url)
        self._client = SandgateClient(
            base_url, api_key, timeout=timeout, connect_timeout=connect_timeout,
            transport=transport, user_agent="sandgate-registry",
        )
        self._closed = threading.Event()
        #: per skill, the active version the last pointers answer named, and its content
        self._described: dict[str, tuple[int, VersionInfo]] = {}
        #: per skill, the canary route the last pointers answer named (None: no candidate); only a
        #: server that puts ``canary`` in its pointers answer fills this
        self._routes: dict[str, CanaryRoute | None] = {}
        self._stop_event: threading.Event | None = None
        self._push: _PushStream | None = None
        if push:
            self._push = _PushStream(
                lambda t: SandgateClient(base_url, api_key, timeout=timeout, connect_timeout=connect_timeout,
                                         transport=t, user_agent="sandgate-registry-watch"),
                url=self.url, transport=stream_transport, read_timeout=watch_read_timeout,
                reconnect_min=reconnect_min, reconnect_max=reconnect_max,
            )
            # an abandoned backend (never closed) must not leave its thread behind
            self._finalizer = weakref.finalize(self, self._push.close)

    # ------------------------------------------------------------------ the protocol

    def pointers(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        wanted = set(names)
        if not wanted:
            return {}
        data = self._call("read the pointers", lambda: self._client.pointers_raw(sorted(wanted), content=True))
        try:
            rows = data["pointers"]
            out = {n: (int(p["version"]), int(p["generation"])) for n, p in rows.items() if n in wanted}
            routes: dict[str, CanaryRoute | None] = {}
            for n, p in rows.items():
                if n in wanted and isinstance(p.get("content_hash"), str) and isinstance(p.get("entrypoint"), str):
                    self._described[n] = (out[n][0], VersionInfo(p["content_hash"], p["entrypoint"]))
                if n in wanted and "canary" in p:
                    c = p["canary"]
                    routes[n] = None if c is None else CanaryRoute(
                        int(c["candidate"]), int(c["weight"]), bool(c.get("fallback", False)),
                        int(c.get("sample_io", 0)))
            last = data.get("last_event_id")
            last = int(last) if last is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"unexpected /v1/pointers answer from {self.url}: {exc!r}", code="bad_answer") from exc
        for n in wanted:  # only this answer's view counts (a name it did not carry is asked for again)
            self._routes.pop(n, None)
        self._routes.update(routes)
        if self._push is not None and not self._closed.is_set():
            self._push.follow(wanted, last)
        return out

    def describe(self, name: str, number: int) -> VersionInfo:
        known = self._described.get(name)
        if known is not None and known[0] == number:  # named by the last pointers answer
            return VersionInfo(known[1].content_hash, _entrypoint({"entrypoint": known[1].entrypoint},
                                                                 f"{name}@{number}"))
        data = self._call(f"describe {name}@{number}", self._client.get_version, name, number)
        try:
            version = data.version
            return VersionInfo(str(version.content_hash), _entrypoint(version.manifest, f"{name}@{number}"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"unexpected answer describing {name}@{number}: {exc!r}", code="bad_answer") from exc

    def fetch(self, name: str, number: int) -> FetchedVersion:
        data = self._call(f"fetch {name}@{number}", self._client.get_version_files, name, number)
        try:
            entrypoint = _entrypoint({"entrypoint": data.get("entrypoint")}, f"{name}@{number}")
            return FetchedVersion(str(data["content_hash"]), entrypoint, dict(data["files"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"unexpected answer fetching {name}@{number}: {exc!r}", code="bad_answer") from exc

    # -- canary (sandgate.registry.evidence, api/canary.py) --

    def canaries(self, names: Iterable[str]) -> dict[str, CanaryRoute]:
        """The candidates of those of ``names`` that have one.

        From the last ``pointers`` answer when it carried them (no request: the
        registry asks right after the poll that saw the move); else
        ``GET /v1/canaries?names=…`` for the rest.
        """
        wanted = sorted(set(names))
        known = {n: r for n in wanted if (r := self._routes.get(n)) is not None}
        wanted = [n for n in wanted if n not in self._routes]
        if not wanted:
            return known
        if getattr(self, "_no_canaries", False):
            return known
        try:
            data = self._call("read the canaries", lambda: self._client._json(
                "GET", "/v1/canaries", params={"names": ",".join(wanted)}))
        except NotFound:  # a server without canary support: nothing is ever split
            self._no_canaries = True
            return known
        try:
            return known | {n: CanaryRoute(int(c["candidate"]), int(c["weight"]), bool(c.get("fallback", False)),
                                           int(c.get("sample_io", 0)))
                            for n, c in data["canaries"].items() if n in wanted}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"unexpected /v1/canaries answer from {self.url}: {exc!r}", code="bad_answer") from exc

    def report_runtime(self, batch: Mapping[str, Any]) -> Any:
        """``POST /v1/runtime``: one batch of runtime counts (the evidence collector's thread only)."""
        return self._call("send runtime counts", lambda: self._client._json("POST", "/v1/runtime", json=batch))

    def watch(self, timeout: float) -> bool:
        """True as soon as the stream reports a move of a followed skill; False after ``timeout``.

        Also returns (False) within :data:`_STOP_CHECK` seconds once the event
        given to :meth:`bind_stop` is set, so that closing the registry does
        not wait for a slow poll interval to run out.
        """
        push = self._push
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            stop = self._stop_event  # read every slice: connect() binds it after the watcher started
            if stop is not None and stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if push is None:  # push=False: a plain wait, the registry polls
                self._closed.wait(min(left, _STOP_CHECK))
            elif push.wait(min(left, _STOP_CHECK)):
                return not self._closed.is_set()
        return False

    def bind_stop(self, stop: threading.Event | None) -> None:
        """The registry's stop event (``connect`` passes it): :meth:`watch` gives up when it is set."""
        self._stop_event = stop

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._push is not None:
            self._finalizer()  # closes the push stream (once)
        self._client.close()

    # ------------------------------------------------------------------ extras

    @property
    def push_connected(self) -> bool:
        """Whether the event stream is open now (its ``ready`` event arrived)."""
        return self._push is not None and self._push.connected.is_set()

    def wait_push(self, timeout: float = 5.0) -> bool:
        """Block until the event stream is open (True) or ``timeout`` passes (False)."""
        return self._push is not None and self._push.connected.wait(timeout)

    def push_stats(self) -> dict[str, Any]:
        """``connected``, ``connects``, ``moves`` (wake-ups), ``cursor`` (resume id), ``names``, ``last_error``."""
        if self._push is None:
            return {"enabled": False}
        return self._push.stats()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One client call, its failure in the registry's terms (see the class docstring)."""
        import httpx  # only an HTTP backend needs it (a store consumer never imports it)

        if self._closed.is_set():
            raise StoreError(f"the HTTP backend for {self.url} is closed", code="closed")
        try:
            return fn(*args)
        except ApiError as exc:
            raise _api_error(exc, what=what, url=self.url) from exc
        except (ConfigError, StoreError, NotFound, Conflict, InvalidTransition):
            raise  # NotFound, 503 store errors: already in the registry's terms
        except SandgateError as exc:  # InfrastructureError: unreachable, timeout, 503
            raise StoreError(f"cannot {what}: {exc}", code=exc.code) from exc
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot {what} at {self.url}: {type(exc).__name__}: {exc}", code="bad_answer") from exc
        except RuntimeError as exc:  # httpx: "the client has been closed"
            raise StoreError(f"cannot {what}: {exc}", code="closed") from exc

    def __repr__(self) -> str:
        return f"HttpBackend({self.url!r})"


def _redact(url: str) -> str:
    """``url`` without credentials, query or fragment (safe for logs and messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


def _api_error(exc: ApiError, *, what: str, url: str) -> SandgateError:
    """An :class:`~sandgate.errors.ApiError` (a status the library has no class for) for a registry."""
    if exc.status == 401:
        return ConfigError(
            f"the sandgate server at {url} refused the API key ({exc.message}): check api_key= or "
            "SANDGATE_API_KEY (`sandgate keys list` shows the keys; a rotated or revoked key stops working)",
            code="unauthorized",
        )
    if exc.status == 403:
        return ConfigError(
            f"the API key may not {what} on {url} ({exc.message}): a registry needs a key with the reader "
            "role or above",
            code="forbidden",
        )
    if exc.status == 429:
        after = f"; retry after {exc.retry_after:g} s" if exc.retry_after else ""
        return StoreError(f"{url} rate-limits this key ({exc.message}){after}", code="rate_limited")
    return StoreError(f"cannot {what}: HTTP {exc.status} from {url}: {exc.message}", code=exc.code or "http_error")


def _stream_transport(**kwargs: Any) -> Any:
    """An ``httpx.HTTPTransport`` that remembers the socket of its open response, to interrupt a read."""
    import httpx

    class StreamTransport(httpx.HTTPTransport):
        stream: Any = None

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            self.stream = response.extensions.get("network_stream")
            return response

        def interrupt(self) -> None:
            """Wake a read blocked on the open stream (closing its file descriptor would not)."""
            stream, self.stream = self.stream, None
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    return StreamTransport(**kwargs)


class _PushStream:
    """The background reader of ``GET /v1/watch`` behind :meth:`HttpBackend.watch`.

    Holds no reference to the backend (an abandoned backend is finalized and
    closes this). State shared with the registry's threads: ``names`` (only
    grows), ``cursor`` (the resume point), ``moved`` (set by a move of a
    followed skill, cleared by :meth:`wait`).
    """

    def __init__(
        self,
        make_client: Callable[[Any], Any],
        *,
        url: str,
        transport: Any,
        read_timeout: float,
        reconnect_min: float,
        reconnect_max: float,
    ) -> None:
        import httpx

        if transport is None:
            # no keep-alive: every stream has its own connection, which interrupt() may shut down
            transport = _stream_transport(limits=httpx.Limits(max_keepalive_connections=0))
        self._transport = transport
        self._client = make_client(transport)
        self.url = url
        self.read_timeout = read_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._lock = threading.Lock()
        self.names: frozenset[str] = frozenset()
        self.cursor: int | None = None
        self.moved = threading.Event()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0
        self.moves = 0
        self.last_error: str | None = None
        self._rng = random.Random()

    def follow(self, names: Iterable[str], last_event_id: int | None) -> None:
        """Follow ``names`` too; ``last_event_id``: where a first stream starts (the poll's view)."""
        with self._lock:
            if self._stop.is_set():
                return
            wider = self.names | frozenset(names)
            changed = wider != self.names
            self.names = wider
            if self.cursor is None and last_event_id is not None:
                self.cursor = last_event_id
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sandgate-registry-push", daemon=True)
                self._thread.start()
                return
        if changed:
            self._interrupt()  # reopen with the wider filter, from the same cursor

    def wait(self, timeout: float) -> bool:
        if self.moved.wait(timeout):
            # cleared before the registry polls: a move reported after this is seen by that poll
            # (the server sends an event only once it is committed) or wakes the next wait
            self.moved.clear()
            return True
        return False

    def stats(self) -> dict[str, Any]:
        return {"enabled": True, "connected": self.connected.is_set(), "connects": self.connects,
                "moves": self.moves, "cursor": self.cursor, "names": sorted(self.names),
                "last_error": self.last_error}

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            thread = self._thread
        self.moved.set()
        self._interrupt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        with contextlib.suppress(Exception):
            self._client.close()

    def _interrupt(self) -> None:
        interrupt = getattr(self._transport, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def _backoff(self, failures: int) -> float:
        delay = min(self.reconnect_max, self.reconnect_min * 2 ** max(0, failures - 1))
        return self._rng.uniform(delay / 2, delay)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            names, cursor = self.names, self.cursor
            fatal = ended = False
            try:
                self._read(names, cursor)
                error, ended = "the server ended the stream", True
            except Exception as exc:  # the stream is down: polling carries on alone meanwhile
                if isinstance(exc, ApiError):  # an HTTP refusal
                    exc = _api_error(exc, what="watch pointer moves", url=self.url)
                error = f"{type(exc).__name__}: {exc}"
                fatal = isinstance(exc, ConfigError)  # 401/403: the key will not get better soon
            was_connected = self.connected.is_set()
            self.connected.clear()
            if self._stop.is_set():
                return
            if self.names != names:  # interrupted to follow more skills: reopen at once
                log.debug("push stream of %s: following %d skill(s) now", self.url, len(self.names))
                continue
            failures = 1 if was_connected else failures + 1
            if fatal:
                failures = max(failures, 32)
            self.last_error = error
            delay = self._backoff(failures)
            if was_connected and ended:  # a server shutdown, a proxy's idle timeout: not a failure yet
                log.info("push stream of %s ended by the server; reconnecting in %.2f s", self.url, delay)
            elif failures == 1 or fatal:
                log.warning("push stream of %s down (%s): polling only until it is back; reconnecting in %.2f s",
                            self.url, error, delay)
            else:
                log.debug("push stream of %s still down (%s); attempt %d in %.2f s", self.url, error, failures, delay)
            self._stop.wait(delay)

    def _read(self, names: frozenset[str], cursor: int | None) -> None:
        """One stream, until it ends, breaks, or has to be reopened (new names, close)."""
        skills = sorted(names)
        follow_all = sum(len(n) + 1 for n in skills) > _MAX_SKILLS_PARAM
        stream = self._client.watch_raw(
            skills=None if follow_all else skills, actions=_MOVES, last_event_id=cursor,
            read_timeout=self.read_timeout,
        )
        with contextlib.closing(stream):
            for kind, event_id, data in stream:
                if event_id is not None and (self.cursor is None or event_id > self.cursor):
                    self.cursor = event_id
                if kind == "ready":
                    self.connects += 1
                    if self.connects > 1 or self.last_error:
                        log.info("push stream of %s connected (resuming after event %s)", self.url, event_id)
                    self.last_error = None
                    self.connected.set()
                elif kind in _MOVES and isinstance(data, Mapping) and data.get("skill") in names:
                    self.moves += 1
                    self.moved.set()
                if self._stop.is_set() or self.names != names:
                    return


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
        from sandgate.store import pointers

        with _store_errors(self.store):
            return pointers.active_pointers(self.store, names=list(names))

    def describe(self, name: str, number: int) -> VersionInfo:
        from sandgate.store import versions

        with _store_errors(self.store):
            v = versions.get_version(self.store, name=name, number=number)
        return VersionInfo(v.content_hash, _entrypoint(v.manifest, f"{name}@{number}"))

    def fetch(self, name: str, number: int) -> FetchedVersion:
        from sandgate.store import versions

        with _store_errors(self.store):
            v = versions.get_version(self.store, name=name, number=number)
            files = versions.get_version_files(self.store, name=name, number=number)
        return FetchedVersion(v.content_hash, _entrypoint(v.manifest, f"{name}@{number}"), files)

    # -- canary (sandgate.store.canary) --

    def canaries(self, names: Iterable[str]) -> dict[str, CanaryRoute]:
        from sandgate.store import canary

        with _store_errors(self.store):
            return {n: CanaryRoute(*row) for n, row in canary.canary_routes(self.store, names=names).items()}

    def report_runtime(self, batch: Mapping[str, Any]) -> Any:
        from sandgate.store import canary

        with _store_errors(self.store):
            return canary.record_runtime(self.store, batch=batch)

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
