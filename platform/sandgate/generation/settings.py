"""``GenerationSettings``: the LLM endpoint, from ``SANDGATE_LLM_*`` environment variables.

Read from the environment (and keyword arguments) only: not from
``sandgate.toml`` (whose :class:`~sandgate.config.Settings` refuses unknown
keys) and never from a ``.env`` file, so the API key has exactly one way in.

=====================================  =====================================================
variable                               meaning
=====================================  =====================================================
``SANDGATE_LLM_BASE_URL``              ``https://api.openai.com/v1``, ``http://localhost:11434/v1``, ...
                                       (``/chat/completions`` is appended). Required.
``SANDGATE_LLM_MODEL``                 model (or deployment) name. Required.
``SANDGATE_LLM_API_KEY``               the key, if the endpoint needs one
``SANDGATE_LLM_API_KEY_ENV``           or: the *name* of the variable holding it (``OPENAI_API_KEY``)
``SANDGATE_LLM_AZURE_API_VERSION``     Azure OpenAI: sends ``api-key`` and ``?api-version=``
``SANDGATE_LLM_TEMPERATURE``           default 0.2; empty: not sent (models that refuse it)
``SANDGATE_LLM_MAX_TOKENS``            completion cap per request, default 8192; empty: not sent
``SANDGATE_LLM_MAX_TOKENS_FIELD``      ``max_tokens`` (default) or ``max_completion_tokens``
``SANDGATE_LLM_CONNECT_TIMEOUT_SECONDS``  TCP/TLS connect, default 10
``SANDGATE_LLM_TIMEOUT_SECONDS``       read/write/pool: the longest silence, default 300
``SANDGATE_LLM_REQUEST_DEADLINE_SECONDS``  one whole response, however it trickles, default 900
``SANDGATE_LLM_MAX_RETRIES``           retries after the first try (429/5xx/timeouts/connection), default 4
``SANDGATE_LLM_BACKOFF_BASE_SECONDS``  exponential backoff base, default 1 (full jitter)
``SANDGATE_LLM_BACKOFF_MAX_SECONDS``   backoff cap, default 30
``SANDGATE_LLM_MAX_RETRY_AFTER_SECONDS``  a longer ``Retry-After`` gives up instead of waiting, default 120
``SANDGATE_LLM_TOKEN_BUDGET``          tokens per generation (sum of ``usage.total_tokens``), default 200000
``SANDGATE_LLM_PRICE_PER_1K_TOKENS``   price of 1000 tokens (any currency), for the cost budget
``SANDGATE_LLM_COST_BUDGET``           cost per generation; needs the price
=====================================  =====================================================
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from sandgate.config import EnvSettings
from sandgate.errors import ConfigError

__all__ = ["GenerationSettings", "ENV_PREFIX"]

ENV_PREFIX = "SANDGATE_LLM_"


class GenerationSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")
    area = "LLM"

    #: OpenAI-compatible API root; ``{base_url}/chat/completions`` is called
    base_url: str | None = None
    #: model name (Azure: the deployment is in the URL; the name is still sent and recorded)
    model: str | None = None
    #: the API key (environment only); ``repr`` shows ``**********``
    api_key: SecretStr | None = Field(default=None, repr=False)
    #: name of another environment variable holding the key (e.g. ``OPENAI_API_KEY``)
    api_key_env: str | None = None
    #: Azure OpenAI ``api-version``; when set, the key goes in the ``api-key`` header
    azure_api_version: str | None = None

    #: sampling temperature sent with each request (empty: the endpoint's default)
    temperature: float | None = Field(default=0.2, ge=0.0, le=2.0)
    #: largest reply, in tokens
    max_tokens: int | None = Field(default=8192, gt=0)
    #: the request field that carries it: max_tokens or max_completion_tokens
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    # -- timeouts (seconds), each named ------------------------------------------
    #: seconds to open a connection to the endpoint
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    #: read (longest silence), write and connection-pool timeout
    timeout_seconds: float = Field(default=300.0, gt=0)
    #: one whole response, even if it trickles in below the read timeout
    request_deadline_seconds: float = Field(default=900.0, gt=0)

    # -- retries -----------------------------------------------------------------
    #: retries of a failed or rate-limited request
    max_retries: int = Field(default=4, ge=0, le=20)
    #: first backoff between retries (full jitter, doubling)
    backoff_base_seconds: float = Field(default=1.0, ge=0)
    #: longest backoff between retries
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    #: longest Retry-After honoured; longer: give up
    max_retry_after_seconds: float = Field(default=120.0, ge=0)

    # -- budgets per generation --------------------------------------------------
    #: tokens one generation may spend in all its attempts
    token_budget: int | None = Field(default=200_000, gt=0)
    #: price of 1,000 tokens, to count cost
    price_per_1k_tokens: float | None = Field(default=None, ge=0)
    #: cost one generation may spend (needs the price)
    cost_budget: float | None = Field(default=None, gt=0)

    def __init__(self, **values: Any) -> None:
        if "api_key" in values:
            raise ConfigError(f"the API key is read from the environment only: set "
                              f"{ENV_PREFIX}API_KEY, or name another variable in "
                              f"{ENV_PREFIX}API_KEY_ENV")
        super().__init__(**values)


    @field_validator("base_url", "model", "api_key_env", "azure_api_version", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("temperature", "max_tokens", "token_budget", "price_per_1k_tokens",
                     "cost_budget", mode="before")
    @classmethod
    def _empty_number_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{ENV_PREFIX}BASE_URL must be an http(s) URL such as "
                             "https://api.openai.com/v1")
        if parts.username or parts.password:
            # a URL ends up in logs and messages: credentials go in SANDGATE_LLM_API_KEY
            raise ValueError(f"{ENV_PREFIX}BASE_URL must not contain credentials; "
                             f"put the key in {ENV_PREFIX}API_KEY")
        if parts.query or parts.fragment:
            raise ValueError(f"{ENV_PREFIX}BASE_URL must not have a query string; "
                             f"Azure's api-version goes in {ENV_PREFIX}AZURE_API_VERSION")
        path = parts.path.rstrip("/")
        if path.endswith("/chat/completions"):
            path = path[: -len("/chat/completions")]
        return f"{parts.scheme}://{parts.netloc}{path}"

    @model_validator(mode="after")
    def _cost_needs_price(self) -> GenerationSettings:
        if self.cost_budget is not None and self.price_per_1k_tokens is None:
            raise ValueError(f"{ENV_PREFIX}COST_BUDGET needs {ENV_PREFIX}PRICE_PER_1K_TOKENS")
        return self

    # ---------------------------------------------------------------- derived values

    @property
    def host(self) -> str:
        """``host[:port]`` of the base URL: what is logged and recorded (never a secret)."""
        if not self.base_url:
            return "?"
        parts = urlsplit(self.base_url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

    def require_endpoint(self) -> None:
        """:class:`ConfigError` naming the variables when no endpoint is configured."""
        missing = [f"{ENV_PREFIX}{name.upper()}" for name in ("base_url", "model")
                   if getattr(self, name) is None]
        if missing:
            raise ConfigError(
                f"no LLM endpoint configured: set {' and '.join(missing)} "
                f"(e.g. {ENV_PREFIX}BASE_URL=https://api.openai.com/v1 "
                f"{ENV_PREFIX}MODEL=gpt-4o-mini {ENV_PREFIX}API_KEY=...)"
            )

    def resolved_api_key(self) -> SecretStr | None:
        """The key: from the variable named by ``api_key_env`` if set, else ``api_key``."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigError(f"{ENV_PREFIX}API_KEY_ENV names {self.api_key_env}, "
                                  "which is not set in the environment")
            return SecretStr(value)
        return self.api_key

