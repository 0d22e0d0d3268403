"""The oracle's type language: read from source text, checked and generated on the controller.

Nothing submitted is imported or executed: the entrypoint's signature comes
from :func:`ast.parse` of its module (or from a JSON Schema in the manifest).

The language (``T`` any of these)::

    int  float  str  bool  None  Any/object (any JSON value)
    list[T]  dict[str, T]  tuple[T, ...]  tuple[T1, T2]
    Optional[T]  T1 | T2  Union[T1, T2]  Literal[v1, v2]   (v: int, str, bool, None)

``typing.`` prefixes, ``List``/``Dict``/``Tuple`` and string annotations are
accepted. Anything else is :class:`Unsupported` with the text that was not
understood: contract checks then do not run (``oracle: unsupported``), which
never counts as passing evidence.

Values are JSON values as the server sends them: tuples arrive as lists, and
``bool`` is not accepted where ``int`` or ``float`` is declared (JSON tells
them apart, so a skill returning ``True`` for an ``int`` is caught). An ``int``
is accepted where ``float`` is declared (PEP 484's numeric tower).
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from typing import Any

from sandgate.pysource import parse as parse_source

__all__ = [
    "T",
    "Unsupported",
    "Param",
    "Signature",
    "parse_annotation",
    "from_schema",
    "read_signature",
    "check",
    "generate",
    "describe",
]


@dataclass(frozen=True)
class T:
    """A type: ``kind`` in int float str bool none any list dict tuple union literal."""

    kind: str
    args: tuple[T, ...] = ()
    #: tuple[T, ...] (homogeneous, any length)
    variadic: bool = False
    #: Literal values
    values: tuple[Any, ...] = ()


class Unsupported(Exception):
    """A type (or signature) outside the language; the message says what."""


INT, FLOAT, STR, BOOL, NONE, ANY = (T("int"), T("float"), T("str"), T("bool"), T("none"), T("any"))
_NAMES = {"int": INT, "float": FLOAT, "str": STR, "bool": BOOL, "None": NONE, "NoneType": NONE,
          "Any": ANY, "object": ANY}
_GENERIC = {"list": "list", "List": "list", "dict": "dict", "Dict": "dict", "tuple": "tuple",
            "Tuple": "tuple", "Optional": "optional", "Union": "union", "Literal": "literal"}


def describe(t: T) -> str:
    if t.kind == "none":
        return "None"
    if t.kind in ("int", "float", "str", "bool"):
        return t.kind
    if t.kind == "any":
        return "Any"
    if t.kind == "list":
        return f"list[{describe(t.args[0])}]"
    if t.kind == "dict":
        return f"dict[str, {describe(t.args[0])}]"
    if t.kind == "tuple":
        inner = f"{describe(t.args[0])}, ..." if t.variadic else ", ".join(map(describe, t.args))
        return f"tuple[{inner or '()'}]"
    if t.kind == "union":
        return " | ".join(describe(a) for a in t.args)
    return "Literal[" + ", ".join(repr(v) for v in t.values) + "]"


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in (
            "typing", "t", "builtins", "typing_extensions"):
        return node.attr
    return None


def _union(parts: list[T]) -> T:
    flat: list[T] = []
    for part in parts:
        for item in (part.args if part.kind == "union" else (part,)):
            if item not in flat:
                flat.append(item)
    return flat[0] if len(flat) == 1 else T("union", tuple(flat))


def parse_annotation(node: ast.expr | str, _depth: int = 0) -> T:
    """The :class:`T` of an annotation (an AST node or its source text); :class:`Unsupported`."""
    if _depth > 20:
        raise Unsupported("annotation nested too deeply")
    if isinstance(node, str):
        try:
            expression: ast.Expression = parse_source(node, mode="eval")
            node = expression.body
        except SyntaxError as exc:
            raise Unsupported(f"annotation {node!r} does not parse") from exc
    if isinstance(node, ast.Constant):
        if node.value is None:
            return NONE
        if isinstance(node.value, str):  # a string (forward-reference) annotation
            return parse_annotation(node.value, _depth + 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([parse_annotation(node.left, _depth + 1),
                       parse_annotation(node.right, _depth + 1)])
    name = _name(node)
    if name is not None and name in _NAMES:
        return _NAMES[name]
    if isinstance(node, ast.Subscript):
        base = _name(node.value)
        kind = _GENERIC.get(base or "")
        items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if kind == "literal":
            values = []
            for item in items:
                if not (isinstance(item, ast.Constant) and (item.value is None or isinstance(
                        item.value, (int, str, bool)))):
                    raise Unsupported(f"Literal value {ast.unparse(item)} is not int, str, bool or None")
                values.append(item.value)
            return T("literal", values=tuple(values))
        args = [parse_annotation(i, _depth + 1) for i in items
                if not (kind == "tuple" and isinstance(i, ast.Constant) and i.value is Ellipsis)]
        if kind == "list" and len(items) == 1:
            return T("list", (args[0],))
        if kind == "dict" and len(items) == 2:
            if args[0] != STR:
                raise Unsupported(f"dict keys must be str (JSON objects), got {ast.unparse(node)}")
            return T("dict", (args[1],))
        if kind == "tuple":
            variadic = len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is Ellipsis
            if variadic:
                return T("tuple", (args[0],), variadic=True)
            return T("tuple", tuple(args))
        if kind == "optional" and len(items) == 1:
            return _union([args[0], NONE])
        if kind == "union":
            return _union(args)
    if name in ("list", "List"):
        return T("list", (ANY,))
    if name in ("dict", "Dict"):
        return T("dict", (ANY,))
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001
        text = type(node).__name__
    raise Unsupported(f"type {text!r} is outside the oracle's type language")


_SCHEMA_TYPES = {"integer": INT, "number": FLOAT, "string": STR, "boolean": BOOL, "null": NONE}


def from_schema(schema: Any, _depth: int = 0) -> T:
    """A small JSON Schema subset → :class:`T` (type, items, prefixItems, additionalProperties,
    enum/const, anyOf/oneOf, a list of types); :class:`Unsupported` for the rest."""
    if _depth > 20:
        raise Unsupported("schema nested too deeply")
    if schema is True or schema == {}:
        return ANY
    if not isinstance(schema, dict):
        raise Unsupported(f"schema {schema!r} is not an object")
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if not isinstance(values, list) or not all(
                v is None or isinstance(v, (int, str, bool)) for v in values):
            raise Unsupported("enum values must be int, str, bool or null")
        return T("literal", values=tuple(values))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            if not isinstance(schema[key], list) or not schema[key]:
                raise Unsupported(f"{key} must be a non-empty list")
            return _union([from_schema(s, _depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([from_schema({**schema, "type": k}, _depth + 1) for k in kind])
    if kind in _SCHEMA_TYPES:
        return _SCHEMA_TYPES[kind]
    if kind == "array":
        if "prefixItems" in schema:
            return T("tuple", tuple(from_schema(s, _depth + 1) for s in schema["prefixItems"]))
        return T("list", (from_schema(schema.get("items", {}), _depth + 1),))
    if kind == "object":
        return T("dict", (from_schema(schema.get("additionalProperties", {}), _depth + 1),))
    raise Unsupported(f"schema {schema!r} is outside the oracle's type language")


@dataclass(frozen=True)
class Param:
    name: str
    #: positional | keyword (keyword-only)
    kind: str
    type: T | None
    has_default: bool
    #: why ``type`` is None (missing or unsupported annotation)
    problem: str | None = None


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...] = ()
    returns: T | None = None
    #: why contract checks cannot run (None: they can)
    unsupported: str | None = None
    notes: list[str] = field(default_factory=list)


def _find_function(tree: ast.Module, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    found = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            found = node  # the last definition wins, as at run time
    return found


def _annotation(node: ast.expr | None, what: str) -> tuple[T | None, str | None]:
    if node is None:
        return None, f"{what} has no type hint"
    try:
        return parse_annotation(node), None
    except Unsupported as exc:
        return None, f"{what}: {exc}"


def read_signature(source: bytes, function: str, schema: dict[str, Any] | None = None) -> Signature:
    """The entrypoint's :class:`Signature` from its module's source (never run), or from
    ``schema`` (``{"params": {name: schema}, "returns": schema}``) when given."""
    if schema is not None:
        return _schema_signature(schema)
    try:
        tree = parse_source(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return Signature(unsupported=f"the module does not parse: {exc}")
    node = _find_function(tree, function)
    if node is None:
        return Signature(unsupported=f"no top-level 'def {function}' in the module")
    if isinstance(node, ast.AsyncFunctionDef):
        return Signature(unsupported=f"{function} is a coroutine function")
    a = node.args
    params: list[Param] = []
    positional = [*a.posonlyargs, *a.args]
    n_defaults = len(a.defaults)
    for i, arg in enumerate(positional):
        has_default = i >= len(positional) - n_defaults
        t, problem = _annotation(arg.annotation, f"parameter {arg.arg!r}")
        params.append(Param(arg.arg, "positional", t, has_default, problem))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        t, problem = _annotation(arg.annotation, f"parameter {arg.arg!r}")
        params.append(Param(arg.arg, "keyword", t, default is not None, problem))
    returns, problem = _annotation(node.returns, "the return value")
    missing = [p.problem for p in params if p.type is None and not p.has_default]
    if problem:
        missing.insert(0, problem)
    return Signature(tuple(params), returns, "; ".join(m for m in missing if m) or None)


def _schema_signature(schema: dict[str, Any]) -> Signature:
    try:
        params_schema = schema.get("params", {})
        if not isinstance(params_schema, dict):
            raise Unsupported("schema.params must be a table of parameter schemas")
        required = schema.get("required", list(params_schema))
        params = tuple(Param(name, "positional", from_schema(s), name not in required)
                       for name, s in params_schema.items())
        returns = from_schema(schema["returns"]) if "returns" in schema else None
    except Unsupported as exc:
        return Signature(unsupported=f"manifest schema: {exc}")
    return Signature(params, returns, None if returns is not None else
                     "manifest schema: no 'returns' schema")


# -- checking -------------------------------------------------------------------


def check(value: Any, t: T) -> bool:
    """Whether the JSON ``value`` is a value of ``t``."""
    k = t.kind
    if k == "any":
        return True
    if k == "none":
        return value is None
    if k == "bool":
        return isinstance(value, bool)
    if k == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if k == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if k == "str":
        return isinstance(value, str)
    if k == "list":
        return isinstance(value, list) and all(check(v, t.args[0]) for v in value)
    if k == "dict":
        return isinstance(value, dict) and all(
            isinstance(key, str) and check(v, t.args[0]) for key, v in value.items())
    if k == "tuple":
        if not isinstance(value, list):
            return False
        if t.variadic:
            return all(check(v, t.args[0]) for v in value)
        return len(value) == len(t.args) and all(check(v, a) for v, a in zip(value, t.args, strict=True))
    if k == "union":
        return any(check(value, a) for a in t.args)
    if k == "literal":
        return any(type(value) is type(v) and value == v for v in t.values)
    return False


# -- generation -----------------------------------------------------------------

_EDGE_INTS = (0, 1, -1, 2, 10, -10, 100, 2**31, -(2**31))
_EDGE_FLOATS = (0.0, 1.0, -1.0, 0.5, -2.5, 1e-9, 1e9, 3.14159)
_EDGE_STRS = ("", "a", "hello world", "Hello, World!\n", "  ", "ünïcødé", "a\tb\nc", "0", "123")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz ABC,.!?-'\n0123456789é"


def generate(t: T, rng: random.Random, size: int = 5, depth: int = 0) -> Any:
    """A JSON value of ``t``; edge cases often, bounded in size and depth."""
    k = t.kind
    edge = rng.random() < 0.3
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "int":
        return rng.choice(_EDGE_INTS) if edge else rng.randint(-1000, 1000)
    if k == "float":
        return rng.choice(_EDGE_FLOATS) if edge else round(rng.uniform(-1000, 1000), 3)
    if k == "str":
        if edge:
            return rng.choice(_EDGE_STRS)
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 3 * size)))
    if k == "literal":
        return rng.choice(t.values)
    if k == "any":
        return generate(rng.choice((INT, FLOAT, STR, BOOL, NONE)), rng, size, depth)
    length = 0 if depth > 3 else rng.randint(0, size)
    if k == "list":
        return [generate(t.args[0], rng, max(size // 2, 1), depth + 1) for _ in range(length)]
    if k == "dict":
        return {generate(STR, rng, 2, depth + 1): generate(t.args[0], rng, max(size // 2, 1), depth + 1)
                for _ in range(length)}
    if k == "tuple":
        if t.variadic:
            return [generate(t.args[0], rng, max(size // 2, 1), depth + 1) for _ in range(length)]
        return [generate(a, rng, max(size // 2, 1), depth + 1) for a in t.args]
    if k == "union":
        return generate(rng.choice(t.args), rng, size, depth)
    raise Unsupported(f"cannot generate {describe(t)}")  # pragma: no cover - every kind is above
