"""Length, mass and temperature conversions.

``convert(value, from_unit, to_unit)`` converts between units of one dimension::

    >>> convert(1, "mi", "km")
    1.609344
    >>> convert(100, "C", "F")
    212.0

Unknown units and conversions across dimensions raise a ValueError that says
what is known. Unit symbols are case-sensitive ("mm" is not "Mm"); a few long
names ("metre", "pound", "celsius", ...) are accepted as aliases.
"""

from __future__ import annotations

import math

__all__ = ["convert", "dimension_of", "units"]

#: factor to the dimension's base unit (metre, kilogram)
_FACTORS: dict[str, dict[str, float]] = {
    "length": {
        "mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0,
        "in": 0.0254, "ft": 0.3048, "yd": 0.9144, "mi": 1609.344,
    },
    "mass": {
        "mg": 1e-6, "g": 0.001, "kg": 1.0, "t": 1000.0,
        "oz": 0.028349523125, "lb": 0.45359237, "st": 6.35029318,
    },
}
#: temperatures are affine: (offset, scale) so that kelvin = (value + offset) * scale
_TEMPERATURES: dict[str, tuple[float, float]] = {
    "K": (0.0, 1.0),
    "C": (273.15, 1.0),
    "F": (459.67, 5.0 / 9.0),
}
_ALIASES: dict[str, str] = {
    "metre": "m", "meter": "m", "kilometre": "km", "kilometer": "km", "inch": "in",
    "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi",
    "gram": "g", "kilogram": "kg", "tonne": "t", "ounce": "oz", "pound": "lb", "stone": "st",
    "kelvin": "K", "celsius": "C", "fahrenheit": "F",
}


def units(dimension: str | None = None) -> list[str]:
    """The unit symbols, of one dimension ("length", "mass", "temperature") or all."""
    table = {**{d: list(f) for d, f in _FACTORS.items()}, "temperature": list(_TEMPERATURES)}
    if dimension is None:
        return [unit for symbols in table.values() for unit in symbols]
    if dimension not in table:
        raise ValueError(f"unknown dimension {dimension!r}; known: {', '.join(table)}")
    return table[dimension]


def _symbol(unit: str) -> str:
    if not isinstance(unit, str):
        raise TypeError(f"a unit must be a str, got {type(unit).__name__}")
    return _ALIASES.get(unit.lower(), unit)


def dimension_of(unit: str) -> str:
    """The dimension of ``unit``; ValueError for an unknown unit."""
    symbol = _symbol(unit)
    if symbol in _TEMPERATURES:
        return "temperature"
    for dimension, factors in _FACTORS.items():
        if symbol in factors:
            return dimension
    raise ValueError(f"unknown unit {unit!r}; known units: {', '.join(units())}")


def _to_kelvin(value: float, symbol: str) -> float:
    offset, scale = _TEMPERATURES[symbol]
    kelvin = (value + offset) * scale
    if kelvin < 0:
        raise ValueError(f"{value:g} {symbol} is below absolute zero")
    return kelvin


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``, rounded to 12 significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"value must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    source, target = dimension_of(from_unit), dimension_of(to_unit)
    if source != target:
        raise ValueError(f"cannot convert {source} ({from_unit}) to {target} ({to_unit})")
    a, b = _symbol(from_unit), _symbol(to_unit)
    if source == "temperature":
        offset, scale = _TEMPERATURES[b]
        result = _to_kelvin(value, a) / scale - offset
    else:
        result = value * _FACTORS[source][a] / _FACTORS[source][b]
    return float(f"{result:.12g}")
