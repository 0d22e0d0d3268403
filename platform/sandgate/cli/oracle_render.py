"""The oracle section of the human report: failing calls as a table (input → expected → got).

Everything in it comes from the submission (inputs, names, answers, exception
messages), so it is printed literally: :class:`rich.text.Text` cells, never
Rich markup.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sandgate.cli.common import literal
from sandgate.oracle_report import SOURCES, OracleSummary, call_input

__all__ = ["render_oracle"]

MAX_ROWS = 20
_CELL = 120


def _short(text: str) -> str:
    """Submitted text, literal (control and format characters escaped) and capped."""
    text = literal(text)
    return text if len(text) <= _CELL else text[:_CELL - 1] + "…"


def render_oracle(oracle: OracleSummary | None, out: Console) -> None:
    if oracle is None:
        return
    calls = ", ".join(f"{oracle.passed.get(s, 0)}/{oracle.calls[s]} {s}"
                      for s in SOURCES if oracle.calls.get(s))
    line = Text("oracle: ", style="bold")
    line.append(oracle.status)
    if calls:
        line.append(f" — {calls} answered right")
    if oracle.signature:
        line.append(f" — {literal(oracle.signature)}", style="dim")
    out.print(line)
    notes = [oracle.note] if oracle.note else []
    if oracle.contract_unsupported:
        notes.append(f"contract checks unsupported: {oracle.contract_unsupported}")
    for note in notes:
        out.print(Text(f"  {literal(note)}", style="dim"))
    failing = [*oracle.failures, *oracle.nondeterministic]
    if failing:
        table = Table("source", "call", "input", "expected", "got", title="oracle: failing calls")
        for call in failing[:MAX_ROWS]:
            table.add_row(Text(call.source), Text(_short(call.name)),
                          Text(_short(call_input(call.args, call.kwargs))),
                          Text(_short(call.expected)), Text(_short(call.got)))
        out.print(table)
        if len(failing) > MAX_ROWS:
            out.print(Text(f"  … and {len(failing) - MAX_ROWS} more (see --json)", style="dim"))
    if oracle.behaviour_changes:
        table = Table("input", f"active (v{oracle.active_version})", "candidate", "declared",
                      title=f"oracle: behaviour changes ({oracle.undeclared_changes} undeclared)")
        for change in oracle.behaviour_changes[:MAX_ROWS]:
            table.add_row(Text(_short(call_input(change.args, change.kwargs))), Text(_short(change.active)),
                          Text(_short(change.candidate)),
                          Text(_short(change.reason or "yes") if change.declared else "no"))
        out.print(table)
