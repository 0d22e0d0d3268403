"""Error translation at the CLI edge: one clear line on stderr, a defined exit code.

Exit codes: 0 success, 1 refused (the request or the skill: not found, a lost
race, a move that is not allowed, an invalid submission), 2 error (the
infrastructure, the configuration, anything else) — each error class's row of
the one table, :data:`sandgate.errors.MEANINGS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import typer

from sandgate.errors import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, SandgateError, exit_code_of

__all__ = [
    "EXIT_ERROR", "EXIT_OK", "EXIT_REFUSED", "Collaborators", "collaborators", "errors", "exit_code_for", "fail",
    "fail_with", "literal",
]


@dataclass(frozen=True)
class Collaborators:
    """What a command calls that a program embedding the CLI may replace (``None``: the defaults).

    Passed as the context object: ``app(obj=Collaborators(...))`` or, with
    typer's test runner, ``CliRunner().invoke(app, args, obj=Collaborators(...))``;
    a command reads them with ``collaborators(ctx)``.
    """

    #: a policy name (None: the configured one) -> policy
    load_policy: Callable[[str | None], Any] | None = None
    #: a path -> submission
    load_submission: Callable[[Any], Any] | None = None
    #: (submission, *, policy, evaluation_id=None) -> report: the sandbox
    evaluate: Callable[..., Any] | None = None

    def embedded(self) -> dict[str, Any]:
        """The ones given, as keyword arguments for the embedded service."""
        given = {"load_policy": self.load_policy, "load_submission": self.load_submission, "evaluate": self.evaluate}
        return {k: v for k, v in given.items() if v is not None}


def collaborators(ctx: typer.Context) -> Collaborators:
    """The collaborators of the running command (the defaults when none were passed)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Collaborators) else Collaborators()


def literal(value: object) -> str:
    """Submitted text as printable characters: control and format characters escaped
    (``\\n``, ``\\x1b``, ``\\u202e``). Use it inside :class:`rich.text.Text`, never as markup."""
    text = str(value)
    if all(ch.isprintable() or ch == " " for ch in text):
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an error (its row of :data:`sandgate.errors.MEANINGS`; anything else: 2)."""
    return exit_code_of(exc)


def fail_with(message: str, code: int) -> NoReturn:
    one_line = " ".join(message.split())  # driver messages can span lines
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(code)


def fail(exc: BaseException) -> NoReturn:
    message = str(exc) if isinstance(exc, SandgateError) else f"{type(exc).__name__}: {exc}"
    fail_with(message, exit_code_for(exc))


@contextmanager
def errors() -> Iterator[None]:
    """Translate library errors raised inside the block into :func:`fail`."""
    try:
        yield
    except typer.Exit:
        raise
    except SandgateError as exc:
        fail(exc)
    except ImportError as exc:  # a part of sandgate this command needs is missing
        fail_with(f"sandgate is incompletely installed: {exc}", EXIT_ERROR)
    except Exception as exc:
        from pydantic import ValidationError  # lazy: ~0.1 s of start-up for every command

        if isinstance(exc, ValidationError):
            fail_with(f"invalid configuration: {exc}", EXIT_ERROR)
        raise
