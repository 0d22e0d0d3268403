"""``McpSettings``: the knobs of ``sandgate mcp``, from ``SANDGATE_MCP_*`` environment variables.

Read like :class:`~sandgate.api.settings.ApiSettings`: the environment and
keyword arguments (the command's options win) only; a misspelt
``SANDGATE_MCP_*`` variable or a bad value is one
:class:`~sandgate.errors.ConfigError` naming it. Where the skills come from is
the registry's business (``--url`` / ``SANDGATE_URL`` / the settings' store,
``SANDGATE_API_KEY`` for a remote one).

============================================  ==============================================
variable                                      meaning
============================================  ==============================================
``SANDGATE_MCP_TRANSPORT``                    ``stdio`` (default) or ``http`` (streamable HTTP)
``SANDGATE_MCP_SKILLS``                       allowlist of skills offered (comma-separated);
                                              default: every active skill
``SANDGATE_MCP_CALL_TIMEOUT_SECONDS``         how long one tool call may take, default 30
``SANDGATE_MCP_HOST`` / ``_PORT`` / ``_PATH`` HTTP endpoint, default ``127.0.0.1:8765/mcp``
``SANDGATE_MCP_TOKEN``                        bearer token every HTTP request must carry
                                              (required for a non-loopback host)
``SANDGATE_MCP_LOG_LEVEL``                    ``debug`` | ``info`` | ``warning`` | ``error``
                                              (JSON lines on stderr), default ``warning``
============================================  ==============================================
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from sandgate.config import EnvSettings
from sandgate.names import SKILL_NAME_RULE, is_skill_name

__all__ = ["McpSettings", "ENV_PREFIX", "LOOPBACK_HOSTS"]

ENV_PREFIX = "SANDGATE_MCP_"
#: HTTP bind addresses that need no token
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class McpSettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")
    area = "MCP"

    #: `stdio` or `http` (streamable HTTP)
    transport: Literal["stdio", "http"] = "stdio"
    #: skills offered as tools (comma-separated); empty: every active skill
    skills: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: how long one tool call may take
    call_timeout_seconds: float = Field(default=30.0, gt=0, le=86_400)
    #: HTTP bind address
    host: str = "127.0.0.1"
    #: HTTP port
    port: int = Field(default=8765, ge=0, le=65535)
    #: HTTP path of the endpoint
    path: str = "/mcp"
    #: bearer token every HTTP request must carry (required for a non-loopback host)
    token: str | None = None
    #: debug | info | warning | error (JSON lines on stderr)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    @field_validator("skills", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            return [p.strip() for v in value for p in str(v).split(",") if p.strip()]
        return value

    @field_validator("skills")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not is_skill_name(v)]
        if bad:
            raise ValueError(f"not skill names ({SKILL_NAME_RULE}): {', '.join(map(repr, bad))}")
        return sorted(set(value))

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exposed_needs_token(self) -> McpSettings:
        if self.transport == "http" and self.host not in LOOPBACK_HOSTS and not self.token:
            raise ValueError(
                f"host {self.host} is not a loopback address: set a token (--token or {ENV_PREFIX}TOKEN) so "
                "that only clients holding it can run skills in this process"
            )
        return self
