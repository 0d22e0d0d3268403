"""Examples: calls with known answers, for the oracle phase.

Three places hold them, in one format:

* ``[[examples]]`` tables in a submission's ``skill.toml``;
* ``examples.jsonl`` at the top level of a submission (one JSON object a line;
  JSON can say ``null``, which TOML cannot);
* ``policies/acceptance/<skill>.jsonl``, kept by the operator (the submitter
  cannot change them).

An example::

    {"args": [1, "mi", "km"], "kwargs": {}, "expect": 1.609344}
    {"args": [1, "mi", "kg"], "raises": "ValueError", "name": "across dimensions"}
    {"args": [0.1, 0.2], "expect": 0.3, "tolerance": 1e-9}

``args`` (a list, default ``[]``) and ``kwargs`` (a table with identifier keys,
default ``{}``) are JSON values; exactly one of ``expect`` (the JSON value the
call must return) or ``raises`` (the exception's type name, e.g.
``"ValueError"``) is given. ``tolerance`` (optional, ``>= 0``) compares
numbers with ``math.isclose(rel_tol=abs_tol=tolerance)`` anywhere inside the
value. ``name`` (optional) labels it in the report.

Nothing here runs submitted code: the examples are data.
"""

from __future__ import annotations

import json
import keyword
import math
import tomllib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "EXAMPLES_FILE",
    "EXAMPLES_SOURCES",
    "MAX_EXAMPLES",
    "MAX_EXAMPLE_BYTES",
    "Example",
    "ExampleError",
    "examples_inputs",
    "parse_examples",
    "parse_examples_jsonl",
    "input_key",
    "same_value",
]

EXAMPLES_FILE = "examples.jsonl"
#: the files of a version :func:`examples_inputs` reads
EXAMPLES_SOURCES = ("skill.toml", EXAMPLES_FILE)
MAX_EXAMPLES = 1000
#: one example's JSON text
MAX_EXAMPLE_BYTES = 64 * 1024
_MAX_DEPTH = 32


class ExampleError(ValueError):
    """An example that is not valid; the message names where and what."""


