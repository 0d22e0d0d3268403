"""MCP tool definitions from a skill's entrypoint: schemas, untrusted text, digests.

* :func:`clean_text` makes manifest text (written by whoever submitted the
  skill) safe to hand to an MCP client: Unicode control, format (bidi
  overrides, zero-width and tag characters), private-use, surrogate and
  unassigned code points are removed, HTML comments are dropped whole (they
  hide text from people while a model still reads it), markup tags are
  removed (their text stays), whitespace is collapsed to single spaces (no
  fake headings or line structure) and the result is capped in length.
* :func:`build_definition` infers the input schema from the entrypoint's
  signature and type hints (a pydantic model built with ``create_model``; the
  same model validates the arguments of every call) and an output schema from
  the return annotation where there is one (an object type as it is; anything
  else wrapped as ``{"result": …}``; no annotation or ``Any``: none).
* :func:`definition_digest` is the sha256 of the canonical JSON of what a
  client sees of a tool (name, title, description, input and output schema):
  a changed definition is a new digest.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import typing
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_MESSAGE",
    "ToolDefinition",
    "build_definition",
    "clean_text",
    "definition_digest",
]

#: longest tool description handed to clients (characters)
MAX_DESCRIPTION = 1024
#: longest error message in a tool error (characters)
MAX_MESSAGE = 2000

_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})
#: terminal escape sequences (CSI, OSC, other ESC sequences) go whole, not just their ESC
_ANSI = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\\\)?|\x1b[@-_]")
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_TAG = re.compile(r"</?[A-Za-z!?][^<>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(text: Any, limit: int = MAX_DESCRIPTION) -> str:
    """Untrusted text as one plain line of at most ``limit`` characters (see the module docstring)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text[: limit * 8]  # bound the work on a huge input before the per-character pass
    text = _ANSI.sub("", text)
    text = unicodedata.normalize("NFKC", text)  # fullwidth ＜ becomes <, so tags are seen as tags
    text = "".join(
        (" " if ch.isspace() else "") if unicodedata.category(ch) in _DROP_CATEGORIES else ch for ch in text
    )
    text = _COMMENT.sub(" ", text)
    text = _TAG.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def definition_digest(tool: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the client-visible definition (name, title, description, schemas)."""
    view = {k: tool.get(k) for k in ("name", "title", "description", "inputSchema", "outputSchema")}
    return "sha256:" + hashlib.sha256(_canonical(view)).hexdigest()


@dataclass
class ToolDefinition:
    """Everything the server needs to list and call one skill version as a tool."""

    name: str
    version: int
    content_hash: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    digest: str
    #: validates call arguments (aliases are the parameter names)
    model: type[BaseModel]
    #: (field name, parameter name, kind) in signature order
    params: list[tuple[str, str, inspect._ParameterKind]] = field(default_factory=list)
    #: whether extra arguments go to a ``**kwargs`` parameter
    var_keyword: bool = False
    output: TypeAdapter[Any] | None = None
    #: the output schema wraps the value as {"result": value}
    wrap_result: bool = False
    #: parameters whose type hint has no JSON schema (accepted as any JSON value)
    untyped: list[str] = field(default_factory=list)
    #: an ``async def`` entrypoint (awaited on the server's loop; a plain one runs in a worker thread)
    is_async: bool = False

    def arguments(self, raw: Mapping[str, Any] | None) -> tuple[list[Any], dict[str, Any]]:
        """Validated ``(args, kwargs)`` for the entrypoint; raises :class:`pydantic.ValidationError`."""
        data = self.model.model_validate(dict(raw or {}))
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        given = data.model_fields_set
        for fname, pname, kind in self.params:
            if fname not in given and kind is not inspect.Parameter.POSITIONAL_ONLY:
                continue  # let the function's own default apply
            value = getattr(data, fname)
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[pname] = value
        if self.var_keyword and data.model_extra:
            kwargs.update(data.model_extra)
        return args, kwargs

    def structured(self, value: Any) -> dict[str, Any] | None:
        """The result as the output schema describes it (None without an output schema).

        Raises :class:`pydantic.ValidationError` when the value does not match the return annotation.
        """
        if self.output is None:
            return None
        checked = self.output.validate_python(value)
        dumped = self.output.dump_python(checked, mode="json")
        return {"result": dumped} if self.wrap_result else dumped

    def tool_dict(self) -> dict[str, Any]:
        """The tool as listed (wire names), with the sandgate metadata."""
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        if self.output_schema is not None:
            out["outputSchema"] = self.output_schema
        out["_meta"] = {
            "sandgate/skill": self.name,
            "sandgate/version": self.version,
            "sandgate/content_hash": self.content_hash,
            "sandgate/digest": self.digest,
            "sandgate/description_source": "skill manifest (untrusted text, cleaned)",
        }
        if self.untyped:
            out["_meta"]["sandgate/untyped_parameters"] = list(self.untyped)
        return out


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that does not resolve: take the resolvable ones one by one
        out: dict[str, Any] = {}
        raw = getattr(fn, "__annotations__", {}) or {}
        glb = getattr(fn, "__globals__", {})
        for key, ann in raw.items():
            if isinstance(ann, str):
                try:
                    ann = eval(ann, dict(glb))  # noqa: S307 - the skill's own annotation, in its own module
                except Exception:
                    continue
            out[key] = ann
        return out


def _schema_ok(tp: Any) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TypeAdapter(tp).json_schema()
        return True
    except Exception:
        return False


def _hoist_defs(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = dict(schema)
    defs = schema.pop("$defs", {})
    return schema, defs


def build_definition(
    *, name: str, version: int, content_hash: str, description: Any, function: Callable[..., Any]
) -> ToolDefinition:
    """The tool definition of one loaded skill version (see the module docstring)."""
    target = inspect.unwrap(function)
    sig = inspect.signature(target)
    hints = _hints(target)
    fields: dict[str, Any] = {}
    params: list[tuple[str, str, inspect._ParameterKind]] = []
    untyped: list[str] = []
    var_keyword = False
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue  # not expressible as named JSON arguments
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        tp = hints.get(pname, Any)
        if tp is not Any and not _schema_ok(tp):
            untyped.append(pname)
            tp = Any
        fname = f"p{i}"
        if p.default is inspect.Parameter.empty:
            fields[fname] = (tp, Field(..., alias=pname))
        else:
            default = p.default
            try:
                json.dumps(default)
            except (TypeError, ValueError):
                # a default with no JSON form: optional in the schema, the function's default applies
                fields[fname] = (tp, Field(default=None, alias=pname))
            else:
                fields[fname] = (tp, Field(default=default, alias=pname))
        params.append((fname, pname, p.kind))
    config = ConfigDict(extra="allow" if var_keyword else "forbid", arbitrary_types_allowed=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(f"{name}_arguments", __config__=config, **fields)
        input_schema = model.model_json_schema(by_alias=True)
    input_schema.pop("title", None)
    input_schema.setdefault("type", "object")
    input_schema.setdefault("properties", {})

    output: TypeAdapter[Any] | None = None
    output_schema: dict[str, Any] | None = None
    wrap = False
    ret = hints.get("return", sig.return_annotation)
    if ret not in (inspect.Signature.empty, Any, None, type(None)) and not isinstance(ret, str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adapter = TypeAdapter(ret)
                schema = adapter.json_schema(mode="serialization")
        except Exception:
            adapter, schema = None, None
        if adapter is not None and schema is not None:
            output = adapter
            if schema.get("type") == "object" or "$ref" in schema and _ref_is_object(schema):
                output_schema = schema
            else:
                inner, defs = _hoist_defs(schema)
                output_schema = {"type": "object", "properties": {"result": inner}, "required": ["result"]}
                if defs:
                    output_schema["$defs"] = defs
                wrap = True

    desc = clean_text(description) or f"Skill {name} (its manifest has no description)."
    title = name
    view = {"name": name, "title": title, "description": desc, "inputSchema": input_schema,
            "outputSchema": output_schema}
    return ToolDefinition(
        name=name,
        version=version,
        content_hash=content_hash,
        title=title,
        description=desc,
        input_schema=input_schema,
        output_schema=output_schema,
        digest=definition_digest(view),
        model=model,
        params=params,
        var_keyword=var_keyword,
        output=output,
        wrap_result=wrap,
        untyped=untyped,
        is_async=inspect.iscoroutinefunction(function),
    )


def _ref_is_object(schema: Mapping[str, Any]) -> bool:
    ref = schema.get("$ref", "")
    defs = schema.get("$defs", {})
    target = defs.get(ref.rsplit("/", 1)[-1]) if isinstance(ref, str) else None
    return isinstance(target, Mapping) and target.get("type") == "object"


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, cleaned (skill exceptions are untrusted text too)."""
    message = clean_text(str(exc), MAX_MESSAGE)
    kind = type(exc).__qualname__
    return f"{kind}: {message}" if message else kind


def validation_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(arguments)"
        parts.append(f"{loc}: {err.get('msg')}")
    return clean_text("invalid arguments: " + "; ".join(parts), MAX_MESSAGE)
