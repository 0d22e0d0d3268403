"""Tests for unit_convert."""

from __future__ import annotations

import pytest
from unit_convert import convert, dimension_of, units


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1, "km", "m", 1000.0),
        (1, "mi", "km", 1.609344),
        (12, "in", "ft", 1.0),
        (3, "ft", "yd", 1.0),
        (250, "mm", "cm", 25.0),
        (0.5, "m", "mm", 500.0),
        (1, "kg", "lb", 2.20462262185),
        (16, "oz", "lb", 1.0),
        (1, "st", "lb", 14.0),
        (2.5, "t", "kg", 2500.0),
        (1500, "mg", "g", 1.5),
    ],
)
def test_length_and_mass(value: float, source: str, target: str, expected: float) -> None:
    assert convert(value, source, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (100, "C", "F", 212.0),
        (32, "F", "C", 0.0),
        (-40, "C", "F", -40.0),
        (0, "K", "C", -273.15),
        (300, "K", "F", 80.33),
        (98.6, "F", "K", 310.15),
        (20, "C", "C", 20.0),
    ],
)
def test_temperature(value: float, source: str, target: str, expected: float) -> None:
    assert convert(value, source, target) == pytest.approx(expected)


def test_same_unit_is_identity() -> None:
    assert convert(42, "m", "m") == 42.0


def test_results_are_rounded_to_twelve_significant_digits() -> None:
    assert convert(0.1, "m", "cm") == 10.0  # not 10.000000000000002
    assert convert(1, "ft", "m") == 0.3048


def test_aliases_are_case_insensitive() -> None:
    assert convert(1, "Kilometre", "metre") == 1000.0
    assert convert(1, "pound", "OUNCE") == pytest.approx(16.0)
    assert convert(0, "Celsius", "fahrenheit") == 32.0


def test_symbols_are_case_sensitive() -> None:
    with pytest.raises(ValueError, match="unknown unit 'MM'"):
        convert(1, "MM", "m")


def test_unknown_unit_lists_known_units() -> None:
    with pytest.raises(ValueError, match=r"unknown unit 'furlong'; known units: mm, cm, m, km"):
        convert(1, "furlong", "m")
    with pytest.raises(ValueError, match="unknown unit 'parsec'"):
        convert(1, "m", "parsec")


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("m", "kg", r"cannot convert length \(m\) to mass \(kg\)"),
        ("C", "m", r"cannot convert temperature \(C\) to length \(m\)"),
        ("lb", "F", r"cannot convert mass \(lb\) to temperature \(F\)"),
    ],
)
def test_dimensions_do_not_mix(source: str, target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert(1, source, target)


def test_below_absolute_zero() -> None:
    with pytest.raises(ValueError, match="-300 C is below absolute zero"):
        convert(-300, "C", "K")
    with pytest.raises(ValueError, match="below absolute zero"):
        convert(-1, "K", "C")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_value_must_be_finite(value: float) -> None:
    with pytest.raises(ValueError, match="value must be finite"):
        convert(value, "m", "km")


@pytest.mark.parametrize("value", ["1", None, True])
def test_value_must_be_a_number(value: object) -> None:
    with pytest.raises(TypeError, match="value must be a number"):
        convert(value, "m", "km")  # type: ignore[arg-type]


def test_unit_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="a unit must be a str, got int"):
        convert(1, 5, "m")  # type: ignore[arg-type]


def test_dimension_of() -> None:
    assert dimension_of("yd") == "length"
    assert dimension_of("g") == "mass"
    assert dimension_of("F") == "temperature"
    assert dimension_of("feet") == "length"


def test_units() -> None:
    assert units("temperature") == ["K", "C", "F"]
    assert units("mass") == ["mg", "g", "kg", "t", "oz", "lb", "st"]
    assert set(units()) == set(units("length")) | set(units("mass")) | set(units("temperature"))
    with pytest.raises(ValueError, match="unknown dimension 'time'; known: length, mass, temp"):
        units("time")
