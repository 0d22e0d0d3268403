"""Runtime evidence: what consumers' calls did, counted per version and sent in batches.

Every call a :class:`~sandgate.registry.Registry` makes is counted against
the version that ran it and the pointer *generation* it was routed under
(so the controller can tell the steps of a canary apart): calls, exceptions
by type, a latency histogram (:func:`sandgate.policy.canary.bucket_of`, 4
buckets per power of two), fallbacks, and, for skills whose policy opts in
(``sample_io``), a capped sample of JSON inputs and outputs.

Hot path (≤ 1 µs per call; ``bench/bench_registry.py`` prints the ratio):
``next()`` on the recorder's ``itertools.count`` (one C call, atomic under
the GIL: the call count is exact). One call in ``TIME_EVERY`` (8) is also
timed, ``perf_counter_ns`` before and after, and its latency bucket appended
to a list (a small int, cached by CPython: nothing is allocated), so the
histogram is a 1-in-8 sample. A failed call appends its exception type's
name (every failure is counted). No lock, no I/O.

The collector (:class:`Evidence`) runs one daemon thread. Every ``interval``
seconds it swaps each recorder's lists for fresh ones, aggregates the lists
it swapped out *one interval earlier* (a caller that read the old list just
before the swap has long finished its ``append`` by then), and hands the
aggregate to the sink as one batch:

* the sink is the backend's ``report_runtime(batch)`` (embedded: one store
  transaction; remote: ``POST /v1/runtime``). It runs on the collector
  thread only, so a slow, failing or absent store never blocks or fails a call.
* a batch that could not be sent is kept unchanged (same ``batch_id``: the
  store ignores a batch it already has, so a send whose answer was lost is
  not counted twice), and retried with backoff. At most ``max_batches`` are
  kept; the oldest are dropped first and counted in :meth:`Evidence.stats`
  (``dropped_calls``). Memory is bounded either way.
* a consumer killed with ``kill -9`` loses what it had not sent yet (at most
  two intervals of counts plus the unsent batches). A batch is one
  transaction, so the store never holds half of one.

What the counts are worth: they are reported by the consumer processes, with
their keys (remote) or their database credentials (embedded). A consumer can
misreport; the store records which consumer sent what.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Recorder", "Evidence", "MAX_SAMPLE_BYTES"]

log = logging.getLogger("sandgate.registry")

#: one sampled input or output larger than this (JSON) is kept as a note, not the value
MAX_SAMPLE_BYTES = 16_384

_Held = tuple["Recorder", int, list[int], list[str], list[None], list[dict[str, Any]]]


class Recorder:
    """The hot path's buffers for one (skill, version, generation). Written without a lock."""

    __slots__ = ("skill", "version", "generation", "calls", "reads", "reported", "lat", "err", "fallbacks", "samples",
                 "sample_left", "retired")

    def __init__(self, skill: str, version: int, generation: int, sample: int = 0) -> None:
        self.skill = skill
        self.version = version
        self.generation = generation
        #: ``next()``-ed by every call; the collector reads it with ``next()`` too (``reads`` of them)
        self.calls = itertools.count()
        self.reads = 0
        #: calls already handed to a batch
        self.reported = 0
        #: one latency bucket per timed call (successful or not)
        self.lat: list[int] = []
        #: one exception type name per failed call
        self.err: list[str] = []
        #: one entry per call of this version that failed and was retried on the active version
        self.fallbacks: list[None] = []
        self.samples: list[dict[str, Any]] = []
        #: samples this recorder may still take (0: the policy did not opt in)
        self.sample_left = sample
        #: replaced by a newer recorder: dropped once it stays empty (0: in use)
        self.retired = 0

    def sample(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any = None,
               error: BaseException | None = None) -> None:
        """Keep one call's input and output as JSON (called only while ``sample_left``)."""
        if self.sample_left <= 0:
            return
        self.sample_left -= 1
        entry: dict[str, Any] = {"input": _json_or_note({"args": list(args), "kwargs": kwargs})}
        if error is not None:
            entry["error"] = f"{type(error).__qualname__}: {error}"[:1000]
        else:
            entry["output"] = _json_or_note(output)
        self.samples.append(entry)


