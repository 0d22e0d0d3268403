"""API keys of ``sandgate serve``: the ``api_keys`` table and its operations.

::

    record, token = keys.create_key(store, name="ci", role="submitter", actor="cli:alice")
    token                      # "sg_<key id>_<secret>": shown once, never stored
    keys.authenticate(store, token)   -> KeyRecord | None   (None: unknown, revoked or wrong)
    keys.list_keys(store) / keys.revoke_key(store, name=...) / keys.rotate_key(store, name=...)

Roles are ordered: ``reader`` < ``submitter`` < ``promoter`` < ``admin``
(:func:`role_allows`). A key's identity in the event log is ``key:<name>``.

Storage and checking
--------------------

A token is ``sg_`` + a public key id (12 hex digits, indexed) + ``_`` + 32
random bytes (URL-safe base64). Only ``sha256(token)`` is stored: the token has
256 bits of entropy, so a fast hash is enough (nothing to brute-force), and a
stolen table grants nothing. :func:`authenticate` looks the row up by the key
id and compares the hashes with :func:`hmac.compare_digest` (constant time), so
neither the lookup nor the comparison leaks the secret through timing.

Names are never reused: a revoked key keeps its row (its name is evidence in
the event log). ``rotate_key`` replaces the secret of a live key and keeps its
name, role and identity.

This module registers :class:`ApiKey` on the store's ``Base.metadata``; the
table itself is created by migration ``0003_api_keys``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Float, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from sandgate.errors import Conflict, InvalidTransition, NotFound
from sandgate.records import _Record
from sandgate.store._rows import _now, _utc
from sandgate.store.engine import Store
from sandgate.store.models import ACTOR_LENGTH, Base, BigIntPK

__all__ = [
    "ROLES",
    "Role",
    "KEY_NAME",
    "ApiKey",
    "KeyRecord",
    "role_allows",
    "hash_token",
    "parse_token",
    "create_key",
    "list_keys",
    "get_key",
    "revoke_key",
    "rotate_key",
    "authenticate",
    "touch_key",
]

#: lowest to highest; each role can do everything the roles before it can
ROLES: tuple[str, ...] = ("reader", "submitter", "promoter", "admin")
Role = Literal["reader", "submitter", "promoter", "admin"]
KEY_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
_TOKEN = re.compile(r"^sg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
#: how often ``last_used_at`` is written at most (the API calls :func:`touch_key`)
TOUCH_INTERVAL = timedelta(minutes=1)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    #: the public part of the token, for the lookup
    key_id: Mapped[str] = mapped_column(String(24), unique=True)
    #: hex sha256 of the whole token
    token_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(ACTOR_LENGTH))
    last_used_at: Mapped[datetime | None]
    #: per-key rate limit (tokens per second, bucket size); NULL: the server's default
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    burst: Mapped[int | None] = mapped_column(Integer)
    #: per-key caps on queued and running evaluations (0009); NULL: the server's default
    max_queued: Mapped[int | None] = mapped_column(Integer)
    max_running: Mapped[int | None] = mapped_column(Integer)


@dataclass(frozen=True, slots=True)
class KeyRecord(_Record):
    name: str
    key_id: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None
    rate_per_second: float | None
    burst: int | None
    #: the key's own caps on queued / running evaluations (None: the server's default)
    max_queued: int | None = None
    max_running: int | None = None

    @property
    def tenant(self) -> str:
        """The tenant its evaluations are queued under (fair share and caps)."""
        return f"key:{self.name}"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def actor(self) -> str:
        """The identity recorded in the event log for this key's actions."""
        return f"key:{self.name}"


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` is ``needed`` or higher."""
    return ROLES.index(role) >= ROLES.index(needed)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token(token: str) -> str | None:
    """The key id of a well-formed token, else None."""
    m = _TOKEN.match(token or "")
    return m.group(1) if m else None


def _record(k: ApiKey) -> KeyRecord:
    return KeyRecord(
        name=k.name,
        key_id=k.key_id,
        role=k.role,
        created_at=_utc(k.created_at),
        created_by=k.created_by,
        revoked_at=_utc(k.revoked_at),
        revoked_by=k.revoked_by,
        last_used_at=_utc(k.last_used_at),
        rate_per_second=k.rate_per_second,
        burst=k.burst,
        max_queued=k.max_queued,
        max_running=k.max_running,
    )


def _new_token() -> tuple[str, str]:
    key_id = secrets.token_hex(6)
    return key_id, f"sg_{key_id}_{secrets.token_urlsafe(32)}"


def _check_limits(rate_per_second: float | None, burst: int | None,
                  max_queued: int | None = None, max_running: int | None = None) -> None:
    for what, value in (("max_queued", max_queued), ("max_running", max_running)):
        if value is not None and not (1 <= value <= 1_000_000):
            raise InvalidTransition(f"{what} must be between 1 and 1000000", code="invalid_key")
    if rate_per_second is not None and not (0 < rate_per_second <= 1e6):
        raise InvalidTransition("the rate must be a positive number of requests per second",
                                code="invalid_key")
    if burst is not None and not (1 <= burst <= 1_000_000):
        raise InvalidTransition("the burst must be between 1 and 1000000", code="invalid_key")


def create_key(
    store: Store,
    *,
    name: str,
    role: str,
    actor: str,
    rate_per_second: float | None = None,
    burst: int | None = None,
    max_queued: int | None = None,
    max_running: int | None = None,
) -> tuple[KeyRecord, str]:
    """A new key; returns its record and the token (the only time it exists in clear).

    ``max_queued`` / ``max_running``: the key's own caps on its queued and running
    evaluations (None: the server's ``SANDGATE_API_TENANT_MAX_QUEUED``; running: no cap)."""
    if not KEY_NAME.match(name or ""):
        raise InvalidTransition(
            f"invalid key name {name!r}: a lowercase letter, then lowercase letters, digits, "
            "'_', '.' or '-', at most 63 characters", code="invalid_key")
    if role not in ROLES:
        raise InvalidTransition(f"unknown role {role!r}: one of {', '.join(ROLES)}",
                                code="invalid_key")
    _check_limits(rate_per_second, burst, max_queued, max_running)
    actor = (actor or "").strip()[:ACTOR_LENGTH] or "unknown"
    for _ in range(3):  # a key id collision (48 random bits) is retried
        key_id, token = _new_token()
        try:
            with store.write() as s:
                existing = s.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
                if existing is not None:
                    state = "was revoked" if existing.revoked_at else "exists"
                    raise Conflict(f"a key named {name!r} {state}; key names are never reused "
                                   "(rotate a live key with `sandgate keys rotate`)")
                row = ApiKey(name=name, key_id=key_id, token_hash=hash_token(token), role=role,
                             created_at=_now(), created_by=actor, rate_per_second=rate_per_second,
                             burst=burst, max_queued=max_queued, max_running=max_running)
                s.add(row)
                s.flush()
                return _record(row), token
        except IntegrityError:
            continue  # a concurrent create of the same name, or a key id collision: re-check
    raise Conflict(f"could not create key {name!r}: concurrent creations collided")


def list_keys(store: Store, *, include_revoked: bool = True) -> list[KeyRecord]:
    q = select(ApiKey).order_by(ApiKey.name)
    if not include_revoked:
        q = q.where(ApiKey.revoked_at.is_(None))
    with store.read() as s:
        return [_record(k) for k in s.scalars(q)]


def get_key(store: Store, *, name: str) -> KeyRecord:
    with store.read() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no API key named {name!r}")
        return _record(row)


def revoke_key(store: Store, *, name: str, actor: str) -> KeyRecord:
    """Revoke a key at once (its next request gets 401). Revoking twice is refused."""
    with store.write() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.name == name).with_for_update()).one_or_none()
        if row is None:
            raise NotFound(f"no API key named {name!r}")
        if row.revoked_at is not None:
            raise InvalidTransition(f"key {name!r} is already revoked", code="already_revoked")
        row.revoked_at = _now()
        row.revoked_by = (actor or "").strip()[:ACTOR_LENGTH] or "unknown"
        s.flush()
        return _record(row)


def rotate_key(store: Store, *, name: str) -> tuple[KeyRecord, str]:
    """A new secret for a live key (same name, role, identity); the old token stops working."""
    key_id, token = _new_token()
    with store.write() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.name == name).with_for_update()).one_or_none()
        if row is None:
            raise NotFound(f"no API key named {name!r}")
        if row.revoked_at is not None:
            raise InvalidTransition(f"key {name!r} is revoked; create a new one",
                                    code="already_revoked")
        row.key_id, row.token_hash = key_id, hash_token(token)
        s.flush()
        return _record(row), token


def authenticate(store: Store, token: str) -> KeyRecord | None:
    """The live key this token belongs to, or None (malformed, unknown, wrong secret, revoked)."""
    key_id = parse_token(token)
    if key_id is None:
        return None
    with store.read() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
        if row is None:
            # compare anyway, so an unknown key id costs the same as a wrong secret
            hmac.compare_digest(hash_token(token), "0" * 64)
            return None
        if not hmac.compare_digest(hash_token(token), row.token_hash):
            return None
        if row.revoked_at is not None:
            return None
        return _record(row)


def touch_key(store: Store, *, name: str, at: datetime | None = None) -> None:
    """Record a use of the key (callers rate this to once per :data:`TOUCH_INTERVAL`)."""
    with store.write() as s:
        s.execute(update(ApiKey).where(ApiKey.name == name).values(last_used_at=at or _now())
                  .execution_options(synchronize_session=False))
