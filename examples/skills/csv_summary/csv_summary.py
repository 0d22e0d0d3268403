"""Summarise CSV text: its columns, row count and, per column, numeric min/max/mean.

The input is a string (the skill never reads files). The first non-blank row is
the header. A column is *numeric* when every non-empty cell is a finite number;
empty cells are counted as missing and otherwise ignored::

    >>> summarise("city,temp\\nOslo,4\\nRome,18\\n")["summary"]["temp"]
    {'type': 'numeric', 'count': 2, 'missing': 0, 'min': 4.0, 'max': 18.0, 'mean': 11.0}
"""

from __future__ import annotations

import csv
import io
import math

__all__ = ["summarise", "parse_number"]


def parse_number(cell: str) -> float | None:
    """The cell as a finite float, or None ("", "n/a", "nan" and "inf" are not numbers)."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_rows(text: str, delimiter: str) -> list[list[str]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise ValueError(f"malformed CSV at line {reader.line_num}: {exc}") from exc
    if not rows:
        raise ValueError("empty CSV: there is no header row")
    return rows


def _header(row: list[str]) -> list[str]:
    names = [cell.strip() for cell in row]
    for position, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"column {position} has an empty name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate column names: {', '.join(duplicates)}")
    return names


def _summarise_column(cells: list[str]) -> dict[str, object]:
    present = [cell for cell in cells if cell]
    numbers = [parse_number(cell) for cell in present]
    summary: dict[str, object] = {"count": len(present), "missing": len(cells) - len(present)}
    if present and all(n is not None for n in numbers):
        values = [n for n in numbers if n is not None]
        summary = {"type": "numeric", **summary, "min": min(values), "max": max(values),
                   "mean": round(math.fsum(values) / len(values), 6)}
    else:
        summary = {"type": "text", **summary, "distinct": len(set(present))}
    return summary


def summarise(text: str, delimiter: str = ",") -> dict[str, object]:
    """Columns, row count and a per-column summary of the CSV in ``text``.

    Raises ValueError for an empty or malformed CSV and for rows whose field
    count differs from the header's.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if len(delimiter) != 1:
        raise ValueError(f"delimiter must be one character, got {delimiter!r}")
    header, *rows = _read_rows(text, delimiter)
    columns = _header(header)
    for number, row in enumerate(rows, start=2):
        if len(row) != len(columns):
            raise ValueError(f"row {number} has {len(row)} fields, the header has {len(columns)}")
    summary = {
        name: _summarise_column([row[i].strip() for row in rows])
        for i, name in enumerate(columns)
    }
    return {"columns": columns, "rows": len(rows), "summary": summary}