def _json_problem(value: Any, depth: int = 0) -> str | None:
    if depth > _MAX_DEPTH:
        return "is nested too deeply"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"holds {value!r} (JSON numbers are finite)"
    if isinstance(value, list):
        return next((p for v in value if (p := _json_problem(v, depth + 1))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return "has a non-string key"
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"holds a {type(value).__name__}, which is not a JSON value"


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    expect: Any = None
    raises: str | None = None
    tolerance: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    name: str | None = Field(default=None, max_length=200)
    #: whether ``expect`` was given (``expect = null`` is a real expectation)
    has_expect: bool = Field(default=False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _mark_expect(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "has_expect" in data:
                raise ValueError("unknown key 'has_expect'")
            data = {**data, "has_expect": "expect" in data}
        return data

    @model_validator(mode="after")
    def _check(self) -> Example:
        if self.has_expect == (self.raises is not None):
            raise ValueError("give exactly one of 'expect' (the returned value) or 'raises' "
                             "(the exception's type name)")
        if self.raises is not None and not (self.raises.isidentifier() and not keyword.iskeyword(self.raises)):
            raise ValueError(f"raises = {self.raises!r} is not an exception type name (e.g. 'ValueError')")
        for key in self.kwargs:
            if not key.isidentifier() or keyword.iskeyword(key):
                raise ValueError(f"kwargs key {key!r} is not a parameter name")
        for what, value in (("args", self.args), ("kwargs", self.kwargs), ("expect", self.expect)):
            problem = _json_problem(value)
            if problem:
                raise ValueError(f"{what} {problem}")
        size = len(json.dumps(self.as_json()))
        if size > MAX_EXAMPLE_BYTES:
            raise ValueError(f"the example is {size} bytes as JSON (at most {MAX_EXAMPLE_BYTES})")
        return self

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"args": self.args, "kwargs": self.kwargs}
        if self.raises is not None:
            out["raises"] = self.raises
        else:
            out["expect"] = self.expect
        if self.tolerance is not None:
            out["tolerance"] = self.tolerance
        if self.name is not None:
            out["name"] = self.name
        return out

    @property
    def key(self) -> str:
        return input_key(self.args, self.kwargs)


def input_key(args: list[Any], kwargs: dict[str, Any]) -> str:
    """A canonical text for a call's input (to find the same input in two places)."""
    return json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif loc:
            parts.append(f"{loc}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


def parse_examples(items: Iterable[Any], *, where: str) -> list[Example]:
    """Validate raw example tables; :class:`ExampleError` names ``where`` and the index."""
    out: list[Example] = []
    for index, item in enumerate(items):
        if len(out) >= MAX_EXAMPLES:
            raise ExampleError(f"{where}: more than {MAX_EXAMPLES} examples")
        if not isinstance(item, dict):
            raise ExampleError(f"{where}, example {index + 1}: not a table/object")
        try:
            out.append(Example.model_validate(item))
        except ValidationError as exc:
            raise ExampleError(f"{where}, example {index + 1}: {_errors(exc)}") from exc
    return out


def parse_examples_jsonl(data: bytes, *, where: str) -> list[Example]:
    """``examples.jsonl``: one JSON object a line; blank lines are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExampleError(f"{where}: not valid UTF-8") from exc
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise ExampleError(f"{where}, line {lineno}: not valid JSON ({exc})") from exc
        if not isinstance(item, dict):
            raise ExampleError(f"{where}, line {lineno}: not a JSON object")
        try:
            items.extend(parse_examples([item], where=f"{where}, line {lineno}"))
        except ExampleError as exc:
            raise ExampleError(str(exc).replace(", example 1", "")) from exc
        if len(items) > MAX_EXAMPLES:
            raise ExampleError(f"{where}: more than {MAX_EXAMPLES} examples")
    return items


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def same_value(expected: Any, actual: Any, tolerance: float | None = None) -> bool:
    """JSON equality; ``1`` equals ``1.0``, ``True`` never equals ``1``; numbers within
    ``tolerance`` when given."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if tolerance is not None:
            return math.isclose(expected, actual, rel_tol=tolerance, abs_tol=tolerance)
        return expected == actual
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            same_value(e, a, tolerance) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            same_value(expected[k], actual[k], tolerance) for k in expected)
    return type(expected) is type(actual) and expected == actual


class IntendedChange(BaseModel):
    """An input whose answer is meant to differ from the active version's."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=500)

    @property
    def key(self) -> str:
        return input_key(self.args, self.kwargs)


class OracleManifest(BaseModel):
    """``[oracle]`` in ``skill.toml``: what the contract allows and what changed on purpose."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: exception type names a call may raise without breaking the contract
    raises: list[str] = Field(default_factory=list, max_length=50)
    #: false: the entrypoint takes or returns values JSON cannot carry (``oracle: unsupported``)
    json_values: bool = True
    #: ``{params = {name = <JSON Schema>}, returns = <JSON Schema>, required = [...]}``:
    #: used instead of the type hints
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    #: inputs whose answer is meant to change against the active version
    changes: list[IntendedChange] = Field(default_factory=list, max_length=MAX_EXAMPLES)

    @model_validator(mode="after")
    def _check(self) -> OracleManifest:
        for name in self.raises:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError(f"raises: {name!r} is not an exception type name")
        return self


def examples_inputs(files: dict[str, bytes]) -> list[tuple[list[Any], dict[str, Any]]]:
    """The ``(args, kwargs)`` of a stored version's examples (none when they do not parse):
    data, never code, for the oracle's differential replay."""
    found = []
    try:
        manifest = tomllib.loads(files.get("skill.toml", b"").decode("utf-8-sig"))
        found += parse_examples(manifest.get("examples", []) or [], where="skill.toml")
    except (ExampleError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError, TypeError):
        pass
    if EXAMPLES_FILE in files:
        try:
            found += parse_examples_jsonl(files[EXAMPLES_FILE], where=EXAMPLES_FILE)
        except ExampleError:
            pass
    return [(e.args, e.kwargs) for e in found]
