"""Store commands: submit, skills, versions, show, promote, rollback, yank, history, diff.

Thin: every command makes one call of a :class:`~sandgate.service.SkillService`
(picked once by :func:`~sandgate.service.open_service`) and only formats the
result. Readable tables
by default, ``--json`` for scripts.

Exit codes: 0 ok (a submit whose verdict is passed, or that was queued);
1 refused (not found, concurrent move, invalid transition, or a submit whose
verdict is failed/rejected); 2 error (infrastructure, configuration, a submit
whose verdict is error). Errors are one line on stderr.

Remote mode: with ``SANDGATE_URL`` (and ``SANDGATE_API_KEY``) set, the same
commands, with the same output and exit codes, talk to a ``sandgate serve``
through :mod:`sandgate.service.remote` instead of opening the store (which
is then never imported). The server records
the API key as the actor, so ``--actor`` is refused there; ``submit`` uploads,
and with ``--wait`` (the default) polls until a worker has evaluated it.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandgate.cli.common import EXIT_ERROR, EXIT_REFUSED, collaborators, errors, literal

if TYPE_CHECKING:  # pragma: no cover - imported where used: registering the commands loads neither
    from rich.console import Console
    from rich.table import Table

    from sandgate.service import SkillService

__all__ = ["register", "default_actor"]


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded in the event).")]
ExpectedGenerationOpt = Annotated[
    int | None,
    typer.Option("--expected-generation", help="Refuse unless the skill is at this generation."),
]
ActorOpt = Annotated[
    str | None,
    typer.Option("--actor", help="Who is acting (default: $SANDGATE_ACTOR or cli:<user>)."),
]


def default_actor() -> str:
    actor = os.environ.get("SANDGATE_ACTOR")
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    return f"cli:{user}"


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _table(*headers: str, **options: Any) -> Table:
    from rich.table import Table

    return Table(*headers, **options)


@contextmanager
def _service(ctx: typer.Context, *, read: bool = False) -> Iterator[SkillService]:
    """The service of this invocation: remote with ``SANDGATE_URL``, else the embedded store
    (with the collaborators passed as the context object, if any). ``read``: a read command
    (skills, versions, show, history), which reads an embedded SQLite store at head with the
    standard library's sqlite3 (:mod:`sandgate.service.lite`: same records, same errors, no
    SQLAlchemy), or a server with the standard library's HTTP (:class:`~sandgate.wire.PlainClient`,
    no httpx); anything else about the store (missing, not at head) takes the full path."""
    from sandgate.environ import remote_url

    if read and remote_url():
        from sandgate.service import open_remote_reads

        with open_remote_reads() as remote:  # GET requests over http.client: no httpx
            yield remote
        return
    if read:
        from sandgate.environ import plain_store_url
        from sandgate.service.lite import open_reader

        url = plain_store_url()  # the environment alone names the store: no settings machinery
        if url is None:
            from sandgate.config import get_settings

            url = get_settings().effective_database_url
        reader = open_reader(url)
        if reader is not None:
            with reader:
                yield reader  # type: ignore[misc]
            return
    from sandgate.service import open_service

    with open_service(default_actor=default_actor, embedded=collaborators(ctx).embedded()) as service:
        yield service


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _short_hash(h: str | None) -> str:
    return (h or "").split(":", 1)[-1][:12]


def _parse_ref(ref: str) -> tuple[str, int | None]:
    name, sep, number = ref.partition("@")
    if not sep:
        return name, None
    try:
        return name, int(number)
    except ValueError:
        raise typer.BadParameter(f"expected NAME or NAME@NUMBER, got {ref!r}") from None


def _move_line(move: Any) -> str:
    verb = "promoted" if move.action == "promoted" else "rolled back"
    was = f"{move.skill}@{move.from_version}" if move.from_version is not None else "nothing"
    forced = " (forced)" if move.forced else ""
    return (
        f"{verb} {move.skill}: active {was} -> {move.skill}@{move.to_version}"
        f"{forced} (generation {move.generation}, event {move.event_id})"
    )


def _lit(value: Any) -> str:
    """Submitted (or user-typed) text for Rich: printed literally, control characters escaped."""
    from rich.markup import escape

    return escape(literal(value))


def _reasons_text(reasons: list[dict[str, Any]]) -> str:
    return "; ".join(f"{_lit(r.get('code'))}: {_lit(r.get('message'))}" for r in reasons)


# --------------------------------------------------------------------------- commands


def submit(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Skill directory or archive to submit.")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Evaluate now, or only queue for a worker.")
    ] = True,
    policy: Annotated[
        str | None, typer.Option("--policy", help="Policy name (default: settings.policy).")
    ] = None,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
    wait_timeout: Annotated[
        float,
        typer.Option("--wait-timeout", help="Remote mode: how long --wait polls the evaluation (s)."),
    ] = 600.0,
) -> None:
    """Submit a skill: store the version, evaluate it, promote if the policy says auto."""
    from sandgate.cli.progress import Progress

    traced = False
    try:
        with errors(), _service(ctx) as service, Progress(f"submit {path.name}") as progress:
            traced = _trace_embedded()
            result, policy_name = service.submit(path, policy=policy, actor=actor, wait=wait,
                                                 wait_timeout=wait_timeout,
                                                 provenance={"client": "cli", "path": str(path)},
                                                 progress=progress.phase if progress.enabled else None)
    finally:
        if traced:
            from sandgate import tracing

            tracing.shutdown()  # the spans not yet exported
    verdict = result.verdict
    if as_json:
        _echo_json(result.to_dict())
    else:
        out = _console()
        v = result.version
        state = "new version" if result.created else "same content as existing version"
        out.print(f"{v.ref}  ({state}, {_short_hash(v.content_hash)}, {v.file_count} files)")
        if result.evaluation is None:
            pass
        elif result.queued:
            out.print(f"evaluation {result.evaluation.id} queued under policy {policy_name}")
        else:
            reused = " (reused earlier evaluation)" if result.reused_evaluation else ""
            out.print(f"verdict: {verdict}{reused}  [evaluation {result.evaluation.id}]")
            if result.evaluation.reasons:
                out.print(f"reasons: {_reasons_text(result.evaluation.reasons)}")
        if result.promoted is not None:
            out.print(_move_line(result.promoted))
        elif verdict == "passed" and result.promotion_mode == "manual":
            out.print(f"promotion: manual — run `sandgate promote {v.skill} {v.number}`")
        if result.promotion_note:
            out.print(result.promotion_note)
    if result.evaluation is None:  # yanked
        raise typer.Exit(EXIT_REFUSED)
    if verdict in ("failed", "rejected"):
        raise typer.Exit(EXIT_REFUSED)
    if verdict == "error":
        raise typer.Exit(EXIT_ERROR)


def _trace_embedded() -> bool:
    """An embedded submit is traced like the API's (service ``sandgate-cli``) when an OTLP endpoint is
    configured; a remote one is the server's to trace. Nothing is imported for it otherwise."""
    from sandgate.environ import remote_url

    if remote_url() is not None:
        return False
    from sandgate import tracing
    from sandgate.config import get_settings

    return tracing.configure_from_settings(get_settings(), service="sandgate-cli")