def _json_or_note(value: Any) -> Any:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {"$unserialisable": f"{type(value).__name__}: {exc}"[:200]}
    if len(text) > MAX_SAMPLE_BYTES:
        return {"$too_large": len(text)}
    return json.loads(text)  # a copy: later mutation by the caller does not change the sample


def _consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Evidence:
    """Collects the recorders of one registry and sends their counts (see the module docstring)."""

    def __init__(
        self,
        sink: Callable[[dict[str, Any]], Any] | None,
        *,
        interval: float = 1.0,
        max_batches: int = 64,
        max_backoff: float = 30.0,
        consumer: str | None = None,
        start: bool = True,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0 seconds")
        self.sink = sink
        self.interval = interval
        self.max_batches = max_batches
        self.max_backoff = max_backoff
        self.consumer = consumer or _consumer_id()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recorders: list[Recorder] = []
        #: lists swapped out one interval ago, aggregated at the next cycle
        self._held: list[_Held] = []
        self._queue: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._failures = 0
        self._next_send = 0.0
        self.sent_batches = 0
        self.sent_calls = 0
        self.dropped_calls = 0
        self.last_error: str | None = None
        #: totals since start, per (skill, version): what this process saw (``Registry.runtime_stats``)
        self.totals: dict[tuple[str, int], dict[str, int]] = {}
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=_run, args=(weakref.ref(self), self._stop, interval),
                                            name="sandgate-evidence", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ recorders

    def recorder(self, skill: str, version: int, generation: int, sample: int = 0) -> Recorder:
        rec = Recorder(skill, version, generation, sample)
        with self._lock:
            self._recorders.append(rec)
        return rec

    def retire(self, rec: Recorder) -> None:
        """``rec`` will get no new calls (a newer recorder replaced it): drop it once drained."""
        rec.retired = 1

    # ------------------------------------------------------------------ the collector

    def _swap(self) -> list[_Held]:
        """Swap out every recorder's lists; return the ones swapped out the previous time."""
        with self._lock:
            fresh: list[_Held] = []
            keep: list[Recorder] = []
            for rec in self._recorders:
                lat, err, fb, smp = rec.lat, rec.err, rec.fallbacks, rec.samples
                calls = next(rec.calls) - rec.reads  # every call so far (minus our own reads)
                rec.reads += 1
                delta = calls - rec.reported
                if not (delta or lat or err or fb or smp):
                    if rec.retired:
                        rec.retired += 1
                        if rec.retired > 3:  # empty for three cycles since it was replaced: gone
                            continue
                    keep.append(rec)
                    continue
                keep.append(rec)
                rec.lat, rec.err, rec.fallbacks, rec.samples = [], [], [], []
                rec.reported = calls
                fresh.append((rec, delta, lat, err, fb, smp))
            self._recorders = keep
            held, self._held = self._held, fresh
        return held

    def _batch(self, held: list[_Held]) -> dict[str, Any] | None:
        reports: dict[tuple[str, int, int], dict[str, Any]] = {}
        for rec, delta, lat, err, fb, smp in held:
            key = (rec.skill, rec.version, rec.generation)
            r = reports.setdefault(key, {"skill": rec.skill, "version": rec.version, "generation": rec.generation,
                                         "calls": 0, "errors": 0, "error_types": {}, "latency": {},
                                         "fallbacks": 0, "samples": []})
            r["calls"] += delta
            r["errors"] += len(err)
            for name in err:
                r["error_types"][name] = r["error_types"].get(name, 0) + 1
            hist = r["latency"]
            for b in lat:
                hist[b] = hist.get(b, 0) + 1
            r["fallbacks"] += len(fb)
            r["samples"].extend(smp)
            total = self.totals.setdefault((rec.skill, rec.version), {"calls": 0, "errors": 0, "fallbacks": 0})
            total["calls"] += delta
            total["errors"] += len(err)
            total["fallbacks"] += len(fb)
        if not reports:
            return None
        for r in reports.values():
            r["errors"] = min(r["errors"], r["calls"])  # a failure whose latency append lost the race
            r["latency"] = {str(b): n for b, n in sorted(r["latency"].items())}
        return {"batch_id": uuid.uuid4().hex, "consumer": self.consumer, "sent_at": time.time(),
                "reports": list(reports.values())}

    def _enqueue(self, batch: dict[str, Any]) -> None:
        self._queue.append(batch)
        while len(self._queue) > self.max_batches:
            old = self._queue.popleft()
            lost = sum(r["calls"] for r in old["reports"])
            self.dropped_calls += lost
            log.warning("runtime evidence: dropped an unsent batch of %d call(s) (more than %d batches waiting)",
                        lost, self.max_batches)

    def _send(self) -> None:
        if self.sink is None:
            self._queue.clear()  # nowhere to send: the totals are all there is
            return
        if time.monotonic() < self._next_send:
            return
        while self._queue:
            batch = self._queue[0]
            try:
                self.sink(batch)
            except Exception as exc:  # the store or the API is away: keep the batch, back off
                self._failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self.max_backoff, self.interval * 2 ** min(self._failures, 10))
                self._next_send = time.monotonic() + delay
                if self._failures == 1:
                    log.warning("runtime evidence: cannot send (%s); keeping %d batch(es), retrying",
                                self.last_error, len(self._queue))
                return
            self._queue.popleft()
            self._failures = 0
            self.sent_batches += 1
            self.sent_calls += sum(r["calls"] for r in batch["reports"])

    def cycle(self, *, final: bool = False) -> None:
        """One collector step: swap, aggregate what was held, queue it, send what is queued.

        ``final``: also aggregate what was just swapped out (call it only when no
        call can still be running on a recorder, or accept that one may be missed).
        """
        with self._send_lock:
            held = self._swap()
            if final:
                with self._lock:
                    held += self._held
                    self._held = []
            batch = self._batch(held)
            if batch is not None:
                self._enqueue(batch)
            self._send()

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything now (from the calling thread); True when nothing is left unsent."""
        deadline = time.monotonic() + timeout
        self._next_send = 0.0
        self.cycle(final=True)
        while self._queue and self.sink is not None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            self._next_send = 0.0
            with self._send_lock:
                self._send()
        return not self._queue

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread and try once to send what is left: never waits on a store that is away.

        A send in progress on the collector thread is given ``timeout`` seconds;
        what cannot be sent at once is lost with the process (and logged).
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        if not self._send_lock.acquire(timeout=0.05):
            log.warning("runtime evidence: a send is still running at close; unsent counts are dropped")
            return
        try:
            self._next_send = 0.0
            held = self._swap()
            with self._lock:
                held += self._held
                self._held = []
            batch = self._batch(held)
            if batch is not None:
                self._enqueue(batch)
            self._send()
            if self._queue:
                log.warning("runtime evidence: %d call(s) not sent at close (%s)",
                            sum(r["calls"] for b in self._queue for r in b["reports"]), self.last_error)
        except Exception:  # pragma: no cover - closing must not raise
            log.exception("runtime evidence: final send failed")
        finally:
            self._send_lock.release()

    def stats(self) -> dict[str, Any]:
        queue = list(self._queue)
        return {"consumer": self.consumer, "sent_batches": self.sent_batches, "sent_calls": self.sent_calls,
                "pending_batches": len(queue), "pending_calls": sum(r["calls"] for b in queue for r in b["reports"]),
                "dropped_calls": self.dropped_calls, "last_error": self.last_error,
                "totals": {f"{s}@{v}": dict(t) for (s, v), t in sorted(self.totals.items())}}


def _run(ref: weakref.ReferenceType[Evidence], stop: threading.Event, interval: float) -> None:
    """The collector thread; holds the collector only weakly between cycles."""
    while not stop.wait(interval):
        ev = ref()
        if ev is None:
            return
        try:
            ev.cycle()
        except Exception:  # pragma: no cover - the collector must never die
            log.exception("runtime evidence collector failed")
        del ev
