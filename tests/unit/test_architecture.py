"""The import rules of docs/ARCHITECTURE.md, checked against the code.

Every module under ``platform/sandgate`` is parsed (never imported); every
import in it — at module level, inside function bodies and under
``TYPE_CHECKING`` — must be allowed by the ``rooms`` block of the architecture
doc. Module-level imports must not form a cycle, and only ``sandbox/`` imports
``docker``. Each check is also fed a synthetic violation, so it can fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "platform" / "sandgate"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "sandgate.store.versions"
    target: str  # the imported module, e.g. "sandgate.records" or "docker.errors"
    line: int
    top_level: bool  # executed when the module is imported (not in a function, not TYPE_CHECKING)


def parse_rooms(text: str) -> dict[str, frozenset[str]]:
    """The ``rooms`` fenced block: ``room  allowed-room ...`` per line (an indented line
    continues the previous one), ``-`` for none, ``#`` starts a comment."""
    blocks = re.findall(r"^```rooms\n(.*?)^```", text, flags=re.M | re.S)
    assert len(blocks) == 1, "docs/ARCHITECTURE.md must hold exactly one ```rooms block"
    rooms: dict[str, frozenset[str]] = {}
    room = ""
    for raw in blocks[0].splitlines():
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        if line[0].isspace():
            assert room, f"continuation line before any room: {raw!r}"
            rooms[room] |= {a for a in line.split() if a != "-"}
            continue
        room, *allowed = line.split()
        assert room not in rooms, f"room {room!r} listed twice"
        rooms[room] = frozenset(a for a in allowed if a != "-")
    unknown = {a for allowed in rooms.values() for a in allowed} - rooms.keys()
    assert not unknown, f"rooms block allows imports of unlisted rooms {sorted(unknown)}"
    return rooms


