"""Process CSV data and generate a report: per-group totals, means and shares, with pandas."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd


def report(csv_text: str, group_by: str, value: str) -> dict[str, Any]:
    """Group the rows of ``csv_text`` by the column ``group_by`` and sum the numeric column ``value``.

    Groups come largest total first (ties by name). Raises ValueError for a missing
    column, a non-numeric value or an empty table.
    """
    try:
        frame = pd.read_csv(io.StringIO(csv_text))
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ValueError(f"not CSV data: {exc}") from exc
    for column in (group_by, value):
        if column not in frame.columns:
            raise ValueError(f"no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise ValueError("the table has no rows")
    numbers = pd.to_numeric(frame[value], errors="coerce")
    if numbers.isna().any():
        row = int(numbers.isna().to_numpy().nonzero()[0][0]) + 1
        raise ValueError(f"row {row}: {value!r} is not a number")
    frame = frame.assign(**{value: numbers.astype(float)})
    grouped = frame.groupby(frame[group_by].astype(str))[value].agg(["sum", "mean", "count"])
    total = float(frame[value].sum())
    groups = [
        {"group": str(name), "total": float(row["sum"]), "mean": float(row["mean"]),
         "count": int(row["count"]), "share": float(row["sum"]) / total if total else 0.0}
        for name, row in grouped.iterrows()
    ]
    groups.sort(key=lambda g: (-g["total"], g["group"]))
    return {"groups": groups, "total": total, "rows": int(len(frame))}
