"""The registry: an in-memory snapshot of active versions, kept fresh by a watcher.

Concurrency design (the hot path takes no lock):

* ``_active`` maps a skill name to its :class:`_Loaded` version. It is only
  ever changed by single-key assignment (``_active[name] = new``), which is
  atomic in CPython, so a reader sees the old or the new version — never a
  mix. Every mutation (loads, swaps, evictions, first-call loads) is
  serialised by one re-entrant lock that the hot path never takes.
* A call reads its version once and holds the reference: it finishes on the
  version it started on, whatever swaps happen meanwhile.
* In-flight calls are counted per version with a ``deque`` (``append``/``pop``
  are single C calls, atomic under the GIL). Eviction uses a Dekker-style
  handshake so that it never unloads a version a caller is about to enter:

  ======================================  ======================================
  caller                                  evictor (holds the lock)
  ======================================  ======================================
  ``v = _active[name]``                   ``v.unloading = True``
  ``v.inflight.append(None)``             ``if v.inflight or v.pins: abort``
  ``if v.unloading: retry from _active``  ``else: unload v``
  ======================================  ======================================

  Either the evictor sees the caller's count (and aborts), or the caller sees
  the flag (and retries with the active version, which is never evicted).
* Handles from :meth:`Registry.get` *pin* their version (a second counter)
  until they are released or garbage collected.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandgate.errors import NotFound, SandgateError
from sandgate.names import SKILL_NAME as _SKILL_NAME
from sandgate.names import SKILL_NAME_PATTERN
from sandgate.registry.backends import FetchedVersion, RegistryBackend, VersionInfo
from sandgate.registry.loader import (
    LoadedModule,
    LoadFailed,
    VersionCache,
    load_version,
    unload_version,
)

__all__ = ["Registry", "SkillHandle", "RegistryEvent", "EventKind"]

log = logging.getLogger("sandgate.registry")

#: longest wait between polls after repeated backend failures (seconds)
MAX_BACKOFF = 5.0

EventKind = Literal["loaded", "swapped", "rolled_back", "load_failed", "unloaded", "backend_error"]


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """Something the registry did or could not do.

    ``kind``:

    * ``loaded`` — first version of a skill now serving (``old`` is None);
    * ``swapped`` — the active version changed to a higher number;
    * ``rolled_back`` — it changed to a lower number (the registry only sees
      pointers: promoting an older version by hand also reports this);
    * ``load_failed`` — ``new`` could not be loaded; ``old`` (if any) keeps
      serving; ``error`` is the :class:`LoadFailed` (its ``__cause__`` is the
      skill's exception);
    * ``unloaded`` — an old version ``old`` was evicted (``max_loaded``);
    * ``backend_error`` — the backend failed (first failure of a streak; the
      watcher keeps retrying with backoff); ``name`` is None.
    """

    kind: EventKind
    name: str | None
    old: int | None
    new: int | None
    error: BaseException | None = None
    generation: int | None = None

    def __str__(self) -> str:
        ref = self.name or "*"
        if self.kind == "loaded":
            text = f"{ref}@{self.new}: loaded"
        elif self.kind in ("swapped", "rolled_back"):
            text = f"{ref}: {self.kind} {self.old} -> {self.new}"
        elif self.kind == "load_failed":
            keep = f"{ref}@{self.old} keeps serving" if self.old is not None else "nothing to serve"
            text = f"{ref}@{self.new}: load failed ({keep}): {self.error}"
        elif self.kind == "unloaded":
            text = f"{ref}@{self.old}: unloaded"
        else:
            text = f"backend error: {self.error}"
        return text


class _Loaded:
    """One loaded version plus its in-flight and pin counters."""

    __slots__ = (
        "name",
        "number",
        "content_hash",
        "entrypoint",
        "fn",
        "target",
        "is_async",
        "module",
        "inflight",
        "pins",
        "unloading",
        "unloaded",
        "orphaned",
    )

    def __init__(self, m: LoadedModule) -> None:
        self.name = m.name
        self.number = m.number
        self.content_hash = m.content_hash
        self.entrypoint = m.entrypoint
        self.target = m.function
        self.is_async = m.is_async
        self.fn = _sync_refusal(m) if m.is_async else m.function
        self.module = m
        self.inflight: deque[None] = deque()
        self.pins: deque[None] = deque()
        self.unloading = False
        self.unloaded = False
        #: the registry closed while this version was pinned: unload on the last unpin
        self.orphaned = False

    def try_unload(self) -> bool:
        """Unload unless a call is in flight or a handle pins it (see the module docstring)."""
        if self.unloaded:
            return True
        self.unloading = True
        if self.inflight or self.pins:
            self.unloading = False
            return False
        self.unloaded = True
        unload_version(self.module)
        return True


def _sync_refusal(m: LoadedModule) -> Callable[..., Any]:
    def refuse(*_: Any, **__: Any) -> Any:
        raise TypeError(f"{m.name}@{m.number}: entrypoint {m.entrypoint} is async: use `await registry.acall(...)`")

    return refuse


def _unpin(v: _Loaded) -> None:
    v.pins.pop()
    if v.orphaned and not v.pins and not v.inflight:
        v.try_unload()


class SkillHandle:
    """One version of a skill, pinned: it stays loaded while the handle lives.

    ``handle.call(...)`` always runs *this* version, whatever the pointer does.
    Release it with :meth:`release` (or ``with``); dropping the last reference
    releases it too.
    """

    __slots__ = ("name", "version", "content_hash", "entrypoint", "_v", "_release", "__weakref__")

    def __init__(self, v: _Loaded) -> None:
        self.name = v.name
        #: the version number
        self.version = v.number
        self.content_hash = v.content_hash
        self.entrypoint = v.entrypoint
        self._v: _Loaded | None = v
        self._release = weakref.finalize(self, _unpin, v)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def function(self) -> Callable[..., Any]:
        return self._live().target

    def _live(self) -> _Loaded:
        v = self._v
        if v is None:
            raise SandgateError(f"handle {self.ref} was released", code="handle_released")
        return v

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self._live().fn(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        v = self._live()
        if v.is_async:
            return await v.target(*args, **kwargs)
        return await asyncio.to_thread(v.target, *args, **kwargs)

    def release(self) -> None:
        self._v = None
        self._release()

    def __enter__(self) -> SkillHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "" if self._v is not None else " released"
        return f"<SkillHandle {self.ref} {self.content_hash[:19]}{state}>"


class Registry:
    """Follows the ``active`` pointers of the skills it is asked about. Build it with ``connect``."""

    def __init__(
        self,
        backend: RegistryBackend,
        *,
        cache_dir: str | Path,
        poll_interval: float = 0.05,
        max_loaded: int = 3,
        on_event: Callable[[RegistryEvent], Any] | None = None,
        skills: Iterable[str] = (),
        watch: bool = True,
        owns_backend: bool = True,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if max_loaded < 0:
            raise ValueError(f"max_loaded must be >= 0, got {max_loaded!r}")
        self.backend = backend
        self.cache = VersionCache(cache_dir)
        self.poll_interval = float(poll_interval)
        self.max_loaded = int(max_loaded)
        self._on_event = on_event
        self._owns_backend = owns_backend
        #: the snapshot the hot path reads: name -> serving version
        self._active: dict[str, _Loaded] = {}
        #: old versions still loaded, oldest first
        self._retired: dict[str, list[_Loaded]] = {}
        #: the pointer each serving version corresponds to: name -> (number, generation)
        self._pointers: dict[str, tuple[int, int]] = {}
        self._watched: set[str] = set()
        #: watched names without an active version at the last look
        self._missing: set[str] = set()
        #: name -> (number, generation, error): a non-retryable failure, not retried at that generation
        self._failed: dict[str, tuple[int, int, LoadFailed]] = {}
        #: name -> pointer of the last retryable failure (report once per pointer)
        self._retrying: dict[str, tuple[int, int]] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            for name in skills:
                self._miss(name)
        except BaseException:
            self.close()
            raise
        if watch:
            self._thread = threading.Thread(
                target=_watch_loop, args=(weakref.ref(self), self._stop), name="sandgate-registry", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ hot path

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the active version of ``name`` (resolved from the snapshot; no I/O once loaded)."""
        try:
            v = self._active[name]
        except KeyError:
            v = self._miss(name)
        inflight = v.inflight
        inflight.append(None)
        try:
            if v.unloading:
                return self._call_again(name, args, kwargs)
            return v.fn(*args, **kwargs)
        finally:
            inflight.pop()

    def _call_again(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        v = self._acquire(name)
        try:
            return v.fn(*args, **kwargs)
        finally:
            v.inflight.pop()

    def _acquire(self, name: str) -> _Loaded:
        """The active version with one in-flight count taken (caller pops it)."""
        while True:
            try:
                v = self._active[name]
            except KeyError:
                v = self._miss(name)
            v.inflight.append(None)
            if not v.unloading:
                return v
            v.inflight.pop()

    async def acall(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``call`` for asyncio code.

        An ``async def`` entrypoint is awaited on the running loop; a plain
        function runs in a worker thread (``asyncio.to_thread``) so a slow
        skill does not block the loop. A first call that has to load the
        skill loads it in a thread too.
        """
        if name not in self._active:
            await asyncio.to_thread(self._miss, name)
        v = self._acquire(name)
        try:
            if v.is_async:
                return await v.target(*args, **kwargs)
            return await asyncio.to_thread(v.target, *args, **kwargs)
        finally:
            v.inflight.pop()

    def get(self, name: str) -> SkillHandle:
        """A handle pinned to the version active now (``.version``, ``.content_hash``, ``.call``)."""
        while True:
            try:
                v = self._active[name]
            except KeyError:
                v = self._miss(name)
            v.pins.append(None)
            if not v.unloading:
                return SkillHandle(v)
            v.pins.pop()

    # ------------------------------------------------------------------ slow path

    def _miss(self, name: str) -> _Loaded:
        """A name not in the snapshot: load it now (first use), or explain why not."""
        with self._lock:
            if self._closed:
                raise SandgateError("the registry is closed", code="registry_closed")
            v = self._active.get(name)
            if v is not None:
                return v
            if not isinstance(name, str) or not _SKILL_NAME.match(name):
                raise NotFound(f"{name!r} is not a skill name ({SKILL_NAME_PATTERN})")
            known = name in self._watched
            if not known or (name not in self._missing and name not in self._failed):
                self._watched.add(name)
                events = self._sync([name])
            else:
                events = []
            v = self._active.get(name)
        self._emit(events)
        if v is not None:
            return v
        failed = self._failed.get(name)
        if failed is not None:
            number, _gen, error = failed
            raise LoadFailed(
                f"{name}@{number} is active but cannot be loaded here: {error}", code=error.code
            ) from error
        if name in self._missing:
            raise NotFound(f"skill {name!r} has no active version (unknown skill, or nothing promoted yet)")
        retry = next((e.error for e in events if e.kind == "load_failed"), None)
        raise LoadFailed(f"{name}: the active version could not be loaded: {retry}", retryable=True) from retry

    def _sync(self, names: Iterable[str]) -> list[RegistryEvent]:
        """Bring the snapshot of ``names`` in line with the backend (caller holds the lock).

        Raises what ``pointers`` raises; per-skill load failures become events.
        """
        names = sorted(set(names))
        if not names:
            return []
        pointers = self.backend.pointers(names)
        events: list[RegistryEvent] = []
        for name in names:
            ptr = pointers.get(name)
            if ptr is None:
                if name not in self._active:
                    self._missing.add(name)
                continue
            self._missing.discard(name)
            number, generation = ptr = (int(ptr[0]), int(ptr[1]))
            if self._pointers.get(name) == ptr:
                continue
            current = self._active.get(name)
            if current is not None and current.number == number:
                self._pointers[name] = ptr
                self._failed.pop(name, None)
                continue
            failed = self._failed.get(name)
            if failed is not None and failed[:2] == ptr:
                continue
            try:
                new = self._obtain(name, number)
            except LoadFailed as exc:
                events.extend(self._load_failed(name, current, ptr, exc))
                continue
            self._active[name] = new  # the atomic swap
            self._pointers[name] = ptr
            self._failed.pop(name, None)
            self._retrying.pop(name, None)
            if current is None:
                kind: EventKind = "loaded"
            else:
                self._retired.setdefault(name, []).append(current)
                kind = "rolled_back" if number < current.number else "swapped"
            event = RegistryEvent(kind, name, current.number if current else None, number, generation=generation)
            log.info("%s (generation %d)", event, generation)
            events.append(event)
            self._changed.notify_all()
        return events

    def _load_failed(
        self, name: str, current: _Loaded | None, ptr: tuple[int, int], exc: LoadFailed
    ) -> list[RegistryEvent]:
        number, generation = ptr
        old = current.number if current else None
        if exc.retryable:
            if self._retrying.get(name) == ptr:
                log.debug("%s@%d: still cannot load: %s", name, number, exc)
                return []
            self._retrying[name] = ptr
        else:
            self._failed[name] = (number, generation, exc)
        event = RegistryEvent("load_failed", name, old, number, error=exc, generation=generation)
        log.error("%s", event, exc_info=exc.__cause__ or exc)
        return [event]

    def _obtain(self, name: str, number: int) -> _Loaded:
        """Version ``number`` of ``name``: an old one still loaded, or a fresh load."""
        retired = self._retired.get(name, [])
        for v in retired:
            if v.number == number and not v.unloaded:
                retired.remove(v)
                return v
        backend = self.backend
        try:
            describe = getattr(backend, "describe", None)
            fetched: list[FetchedVersion] = []
            if describe is not None:
                info: VersionInfo = describe(name, number)
            else:
                fetched.append(backend.fetch(name, number))
                info = VersionInfo(fetched[0].content_hash, fetched[0].entrypoint)

            def files() -> Any:
                got = fetched[0] if fetched else backend.fetch(name, number)
                if got.content_hash != info.content_hash:
                    raise LoadFailed(
                        f"{name}@{number}: the backend changed its content hash between two reads",
                        code="integrity",
                    )
                return got.files

            root, data, _ = self.cache.materialize(info.content_hash, files)
        except LoadFailed:
            raise
        except Exception as exc:  # the backend's or the disk's failure: keep serving, retry later
            raise LoadFailed(
                f"{name}@{number}: cannot fetch: {type(exc).__name__}: {exc}", code="fetch_failed", retryable=True
            ) from exc
        module = load_version(
            name=name, number=number, content_hash=info.content_hash, entrypoint=info.entrypoint, files=data, root=root
        )
        return _Loaded(module)

    def _evict(self) -> list[RegistryEvent]:
        """Unload old versions beyond ``max_loaded`` per skill, oldest first, idle ones only."""
        events: list[RegistryEvent] = []
        for name, retired in self._retired.items():
            excess = len(retired) - self.max_loaded
            for v in list(retired):
                if excess <= 0:
                    break
                if v.try_unload():
                    retired.remove(v)
                    excess -= 1
                    event = RegistryEvent("unloaded", name, v.number, None)
                    log.debug("%s", event)
                    events.append(event)
        return events

    def _emit(self, events: list[RegistryEvent]) -> None:
        if self._on_event is None:
            return
        for event in events:
            try:
                self._on_event(event)
            except Exception:
                log.exception("registry on_event callback failed for %s", event)

    # ------------------------------------------------------------------ control

    def refresh(self) -> list[RegistryEvent]:
        """Poll once, now, in this thread: load and swap what moved, evict what is idle.

        Returns the events of this refresh (also sent to ``on_event``). A
        backend failure raises (:class:`~sandgate.errors.StoreError`); the
        snapshot is left as it was.
        """
        with self._lock:
            if self._closed:
                raise SandgateError("the registry is closed", code="registry_closed")
            events = self._sync(self._watched)
            events += self._evict()
        self._emit(events)
        return events

    def watch(self, *names: str) -> None:
        """Follow ``names`` from now on without calling them (loaded at the next refresh)."""
        with self._lock:
            for name in names:
                if not _SKILL_NAME.match(name):
                    raise NotFound(f"{name!r} is not a skill name")
                self._watched.add(name)

    def wait_for(self, name: str, version: int, timeout: float = 5.0) -> bool:
        """Block until ``name@version`` is the one serving (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                v = self._active.get(name)
                if v is not None and v.number == version:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._changed.wait(left)

    def version(self, name: str) -> int | None:
        """The version number serving ``name`` now (from the snapshot), None if none."""
        v = self._active.get(name)
        return v.number if v is not None else None

    def loaded(self, name: str) -> list[int]:
        """Numbers of the versions of ``name`` loaded in this process: the active one first."""
        with self._lock:
            out = [self._active[name].number] if name in self._active else []
            return out + [v.number for v in reversed(self._retired.get(name, []))]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """``{name: (version serving, generation it corresponds to)}``."""
        with self._lock:
            return {n: self._pointers[n] for n in self._active if n in self._pointers}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 5.0) -> None:
        """Stop watching, let in-flight calls finish (up to ``timeout``), unload everything.

        Versions pinned by a live handle are unloaded when their last handle is
        released. Calls after ``close`` raise.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            versions = list(self._active.values())
            for retired in self._retired.values():
                versions.extend(retired)
            self._active.clear()
            self._retired.clear()
            self._changed.notify_all()
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(timeout, self.poll_interval * 2))
        deadline = time.monotonic() + timeout
        for v in versions:
            while v.inflight and time.monotonic() < deadline:
                time.sleep(0.005)
            v.orphaned = True
            if not v.try_unload() and v.inflight:
                log.warning("%s@%d still running after close(): left loaded", v.name, v.number)
        if self._owns_backend:
            try:
                self.backend.close()
            except Exception:  # pragma: no cover - closing must not raise
                log.exception("closing the registry backend failed")

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._active)} serving"
        return f"<Registry {self.backend!r} {state}>"


def _watch_loop(ref: weakref.ReferenceType[Registry], stop: threading.Event) -> None:
    """The watcher thread. Holds the registry only weakly between polls (an abandoned one stops)."""
    failures = 0
    while not stop.is_set():
        registry = ref()
        if registry is None or registry.closed:
            return
        try:
            registry.refresh()
            failures = 0
        except Exception as exc:
            if registry.closed:
                return
            failures += 1
            if failures == 1:
                log.warning("registry poll failed (keeps serving, retrying with backoff): %s", exc)
                registry._emit([RegistryEvent("backend_error", None, None, None, error=exc)])
            else:
                log.debug("registry poll failed again (%d): %s", failures, exc)
        delay = registry.poll_interval if not failures else min(registry.poll_interval * 2**failures, MAX_BACKOFF)
        watch = getattr(registry.backend, "watch", None) if not failures else None
        del registry
        if watch is not None:
            try:
                watch(delay)
            except Exception as exc:  # a broken push channel falls back to polling
                log.debug("backend watch() failed: %s", exc)
                stop.wait(delay)
        else:
            stop.wait(delay)
