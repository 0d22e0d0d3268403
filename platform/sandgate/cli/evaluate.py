"""``sandgate evaluate PATH``: one evaluation, a readable report or ``--json``.

Exit code 0 passed, 1 failed or rejected, 2 error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sandgate.cli.common import fail, literal

if TYPE_CHECKING:  # pragma: no cover - imported where used: `sandgate --help` loads neither rich nor the report
    from rich.console import Console
    from rich.text import Text

    from sandgate.report import EvaluationReport

__all__ = ["register", "evaluate", "literal", "render_report", "render_mutation"]

VERDICT_STYLE = {"passed": "bold green", "failed": "bold red", "rejected": "bold magenta", "error": "bold yellow"}
#: exit code per verdict (the values of :class:`sandgate.report.Verdict`)
EXIT = {"passed": 0, "failed": 1, "rejected": 1, "error": 2}


def evaluate(
    path: Annotated[Path, typer.Argument(help="A skill directory, .tar.gz or .zip.")],
    policy: Annotated[str | None, typer.Option(help="Policy name in policies/ or a path.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Evaluate a skill in a fresh sandbox and print its report and verdict."""

    from sandgate.config import get_settings
    from sandgate.evaluation import evaluate_path
    from sandgate.policy import load_policy

    settings = get_settings()
    try:
        chosen = load_policy(policy or settings.policy)
    except Exception as exc:  # noqa: BLE001 - translated at the edge
        fail(exc)
    if as_json:
        report = evaluate_path(path, policy=chosen, settings=settings)
        typer.echo(report.model_dump_json(indent=2))
    else:
        from sandgate.cli.progress import Progress

        with Progress(f"evaluate {path.name}") as progress:
            report = evaluate_path(path, policy=chosen, settings=settings, progress=progress.phase)
        render_report(report)
    raise typer.Exit(EXIT[report.verdict.value])


def _line(*parts: str | tuple[str, str]) -> Text:
    """A line of literal text; ``(text, style)`` parts are styled, nothing is parsed as markup."""
    from rich.text import Text

    line = Text()
    for part in parts:
        if isinstance(part, tuple):
            line.append(literal(part[0]), style=part[1])
        else:
            line.append(literal(part))
    return line


def render_report(report: EvaluationReport, out: Console | None = None) -> None:
    """The human report. Everything that came from the submission is printed literally."""
    from rich.console import Console
    from rich.table import Table

    out = out or Console(stderr=False)
    verdict = report.verdict.value
    out.print(_line((verdict.upper(), VERDICT_STYLE[verdict]), f"  {report.skill or '?'}  ",
                    (f"{report.content_hash or ''}  policy {report.policy}", "dim")))
    for reason in report.reasons:
        out.print(_line("  ", (reason.code.value, "bold"), f": {reason.message}"))
    t = report.tests
    if t.collected or t.cases:
        out.print(_line(f"tests: {t.collected} collected, {t.passed} passed, {t.failed} failed, "
                        f"{t.errors} errors, {t.skipped} skipped, {t.xfailed} xfailed"))
        failing = [c for c in t.cases if c.outcome in ("failed", "error")]
        if failing:
            table = Table("test", "outcome", "message", show_header=True)
            for case in failing[:10]:
                last = (case.message or "").strip().splitlines()[-1:]
                table.add_row(_line(case.nodeid), _line(case.outcome), _line(last[0] if last else ""))
            out.print(table)
    if report.entrypoint and (not report.entrypoint.resolved or not report.entrypoint.tested_by):
        e = report.entrypoint
        out.print(_line(f"entrypoint {e.name}: ", ("resolved" if e.resolved else "missing", "bold"),
                        f", tested by {len(e.tested_by)} passing tests",
                        f" ({e.problem})" if e.problem else ""))
    if report.coverage:
        c = report.coverage
        out.print(_line(f"coverage: lines {c.line_percent:.1f}% ({c.covered_lines}/{c.statements}), "
                        f"branches {c.branch_percent:.1f}% ({c.covered_branches}/{c.branches})"))
        for f in c.files:
            if f.missed_lines:
                out.print(_line((f"  {f.path}: missed lines {', '.join(map(str, f.missed_lines[:20]))}",
                                 "dim")))
    if report.mutation:
        render_mutation(report, out)
    if report.findings:
        table = Table("severity", "rule", "where", "message", title="findings")
        for finding in report.findings:
            table.add_row(_line(finding.severity), _line(finding.rule_id), _line(f"{finding.path}:{finding.line}"),
                          _line(finding.message))
        out.print(table)
    from sandgate.cli.oracle_render import render_oracle

    render_oracle(report.oracle, out)
    if report.sandbox:
        s = report.sandbox
        peak = f"{s.peak_memory_bytes / 1e6:.0f} MB" if s.peak_memory_bytes else "?"
        out.print(_line((f"sandbox: {s.runtime}, exit {s.exit_code}, {s.wall_seconds:.2f}s, peak {peak}"
                         f"{', timed out' if s.timed_out else ''}{', OOM' if s.oom_killed else ''}"
                         f"{', output truncated' if s.output_truncated else ''}", "dim")))
    if report.dependencies:
        d = report.dependencies
        how = (f"built in {d.build_seconds:.1f}s (download {d.download_seconds:.1f}s)" if d.built
               else "cached")
        out.print(_line((f"dependencies: lock {d.lock_hash[:19]}, image {d.image} ({(d.image_id or '')[7:19]}), "
                         f"{how}: " + ", ".join(f"{n}=={v}" for n, v in sorted(d.packages.items())), "dim")))
    if report.timings:
        out.print(_line(("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in report.timings.items()),
                         "dim")))


def render_mutation(report: EvaluationReport, out: Console) -> None:
    """Score and survivors. Everything from the submission is printed literally."""
    from rich.table import Table

    m = report.mutation
    if m is None:
        return
    if not m.ran:
        out.print(_line(f"mutation: not run ({m.skipped_reason or 'skipped'})"))
        return
    score = f"{m.score:.1f}%" if m.score is not None else "no score"
    extra = ", budget exhausted" if m.budget_exhausted else ""
    if m.decided_early:
        extra += f", stopped early ({m.decided_early} decided)"
    out.print(_line(f"mutation: score {score} ({m.killed} killed, {m.timed_out} timed out, "
                    f"{m.survived} survived of {m.run} run; {m.total} selected, {m.generated} candidates"
                    f"{extra}); null entrypoint {m.null_entrypoint}"))
    if m.problem:
        out.print(_line(f"  mutation phase incomplete: {m.problem}"))
    if m.survivors:
        table = Table("where", "operator", "before", "after", title="surviving mutants")
        for s in m.survivors[:20]:
            table.add_row(_line(f"{s.file}:{s.line}"), _line(s.operator), _line(s.before), _line(s.after))
        out.print(table)
        if len(m.survivors) > 20:
            out.print(_line(f"  … and {len(m.survivors) - 20} more"))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
