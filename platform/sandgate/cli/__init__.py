"""The ``sandgate`` command line: thin, calls the library.

Exit codes: 0 success / verdict passed, 1 verdict failed or rejected (or a
refused store operation), 2 error (infrastructure, bad usage).
Each command group lives in its own module and registers itself here.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sandgate",
    help="Gate generated skills: evaluate in a sandbox, promote, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from sandgate.cli import canary, engine, evaluate, generate, keys, serve, store, worker

    engine.register(app)
    evaluate.register(app)
    store.register(app)
    generate.register(app)
    serve.register(app)
    keys.register(app)
    worker.register(app)
    canary.register(app)


def main() -> None:
    _register()
    app()
