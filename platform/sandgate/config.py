"""Settings: ``SANDGATE_*`` environment variables, then ``sandgate.toml``, then defaults.

Every external call has a named timeout here, so an operator can see and tune
all of them in one place.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sandgate.errors import ConfigError

__all__ = ["EnvSettings", "Settings", "get_settings", "project_root"]


def project_root() -> Path:
    """The checkout this package lives in (``platform/sandgate`` → two levels up)."""
    return Path(__file__).resolve().parents[2]


def _default_home() -> Path:
    return Path.cwd() / ".sandgate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SANDGATE_",
        toml_file=os.environ.get("SANDGATE_CONFIG", "sandgate.toml"),
        extra="forbid",
    )

    #: where the embedded store, caches, the wheelhouse and the image base live
    home: Path = Field(default_factory=_default_home)
    #: SQLAlchemy URL of the store; default: SQLite under ``home``
    database_url: str | None = None
    #: directory of policy files and semgrep rules
    policies_dir: Path = Field(default_factory=lambda: project_root() / "policies")
    #: policy file name (without .toml) used when none is named
    policy: str = "default"

    #: the sandbox image (repository:tag)
    image: str = "sandgate-python:latest"

    # -- timeouts (seconds) of external calls --------------------------------
    #: one Docker API call (create, start, inspect, remove, logs)
    docker_api_timeout: float = 30.0
    #: extra time the controller grants beyond the policy's wall timeout
    #: before it kills the sandbox from outside
    sandbox_kill_grace: float = 5.0

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'sandgate.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


class EnvSettings(BaseSettings):
    """Settings of one area read from its ``SANDGATE_<AREA>_*`` variables only.

    :meth:`load` turns a misspelt variable (``SANDGATE_LLM_BASEURL``) or a bad
    value into one :class:`~sandgate.errors.ConfigError` naming the variables.
    Subclasses set ``model_config = SettingsConfigDict(env_prefix=..., extra="forbid")``
    and ``area`` (a word for messages: "API", "LLM").
    """

    area: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @classmethod
    def load(cls, **overrides: object) -> Self:
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        known = {f"{prefix}{name.upper()}" for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known)
        if unknown:
            raise ConfigError(f"unknown {cls.area} setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            lines = []
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                name = f"{prefix}{loc.upper()}" if loc else "settings"
                lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError(f"invalid {cls.area} settings: " + "; ".join(lines)) from None