def skills(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List skills with their active version."""
    with errors(), _service(ctx, read=True) as service:
        rows = service.list_skills()
    if as_json:
        _echo_json([r.to_dict() for r in rows])
        return
    table = _table("skill", "active", "latest", "generation", "created")
    for r in rows:
        table.add_row(
            r.name,
            str(r.active_version) if r.active_version is not None else "-",
            str(r.latest_version) if r.latest_version is not None else "-",
            str(r.generation),
            _when(r.created_at),
        )
    _console().print(table if rows else "no skills yet")


def versions(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Skill name.")], as_json: JsonOpt = False
) -> None:
    """List the versions of a skill."""
    with errors(), _service(ctx, read=True) as service:
        rows = service.list_versions(name)
    if as_json:
        _echo_json([r.to_dict() for r in rows])
        return
    table = _table("", "version", "hash", "status", "files", "created", "by", "yanked", title=name)
    for v in rows:
        table.add_row(
            "*" if v.active else "",
            str(v.number),
            _short_hash(v.content_hash),
            v.display_status,
            str(v.file_count),
            _when(v.created_at),
            _lit(v.created_by),
            f"{_when(v.yanked_at)}: {_lit(v.yank_reason)}" if v.yanked else "",
        )
    _console().print(table)


def show(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(metavar="NAME[@N]", help="Skill, optionally @version (default: active, else latest).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Show a version: manifest, latest evaluation, files."""
    name, number = _parse_ref(ref)
    with errors(), _service(ctx, read=True) as service:
        detail = service.show(name, number)
    version, evaluation = detail.version, detail.evaluation
    if as_json:
        _echo_json(detail.to_dict())
        return
    out = _console()
    flags = [f for f, on in (("active", version.active), ("yanked", version.yanked)) if on]
    out.print(f"[bold]{version.ref}[/bold] {' '.join(_lit(f'[{f}]') for f in flags)}")
    out.print(f"  hash:         {version.content_hash}")
    out.print(f"  status:       {version.status}")
    out.print(f"  created:      {_when(version.created_at)} by {_lit(version.created_by)}")
    if version.yanked:
        out.print(f"  yanked:       {_when(version.yanked_at)}: {_lit(version.yank_reason)}")
    m = version.manifest
    for key in ("description", "entrypoint", "requirements", "tests"):
        if m.get(key) is not None:
            value = ", ".join(map(str, m[key])) or "-" if isinstance(m[key], list) else m[key]
            out.print(f"  {key + ':':<14}{_lit(value)}")
    if evaluation is None:
        out.print("evaluation: none finished yet")
    else:
        out.print(
            f"evaluation {evaluation.id}: [bold]{evaluation.verdict}[/bold] under policy "
            f"{evaluation.policy_name} ({_short_hash(evaluation.policy_hash)}), "
            f"{_when(evaluation.finished_at)}"
        )
        report = evaluation.report or {}
        tests = report.get("tests") or {}
        if tests:
            out.print(
                f"  tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
                f"{tests.get('errors', 0)} errors of {tests.get('collected', 0)}"
            )
        coverage = report.get("coverage")
        if coverage:
            out.print(
                f"  coverage: {coverage.get('line_percent', 0):.1f}% lines, "
                f"{coverage.get('branch_percent', 0):.1f}% branches"
            )
        for r in evaluation.reasons:
            out.print(f"  reason: {_lit(r.get('code'))}: {_lit(r.get('message'))}")
    table = _table("file", "size", "sha256")
    for f in detail.files:
        table.add_row(_lit(f.path), str(f.size), f.sha256[:12])
    out.print(table)


def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    number: Annotated[int, typer.Argument(help="Version number to make active.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote without a passed evaluation (needs --reason).")
    ] = False,
    reason: ReasonOpt = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Current policy (default: settings.policy).")] = None,
    expected_generation: ExpectedGenerationOpt = None,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
    canary: Annotated[
        int | None,
        typer.Option(
            "--canary",
            min=1,
            max=99,
            help="Start a canary at this weight (percent) instead: the "
            "version serves that share of calls beside the active one until the scheduler decides.",
        ),
    ] = None,
) -> None:
    """Make a version active (it must have passed under the current policy), or a canary with --canary."""
    if canary is not None:
        from sandgate.cli.canary import start

        return start(
            ctx,
            name=name,
            number=number,
            weight=canary,
            reason=reason,
            force=force,
            policy=policy,
            expected_generation=expected_generation,
            actor=actor,
            as_json=as_json,
        )
    with errors(), _service(ctx) as service:
        move = service.promote(
            name,
            number,
            actor=actor,
            reason=reason,
            policy=policy,
            expected_generation=expected_generation,
            force=force,
        )
    _echo_json(move.to_dict()) if as_json else _console().print(_move_line(move))


