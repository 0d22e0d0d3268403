"""``sandgate deps``: a skill version's locked third-party packages, for operators."""

from __future__ import annotations

from typing import Annotated

import typer

from sandgate.cli import PLAIN_HELP
from sandgate.cli.common import EXIT_REFUSED, errors, fail_with
from sandgate.cli.engine import _console

deps_app = typer.Typer(help="A skill version's locked third-party packages (requirements.lock).",
                       no_args_is_help=True, **PLAIN_HELP)


def _version_lock(ref: str) -> tuple[str, bytes | None]:
    from sandgate import deps
    from sandgate.store import open_store, versions

    name, sep, number_text = ref.partition("@")
    if sep and not number_text.isdigit():
        raise typer.BadParameter(f"expected NAME or NAME@NUMBER, got {ref!r}")
    store = open_store()
    try:
        if sep:
            number = int(number_text)
        else:
            active = versions.get_active_version(store, name=name)
            if active is None:
                fail_with(f"{name} has no active version; name one: {name}@N", EXIT_REFUSED)
            number = active.number
        files = versions.get_version_files(store, name=name, number=number)
    finally:
        store.close()
    return f"{name}@{number}", files.get(deps.LOCK_NAME)


@deps_app.command("install")
def install(
    ref: Annotated[str, typer.Argument(metavar="NAME[@N]", help="Skill, optionally @version (default: active).")],
) -> None:
    """Install a version's requirements.lock into this environment, offline from the wheelhouse
    (downloaded there once when missing), hash-checked: what a consumer needs before it loads it."""
    from sandgate import deps

    with errors():
        where, lock_bytes = _version_lock(ref)
        if lock_bytes is None:
            _console().print(f"{where} has no requirements: nothing to install")
            return
        lock = deps.parse_lock(lock_bytes)
        missing = deps.missing_packages(lock)
        if not missing:
            _console().print(f"{where}: every locked package is already installed ({lock.hash[:19]})")
            return
        deps.install_lock(lock, say=lambda m: _console().print(f"[dim]{m}[/]"))
        left = deps.missing_packages(lock)
    if left:
        fail_with(f"{where}: still missing after install: {', '.join(left)}", 2)
    _console().print(f"{where}: installed {', '.join(missing)} (lock {lock.hash[:19]})")


@deps_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(metavar="NAME[@N]", help="Skill, optionally @version (default: active).")],
) -> None:
    """Print a version's lock hash and packages, and what this environment lacks of them."""
    from sandgate import deps

    with errors():
        where, lock_bytes = _version_lock(ref)
        if lock_bytes is None:
            _console().print(f"{where} has no requirements")
            return
        lock = deps.parse_lock(lock_bytes)
        missing = deps.missing_packages(lock)
    _console().print(f"{where} lock {lock.hash}")
    for name, version in sorted(lock.versions.items()):
        _console().print(f"  {name}=={version}")
    _console().print("missing here: " + (", ".join(missing) if missing else "nothing"))


def register(app: typer.Typer) -> None:
    app.add_typer(deps_app, name="deps")
