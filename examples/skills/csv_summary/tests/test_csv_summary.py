"""Tests for csv_summary."""

from __future__ import annotations

import pytest
from csv_summary import parse_number, summarise

SALES = """region,units,price,note
north,10,2.5,
south,4,3.0,late
east,,4.25,
west,6,1.75,late
"""


def test_columns_and_row_count() -> None:
    result = summarise(SALES)
    assert result["columns"] == ["region", "units", "price", "note"]
    assert result["rows"] == 4


def test_numeric_column_summary() -> None:
    summary = summarise(SALES)["summary"]
    assert summary["price"] == {
        "type": "numeric", "count": 4, "missing": 0, "min": 1.75, "max": 4.25, "mean": 2.875,
    }


def test_missing_cells_are_counted_and_ignored() -> None:
    units = summarise(SALES)["summary"]["units"]
    assert units == {"type": "numeric", "count": 3, "missing": 1, "min": 4.0, "max": 10.0,
                     "mean": pytest.approx(6.666667)}


def test_text_columns_count_distinct_values() -> None:
    summary = summarise(SALES)["summary"]
    assert summary["region"] == {"type": "text", "count": 4, "missing": 0, "distinct": 4}
    assert summary["note"] == {"type": "text", "count": 2, "missing": 2, "distinct": 1}


def test_a_single_non_number_makes_a_column_text() -> None:
    summary = summarise("a\n1\n2\nthree\n")["summary"]
    assert summary["a"]["type"] == "text"


def test_an_all_empty_column_is_text() -> None:
    assert summarise("a,b\n1,\n2,\n")["summary"]["b"] == {
        "type": "text", "count": 0, "missing": 2, "distinct": 0,
    }


def test_header_only_gives_zero_rows() -> None:
    result = summarise("x,y\n")
    assert result["rows"] == 0
    assert result["summary"]["x"] == {"type": "text", "count": 0, "missing": 0, "distinct": 0}


def test_blank_lines_and_padding_are_ignored() -> None:
    result = summarise("\n name , score \n\n ann , 3 \n bob , 5 \n\n")
    assert result["columns"] == ["name", "score"]
    assert result["rows"] == 2
    assert result["summary"]["score"]["mean"] == 4.0


def test_quoted_fields_may_hold_delimiters_and_newlines() -> None:
    result = summarise('name,comment\n"Smith, J","line one\nline two"\n')
    assert result["rows"] == 1
    assert result["summary"]["comment"]["distinct"] == 1


def test_other_delimiter() -> None:
    result = summarise("a;b\n1;2\n3;4\n", delimiter=";")
    assert result["summary"]["b"]["max"] == 4.0


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("3", 3.0), ("-2.5", -2.5), ("1e3", 1000.0), ("", None), ("n/a", None),
     ("nan", None), ("inf", None), ("-Infinity", None)],
)
def test_parse_number(cell: str, expected: float | None) -> None:
    assert parse_number(cell) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty CSV"),
        ("\n  \n", "empty CSV"),
        ("a,,c\n1,2,3\n", "column 2 has an empty name"),
        ("a,b,a\n1,2,3\n", "duplicate column names: a"),
        ("a,b\n1,2\n3\n", "row 3 has 1 fields, the header has 2"),
        ('a,b\n"unclosed,2\n', "malformed CSV"),
    ],
)
def test_invalid_csv_is_a_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarise(text)


def test_delimiter_must_be_one_character() -> None:
    with pytest.raises(ValueError, match="delimiter must be one character"):
        summarise("a\n1\n", delimiter="::")


def test_text_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="text must be a str, got list"):
        summarise(["a", "1"])  # type: ignore[arg-type]
