"""``sandgate generate NAME --description TEXT``: an LLM writes the skill, the sandbox judges it.

Progress per attempt on stderr; a summary (or ``--json``) on stdout. The
passing version is submitted through ``lifecycle.submit`` (the policy decides
promotion) unless ``--no-submit``.

Exit codes: 0 a passing version was produced (and submitted); 1 no attempt
passed (attempts or the token/cost budget ran out, or cancelled); 2 an
infrastructure or configuration error (no ``SANDGATE_LLM_BASE_URL``, the
provider failing after its retries, the sandbox broken, the store refusing).

The policy loader and the evaluator are the command's collaborators
(:class:`sandgate.cli.common.Collaborators`, click's context object; default:
the configured policies and the sandbox).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandgate.cli.common import collaborators
from sandgate.cli.store import default_actor
from sandgate.errors import SandgateError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

__all__ = ["register", "generate"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
EXIT_FOR_STATUS = {"passed": EXIT_OK, "failed": EXIT_FAILED, "budget_exceeded": EXIT_FAILED,
                   "cancelled": EXIT_FAILED, "error": EXIT_ERROR}
STYLE = {"passed": "bold green", "failed": "bold red", "rejected": "bold magenta",
         "error": "bold yellow", "malformed": "magenta", "llm_error": "bold yellow",
         "budget_exceeded": "bold yellow", "cancelled": "yellow"}


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _progress(err: Console) -> Any:
    from rich.markup import escape

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "attempt":
            err.print(f"[bold]attempt {event['attempt']}/{event['of']}[/]")
        elif kind == "ask":
            again = f" (re-ask {event['reask']})" if event["reask"] else ""
            err.print(f"  asking {escape(event['model'])} at {escape(event['host'])}{again} …")
        elif kind == "malformed":
            problems = event["problems"]
            err.print(f"  [magenta]reply malformed[/]: {escape(problems[0])}"
                      + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        elif kind == "rejected":
            first = str(event["message"]).splitlines()[0]
            err.print(f"  [magenta]rejected at intake[/]: {escape(first)}")
        elif kind == "evaluating":
            err.print(f"  evaluating {event['content_hash'].split(':')[-1][:12]} in the sandbox …")
        elif kind == "attempt_done":
            outcome = event["outcome"] or "?"
            codes = ", ".join(event["reason_codes"])
            err.print(f"  [{STYLE.get(outcome, 'bold')}]{outcome.upper()}[/]"
                      f"{'  ' + escape(codes) if codes else ''}"
                      f"  [dim]{event['tokens']} tokens, {event['seconds']:.1f}s[/]")
    return on_event


def generate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="Skill name: a lowercase letter, then lowercase letters, digits, _.")],
    description: Annotated[str, typer.Option("--description", "-d",
                                             help="What the skill does.")],
    requirements: Annotated[list[str] | None, typer.Option(
        "--requirements", "--requirement", "-r",
        help="A functional requirement the skill must meet (repeatable).")] = None,
    attempts: Annotated[int, typer.Option(min=1, max=20, help="Evaluated attempts at most.")] = 3,
    policy: Annotated[str | None, typer.Option(
        help="Policy name in policies/ or a path (default: settings.policy).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    no_submit: Annotated[bool, typer.Option(
        "--no-submit", help="Do not store the passing version.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the last generated files to this directory.")] = None,
    max_reasks: Annotated[int, typer.Option(
        min=0, max=10, help="Re-asks per attempt when the reply is malformed.")] = 2,
    actor: Annotated[str | None, typer.Option(
        help="Who is acting (default: $SANDGATE_ACTOR or cli:<user>).")] = None,
) -> None:
    """Generate a skill with an LLM: evaluate each attempt in the sandbox, repair, submit."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.markup import escape

    from sandgate import lifecycle  # the store, the sandbox, the LLM client: only for this command
    from sandgate.environ import remote_url
    from sandgate.generation import ChatClient, GenerationSettings, generate_skill

    remote = remote_url()
    if remote and not no_submit:
        raise _fail(f"generate stores the passing version in the local store, not at SANDGATE_URL={remote}: "
                    f"run it with --no-submit --out DIR, then `sandgate submit DIR`")
    given = collaborators(ctx)
    load_policy = given.load_policy or lifecycle.load_policy
    sandbox_evaluate = given.evaluate or lifecycle.default_evaluate
    try:
        chosen = load_policy(policy)
        client = ChatClient(GenerationSettings.load())
    except SandgateError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        raise _fail(f"invalid configuration: {exc}") from None

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"generating [bold]{escape(name)}[/] with {escape(client.model)} at "
              f"{escape(client.host)} under policy {escape(chosen.name)} "
              f"(at most {attempts} attempt(s))")

    def evaluate(submission: Any, *, policy: Any) -> Any:
        return sandbox_evaluate(submission, policy=policy)

    store = None
    try:
        if not no_submit:
            from sandgate.config import get_settings
            from sandgate.store import open_store

            store = open_store(get_settings().effective_database_url)
            actor = actor or default_actor()
        result = generate_skill(
            name, description, requirements=requirements or (), attempts=attempts,
            policy=chosen, client=client, evaluate=evaluate, store=store, actor=actor,
            max_reasks=max_reasks, on_event=_progress(err))
    except SandgateError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()
        if store is not None:
            store.close()

    if out is not None and result.files:
        out.mkdir(parents=True, exist_ok=True)
        for path, text in result.files.items():
            target = out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        _summary(result, out)
    raise typer.Exit(EXIT_FOR_STATUS.get(result.status, EXIT_ERROR))


def _summary(result: Any, out_dir: Path | None) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    style = STYLE.get(result.status, "bold")
    cost = f", cost {result.cost:g}" if result.cost is not None else ""
    console.print(f"[{style}]{result.status.upper()}[/]  {result.name}  "
                  f"after {len(result.attempts)} attempt(s), {result.tokens_used} tokens{cost}")
    if result.error:
        console.print(escape(result.error))
    submitted = result.submitted
    if submitted is not None:
        v = submitted.version
        state = "new version" if submitted.created else "same content as an existing version"
        console.print(f"stored {v.ref} ({state}), verdict {submitted.verdict}")
        if submitted.promoted is not None:
            console.print(f"promoted: {v.skill} active -> {v.skill}@{submitted.promoted.to_version}")
        elif submitted.promotion_mode == "manual":
            console.print(f"promotion: manual — run `sandgate promote {v.skill} {v.number}`")
        if submitted.promotion_note:
            console.print(escape(submitted.promotion_note))
    elif result.passed:
        console.print("not submitted (--no-submit)")
    if out_dir is not None and result.files:
        console.print(f"files written to {out_dir}")


def register(app: typer.Typer) -> None:
    app.command()(generate)
