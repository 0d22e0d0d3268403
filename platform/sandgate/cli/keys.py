"""``sandgate keys``: API keys of ``sandgate serve``, managed directly in the store.

::

    sandgate keys create ci-bot --role submitter [--rate 5 --burst 20]   # prints the token once
                             [--max-queued 50 --max-running 2]  # the key's queue caps
    sandgate keys list [--json]
    sandgate keys rotate ci-bot          # a new token, same name and role; the old one stops
    sandgate keys revoke ci-bot          # at once; the name is never reused

Embedded only (it needs the database: run it where the server's
``SANDGATE_DATABASE_URL`` points, e.g. ``docker compose exec controller sandgate keys ...``).
Roles: reader < submitter < promoter < admin.

``create`` and ``rotate`` print only the token on stdout (the rest on stderr), so
``TOKEN=$(sandgate keys create ci --role submitter)`` works.

Exit codes: 0 ok; 1 refused (no such key, name taken, already revoked);
2 error (the store cannot be opened, bad configuration).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from sandgate.cli import PLAIN_HELP
from sandgate.cli.common import EXIT_ERROR, errors, fail_with
from sandgate.cli.store import _console, _table, _when, default_actor

__all__ = ["register", "keys_app"]

keys_app = typer.Typer(
    name="keys",
    help="API keys of `sandgate serve` (stored hashed; the token is shown once).",
    no_args_is_help=True,
    **PLAIN_HELP,
)

RoleOpt = Annotated[
    str,
    typer.Option("--role", help="reader < submitter < promoter < admin.", case_sensitive=False),
]


@contextmanager
def _store(*, create: bool = False) -> Iterator[Any]:
    """The embedded store: keys live in the controller's database, and are managed where it is.

    With ``SANDGATE_URL`` set the other commands talk to that server; key commands
    cannot (a key is not made over the API it guards), so they refuse rather than
    write keys into a local store the server never reads.
    """
    from sandgate.environ import remote_url

    url = remote_url()
    if url:
        fail_with(f"sandgate keys manages the API keys in the store of the server itself, not over "
                  f"SANDGATE_URL={url}: run it on the server's host with the server's SANDGATE_DATABASE_URL "
                  f"(and SANDGATE_URL unset)", EXIT_ERROR)
    from sandgate.service.embedded import EmbeddedService  # lazy: SQLAlchemy, for key commands only

    with EmbeddedService.open() as service:
        yield service.ensure_store() if create else service.store


def _roles() -> tuple[str, ...]:
    from sandgate.store.keys import ROLES

    return ROLES


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Key name: its identity in the event log is key:NAME.")],
    role: RoleOpt,
    rate: Annotated[float | None, typer.Option("--rate", help="Requests per second for this key "
                                                              "(default: the server's).")] = None,
    burst: Annotated[int | None, typer.Option("--burst", help="Bucket size for this key.")] = None,
    max_queued: Annotated[int | None, typer.Option(
        "--max-queued", help="Evaluations this key may have queued (default: the server's "
                             "SANDGATE_API_TENANT_MAX_QUEUED); more are refused with 429.")] = None,
    max_running: Annotated[int | None, typer.Option(
        "--max-running", help="Evaluations of this key workers run at once (default: no cap; "
                              "slots are shared fairly between keys anyway).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
) -> None:
    """Create a key and print its token (the only time it is shown)."""
    from sandgate.store import keys

    role = role.lower()
    if role not in _roles():
        typer.echo(f"error: unknown role {role!r}: one of {', '.join(_roles())}", err=True)
        raise typer.Exit(EXIT_ERROR)
    with errors(), _store(create=True) as store:
        record, token = keys.create_key(store, name=name, role=role, actor=default_actor(),
                                        rate_per_second=rate, burst=burst, max_queued=max_queued,
                                        max_running=max_running)
    if as_json:
        typer.echo(json.dumps({**record.to_dict(), "token": token}, indent=2))
        return
    typer.echo(f"created key {record.name} (role {record.role}, id {record.key_id}); "
               "the token below is shown once, store it now:", err=True)
    typer.echo(token)


@keys_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all/--live", help="Include revoked keys.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
) -> None:
    """List keys (never their tokens)."""
    from sandgate.store import keys

    with errors(), _store() as store:
        rows = keys.list_keys(store, include_revoked=all_)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no keys yet: sandgate keys create NAME --role ROLE")
        return
    table = _table("name", "role", "id", "created", "by", "last used", "rate", "queue", "revoked")
    for r in rows:
        rate = "" if r.rate_per_second is None else f"{r.rate_per_second:g}/s"
        if r.burst is not None:
            rate += f" burst {r.burst}"
        table.add_row(r.name, r.role, r.key_id, _when(r.created_at), r.created_by,
                      _when(r.last_used_at), rate or "default",
                      f"queued {'default' if r.max_queued is None else r.max_queued}, running "
                      f"{'any' if r.max_running is None else r.max_running}",
                      f"{_when(r.revoked_at)} by {r.revoked_by}" if r.revoked else "")
    _console().print(table)


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="Key name.")]) -> None:
    """Revoke a key at once (its next request gets 401)."""
    from sandgate.store import keys

    with errors(), _store() as store:
        record = keys.revoke_key(store, name=name, actor=default_actor())
    typer.echo(f"revoked key {record.name} ({record.role})")


@keys_app.command("rotate")
def rotate(name: Annotated[str, typer.Argument(help="Key name.")]) -> None:
    """Give a live key a new token (same name, role and identity); the old token stops working."""
    from sandgate.store import keys

    with errors(), _store() as store:
        record, token = keys.rotate_key(store, name=name)
    typer.echo(f"rotated key {record.name} (role {record.role}, id {record.key_id}); "
               "the token below is shown once, store it now:", err=True)
    typer.echo(token)


def register(app: typer.Typer) -> None:
    """Add the ``keys`` command group to ``app``."""
    app.add_typer(keys_app, name="keys")

