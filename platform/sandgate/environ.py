"""The ``SANDGATE_*`` variables by name, read without pydantic: which ones exist, and ``SANDGATE_URL``.

Ground floor (the standard library and :mod:`sandgate.errors`), so every CLI
command can refuse a misspelt variable and pick remote mode without loading
the settings machinery (pydantic-settings costs a tenth of a second):
:mod:`sandgate.config` builds :class:`~sandgate.config.Settings` on top of
these names and checks at import that :data:`SETTINGS_FIELDS` is its field
list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from difflib import get_close_matches
from pathlib import Path

from sandgate.errors import ConfigError

__all__ = ["AREA_PREFIXES", "FREE_TEXT_VARIABLES", "OTHER_VARIABLES", "SETTINGS_FIELDS", "check_environment",
           "known_variables", "plain_store_url", "remote_url"]

#: the fields of :class:`sandgate.config.Settings`, in order (each is ``SANDGATE_<FIELD>``)
SETTINGS_FIELDS: tuple[str, ...] = (
    "home", "database_url", "policies_dir", "policy", "image", "docker_api_timeout", "sandbox_kill_grace",
    "pool_size", "pool_max_age", "host_id", "otel_exporter_otlp_endpoint",
)

#: the variable of each field (``SANDGATE_<FIELD>``)
SETTINGS_VARIABLES: frozenset[str] = frozenset(f"SANDGATE_{name.upper()}" for name in SETTINGS_FIELDS)

#: the settings whose every value is valid (plain text, no constraint): the read commands need not load
#: the settings to validate them (:func:`plain_store_url`; a test pins them against the settings)
FREE_TEXT_VARIABLES: tuple[str, ...] = ("SANDGATE_POLICY", "SANDGATE_IMAGE")

#: ``SANDGATE_*`` variables read outside :class:`~sandgate.config.Settings` (name → meaning)
OTHER_VARIABLES: dict[str, str] = {
    "SANDGATE_CONFIG": "path of the settings file (default ./sandgate.toml)",
    "SANDGATE_URL": "a `sandgate serve` to talk to: the CLI's remote mode",
    "SANDGATE_API_KEY": "the API key sent to SANDGATE_URL",
    "SANDGATE_ACTOR": "who is acting, recorded in events (default cli:<user>)",
    "SANDGATE_ENGINE_WAIT_SECONDS": "how long `make engine` waits for a started engine (default 60)",
    "SANDGATE_ENGINE_LOG": "where `make engine` writes the engine's log",
    "SANDGATE_DB_PASSWORD": "docker-compose.yml: the PostgreSQL password",
    "SANDGATE_TRACEBACK": "set: the CLI shows the traceback of an unexpected error",
}
#: prefixes of the areas whose settings classes check their own variables
#: (:class:`~sandgate.config.EnvSettings` subclasses: the API server, generation, the scheduler)
AREA_PREFIXES: tuple[str, ...] = ("SANDGATE_API_", "SANDGATE_LLM_", "SANDGATE_SCHEDULER_", "SANDGATE_MCP_")


def remote_url() -> str | None:
    """``$SANDGATE_URL`` (the server the CLI talks to instead of a store), or None when unset or blank."""
    return os.environ.get("SANDGATE_URL", "").strip() or None


def plain_store_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The embedded store's URL when the environment alone decides it, as
    :attr:`~sandgate.config.Settings.effective_database_url` would (``SANDGATE_DATABASE_URL``, else
    ``sandgate.db`` under ``SANDGATE_HOME``, else under ``./.sandgate``); None when the settings must be
    loaded to know: a settings file exists, another settings variable is set (it gets validated; the
    free-text ones, :data:`FREE_TEXT_VARIABLES`, cannot be invalid), a name
    is not upper case, a value is blank, or the home is not a directory (the settings say so)."""
    env = os.environ if environ is None else environ
    if Path(env.get("SANDGATE_CONFIG", "sandgate.toml")).is_file():
        return None
    for key, value in env.items():
        upper = key.upper()
        if upper not in SETTINGS_VARIABLES:
            continue
        if key != upper or upper not in ("SANDGATE_HOME", "SANDGATE_DATABASE_URL", *FREE_TEXT_VARIABLES):
            return None
        if upper not in FREE_TEXT_VARIABLES and not value.strip():
            return None
    url = env.get("SANDGATE_DATABASE_URL")
    if url:
        return url
    home = Path(env["SANDGATE_HOME"]) if "SANDGATE_HOME" in env else Path.cwd() / ".sandgate"
    if home.exists() and not home.is_dir():
        return None
    return f"sqlite:///{home / 'sandgate.db'}"


def known_variables() -> set[str]:
    """Every ``SANDGATE_*`` variable outside the areas: the settings' and :data:`OTHER_VARIABLES`."""
    return set(SETTINGS_VARIABLES) | set(OTHER_VARIABLES)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``SANDGATE_*`` variable no part of sandgate reads (a misspelling would be ignored).

    Variables of an area (``SANDGATE_API_*``, ``SANDGATE_LLM_*``, ``SANDGATE_SCHEDULER_*``)
    are checked by that area's settings when it loads them.
    """
    env = os.environ if environ is None else environ
    known = known_variables()
    unknown = sorted(
        k for k in env
        if k.upper().startswith("SANDGATE_") and k.upper() not in known
        and not k.upper().startswith(AREA_PREFIXES)
    )
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        f"unknown setting(s) in the environment: {', '.join(hints)}; sandgate reads "
        f"{', '.join(sorted(known))} and the SANDGATE_API_*, SANDGATE_LLM_*, SANDGATE_SCHEDULER_*, SANDGATE_MCP_* "
        f"variables of their areas"
    )