def rollback(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    to: Annotated[int | None, typer.Option("--to", help="Go back to this older version.")] = None,
    reason: ReasonOpt = None,
    expected_generation: ExpectedGenerationOpt = None,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Go back to what was active before the last move (again: further back). No re-evaluation."""
    with errors(), _service(ctx) as service:
        move = service.rollback(name, to=to, actor=actor, reason=reason, expected_generation=expected_generation)
    _echo_json(move.to_dict()) if as_json else _console().print(_move_line(move))


def yank(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    number: Annotated[int, typer.Argument(help="Version number to yank.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required, recorded).")],
    do_rollback: Annotated[
        bool,
        typer.Option("--rollback", help="If the version is active, roll back first (same transaction)."),
    ] = False,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark a version as never to be promoted again."""
    with errors(), _service(ctx) as service:
        result = service.yank(name, number, actor=actor, reason=reason, rollback=do_rollback)
    if as_json:
        _echo_json(result.to_dict())
        return
    out = _console()
    if result.rollback is not None:
        out.print(_move_line(result.rollback))
    out.print(f"yanked {result.version.ref}: {reason}")


def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    limit: Annotated[int | None, typer.Option("--limit", help="Only the newest N events.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log of a skill: who did what, when, why."""
    with errors(), _service(ctx, read=True) as service:
        events = service.history(name, limit=limit)
    if as_json:
        _echo_json([e.to_dict() for e in events])
        return
    table = _table("id", "when", "actor", "action", "version", "change", "reason", title=name)
    for e in events:
        change = ""
        if e.action in ("promoted", "rolled_back") and e.before and e.after:
            was = e.before.get("version")
            change = f"{was if was is not None else '-'} -> {e.after.get('version')} (gen {e.after.get('generation')})"
            if (e.evidence or {}).get("forced"):
                change += " forced"
        elif e.action == "evaluated" and e.evidence:
            change = f"{e.evidence.get('verdict')} ({e.evidence.get('policy')})"
        elif e.action.startswith("canary_") and e.after:  # canary decisions (sandgate.delivery)
            cand = e.after.get("candidate")
            change = f"candidate {cand} at {e.after.get('weight')} %" if cand is not None else "no candidate"
            decision = (e.evidence or {}).get("decision") or {}
            if decision.get("code"):
                change += f" [{decision['code']}]"
        table.add_row(
            str(e.id),
            _when(e.created_at),
            _lit(e.actor),
            e.action,
            str(e.version) if e.version is not None else "-",
            _lit(change),
            _lit(e.reason or ""),
        )
    _console().print(table)


def diff(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    a: Annotated[int, typer.Argument(help="From version.")],
    b: Annotated[int, typer.Argument(help="To version.")],
    as_json: JsonOpt = False,
) -> None:
    """Unified diff of the files of two versions."""
    with errors(), _service(ctx) as service:
        diffs = service.diff(name, a, b)
    if as_json:
        _echo_json([d.to_dict() for d in diffs])
        return
    if not diffs:
        typer.echo(f"{name}@{a} and {name}@{b} have identical files")
    for d in diffs:
        if d.binary:
            typer.echo(f"Binary file {d.path} {d.change}")
        else:
            typer.echo(d.diff, nl=False)


_COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("submit", submit),
    ("skills", skills),
    ("versions", versions),
    ("show", show),
    ("promote", promote),
    ("rollback", rollback),
    ("yank", yank),
    ("history", history),
    ("diff", diff),
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    for name, fn in _COMMANDS:
        app.command(name)(fn)
