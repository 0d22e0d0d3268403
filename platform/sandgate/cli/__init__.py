"""The ``sandgate`` command line: thin, calls the library.

Exit codes: 0 success / verdict passed, 1 verdict failed or rejected (or a
refused store operation), 2 error (infrastructure, configuration, bad usage),
130 interrupted (Ctrl-C). Every error is one line on stderr that says what was
wrong; ``SANDGATE_TRACEBACK=1`` shows the traceback of an unexpected one.
Each command group lives in its own module and registers itself here.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperOption

if TYPE_CHECKING:  # pragma: no cover
    from typer._click import Context  # the click typer 0.29 vendors: what display_type_rich is given

EXIT_INTERRUPTED = 130


def _flag_type(self: TyperOption, ctx: Context) -> str | None:
    """A flag takes no value: show ``--json``, not ``--json <bool>`` (typer 0.29 prints the type)."""
    return None if self.is_flag else _value_type(self, ctx)


_value_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]  # a deliberate monkeypatch of typer

EXAMPLES = """\b
Examples:
  sandgate evaluate examples/skills/text_stats    (sandbox and gates only)
  sandgate submit examples/skills/text_stats      (store, evaluate, promote)
  sandgate versions text_stats
  sandgate promote text_stats@2 --reason reviewed
  sandgate rollback text_stats --reason "errors in production"
  SANDGATE_URL=http://127.0.0.1:8080 SANDGATE_API_KEY=KEY sandgate skills
"""

app = typer.Typer(
    name="sandgate",
    help="Gate generated skills: evaluate in a sandbox, promote, roll back.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"sandgate {version('sandgate')}")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            typer.echo("sandgate (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    _version_flag: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Say on stderr which store and server this command uses.")] = False,
) -> None:
    """Gate generated skills: evaluate in a sandbox, promote, roll back."""
    from sandgate.cli.common import errors

    with errors():
        from sandgate.config import check_environment

        check_environment()  # a misspelt SANDGATE_* variable is refused, not ignored
        if verbose:
            _say_where()


def _say_where() -> None:
    from sandgate.config import describe_store, get_settings, remote_url

    url = remote_url()
    if url:
        typer.echo(f"server: {url} (SANDGATE_URL)", err=True)
        return

    store, _exists = describe_store(get_settings())
    typer.echo(f"store: {store}", err=True)


def _register() -> None:
    from sandgate.cli import canary, deps, engine, evaluate, generate, keys, mcp, serve, settings, store, worker

    engine.register(app)
    deps.register(app)
    evaluate.register(app)
    store.register(app)
    generate.register(app)
    serve.register(app)
    keys.register(app)
    worker.register(app)
    canary.register(app)
    mcp.register(app)
    settings.register(app)


def main() -> None:
    try:
        _register()
        app()
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("SANDGATE_TRACEBACK"):
            raise
        from sandgate.cli.common import exit_code_for

        message = " ".join(str(exc).split()) or "(no message)"
        typer.echo(f"error: {type(exc).__name__}: {message} (set SANDGATE_TRACEBACK=1 for the traceback)",
                   err=True)
        sys.exit(exit_code_for(exc))
