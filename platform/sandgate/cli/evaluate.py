"""``sandgate evaluate PATH``: one evaluation, a readable report or ``--json``.

Exit code 0 passed, 1 failed or rejected, 2 error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sandgate.cli.common import fail
from sandgate.report import EvaluationReport, Verdict

console = Console(stderr=False)
VERDICT_STYLE = {"passed": "bold green", "failed": "bold red", "rejected": "bold magenta", "error": "bold yellow"}
EXIT = {Verdict.passed: 0, Verdict.failed: 1, Verdict.rejected: 1, Verdict.error: 2}


def evaluate(
    path: Annotated[Path, typer.Argument(help="A skill directory, .tar.gz or .zip.")],
    policy: Annotated[Optional[str], typer.Option(help="Policy name in policies/ or a path.")] = None,
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
        err = Console(stderr=True)
        with err.status("intake") as status:
            report = evaluate_path(path, policy=chosen, settings=settings,
                                   progress=lambda phase: status.update(f"{phase} …"))
        render_report(report)
    raise typer.Exit(EXIT[report.verdict])


def render_report(report: EvaluationReport, out: Console | None = None) -> None:
    out = out or console
    verdict = report.verdict.value
    out.print(f"[{VERDICT_STYLE[verdict]}]{verdict.upper()}[/]  {report.skill or '?'}  "
              f"[dim]{report.content_hash or ''}  policy {report.policy}[/]")
    for reason in report.reasons:
        out.print(f"  [bold]{reason.code.value}[/]: {reason.message}")
    t = report.tests
    if t.collected or t.cases:
        out.print(f"tests: {t.collected} collected, {t.passed} passed, {t.failed} failed, "
                  f"{t.errors} errors, {t.skipped} skipped, {t.xfailed} xfailed")
        failing = [c for c in t.cases if c.outcome in ("failed", "error")]
        if failing:
            table = Table("test", "outcome", "message", show_header=True)
            for case in failing[:10]:
                table.add_row(case.nodeid, case.outcome, (case.message or "").strip().splitlines()[-1:][0]
                              if case.message else "")
            out.print(table)
    if report.coverage:
        c = report.coverage
        out.print(f"coverage: lines {c.line_percent:.1f}% ({c.covered_lines}/{c.statements}), "
                  f"branches {c.branch_percent:.1f}% ({c.covered_branches}/{c.branches})")
        for f in c.files:
            if f.missed_lines:
                out.print(f"  [dim]{f.path}: missed lines {', '.join(map(str, f.missed_lines[:20]))}[/]")
    if report.findings:
        table = Table("severity", "rule", "where", "message", title="findings")
        for f in report.findings:
            table.add_row(f.severity, f.rule_id, f"{f.path}:{f.line}", f.message)
        out.print(table)
    if report.sandbox:
        s = report.sandbox
        peak = f"{s.peak_memory_bytes / 1e6:.0f} MB" if s.peak_memory_bytes else "?"
        out.print(f"[dim]sandbox: {s.runtime}, exit {s.exit_code}, {s.wall_seconds:.2f}s, peak {peak}"
                  f"{', timed out' if s.timed_out else ''}{', OOM' if s.oom_killed else ''}"
                  f"{', output truncated' if s.output_truncated else ''}[/]")
    if report.timings:
        out.print("[dim]timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in report.timings.items()) + "[/]")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
