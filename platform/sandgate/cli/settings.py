"""``sandgate settings``: every ``SANDGATE_*`` variable, its default, its value here, its meaning.

Generated from the settings classes themselves (their fields and the ``#:``
comments above them), so the table cannot drift from the code; the README's
table is this command's ``--markdown`` output, checked by a test.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

__all__ = ["register", "rows"]

SECRET_WORDS = ("KEY", "PASSWORD", "TOKEN", "SECRET")


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:  # depends on the machine: the meaning says it
        return ""
    value = field.default
    if value is PydanticUndefined or value is None:
        return ""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)


def rows() -> list[dict[str, str]]:
    """One row per variable: ``variable``, ``area``, ``prefix`` (its settings class's), ``toml`` (also a
    sandgate.toml key), ``default``, ``meaning``."""
    from sandgate.api.settings import ApiSettings
    from sandgate.config import OTHER_VARIABLES, Settings, field_meanings
    from sandgate.generation.settings import GenerationSettings
    from sandgate.mcp.settings import McpSettings
    from sandgate.scheduler import SchedulerSettings

    out: list[dict[str, str]] = []
    areas: list[tuple[str, Any]] = [("platform", Settings), ("API server", ApiSettings),
                                    ("generation", GenerationSettings), ("scheduler", SchedulerSettings),
                                    ("MCP server", McpSettings)]
    for area, cls in areas:
        prefix = str(cls.model_config["env_prefix"]).upper()  # the variables are the class's own
        meanings = field_meanings(cls)
        for name, field in cls.model_fields.items():
            out.append({"variable": f"{prefix}{name.upper()}", "area": area, "prefix": prefix,
                        "toml": "yes" if cls is Settings else "", "default": _default(field),
                        "meaning": meanings[name]})
    for name, meaning in OTHER_VARIABLES.items():
        out.append({"variable": name, "area": "other", "prefix": "", "toml": "", "default": "",
                    "meaning": meaning})
    return out


def _current(variable: str) -> str:
    value = os.environ.get(variable)
    if value is None:
        return ""
    return "***" if any(w in variable for w in SECRET_WORDS) else value


def markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for row in rows():
        toml = " (also `sandgate.toml`)" if row["toml"] else ""
        default = f"`{row['default']}`" if row["default"] else ""
        meaning = row["meaning"].replace("|", "\\|")
        lines.append(f"| `{row['variable']}`{toml} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def settings(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="The table as Markdown (the README's).")] = False,
) -> None:
    """List every SANDGATE_* variable: default, value set here (secrets masked), meaning."""
    if as_markdown:
        typer.echo(markdown(), nl=False)
        return
    data = [{**row, "set": _current(row["variable"])} for row in rows()]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("variable", "default", "set here", "meaning", title="sandgate settings")
    for row in data:
        table.add_row(row["variable"], row["default"], row["set"], row["meaning"])
    Console(highlight=False, soft_wrap=False).print(table)


def register(app: typer.Typer) -> None:
    app.command("settings")(settings)
