"""The ``sandgate`` command line: thin, calls the library.

Exit codes: 0 success / verdict passed, 1 verdict failed or rejected (or a
refused store operation), 2 error (infrastructure, configuration, bad usage),
130 interrupted (Ctrl-C). Every error is one line on stderr that says what was
wrong; ``SANDGATE_TRACEBACK=1`` shows the traceback of an unexpected one.
Each command group lives in its own module and registers itself here;
``sandgate NAME`` imports only the module of NAME (:data:`COMMAND_MODULES`), and
the command modules import what a command needs inside it, so a short command
starts in the time typer itself takes (``tests/unit/test_cli_imports.py`` pins
the import sets, ``bench/bench_cli.py`` measures them).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, cast

import typer

EXIT_INTERRUPTED = 130

EXAMPLES = """\b
Examples:
  sandgate evaluate examples/skills/text_stats    (sandbox and gates only)
  sandgate submit examples/skills/text_stats      (store, evaluate, promote)
  sandgate versions text_stats
  sandgate promote text_stats@2 --reason reviewed
  sandgate rollback text_stats --reason "errors in production"
  SANDGATE_URL=http://127.0.0.1:8080 SANDGATE_API_KEY=KEY sandgate skills
"""

class _Group(typer.core.TyperGroup):
    """Help as click writes it (typer's Rich help costs ≈ 0.1 s of imports: rich.markdown,
    rich.traceback, …), with each command's first sentence whole, as Rich's showed it
    (click cuts it at the terminal's width and adds "...")."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=400)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


#: every typer app of the command line: plain (click's) help and errors, no Rich
PLAIN_HELP: dict[str, Any] = {"rich_markup_mode": None, "cls": _Group}

app = typer.Typer(
    name="sandgate",
    help="Gate generated skills: evaluate in a sandbox, promote, roll back.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    **PLAIN_HELP,
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
        from sandgate.environ import check_environment  # names only: no pydantic for a short command

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


#: the command modules, in the order ``sandgate --help`` lists their commands
_MODULES = ("engine", "deps", "evaluate", "store", "generate", "serve", "keys", "worker", "canary", "mcp", "settings")
#: which module registers each top-level command (tests/unit/test_cli_imports.py checks it against the modules)
COMMAND_MODULES = {
    "doctor": "engine", "reap": "engine", "image": "engine", "evaluate": "evaluate",
    "submit": "store", "skills": "store", "versions": "store", "show": "store", "promote": "store",
    "rollback": "store", "yank": "store", "history": "store", "diff": "store", "generate": "generate",
    "serve": "serve", "keys": "keys", "worker": "worker", "scheduler": "worker", "status": "canary",
    "abort": "canary", "mcp": "mcp", "settings": "settings", "deps": "deps",
}
#: the options of the app itself (none takes a value): they may come before the command's name
_APP_OPTIONS = {"--version", "--verbose", "-v", "--help", "--install-completion", "--show-completion"}


def _register() -> None:
    """Register every command on :data:`app`."""
    from importlib import import_module

    for name in _MODULES:
        import_module(f"sandgate.cli.{name}").register(app)


def _register_for(command: str | None) -> None:
    """Register only the module of ``command``: a short command pays for its own module (typer builds,
    and inspects the signature of, every registered command when it runs one). ``--help``, no command,
    an unknown name and shell completion get them all (:func:`_register`)."""
    module = COMMAND_MODULES.get(command or "")
    if module is None:
        _register()
        return
    from importlib import import_module

    import_module(f"sandgate.cli.{module}").register(app)
    # and of that module's commands only NAME (typer would build the other eight of `store`, too)
    app.registered_commands = [c for c in app.registered_commands if _name_of(c) == command]


def _name_of(info: Any) -> str:
    """A registered command's name, as typer derives it (the function's name, ``_`` as ``-``)."""
    return str(info.name or info.callback.__name__.replace("_", "-"))


def _command_in(args: list[str]) -> str | None:
    """The command named on a command line (``sandgate -v skills --json`` → ``skills``), None for none."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):  # shell completion: all
        return None
    for arg in args:
        if arg not in _APP_OPTIONS:
            return None if arg.startswith("-") else arg
    return None


def main() -> None:
    # httpx imports its own command line (click, pygments, rich.syntax: a fifth of its import time) when
    # they are installed; this process is sandgate's, and never runs httpx's CLI (httpx.main becomes its stub)
    sys.modules.setdefault("httpx._main", cast(Any, None))  # None in sys.modules: "not importable"
    try:
        _register_for(_command_in(sys.argv[1:]))
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
