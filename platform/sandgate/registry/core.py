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

Canary routing and runtime evidence (see :mod:`sandgate.registry.evidence`):

* every call is counted against its version's :class:`~sandgate.registry.evidence.Recorder`
  (``v.rec``; one per version and pointer generation): one ``next()`` on an
  ``itertools.count`` (atomic); one call in :data:`TIME_EVERY` also reads the
  clock twice and appends its latency bucket;
* while a skill has a *candidate* (a canary), the active ``_Loaded`` carries a
  ``route`` (the loaded candidate, its weight, ``fallback``); a call picks the
  candidate with probability ``weight`` % (random), or by a stable hash of
  the caller's routing key (:meth:`Registry.call_keyed`: the same key always
  lands on the same side, and a key on the candidate at 10 % stays on it at
  50 %). ``route`` is replaced by single assignment, like ``_active``;
* ``fallback``: an exception in the candidate is counted as the candidate's
  failure, then the call runs again on the active version and the caller gets
  that answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandgate.errors import NotFound, SandgateError
from sandgate.names import SKILL_NAME as _SKILL_NAME
from sandgate.names import SKILL_NAME_PATTERN
from sandgate.registry.backends import FetchedVersion, RegistryBackend, VersionInfo
from sandgate.registry.evidence import Evidence, Recorder
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

EventKind = Literal[
    "loaded", "swapped", "rolled_back", "load_failed", "unloaded", "backend_error", "canary", "canary_ended"
]


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
    * ``canary`` — calls are now split between ``old`` (active) and ``new``
      (the candidate) at the pointer's weight (:meth:`Registry.canary`);
    * ``canary_ended`` — the candidate ``old`` no longer gets calls
      (rolled back, aborted, or now the active version ``new``).
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
        elif self.kind == "canary":
            text = f"{ref}: candidate {self.new} beside active {self.old}"
        elif self.kind == "canary_ended":
            text = f"{ref}: candidate {self.old} no longer routed ({self.new} active)"
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
        "rec",
        "route",
    )

    def __init__(self, m: LoadedModule, rec: Recorder | None = None) -> None:
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
        #: where this version's calls are counted (replaced when the pointer's generation moves)
        self.rec = rec if rec is not None else Recorder(m.name, m.number, 0)
        #: set on the *active* version while the skill has a candidate (a canary)
        self.route: _Route | None = None

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


class _Route:
    """A canary: the loaded candidate beside the active version, and how calls are split."""

    __slots__ = ("candidate", "weight", "fallback", "generation")

    def __init__(self, candidate: _Loaded, weight: int, fallback: bool, generation: int) -> None:
        self.candidate = candidate
        #: percent of calls that go to the candidate
        self.weight = weight
        self.fallback = fallback
        self.generation = generation


_ns = time.perf_counter_ns
#: every call is counted; one in ``TIME_EVERY`` is timed for the latency histogram (two clock reads
#: cost more than the rest of the hot path together on some machines)
TIME_EVERY = 8
TIME_EVERY_MASK = TIME_EVERY - 1


