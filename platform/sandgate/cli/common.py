"""Error translation at the CLI edge: one clear line on stderr, a defined exit code."""

from __future__ import annotations

from typing import NoReturn

import typer

from sandgate.errors import (
    ConfigError,
    InfrastructureError,
    SandgateError,
    StoreError,
    SubmissionError,
)

__all__ = ["exit_code_for", "fail"]


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (SubmissionError, StoreError)):
        return 1
    if isinstance(exc, (InfrastructureError, ConfigError, SandgateError)):
        return 2
    return 2


def fail(exc: BaseException) -> NoReturn:
    if isinstance(exc, SandgateError):
        typer.echo(f"error: {exc}", err=True)
    else:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
    raise typer.Exit(exit_code_for(exc))