def module_name(path: Path, pkg: Path) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(body: Iterable[ast.stmt], top_level: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement with whether it runs at import time."""
    for node in body:
        yield node, top_level
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for child in ast.walk(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    yield child, False
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _walk(node.body, False)
            yield from _walk(node.orelse, top_level)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None) or []
                inner: list[ast.stmt] = []
                for child in children:
                    # except-handlers and match-cases hold statements one level down
                    inner.extend(getattr(child, "body", [child]) if not isinstance(child, ast.stmt) else [child])
                yield from _walk(inner, top_level)


def imports_of(source: str, module: str, *, is_package: bool, known: set[str]) -> list[Import]:
    """The imports in one module's source, resolved to module names."""
    out: list[Import] = []
    for node, top in _walk(ast.parse(source).body, True):
        if isinstance(node, ast.Import):
            out.extend(Import(module, a.name, node.lineno, top) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.append(Import(module, sub if sub in known else mod, node.lineno, top))
    return out


def package_imports(pkg: Path) -> list[Import]:
    files = sorted(pkg.rglob("*.py"))
    known = {module_name(p, pkg) for p in files}
    found: list[Import] = []
    for path in files:
        found.extend(
            imports_of(path.read_text(), module_name(path, pkg), is_package=path.name == "__init__.py", known=known)
        )
    return found


def room_of(module: str, rooms: Mapping[str, object]) -> str | None:
    """The room with the longest name matching ``module`` (``sandgate.a.b`` → ``a.b``, else ``a``)."""
    rel = module.split(".")[1:]
    if not rel:
        return "sandgate" if "sandgate" in rooms else None
    for n in range(len(rel), 0, -1):
        candidate = ".".join(rel[:n])
        if candidate in rooms:
            return candidate
    return None


def violations(imports: Iterable[Import], rooms: Mapping[str, frozenset[str]], modules: Iterable[str]) -> list[str]:
    wrong = [f"{m}: in no room of the rooms block" for m in sorted(modules) if room_of(m, rooms) is None]
    for imp in imports:
        if imp.target.split(".")[0] != "sandgate":
            continue
        src, dst = room_of(imp.source, rooms), room_of(imp.target, rooms)
        if src is None or src == dst:
            continue
        if dst is None or dst not in rooms[src]:
            wrong.append(f"{imp.source}:{imp.line} imports {imp.target} (room {src!r} may not import {dst!r})")
    return wrong


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Cycles among sandgate modules through the imports that run at import time."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.top_level and imp.target.split(".")[0] == "sandgate" and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def docker_importers(imports: Iterable[Import]) -> list[str]:
    return sorted(
        f"{i.source}:{i.line}"
        for i in imports
        if i.target.split(".")[0] == "docker" and not i.source.startswith("sandgate.sandbox")
    )


# -- the real package ------------------------------------------------------------------------------

ROOMS = parse_rooms(DOC.read_text())
IMPORTS = package_imports(PKG)
MODULES = {module_name(p, PKG) for p in PKG.rglob("*.py")}


def test_the_package_is_parsed() -> None:
    assert len(MODULES) > 50
    assert any(i.source == "sandgate.store.versions" and i.target == "sandgate.records" for i in IMPORTS)
    assert any(not i.top_level for i in IMPORTS), "function-body imports are read too"


def test_every_import_is_allowed_by_the_rooms_block() -> None:
    assert violations(IMPORTS, ROOMS, MODULES) == []


def test_no_import_cycles_at_module_level() -> None:
    assert cycles(IMPORTS) == []


def test_only_the_sandbox_imports_docker() -> None:
    assert docker_importers(IMPORTS) == []
    assert any(i.target.split(".")[0] == "docker" for i in IMPORTS), "sandbox/ should import docker"


def test_every_room_in_the_block_exists() -> None:
    missing = [r for r in ROOMS if r not in ("sandgate",) and f"sandgate.{r}" not in MODULES]
    assert missing == []


# -- the checks fail on violations -----------------------------------------------------------------

SYNTHETIC_ROOMS = parse_rooms(
    "```rooms\nerrors -\nstore errors\npolicy errors\nsandbox errors\nsandgate -\n```\n"
)
KNOWN = {"sandgate", "sandgate.errors", "sandgate.store", "sandgate.store.versions", "sandgate.policy",
         "sandgate.policy.gates", "sandgate.sandbox"}


def _synthetic(module: str, source: str, *, is_package: bool = False) -> list[Import]:
    return imports_of(source, module, is_package=is_package, known=KNOWN)


@pytest.mark.parametrize(
    "source",
    [
        "from sandgate.store import versions\n",
        "import sandgate.store.versions\n",
        "from ..store.versions import x\n",
        "def f():\n    from sandgate.store import versions\n",
        "class C:\n    def m(self):\n        import sandgate.store\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sandgate.store.versions import V\n",
        "try:\n    pass\nexcept ImportError:\n    from sandgate import store\n",
    ],
    ids=["from-submodule", "import-dotted", "relative", "function-body", "method-body", "type-checking", "except"],
)
def test_a_forbidden_import_is_reported(source: str) -> None:
    found = _synthetic("sandgate.policy.gates", source)
    wrong = violations(found, SYNTHETIC_ROOMS, ["sandgate.policy.gates"])
    assert len(wrong) == 1 and "may not import 'store'" in wrong[0], wrong


def test_an_allowed_import_is_not_reported() -> None:
    found = _synthetic("sandgate.store.versions", "from sandgate import errors\nfrom . import versions\n")
    assert violations(found, SYNTHETIC_ROOMS, ["sandgate.store.versions"]) == []


def test_a_module_in_no_room_is_reported() -> None:
    wrong = violations([], SYNTHETIC_ROOMS, ["sandgate.newthing"])
    assert wrong == ["sandgate.newthing: in no room of the rooms block"]


def test_a_continuation_line_extends_the_room_above() -> None:
    rooms = parse_rooms("```rooms\n# comment\nerrors -\nnames -\nstore errors  # trailing\n      names\n```\n")
    assert rooms == {"errors": frozenset(), "names": frozenset(), "store": frozenset({"errors", "names"})}


def test_a_rooms_block_allowing_an_unlisted_room_is_refused() -> None:
    with pytest.raises(AssertionError, match="unlisted rooms"):
        parse_rooms("```rooms\nerrors nowhere\n```\n")


def test_a_cycle_is_reported_and_a_lazy_back_edge_is_not() -> None:
    a = _synthetic("sandgate.store", "from sandgate.policy import gates\n", is_package=True)
    b = _synthetic("sandgate.policy.gates", "import sandgate.store\n")
    assert cycles([*a, *b]) == [["sandgate.policy.gates", "sandgate.store", "sandgate.policy.gates"]]
    lazy = _synthetic("sandgate.policy.gates", "def f():\n    import sandgate.store\n")
    assert cycles([*a, *lazy]) == []


def test_docker_outside_the_sandbox_is_reported() -> None:
    found = _synthetic("sandgate.policy.gates", "def f():\n    from docker.errors import APIError\n")
    assert docker_importers(found) == ["sandgate.policy.gates:2"]
    assert docker_importers(_synthetic("sandgate.sandbox.runner", "import docker\n")) == []
