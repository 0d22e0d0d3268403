"""Per-key rate limits: token buckets, in this process.

Each API key has a bucket of ``burst`` tokens refilled at ``rate`` per second
(the key's own values if it has them, else the server's
``SANDGATE_API_RATE_PER_SECOND``/``_RATE_BURST``). A request takes one token;
an empty bucket is a 429 whose ``Retry-After`` says when the next token is due.
Failed authentications take from a separate bucket per client address, so a
stream of bad keys gets 429s instead of database lookups.

In-process means per server replica: with N replicas behind a balancer a key
gets up to N times its rate. That is the documented trade-off of having no
shared cache; the limits protect the service, they are not a billing meter.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Thread-safe token buckets keyed by strings, at most ``max_buckets`` kept (LRU)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 10_000) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_buckets

    def _level(self, key: str, rate: float, burst: int, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(burst), now))
        return min(float(burst), tokens + (now - last) * rate)

    def take(self, key: str, *, rate: float, burst: int, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 if allowed, else the seconds until they would be there."""
        if rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens = self._level(key, rate, burst, now)
            if tokens >= cost:
                self._store(key, tokens - cost, now)
                return 0.0
            self._store(key, tokens, now)
            return (cost - tokens) / rate

    def peek(self, key: str, *, rate: float, burst: int, cost: float = 1.0) -> float:
        """Like :meth:`take` but takes nothing: 0.0 if ``cost`` tokens are there."""
        if rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens = self._level(key, rate, burst, now)
        return 0.0 if tokens >= cost else (cost - tokens) / rate

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    @staticmethod
    def retry_after(seconds: float) -> str:
        """``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(seconds)))
