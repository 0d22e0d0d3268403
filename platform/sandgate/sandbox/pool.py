"""Warm pools: hardened sandboxes created and started ahead of need, each used once.

A warm sandbox is an ordinary sandbox (:func:`sandgate.sandbox.runner.create_sandbox`:
the same hardening, the labels ``sandgate.managed=true`` and the controller's id,
plus ``sandgate.pool``) started before any evaluation wants it. Its harness has
already done the work that depends on nothing submitted — the test runner has
imported pytest, its plugins and coverage, semgrep's engine is located — and
blocks reading its payload from stdin. :meth:`WarmPool.take` hands one to exactly
one evaluation and forgets it; the run removes it like any other sandbox. Nothing
is ever returned to a pool, so nothing one skill leaves behind (files in ``/work``
or ``/tmp``, a background process) can be seen by the next.

One :class:`WarmPool` per (image, limits, the harness's arguments) — the runtime
is one of the limits; the arguments say whether the harness prepares a mutation
server, which only a policy with a mutation phase needs — kept by a
:class:`PoolManager`. Each pool refills itself in a background thread,
retires sandboxes older than ``max_age`` seconds, and drains itself when the
image behind its tag changes (a rebuild or a retag): a sandbox of the old image
is never handed out. :meth:`PoolManager.close` drains every pool (at shutdown,
and at interpreter exit). A controller killed with SIGKILL cannot drain: its
pool's sandboxes carry its controller id, so the reaper (``sandgate reap``, a
worker's start-up and periodic reap, the scheduler's orphan job) removes them.

The static phase still ends before any submitted code runs: the payload (and so
every submitted byte) reaches a warm sandbox exactly as it reaches a cold one,
and the harness sends the test runner its job only after the scan.

A process runs at most one manager (:func:`enable`); ``evaluate()`` uses it when
there is one (workers enable it; a one-shot CLI ``evaluate`` does not).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from sandgate.config import Settings, get_settings
from sandgate.errors import SandgateError
from sandgate.limits import Limits
from sandgate.sandbox.docker_backend import as_backend
from sandgate.sandbox.runner import (
    POOL_LABEL,
    create_sandbox,
)

__all__ = ["PoolManager", "WarmPool", "current", "disable", "enable", "start"]

log = logging.getLogger("sandgate.sandbox")

#: seconds between the refill thread's checks of the image behind the pool's tag
IMAGE_CHECK_SECONDS = 2.0
#: pools one manager keeps (least recently used drained first)
MAX_POOLS = 4


@dataclass(frozen=True, slots=True)
class _Warm:
    container_id: str
    image_id: str
    born: float  # time.monotonic() when started


class WarmPool:
    """Up to ``size`` started, unused sandboxes of ``image`` under ``limits``."""

    def __init__(self, client: Any, *, image: str, limits: Limits, size: int, max_age: float,
                 harness_argv: tuple[str, ...] = ()) -> None:
        if size < 1:
            raise ValueError("a warm pool needs a size of at least 1")
        if max_age <= 0:
            raise ValueError("a warm pool's max_age must be positive")
        self.client, self.image, self.limits = client, image, limits
        #: the harness's arguments (:func:`~sandgate.sandbox.runner.harness_args`): with or without
        #: a mutation server prepared
        self.harness_argv = tuple(harness_argv)
        #: the engine, as :class:`~sandgate.sandbox.backend.SandboxBackend` (``client`` may be a Docker client)
        self.backend = as_backend(client)
        self.size, self.max_age = int(size), float(max_age)
        self.name = f"pool-{uuid.uuid4().hex[:16]}"
        self._idle: deque[_Warm] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._image_id: str | None = None
        self._last_image_check = 0.0
        #: sandboxes handed out whose evaluation has not said :meth:`done` (by container id:
        #: when taken); each counts against ``size`` until then, so the refill does not
        #: compete for CPU with the evaluation that just took one
        self._in_use: dict[str, float] = {}
        #: counters, for tests and the benchmark
        self.stats = {"created": 0, "taken": 0, "misses": 0, "expired": 0, "drained": 0, "dead": 0}
        self._thread = threading.Thread(target=self._refill_loop, name=f"sandgate-{self.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ use

    def take(self, image_id: str | None = None) -> str | None:
        """A started, never used sandbox's container id, or None (the caller starts a cold one).

        ``image_id``: the id the caller resolved the image tag to; only a sandbox of
        that image is handed out, and a mismatch makes the refill thread check the
        tag at once (it drains the pool when the image behind the tag changed).
        The caller says :meth:`done` when the evaluation is over (the sandbox is
        then replaced); a sandbox never comes back.
        """
        now = time.monotonic()
        stale: list[_Warm] = []
        taken: _Warm | None = None
        with self._lock:
            if image_id is not None and image_id != self._image_id:
                self._last_image_check = 0.0
                self._wake.set()
            while self._idle:
                warm = self._idle.popleft()
                if now - warm.born > self.max_age:
                    stale.append(warm)
                    continue
                if image_id is not None and warm.image_id != image_id:
                    self._idle.appendleft(warm)
                    break
                taken = warm
                break
            if taken is None:
                self.stats["misses"] += 1
            else:
                self.stats["taken"] += 1
                self._in_use[taken.container_id] = now
        for warm in stale:
            self._discard(warm, "expired")
        if stale:
            self._wake.set()
        if taken is not None and not self._running(taken.container_id):
            self.stats["dead"] += 1
            self._discard(taken, None)
            self.done(taken.container_id)
            return None
        return taken.container_id if taken is not None else None

    def done(self, container_id: str) -> None:
        """The evaluation that took ``container_id`` is over: make its replacement."""
        with self._lock:
            found = self._in_use.pop(container_id, None)
        if found is not None:
            self._wake.set()

    def idle(self) -> list[str]:
        with self._lock:
            return [w.container_id for w in self._idle]

    def close(self) -> None:
        """Stop refilling and remove every unused sandbox."""
        with self._lock:
            self._closed = True
            left, self._idle = list(self._idle), deque()
        self._wake.set()
        self._thread.join(timeout=30)
        with self._lock:  # one the thread made while we waited
            left.extend(self._idle)
            self._idle.clear()
        for warm in left:
            self._discard(warm, "drained")

    # ------------------------------------------------------------------ inside

    def _switch_image(self, image_id: str) -> None:
        with self._lock:
            old, self._idle = list(self._idle), deque()
            changed = self._image_id is not None and self._image_id != image_id
            self._image_id = image_id
        if changed:
            log.info("image %s changed: warm pool drained", self.image, extra={"pool": self.name})
        for warm in old:
            self._discard(warm, "drained")
        self._wake.set()

    def _current_image_id(self) -> str | None:
        try:
            return self.backend.image_id(self.image)
        except Exception as exc:
            log.warning("warm pool: cannot inspect image %s: %s", self.image, exc, extra={"pool": self.name})
            return None

    def _running(self, container_id: str) -> bool:
        try:
            return self.backend.state(container_id).running
        except Exception:
            return False

    def _discard(self, warm: _Warm, why: str | None) -> None:
        if why is not None:
            self.stats[why] += 1
        try:
            self.backend.remove(warm.container_id)
        except SandgateError as exc:
            log.warning("warm pool: %s (the reaper will remove it)", exc, extra={"pool": self.name})

    def _make_one(self, image_id: str) -> _Warm | None:
        backend = self.backend
        container_id = create_sandbox(backend, image=self.image, limits=self.limits,
                                      evaluation_id=f"{self.name}-{uuid.uuid4().hex[:8]}",
                                      labels={POOL_LABEL: self.name}, harness_argv=self.harness_argv)
        try:
            if backend.state(container_id).image_id != image_id:
                backend.remove(container_id)  # the tag moved between check and create
                self._last_image_check = 0.0
                return None
            backend.start(container_id, self.limits)
        except BaseException:
            backend.remove(container_id)
            raise
        self.stats["created"] += 1
        return _Warm(container_id, image_id, time.monotonic())

    def _refill_loop(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if self._closed:
                    return
            now = time.monotonic()
            if now - self._last_image_check >= IMAGE_CHECK_SECONDS or self._image_id is None:
                self._last_image_check = now
                found = self._current_image_id()
                if found is not None and found != self._image_id:
                    self._switch_image(found)
            expired: list[_Warm] = []
            with self._lock:
                keep = deque(w for w in self._idle if now - w.born <= self.max_age)
                expired = [w for w in self._idle if now - w.born > self.max_age]
                self._idle = keep
                # an evaluation that never said done (it crashed) stops counting after its longest run
                overdue = now - self.limits.timeout_seconds - 60.0
                self._in_use = {c: t for c, t in self._in_use.items() if t > overdue}
                missing = self.size - len(self._idle) - len(self._in_use)
                image_id = self._image_id
            for warm in expired:
                self._discard(warm, "expired")
            if missing > 0 and image_id is not None:
                try:
                    made = self._make_one(image_id)
                except Exception as exc:
                    failures += 1
                    log.warning("warm pool: could not start a sandbox: %s", exc, extra={"pool": self.name})
                    self._wake.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
                    self._wake.clear()
                    continue
                failures = 0
                if made is None:
                    continue
                with self._lock:
                    stale = self._closed or made.image_id != self._image_id
                    if not stale:
                        self._idle.append(made)
                if stale:
                    self._discard(made, "drained")
                continue
            with self._lock:
                oldest = min((w.born for w in self._idle), default=now)
            wait = min(IMAGE_CHECK_SECONDS, max(0.05, oldest + self.max_age - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()


class PoolManager:
    """One :class:`WarmPool` per (image, limits, harness arguments), made on first use, at most :data:`MAX_POOLS`."""

    def __init__(self, *, size: int, max_age: float, max_pools: int = MAX_POOLS) -> None:
        if size < 1:
            raise ValueError("a pool manager needs a size of at least 1")
        self.size, self.max_age, self.max_pools = int(size), float(max_age), int(max_pools)
        self._pools: OrderedDict[tuple[str, Limits, tuple[str, ...]], WarmPool] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._taken: dict[str, WarmPool] = {}

    def pool(self, client: Any, *, image: str, limits: Limits,
             harness_argv: tuple[str, ...] = ()) -> WarmPool | None:
        """The pool of (image, limits, the harness's arguments), started if new; None once closed."""
        evicted: list[WarmPool] = []
        with self._lock:
            if self._closed:
                return None
            key = (image, limits, tuple(harness_argv))
            found = self._pools.get(key)
            if found is None:
                found = self._pools[key] = WarmPool(client, image=image, limits=limits,
                                                    size=self.size, max_age=self.max_age,
                                                    harness_argv=harness_argv)
                while len(self._pools) > self.max_pools:
                    evicted.append(self._pools.popitem(last=False)[1])
            self._pools.move_to_end(key)
        for old in evicted:
            old.close()
        return found

    def take(self, client: Any, *, image: str, image_id: str | None, limits: Limits,
             harness_argv: tuple[str, ...] = ()) -> str | None:
        """A warm sandbox for one evaluation, or None (start a cold one). Never raises."""
        try:
            found = self.pool(client, image=image, limits=limits, harness_argv=harness_argv)
            taken = found.take(image_id) if found is not None else None
        except Exception as exc:
            log.warning("warm pool unavailable: %s", exc)
            return None
        if taken is not None and found is not None:
            with self._lock:
                self._taken[taken] = found
        return taken

    def done(self, container_id: str | None) -> None:
        """The evaluation that took ``container_id`` (from :meth:`take`) is over."""
        if container_id is None:
            return
        with self._lock:
            found = self._taken.pop(container_id, None)
        if found is not None:
            found.done(container_id)

    def pools(self) -> list[WarmPool]:
        with self._lock:
            return list(self._pools.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for p in pools:
            p.close()


_current: PoolManager | None = None
_current_lock = threading.Lock()


def enable(*, size: int, max_age: float) -> PoolManager | None:
    """This process's manager (made once; drained at exit). ``size`` 0: no pool, None."""
    global _current
    if size <= 0:
        return None
    with _current_lock:
        if _current is None:
            _current = PoolManager(size=size, max_age=max_age)
            atexit.register(disable)
        return _current


def start(limits: Limits | None = None, settings: Settings | None = None, *,
          default_size: int = 2, harness_argv: tuple[str, ...] = ()) -> PoolManager | None:
    """:func:`enable` with the settings' ``pool_size`` (``default_size`` when unset) and
    ``pool_max_age``, and, given ``limits``, a pool of the settings' image under them
    filled now (a worker does this at start with its default policy's limits and harness
    arguments, and its concurrency + 1). None when ``pool_size`` is 0."""
    settings = settings or get_settings()
    size = default_size if settings.pool_size is None else settings.pool_size
    manager = enable(size=size, max_age=settings.pool_max_age)
    if manager is not None and limits is not None:
        from sandgate.sandbox.engine import shared_client

        manager.pool(shared_client(settings), image=settings.image, limits=limits, harness_argv=harness_argv)
    return manager


def current() -> PoolManager | None:
    return _current


def disable() -> None:
    """Drain and forget this process's manager (if any)."""
    global _current
    with _current_lock:
        manager, _current = _current, None
    if manager is not None:
        manager.close()