def _run(v: _Loaded, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``v`` (whose in-flight count the caller holds) and count the call (as ``Registry.call`` does)."""
    rec = v.rec
    if next(rec.calls) & TIME_EVERY_MASK and not rec.sample_left:
        try:
            return v.fn(*args, **kwargs)
        except Exception as exc:
            rec.err.append(type(exc).__qualname__)
            raise
    return _timed(rec, v.fn, args, kwargs)


def _timed(rec: Recorder, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One call in ``TIME_EVERY``: its latency goes into the histogram (and a sample, if wanted)."""
    t0 = _ns()
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:
        _record(rec, t0, args, kwargs, error=exc)
        raise
    _record(rec, t0, args, kwargs, out)
    return out


def _record(rec: Recorder, t0: int, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any = None,
            error: Exception | None = None) -> None:
    """A timed call's outcome: its error type (if it raised), its latency, and a sample if wanted."""
    if error is not None:
        rec.err.append(type(error).__qualname__)
    _latency(rec, _ns() - t0)
    if rec.sample_left:
        rec.sample(args, kwargs, out, error=error)


def _latency(rec: Recorder, d: int) -> None:
    n = d.bit_length()  # sandgate.policy.canary.bucket_of, inlined
    rec.lat.append((n << 2) | ((d >> (n - 3)) & 3) if n > 2 else n)


def _key_slot(key: Any) -> int:
    """A routing key's stable slot in 0..9999 (the same in every process)."""
    data = key if isinstance(key, bytes) else str(key).encode("utf-8", "surrogatepass")
    return zlib.crc32(data) % 10_000


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
        return _run(self._live(), args, kwargs)  # counted like a registry call

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
        report: bool = True,
        report_interval: float = 1.0,
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
        # -- canary routing and runtime evidence (sandgate.registry.evidence) --
        sink = getattr(backend, "report_runtime", None) if report else None
        self._evidence = Evidence(sink, interval=report_interval)
        #: name -> (the active version carrying the route, the route)
        self._routes: dict[str, tuple[_Loaded, _Route]] = {}
        #: name -> the canary state of the last pointer read (CanaryRoute or None)
        self._canary_info: dict[str, Any] = {}
        #: names whose candidate could not be loaded (retried at the next poll)
        self._route_retry: set[str] = set()
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
        if v.route is not None:
            return self._routed(name, v, None, args, kwargs)
        inflight = v.inflight
        inflight.append(None)
        try:
            if v.unloading:
                return self._call_again(name, args, kwargs)
            rec = v.rec
            if next(rec.calls) & TIME_EVERY_MASK and not rec.sample_left:  # counted, not timed
                try:
                    return v.fn(*args, **kwargs)
                except Exception as exc:
                    rec.err.append(type(exc).__qualname__)
                    raise
            return _timed(rec, v.fn, args, kwargs)
        finally:
            inflight.pop()

    def call_keyed(self, name: str, routing_key: Any, /, *args: Any, **kwargs: Any) -> Any:
        """``call``, routed by ``routing_key`` during a canary: the same key always gets the same version.

        (``str(routing_key)`` is hashed, CRC-32 modulo 10000 against ``weight`` x 100, so
        raising the weight only moves keys onto the candidate, never off it.)
        """
        try:
            v = self._active[name]
        except KeyError:
            v = self._miss(name)
        if v.route is not None:
            return self._routed(name, v, routing_key, args, kwargs)
        return self.call(name, *args, **kwargs)

    def _routed(self, name: str, v: _Loaded, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        route = v.route
        if route is None:
            return self.call(name, *args, **kwargs)
        if key is None:
            to_candidate = random.random() * 100 < route.weight
        else:
            to_candidate = _key_slot(key) < route.weight * 100
        if not to_candidate:
            return self._run_on(name, v, args, kwargs)
        c = route.candidate
        c.inflight.append(None)
        try:
            if c.unloading:  # the canary ended under us: the active version answers
                return self.call(name, *args, **kwargs)
            try:
                return _run(c, args, kwargs)
            except Exception:
                if not route.fallback:
                    raise
                c.rec.fallbacks.append(None)
                log.debug("%s@%d failed; falling back to %s@%d", name, c.number, name, v.number, exc_info=True)
        finally:
            c.inflight.pop()
        return self._run_on(name, v, args, kwargs)

    def _run_on(self, name: str, v: _Loaded, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        v.inflight.append(None)
        try:
            if v.unloading:
                return self._call_again(name, args, kwargs)
            return _run(v, args, kwargs)
        finally:
            v.inflight.pop()

    def _call_again(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        v = self._acquire(name)
        try:
            return _run(v, args, kwargs)
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
            route = v.route
            if route is not None and random.random() * 100 < route.weight:
                c = route.candidate
                c.inflight.append(None)
                try:
                    if not c.unloading:
                        try:
                            return await self._acall_on(c, args, kwargs)
                        except Exception:
                            if not route.fallback:
                                raise
                            c.rec.fallbacks.append(None)
                finally:
                    c.inflight.pop()
            return await self._acall_on(v, args, kwargs)
        finally:
            v.inflight.pop()

    @staticmethod
    async def _acall_on(v: _Loaded, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        rec = v.rec
        next(rec.calls)
        t0 = _ns()  # async calls are always timed (their cost dwarfs two clock reads)
        try:
            if v.is_async:
                out = await v.target(*args, **kwargs)
            else:
                out = await asyncio.to_thread(v.target, *args, **kwargs)
        except Exception as exc:
            _record(rec, t0, args, kwargs, error=exc)
            raise
        _record(rec, t0, args, kwargs, out)
        return out

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
        # canary state is read only for skills whose pointer generation moved (every canary change bumps it)
        changed = [
            n for n in names
            if n in pointers and (self._pointers.get(n) != (int(pointers[n][0]), int(pointers[n][1]))
                                  or n in self._route_retry)
        ]
        canaries = self._read_canaries(changed)
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
                new = self._obtain(name, number, generation=generation)
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
        for name in changed:
            events.extend(self._apply_route(name, canaries.get(name)))
        return events

    # ------------------------------------------------------------------ canary routing

    def _read_canaries(self, names: list[str]) -> dict[str, Any]:
        """``{name: CanaryRoute}`` from the backend (optional ``canaries``); raises like ``pointers``."""
        fn = getattr(self.backend, "canaries", None)
        if fn is None or not names:
            return {}
        return dict(fn(names))

    def _apply_route(self, name: str, info: Any) -> list[RegistryEvent]:
        """Bring ``name``'s route (and its recorders' generation) in line with ``info`` (caller holds the lock)."""
        active, ptr = self._active.get(name), self._pointers.get(name)
        if active is None or ptr is None or active.number != ptr[0]:
            return []  # the new active version did not load: the old one keeps serving as it was
        number, generation = ptr
        self._route_retry.discard(name)
        self._canary_info[name] = info
        sample = int(getattr(info, "sample_io", 0) or 0)
        self._new_recorder(active, generation, sample)
        old = self._routes.pop(name, None)
        if old is not None and old[0] is not active:
            old[0].route = None
        wanted = getattr(info, "candidate", None)
        if wanted is None or wanted == number or int(getattr(info, "weight", 0)) <= 0:
            active.route = None
            if old is not None:
                self._retire_candidate(name, old[1].candidate, active)
                return [RegistryEvent("canary_ended", name, old[1].candidate.number, number, generation=generation)]
            return []
        cand = None
        if old is not None:
            if old[1].candidate.number == wanted and not old[1].candidate.unloaded:
                cand = old[1].candidate
            else:
                self._retire_candidate(name, old[1].candidate, active)
        if cand is None:
            try:
                cand = self._obtain(name, wanted, generation=generation)
            except LoadFailed as exc:
                active.route = None  # every call goes to the active version until it loads
                self._route_retry.add(name)
                event = RegistryEvent("load_failed", name, number, wanted, error=exc, generation=generation)
                log.error("%s (candidate)", event, exc_info=exc.__cause__ or exc)
                return [event]
        self._new_recorder(cand, generation, sample)
        route = _Route(cand, int(info.weight), bool(getattr(info, "fallback", False)), generation)
        active.route = route  # the atomic switch of the split
        self._routes[name] = (active, route)
        event = RegistryEvent("canary", name, number, wanted, generation=generation)
        log.info("%s: candidate %s@%d at %d %% (generation %d)", name, name, wanted, route.weight, generation)
        return [event]

    def _new_recorder(self, v: _Loaded, generation: int, sample: int) -> None:
        """Count ``v``'s calls under ``generation`` from now on (the old recorder is drained, then dropped)."""
        old = v.rec
        if old.generation == generation and old.sample_left == sample and not old.samples and not sample:
            return
        v.rec = self._evidence.recorder(v.name, v.number, generation, sample)
        self._evidence.retire(old)

    def _retire_candidate(self, name: str, cand: _Loaded, active: _Loaded) -> None:
        if cand is not active and cand not in self._retired.get(name, []):
            self._retired.setdefault(name, []).append(cand)

    def canary(self, name: str) -> dict[str, Any] | None:
        """The split this registry applies to ``name`` now: ``{active, candidate, weight, fallback, generation}``."""
        v = self._active.get(name)
        route = v.route if v is not None else None
        if v is None or route is None:
            return None
        return {"active": v.number, "candidate": route.candidate.number, "weight": route.weight,
                "fallback": route.fallback, "generation": route.generation}

    def runtime_stats(self) -> dict[str, Any]:
        """What the evidence collector sent, holds and dropped, and this process's totals per version."""
        return self._evidence.stats()

    def flush_evidence(self, timeout: float = 5.0) -> bool:
        """Send the runtime counts now (True: nothing left unsent)."""
        return self._evidence.flush(timeout)

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

    def _obtain(self, name: str, number: int, *, generation: int = 0) -> _Loaded:
        """Version ``number`` of ``name``: an old one still loaded, or a fresh load."""
        routed = self._routes.get(name)
        if routed is not None and routed[1].candidate.number == number and not routed[1].candidate.unloaded:
            return routed[1].candidate  # a candidate promoted fully: already loaded
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
        return _Loaded(module, self._evidence.recorder(name, number, generation))

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
            for _owner, route in self._routes.values():
                versions.append(route.candidate)
            self._routes.clear()
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
        self._evidence.close(timeout=min(timeout, 1.0))  # the last counts, before the backend goes
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
