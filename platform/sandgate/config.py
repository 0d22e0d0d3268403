"""Settings: ``SANDGATE_*`` environment variables, then ``sandgate.toml``, then defaults.

Every external call has a named timeout here, so an operator can see and tune
all of them in one place.
"""

from __future__ import annotations

import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sandgate.environ import AREA_PREFIXES, OTHER_VARIABLES, SETTINGS_FIELDS, check_environment, remote_url
from sandgate.errors import ConfigError
from sandgate.names import HOST_ID_PATTERN

__all__ = [
    "AREA_PREFIXES",
    "EnvSettings",
    "OTHER_VARIABLES",
    "Settings",
    "check_environment",
    "describe_store",
    "field_meanings",
    "mask_url",
    "sqlite_path",
    "get_settings",
    "load_settings",
    "project_root",
    "remote_url",
    "rules_files",
    "settings_variables",
]


def project_root() -> Path:
    """The checkout this package lives in (``platform/sandgate`` → two levels up)."""
    return Path(__file__).resolve().parents[2]


def rules_files(rules_dir: Path) -> dict[str, bytes]:
    """The platform's semgrep rules (never the submission's), name → bytes: what an evaluation
    sends the sandbox, and what the image build bakes for the engine started before the payload."""
    files = {}
    for path in sorted(rules_dir.glob("*.y*ml")):
        files[path.name] = path.read_bytes()
    return files


def _default_home() -> Path:
    return Path.cwd() / ".sandgate"


class Settings(BaseSettings):
    """The platform's own settings. Each field is a ``SANDGATE_<FIELD>`` variable or a key of
    ``sandgate.toml`` (``$SANDGATE_CONFIG``); the environment wins."""

    model_config = SettingsConfigDict(env_prefix="SANDGATE_", extra="forbid")

    home: Path = Field(default_factory=_default_home, description=(
        "where the embedded store, caches, the wheelhouse and the image base live (default ./.sandgate)"))
    database_url: str | None = Field(default=None, description=(
        "SQLAlchemy URL of the store (default: SQLite under the home)"))
    policies_dir: Path = Field(default_factory=lambda: project_root() / "policies", description=(
        "directory of policy files and semgrep rules (default: policies/ of the checkout)"))
    policy: str = Field(default="default", description="policy file name (without .toml) used when none is named")
    image: str = Field(default="sandgate-python:latest", description="the sandbox image (repository:tag)")

    # -- timeouts (seconds) of external calls --------------------------------
    docker_api_timeout: float = Field(default=30.0, description=(
        "seconds one Docker API call (create, start, inspect, remove, logs) may take"))
    sandbox_kill_grace: float = Field(default=5.0, description=(
        "seconds beyond the policy's wall timeout before the controller kills a sandbox from outside"))

    # -- warm pool (sandgate.sandbox.pool) ------------------------------------
    pool_size: int | None = Field(default=None, ge=0, le=64, description=(
        "warm sandboxes a worker keeps started per (image, limits, harness arguments), each used by one evaluation "
        "and then removed (default: the worker's concurrency + 1, so one is ready while every "
        "slot runs); 0 turns the warm pool off"))
    pool_max_age: float = Field(default=60.0, gt=0, description=(
        "seconds a warm sandbox may wait unused before it is removed and replaced by a fresh one"))

    # -- several hosts on one store ---------------------------------------------
    host_id: str | None = Field(default=None, pattern=HOST_ID_PATTERN, description=(
        "this host's name in sandbox labels and lease owners (default: the hostname); each "
        "worker host (one Docker engine) of a fleet sharing one store needs its own"))

    # -- traces (sandgate.tracing) -------------------------------------------
    otel_exporter_otlp_endpoint: str | None = Field(default=None, description=(
        "OTLP/HTTP base URL traces are exported to (spans go to {url}/v1/traces); unset: the standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT, and with neither no traces are made"))

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL (an OTLP/HTTP collector), got {value!r}")
        return value

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
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))


if tuple(Settings.model_fields) != SETTINGS_FIELDS:  # pragma: no cover - a field added on one side only
    raise RuntimeError(f"sandgate.environ.SETTINGS_FIELDS {SETTINGS_FIELDS} must list the fields of "
                       f"Settings {tuple(Settings.model_fields)}: the CLI checks the environment from it")


def settings_variables() -> dict[str, str]:
    """The ``SANDGATE_*`` variable of every :class:`Settings` field, with its meaning."""
    return {f"SANDGATE_{name.upper()}": meaning for name, meaning in field_meanings(Settings).items()}


def field_meanings(cls: type[BaseSettings]) -> dict[str, str]:
    """Each field's meaning: its ``description``, else the ``#:`` comment above it in the source."""
    import inspect

    comments: dict[str, str] = {}
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # pragma: no cover - no source (frozen)
        lines = []
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([a-z_][a-z0-9_]*)\s*:", stripped)
        if match and pending:
            comments[match.group(1)] = " ".join(pending).replace("``", "`")
        pending = []
    return {name: field.description or comments.get(name, "") for name, field in cls.model_fields.items()}


def _config_file() -> Path:
    return Path(os.environ.get("SANDGATE_CONFIG", "sandgate.toml"))


def load_settings(**overrides: Any) -> Settings:
    """:class:`Settings` from the environment and ``sandgate.toml``, or one :class:`ConfigError`
    naming the file, key or variable that is wrong (never a parser's traceback)."""
    check_environment()
    path = _config_file()
    toml_keys: set[str] = set()
    if path.is_file():
        try:
            toml_keys = set(tomllib.loads(path.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(part) for part in err["loc"])
            where = f"{path} key {key!r}" if key in toml_keys else f"SANDGATE_{key.upper()}"
            if err["type"] == "extra_forbidden":
                lines.append(f"{path}: unknown key {key!r} (known: {', '.join(sorted(Settings.model_fields))})")
            else:
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    if settings.home.exists() and not settings.home.is_dir():
        raise ConfigError(f"SANDGATE_HOME={settings.home} exists and is not a directory: point it at a directory "
                          f"(it holds the default store, caches and the wheelhouse)")
    return settings


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ``***`` (for messages and ``doctor``)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None``: not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    rest = url.split("://", 1)[-1]
    database = rest[1:] if rest.startswith("/") else rest
    database = database.split("?", 1)[0]
    if database in ("", ":memory:") or "mode=memory" in url:
        return None
    return Path(database).expanduser()


def describe_store(settings: Settings) -> tuple[str, bool]:
    """Which store the settings name, in words, and whether it exists yet (never creates it)."""
    url = settings.effective_database_url
    source = "SANDGATE_DATABASE_URL" if settings.database_url else f"the default under SANDGATE_HOME={settings.home}"
    path = sqlite_path(url)
    if path is None:
        return f"{mask_url(url)} ({source})", True
    if path.exists():
        return f"{path} ({source})", True
    return f"{path} ({source}) does not exist yet: the first submit creates it", False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


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
    def load(cls, **overrides: Any) -> Self:  # values of any type: validated by pydantic
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        known = {f"{prefix}{name.upper()}" for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known
                         and k.upper() not in OTHER_VARIABLES)  # SANDGATE_API_KEY is the client's
        if unknown:
            raise ConfigError(f"unknown {cls.area} setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        try:
            return cls(**overrides)
        except ValidationError as exc:
            lines = []
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                name = f"{prefix}{loc.upper()}" if loc else "settings"
                lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError(f"invalid {cls.area} settings: " + "; ".join(lines)) from None
