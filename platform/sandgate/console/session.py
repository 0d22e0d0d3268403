"""Console sessions: an API key signs in once, a cookie carries the session, forms carry a CSRF token.

* The key is sent once, in the body of ``POST /console/login``; it is checked with
  the API's own :func:`sandgate.store.keys.authenticate` (and the API's budget of
  failed authentications per client address), and then forgotten: the session
  keeps the key's *name*, id and role, never the token. So the key never appears
  in a URL, a cookie or a log line.
* The cookie is an opaque random id (``secrets.token_urlsafe(32)``), ``HttpOnly``,
  ``SameSite=Strict``, ``Path=/console``, and ``Secure`` when the browser came over https (the request's
  scheme, or an https ``Origin`` in front of a TLS-terminating proxy).
* Every request re-reads the key: a revoked or rotated key ends its sessions at once.
* Every state-changing form carries the session's CSRF token (checked in constant
  time), and every POST must come from this origin (``Origin``, else ``Referer``).

Sessions live in this server process (a restart signs everyone out), idle for at
most :data:`IDLE_SECONDS` and :data:`MAX_AGE_SECONDS` in all.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from starlette.requests import Request

__all__ = ["COOKIE", "IDLE_SECONDS", "MAX_AGE_SECONDS", "Session", "Sessions", "same_origin", "secure_request"]

COOKIE = "sandgate_console"
IDLE_SECONDS = 8 * 3600
MAX_AGE_SECONDS = 24 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    key_name: str
    key_id: str
    role: str
    csrf: str
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    @property
    def actor(self) -> str:
        return f"key:{self.key_name}"

    def csrf_ok(self, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, *, key_name: str, key_id: str, role: str) -> Session:
        session = Session(id=secrets.token_urlsafe(32), key_name=key_name, key_id=key_id, role=role,
                          csrf=secrets.token_urlsafe(32))
        with self._lock:
            self._expire()
            if len(self._by_id) >= MAX_SESSIONS:  # drop the least recently seen
                oldest = min(self._by_id.values(), key=lambda s: s.seen)
                self._by_id.pop(oldest.id, None)
            self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if now - session.seen > IDLE_SECONDS or now - session.created > MAX_AGE_SECONDS:
                del self._by_id[session_id]
                return None
            session.seen = now
            return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)

    def __len__(self) -> int:
        return len(self._by_id)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self._by_id.values()
                    if now - s.seen > IDLE_SECONDS or now - s.created > MAX_AGE_SECONDS]:
            del self._by_id[sid]


def same_origin(request: Request) -> bool:
    """Whether a POST comes from a page of this server (``Origin``, else ``Referer``; neither: no).

    The origin's host and port must be the ``Host`` the request was sent to, and its scheme the
    request's — or https where the server saw http (TLS terminated in front of it).
    """
    host = request.headers.get("host")
    if not host:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return False
        scheme, sep, rest = referer.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0]}" if sep else ""
    schemes = {request.url.scheme, "https"} if request.url.scheme == "http" else {request.url.scheme}
    return any(origin == f"{scheme}://{host}" for scheme in schemes)


def secure_request(request: Request) -> bool:
    """Whether the browser reached the console over https (directly, or through a TLS-terminating proxy)."""
    return request.url.scheme == "https" or (request.headers.get("origin") or "").startswith("https://")
