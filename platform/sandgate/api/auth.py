"""Authentication, roles and rate limits: one dependency per route, ``require(role)``.

``Authorization: Bearer <token>`` (tokens come from ``sandgate keys create``).
In order, for every ``/v1`` request:

1. no or malformed header → **401** (``WWW-Authenticate: Bearer``);
2. the client address spent its failed-authentication budget → **429**;
3. unknown, wrong or revoked token → **401** (and one token of that budget);
4. the key's bucket is empty → **429** with ``Retry-After``;
5. the key's role is below the route's → **403** naming both roles.

The key is then the request's identity: ``key:<name>`` is the actor of
everything it changes. Forcing a promotion needs ``admin`` (checked by the
route: it depends on the body).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from sandgate.api.errors import ApiError
from sandgate.api.limits import RateLimiter
from sandgate.api.observability import Metrics
from sandgate.api.settings import ApiSettings
from sandgate.store import keys as key_store
from sandgate.store.keys import KeyRecord, role_allows

__all__ = ["Authenticator", "require", "Reader", "Submitter", "Promoter", "Admin", "REQUIRED_ROLE"]

log = logging.getLogger("sandgate.api")

#: the OpenAPI extension naming the role an operation needs
REQUIRED_ROLE = "x-required-role"
_BEARER = {"WWW-Authenticate": 'Bearer realm="sandgate"'}


class Authenticator:
    def __init__(self, *, store: Callable[[], Any], settings: ApiSettings, metrics: Metrics,
                 limiter: RateLimiter | None = None) -> None:
        self._store = store
        self.settings = settings
        self.metrics = metrics
        self.limiter = limiter or RateLimiter()
        self._touched: dict[str, float] = {}
        self._touch_lock = threading.Lock()

    def _client(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _fail_budget(self) -> tuple[float, int]:
        per_minute = self.settings.auth_failures_per_minute
        return per_minute / 60.0, per_minute

    def check(self, request: Request, role: str) -> KeyRecord:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.metrics.inc("sandgate_http_auth_failures_total", {"reason": "missing"})
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <token>' "
                                "(create one with `sandgate keys create NAME --role ROLE`)",
                           code="unauthorized", headers=_BEARER)
        ip_bucket = f"ip:{self._client(request)}"
        rate, burst = self._fail_budget()
        wait = self.limiter.peek(ip_bucket, rate=rate, burst=burst)
        if wait > 0:
            self.metrics.inc("sandgate_http_rate_limited_total", {"kind": "auth_failures"})
            raise ApiError(429, "too many failed authentications from this address; "
                                f"retry in {RateLimiter.retry_after(wait)} s",
                           code="rate_limited", headers={"Retry-After": RateLimiter.retry_after(wait)})
        key = key_store.authenticate(self._store(), token.strip())
        if key is None:
            self.limiter.take(ip_bucket, rate=rate, burst=burst)
            self.metrics.inc("sandgate_http_auth_failures_total", {"reason": "invalid"})
            raise ApiError(401, "invalid or revoked API key", code="unauthorized", headers=_BEARER)
        ctx = request.scope.get("sandgate")
        if isinstance(ctx, dict):
            ctx["key"] = key.name
        key_rate = key.rate_per_second if key.rate_per_second is not None else self.settings.rate_per_second
        key_burst = key.burst if key.burst is not None else self.settings.rate_burst
        wait = self.limiter.take(f"key:{key.name}", rate=key_rate, burst=key_burst)
        if wait > 0:
            self.metrics.inc("sandgate_http_rate_limited_total", {"kind": "key"})
            after = RateLimiter.retry_after(wait)
            raise ApiError(429, f"rate limit of key {key.name!r} exceeded "
                                f"({key_rate:g}/s, burst {key_burst}); retry in {after} s",
                           code="rate_limited", headers={"Retry-After": after})
        if not role_allows(key.role, role):
            self.metrics.inc("sandgate_http_auth_failures_total", {"reason": "forbidden"})
            raise ApiError(403, f"this needs the {role} role; key {key.name!r} has role {key.role}",
                           code="forbidden")
        self._touch(key)
        return key

    def _touch(self, key: KeyRecord) -> None:
        """``last_used_at``, written at most once a minute per key and process."""
        now = time.monotonic()
        with self._touch_lock:
            last = self._touched.get(key.name)
            if last is not None and now - last < key_store.TOUCH_INTERVAL.total_seconds():
                return
            self._touched[key.name] = now
        try:
            key_store.touch_key(self._store(), name=key.name, at=datetime.now(UTC))
        except Exception as exc:  # bookkeeping only: never fails a request
            log.debug("could not record key use: %s", exc)


def require(role: str) -> Any:
    """A dependency: the authenticated :class:`KeyRecord` of a key with at least ``role``."""

    def dependency(request: Request) -> KeyRecord:
        auth: Authenticator = request.app.state.auth
        return auth.check(request, role)

    dependency.__name__ = f"require_{role}"
    return Depends(dependency)


Reader = Annotated[KeyRecord, require("reader")]
Submitter = Annotated[KeyRecord, require("submitter")]
Promoter = Annotated[KeyRecord, require("promoter")]
Admin = Annotated[KeyRecord, require("admin")]
