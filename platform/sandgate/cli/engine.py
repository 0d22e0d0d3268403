"""``sandgate doctor``, ``sandgate image build``, ``sandgate image prune``, ``sandgate reap``."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Annotated

import typer

from sandgate.cli import PLAIN_HELP
from sandgate.cli.common import EXIT_REFUSED, fail, fail_with

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

image_app = typer.Typer(help="Build and inspect the sandbox image.", no_args_is_help=True, **PLAIN_HELP)


@cache
def _console() -> Console:
    from rich.console import Console  # lazy: registering the commands does not load rich

    return Console()


def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Report whether a Docker engine answers, its runtimes, and the sandbox image."""
    from rich.table import Table

    from sandgate.sandbox.doctor import diagnose

    diagnosis = diagnose()
    console = _console()
    if as_json:
        typer.echo(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        table = Table(title="sandgate doctor", show_lines=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for check in diagnosis.checks:
            status = "[green]ok[/]" if check.ok else ("[red]FAIL[/]" if check.required else "[yellow]warn[/]")
            table.add_row(check.name, status, check.detail)
        console.print(table)
        console.print("[green]ready[/]" if diagnosis.ready else "[red]not ready[/]")
    raise typer.Exit(0 if diagnosis.ready else 1)


@image_app.command("build")
def image_build(
    base: Annotated[
        str | None, typer.Option(help="Base image with python3 (default: an offline debootstrap base).")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Image tag (default: settings.image).")] = None,
) -> None:
    """Build the sandbox image offline (cached: a rebuild with no change takes seconds)."""
    from sandgate.sandbox.image import build_image

    try:
        info = build_image(base=base, tag=tag, say=lambda m: _console().print(f"[dim]{m}[/]"))
    except Exception as exc:  # noqa: BLE001 - translated at the edge
        fail(exc)
    _console().print(
        f"{info.tag} {info.id[7:19]} {info.size_bytes / 1e6:.0f} MB "
        + " ".join(f"{k}={v}" for k, v in sorted(info.toolchain.items()))
    )


@image_app.command("prune")
def image_prune(
    keep: Annotated[int, typer.Option(min=0, help="How many derived images to keep (most recently used).")] = 10,
) -> None:
    """Remove the least recently used derived images (sandbox image + a skill's locked packages)."""
    from sandgate.sandbox import connect
    from sandgate.sandbox.deps_image import prune

    try:
        removed = prune(connect(), keep=keep)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    for tag in removed:
        _console().print(f"removed {tag}")
    _console().print(f"removed {len(removed)} derived image(s), kept at most {keep}")


def reap(
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VALUE",
                     help="Only containers that also carry this label (repeatable), e.g. sandgate.pool=pool-..."),
    ] = None,
) -> None:
    """Remove every leftover sandbox container (label sandgate.managed=true), warm pools' included."""
    from sandgate.sandbox import connect
    from sandgate.sandbox import reap as reap_containers

    labels = list(label or [])
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            fail_with(f"--label must be KEY=VALUE, got {item!r}", EXIT_REFUSED)
    try:
        removed = reap_containers(connect(), labels=labels)
    except Exception as exc:  # noqa: BLE001
        fail(exc)
    _console().print(f"removed {len(removed)} container(s)")


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command()(reap)
    app.add_typer(image_app, name="image")
