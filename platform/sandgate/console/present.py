"""What the console's pages show, computed from records (pure: no I/O, no HTML).

Templates escape everything; these helpers only arrange data: a unified diff as
side-by-side rows, a file's source with its coverage and findings per line, a
duration as words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["SideRow", "side_by_side", "SourceLine", "annotate", "ago", "pretty_json", "MAX_SOURCE_LINES"]

#: lines of one file shown in a report (the rest is summarised)
MAX_SOURCE_LINES = 5000


@dataclass(frozen=True, slots=True)
class SideRow:
    """One row of a side-by-side diff: ``kind`` is context | changed | removed | added | hunk."""

    kind: str
    left_no: int | None = None
    left: str | None = None
    right_no: int | None = None
    right: str | None = None


def _hunk_start(header: str) -> tuple[int, int]:
    # @@ -a,b +c,d @@
    parts = header.split()
    left = int(parts[1][1:].split(",")[0]) if len(parts) > 2 else 1
    right = int(parts[2][1:].split(",")[0]) if len(parts) > 2 else 1
    return left, right


def side_by_side(unified: str) -> list[SideRow]:
    """A unified diff (``difflib.unified_diff`` text) as rows: removals beside the additions they replace."""
    rows: list[SideRow] = []
    left_no = right_no = 0
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            lf = removed[i] if i < len(removed) else None
            rt = added[i] if i < len(added) else None
            kind = "changed" if lf and rt else ("removed" if lf else "added")
            rows.append(SideRow(kind, lf[0] if lf else None, lf[1] if lf else None,
                                rt[0] if rt else None, rt[1] if rt else None))
        removed.clear()
        added.clear()

    for line in unified.splitlines():
        if line.startswith(("--- ", "+++ ")):
            continue
        if line.startswith("@@"):
            flush()
            try:
                left_no, right_no = _hunk_start(line)
            except (ValueError, IndexError):
                left_no = right_no = 1
            rows.append(SideRow("hunk", left=line, right=line))
            continue
        if line.startswith("-"):
            removed.append((left_no, line[1:]))
            left_no += 1
        elif line.startswith("+"):
            added.append((right_no, line[1:]))
            right_no += 1
        elif line.startswith("\\"):
            continue  # "\ No newline at end of file"
        else:
            flush()
            text = line[1:] if line.startswith(" ") else line
            rows.append(SideRow("context", left_no, text, right_no, text))
            left_no += 1
            right_no += 1
    flush()
    return rows


@dataclass(slots=True)
class SourceLine:
    number: int
    text: str
    #: missed | partial (a branch never taken) | "" (run, not a statement, or no coverage for this file)
    coverage: str = ""
    findings: list[Mapping[str, Any]] = field(default_factory=list)
    survivors: list[Mapping[str, Any]] = field(default_factory=list)


def annotate(text: str, *, missed: Iterable[int] = (), partial: Iterable[int] = (),
             findings: Iterable[Mapping[str, Any]] = (),
             survivors: Iterable[Mapping[str, Any]] = ()) -> list[SourceLine]:
    """The file's lines with what the report says about each (missed lines, lines with a branch
    never taken, findings, survivors)."""
    missed_set = set(missed)
    partial_set = set(partial)
    lines = [SourceLine(i, t) for i, t in enumerate(text.splitlines()[:MAX_SOURCE_LINES], start=1)]
    for line in lines:
        if line.number in missed_set:
            line.coverage = "missed"
        elif line.number in partial_set:
            line.coverage = "partial"
    by_line = {line.number: line for line in lines}
    for f in findings:
        target = by_line.get(int(f.get("line") or 0)) or (lines[0] if lines else None)
        if target is not None:
            target.findings.append(f)
    for s in survivors:
        target = by_line.get(int(s.get("line") or 0))
        if target is not None:
            target.survivors.append(s)
    return lines


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """``3 min ago`` (``""`` for None)."""
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
