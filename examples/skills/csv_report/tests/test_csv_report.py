import pytest
from csv_report import report

DATA = "region,amount\nnorth,10\nsouth,30\nnorth,20\neast,5\n"


def test_groups_are_summed_and_sorted_by_total():
    out = report(DATA, "region", "amount")
    assert [g["group"] for g in out["groups"]] == ["north", "south", "east"]
    assert out["groups"][0] == {"group": "north", "total": 30.0, "mean": 15.0, "count": 2,
                                "share": 30.0 / 65.0}
    assert out["total"] == 65.0
    assert out["rows"] == 4


def test_ties_are_ordered_by_name():
    out = report("k,v\nb,1\na,1\n", "k", "v")
    assert [g["group"] for g in out["groups"]] == ["a", "b"]


def test_shares_add_up_to_one():
    out = report(DATA, "region", "amount")
    assert sum(g["share"] for g in out["groups"]) == pytest.approx(1.0)
    assert out["groups"][2]["share"] == pytest.approx(5 / 65)


def test_zero_total_has_zero_shares():
    out = report("k,v\na,0\nb,0\n", "k", "v")
    assert [g["share"] for g in out["groups"]] == [0.0, 0.0]
    assert out["total"] == 0.0


def test_missing_column_is_a_value_error():
    with pytest.raises(ValueError, match="no column 'price'"):
        report(DATA, "region", "price")
    with pytest.raises(ValueError, match="no column 'city'"):
        report(DATA, "city", "amount")


def test_non_numeric_value_names_the_row():
    with pytest.raises(ValueError, match="row 2: 'amount' is not a number"):
        report("region,amount\nnorth,1\nsouth,lots\n", "region", "amount")


def test_empty_input_is_a_value_error():
    with pytest.raises(ValueError, match="not CSV data"):
        report("", "region", "amount")
    with pytest.raises(ValueError, match="no rows"):
        report("region,amount\n", "region", "amount")


def test_means_and_counts():
    out = report("g,x\na,1\na,2\na,6\n", "g", "x")
    assert out["groups"] == [{"group": "a", "total": 9.0, "mean": 3.0, "count": 3, "share": 1.0}]
