"""``ApiSettings``: the API server's knobs, from ``SANDGATE_API_*`` environment variables.

Read from the environment (and keyword arguments) only, like
:class:`~sandgate.generation.settings.GenerationSettings`: ``sandgate.toml``
belongs to :class:`~sandgate.config.Settings`, which refuses unknown keys. The
database, the policies directory and the default policy come from
:class:`~sandgate.config.Settings` (``SANDGATE_DATABASE_URL``, ...).

=========================================  =================================================
variable                                   meaning
=========================================  =================================================
``SANDGATE_API_HOST`` / ``_PORT``          bind address, default ``127.0.0.1:8080``
``SANDGATE_API_MAX_BODY_BYTES``            largest request body, default 12 MiB → 413
``SANDGATE_API_RATE_PER_SECOND``           token-bucket refill per key, default 20; 0: no limit
``SANDGATE_API_RATE_BURST``                bucket size per key, default 60
``SANDGATE_API_AUTH_FAILURES_PER_MINUTE``  failed authentications per client address, default 30
``SANDGATE_API_POLICIES``                  policies a client may name (comma-separated);
                                           default: only the configured ``SANDGATE_POLICY``
``SANDGATE_API_WATCH_POLL_SECONDS``        how often the event feed polls the database, default 0.5
                                           (PostgreSQL with LISTEN up: every max(this, 5 s), a safety net)
``SANDGATE_API_WATCH_NOTIFY``              PostgreSQL: wake the feed by LISTEN/NOTIFY, default true
``SANDGATE_API_WATCH_KEEPALIVE_SECONDS``   SSE comment sent on an idle stream, default 15
``SANDGATE_API_WATCH_GAP_GRACE_SECONDS``   how long a hole in event ids is waited for, default 2
``SANDGATE_API_READY_REQUIRES_ENGINE``     ``/readyz`` fails without a Docker engine, default true
``SANDGATE_API_METRICS_PUBLIC``            ``/metrics`` without a key, default true
``SANDGATE_API_LOG_LEVEL``                 ``debug`` | ``info`` | ``warning`` | ``error``
``SANDGATE_API_GRACEFUL_SHUTDOWN_SECONDS`` how long open requests get on shutdown, default 5
``SANDGATE_API_TENANT_MAX_QUEUED``         evaluations one key may have queued, default 200 (a key's own
                                           ``--max-queued`` wins); more → 429 ``queue_full``; 0: no cap
``SANDGATE_API_WORKERS``                   evaluation slots of ``serve``'s in-process worker; 0: none;
                                           unset: sized like ``sandgate worker`` on SQLite, 0 on
                                           PostgreSQL (run ``sandgate worker`` processes there)
=========================================  =================================================
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from sandgate.config import EnvSettings

__all__ = ["ApiSettings", "ENV_PREFIX", "MiB"]

ENV_PREFIX = "SANDGATE_API_"
MiB = 1024 * 1024


class ApiSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")
    area = "API"

    #: address the server binds (default 127.0.0.1: this machine only)
    host: str = "127.0.0.1"
    #: port the server listens on
    port: int = Field(default=8080, ge=0, le=65535)

    #: request bodies above this are refused with 413 (Content-Length, and while streaming)
    max_body_bytes: int = Field(default=12 * MiB, ge=1024)

    #: per-key token bucket: refill rate (0 disables rate limiting) and size
    rate_per_second: float = Field(default=20.0, ge=0)
    #: token-bucket size per key
    rate_burst: int = Field(default=60, ge=1)
    #: failed authentications allowed per client address and minute, then 429
    auth_failures_per_minute: int = Field(default=30, ge=1)

    #: policies a client may choose by name; empty: only ``Settings.policy``
    policies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    #: how often the event feed polls the database (PostgreSQL, listening: only a safety net)
    watch_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    #: on PostgreSQL, wake the event feed by LISTEN/NOTIFY instead of waiting for a poll
    watch_notify: bool = True
    #: an SSE comment is sent on a stream idle this long
    watch_keepalive_seconds: float = Field(default=15.0, gt=0, le=600)
    #: how long a hole in event ids is waited for
    watch_gap_grace_seconds: float = Field(default=2.0, ge=0, le=60)
    #: events read per database query by one stream
    watch_batch: int = Field(default=500, ge=1, le=10_000)

    #: `/readyz` fails without a Docker engine
    ready_requires_engine: bool = True
    #: how long a readiness probe's engine check may take, and how long its answer is reused
    ready_engine_timeout_seconds: float = Field(default=3.0, gt=0)
    #: how long one readiness answer is reused
    ready_cache_seconds: float = Field(default=2.0, ge=0)
    #: `/metrics` answers without an API key
    metrics_public: bool = True

    #: debug | info | warning | error
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: how long open requests get on shutdown
    graceful_shutdown_seconds: float = Field(default=5.0, ge=0)

    #: evaluations one API key may have queued at once (a key's own max_queued wins); 0: no cap
    tenant_max_queued: int = Field(default=200, ge=0, le=1_000_000)

    #: evaluation slots of the in-process worker of `sandgate serve` (0: none, queued evaluations wait
    #: for `sandgate worker`); unset: sized like `sandgate worker` on SQLite, 0 on PostgreSQL
    workers: int | None = Field(default=None, ge=0)

    @field_validator("policies", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value


