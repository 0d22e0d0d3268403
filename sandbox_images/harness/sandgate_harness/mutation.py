"""The mutation phase: do the skill's tests notice when its code is wrong?

The harness (never the submission) makes mutants from the skill's AST — the
non-test ``.py`` files — on lines the tests executed, and runs, for each
mutant, only the tests that cover the mutated line. A mutant is *killed* when
a selected test fails or errors, when its process crashes, or when it runs
past its timeout (``timed_out``); it *survives* when every selected test
passes. One mutant is always made and always run: the entrypoint's body
replaced by ``return None`` (the *null entrypoint*); tests that do not notice
it test nothing.

Operators (``Mutant.operator``)
    ``comparison`` (``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``, ``is``↔``is not``,
    ``in``↔``not in``), ``arithmetic`` (``+``↔``-``, ``*``↔``/``, ``//``→``/``,
    ``%``→``//``, ``**``→``*``, ``<<``↔``>>``, ``&``↔``|``, ``^``→``&``, also in
    augmented assignments), ``boolean`` (``and``↔``or``), ``constant`` (ints
    ±1, ``True``↔``False``, non-empty strings → ``""``), ``negate`` (``if x`` →
    ``if not (x)``, also ``while`` and conditional expressions),
    ``remove`` (a statement inside a function → ``pass``), ``null_entrypoint``
    (body → ``return None``) and ``raising_entrypoint`` (body → ``raise
    NotImplementedError``).

Each mutant is an edit of the source *text* (so the report can show the one
line before and after, and line numbers stay the same), checked by parsing the
edited text and comparing its AST with the expected mutated AST: an edit that
does not produce exactly the intended program is dropped.

Process model
    ``python3 -I -m sandgate_harness.mutation RESULT_FD [--warm=READY_FD]``
    reads its job (the pristine skill files as the harness received them, the
    dynamic phase's results, the budget) as JSON on stdin. It imports pytest
    and never the skill. The harness starts it *warm*, before the payload
    arrives (:class:`sandgate_harness.__main__.MutationServer`): it imports
    pytest, runs one warm-up session on the harness's own test file and
    imports the image's locked packages (:func:`prepare`), writes one byte to
    READY_FD and blocks on stdin; the harness starts the dynamic phase only
    once that byte arrived, so the warm-up never runs beside submitted code.
    The end-of-tests kills (the runner's and the harness's) spare it by
    stopping every process first (``sandgate_harness.procs.kill_all_but``);
    if a skill killed it anyway, the harness starts a cold one. Mutants
    whose change is confined to the body of a top-level function or method
    are compiled into *schemata* (:func:`build_schemata`): one module per
    file whose mutated functions dispatch on an active token.
    The server forks one *schemata child* (a throwaway process: it closes
    every inherited descriptor but its two pipes, starts its own session,
    installs the schemata with an import hook, see :func:`install_mutant`)
    which runs one pytest session with the dynamic phase's trusted
    configuration up to the end of collection (the skill is imported there,
    once) and then serves commands: for each mutant (or control) it forks a
    grandchild that sets the token and runs only the selected items through
    pytest's own run protocol; the first failure ends it as killed. Every
    grandchild starts from the same collected, never-run state, so what a
    mutant changes in memory dies with it; before each command the server
    rewrites ``/work/skill`` from the pristine files and empties the scratch
    directories, and after it kills every process but itself, the schemata
    child and PID 1. The schemata child times out its grandchild itself; if
    it does not answer in time, or dies, the server kills everything, counts
    the mutant as ``timed_out`` (or killed) and starts a fresh schemata child
    for the rest (at most ``_SchemataRunner.MAX_STARTS``). A mutant outside
    the schemata (module-level code, defaults, decorators, a change of a
    function's locals or of its generator kind), or every mutant when the
    schemata child cannot start, runs in a child of its own as before: the
    server forks it after rewriting the tree, the child installs the mutated
    source with the import hook and runs a pytest session on the selected
    tests; its exit status is its outcome, and after it every process other
    than the server (and the schemata child) and PID 1 is killed.
    A control run of the unmutated skill, at a random position
    among the first mutants and with the tests of a mutant chosen at random,
    must survive, or no kill counts; so must a closing control after the last
    mutant when any was killed.
    Tests are selected per mutated line from the runner's ``line_tests`` (the
    passing tests whose coverage context executed that line). The phase stops
    once the mutants not yet run cannot change the outcome of the job's gates
    (``min_score``, ``null_must_be_killed``; see :func:`decision`), unless the
    job says ``stop_when_decided: false``. A control is dispatched exactly
    like a mutant: through an *identity* branch of the schemata (a copy of the
    original body under its own token), or in a child of its own when the
    mutant it borrows tests from is outside the schemata.
    The server writes one JSON line per event to RESULT_FD; the schemata
    child and its grandchildren never hold that descriptor.

Trust
    The child runs submitted code: "all selected tests passed" and "a test
    failed" are claims of that code, like the dynamic phase's results. A
    skill can make every mutant look killed (a test that notices it runs
    under a mutant and fails); it cannot make the null entrypoint or any other
    mutant *survive* with tests that do not check behaviour, which is what the
    gate is for. The schemata child is submitted code too: what it answers
    is such a claim, no more (a control and a mutant reach it as the same
    kind of command). See README ("how results are kept honest").
"""

from __future__ import annotations

import ast
import builtins
import fcntl
import gc
import hashlib
import importlib
import json
import os
import random
import re
import resource
import secrets
import select
import shutil
import signal
import stat
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from typing import Any

from sandgate_harness.payload import write_tree
from sandgate_harness.procs import exited_within, hide_command_line, kill_everything_else, kill_strays

SKILL_DIR = "/work/skill"
#: writable places a test could leave state in for a later mutant; emptied before each child
SCRATCH_DIRS = ("/work", "/tmp", "/dev/shm", "/var/tmp", "/run/lock")
#: the tests' HOME (the harness's CHILD_ENV), made again after each emptying of /tmp
HOME_DIR = "/tmp/home"
MAX_SOURCE_BYTES = 1024 * 1024
MAX_CANDIDATES = 20000
#: control runs at most per phase (the first one included)
MAX_CONTROLS = 4

_COMPARE = {
    ast.Lt: (ast.LtE, "<", "<="), ast.LtE: (ast.Lt, "<=", "<"),
    ast.Gt: (ast.GtE, ">", ">="), ast.GtE: (ast.Gt, ">=", ">"),
    ast.Eq: (ast.NotEq, "==", "!="), ast.NotEq: (ast.Eq, "!=", "=="),
    ast.Is: (ast.IsNot, "is", "is not"), ast.IsNot: (ast.Is, "is not", "is"),
    ast.In: (ast.NotIn, "in", "not in"), ast.NotIn: (ast.In, "not in", "in"),
}
_ARITH = {
    ast.Add: (ast.Sub, "+", "-"), ast.Sub: (ast.Add, "-", "+"),
    ast.Mult: (ast.Div, "*", "/"), ast.Div: (ast.Mult, "/", "*"),
    ast.FloorDiv: (ast.Div, "//", "/"), ast.Mod: (ast.FloorDiv, "%", "//"),
    ast.Pow: (ast.Mult, "**", "*"), ast.LShift: (ast.RShift, "<<", ">>"),
    ast.RShift: (ast.LShift, ">>", "<<"), ast.BitAnd: (ast.BitOr, "&", "|"),
    ast.BitOr: (ast.BitAnd, "|", "&"), ast.BitXor: (ast.BitAnd, "^", "&"),
}
_BOOL = {ast.And: (ast.Or, "and", "or"), ast.Or: (ast.And, "or", "and")}
_REMOVABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise,
              ast.Delete, ast.Assert, ast.Break, ast.Continue)
#: operators in the order they are preferred when a line has several candidates
OPERATORS = ("null_entrypoint", "raising_entrypoint", "comparison", "arithmetic", "boolean",
             "negate", "constant", "remove")


@dataclass
class Mutant:
    file: str
    line: int
    operator: str
    before: str
    after: str
    source: str = field(repr=False)
    #: the line of the enclosing statement (what coverage records)
    stmt_line: int = 0
    #: lines whose tests are relevant (the statement's, or a whole body)
    lines: tuple[int, ...] = ()
    #: the parsed mutated source and the one top-level statement the edit changed (-1:
    #: unknown), as :func:`_verify` found them; spares :func:`build_schemata` a parse
    tree: Any = field(default=None, repr=False, compare=False)
    top: int = -1

    def describe(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "operator": self.operator,
                "before": self.before, "after": self.after}


@dataclass
class _Candidate:
    file: str
    index: tuple[int, int]  # (top-level statement, position in its ast.walk order)
    kind: str
    start: int  # byte offsets of the edited region in the file
    end: int
    replacement: bytes
    line: int
    stmt_line: int
    apply: Any  # (copied node) -> None
    lines: tuple[int, ...] = ()
    gap: tuple[str, str] | None = None  # (old token, new token) for operator edits
    def_line: int = 0  # the entrypoint's ``def`` line (entrypoint mutants)


class _Source:
    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self.starts = [0]
        at = self.data.find(b"\n")
        while at >= 0:
            self.starts.append(at + 1)
            at = self.data.find(b"\n", at + 1)

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    @staticmethod
    def line_text(data: bytes, line: int) -> str:
        lines = data.split(b"\n")
        if not 0 < line <= len(lines):
            return ""
        return lines[line - 1].decode("utf-8", "replace").strip()[:300]


def _gap_edit(gap: bytes, old: str, new: str) -> bytes | None:
    """Replace operator ``old`` by ``new`` in the text between two operands."""
    match = re.fullmatch(rb"([\s()\\]*)(.+?)([\s()\\]*)", gap, re.S)
    if not match or b" ".join(match.group(2).split()) != old.encode():
        return None
    return match.group(1) + new.encode() + match.group(3)


def _span(src: _Source, node: Any) -> tuple[int, int] | None:
    if getattr(node, "end_lineno", None) is None:
        return None
    return (src.offset(node.lineno, node.col_offset), src.offset(node.end_lineno, node.end_col_offset))


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


class _Finder:
    """Walk one module and list every candidate edit."""

    def __init__(self, path: str, text: str, tree: ast.Module, entry_function: str | None) -> None:
        self.path, self.src, self.tree = path, _Source(text), tree
        self.entry_function = entry_function
        # a node is found again, in a copy, as (top-level statement, position in its walk)
        self.index = {id(node): (top, i) for top, stmt in enumerate(tree.body)
                      for i, node in enumerate(ast.walk(stmt))}
        self.out: list[_Candidate] = []
        self.skip: set[int] = set()  # ids of nodes never mutated (annotations, f-strings)

    def add(self, node: Any, kind: str, start: int, end: int, replacement: bytes, stmt_line: int,
            apply: Any, lines: tuple[int, ...] = (), gap: tuple[str, str] | None = None,
            line: int | None = None) -> None:
        self.out.append(_Candidate(self.path, self.index[id(node)], kind, start, end, replacement,
                                   line or node.lineno, stmt_line, apply, lines or (stmt_line,), gap))

    def run(self) -> list[_Candidate]:
        for node in ast.walk(self.tree):
            for ann in _annotations(node):
                for sub in ast.walk(ann):
                    self.skip.add(id(sub))
            if isinstance(node, ast.JoinedStr):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant):
                        self.skip.add(id(sub))
        for stmt in self.tree.body:
            if (self.entry_function and isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and stmt.name == self.entry_function):
                self._entrypoint(stmt)
        self._visit_body(self.tree.body, in_function=False)
        return self.out

    def _entrypoint(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        first, last = func.body[0], func.body[-1]
        start = self.src.offset(first.lineno, first.col_offset)
        end = self.src.offset(last.end_lineno or last.lineno, last.end_col_offset or 0)
        pad = b"\n" * self.src.data[start:end].count(b"\n")
        lines = tuple(range(func.body[0].lineno, (func.body[-1].end_lineno or func.lineno) + 1))

        def null(node: Any) -> None:
            node.body = [ast.Return(value=ast.Constant(value=None))]

        def raising(node: Any) -> None:
            node.body = [ast.Raise(exc=ast.Name(id="NotImplementedError", ctx=ast.Load()), cause=None)]

        self.add(func, "null_entrypoint", start, end, b"return None" + pad, first.lineno, null,
                 lines=lines, line=func.lineno)
        self.add(func, "raising_entrypoint", start, end, b"raise NotImplementedError" + pad,
                 first.lineno, raising, lines=lines, line=func.lineno)
        for cand in self.out[-2:]:
            cand.def_line = func.lineno

    def _visit_body(self, body: list[ast.stmt], in_function: bool) -> None:
        for stmt in body:
            self._visit_stmt(stmt, in_function)

    def _visit_stmt(self, stmt: ast.stmt, in_function: bool) -> None:
        if _is_docstring(stmt):
            return
        line = stmt.lineno
        if in_function and isinstance(stmt, _REMOVABLE) and not (
                isinstance(stmt, ast.AnnAssign) and stmt.value is None):
            span = _span(self.src, stmt)
            if span:
                pad = b"\n" * self.src.data[span[0]:span[1]].count(b"\n")

                def remove(node: Any) -> None:
                    node.__class__ = ast.Pass
                    for name in list(node.__dict__):
                        if name not in ("lineno", "col_offset", "end_lineno", "end_col_offset"):
                            delattr(node, name)

                self.add(stmt, "remove", span[0], span[1], b"pass" + pad, line, remove)
        if isinstance(stmt, (ast.If, ast.While)):
            self._negate(stmt, line)
        # expressions of this statement (not of nested statements)
        for name, value in ast.iter_fields(stmt):
            if name in ("body", "orelse", "finalbody", "handlers", "decorator_list", "returns"):
                continue
            for child in (value if isinstance(value, list) else [value]):
                if isinstance(child, ast.expr):
                    self._visit_expr(child, line)
                elif isinstance(child, ast.withitem):
                    self._visit_expr(child.context_expr, line)
                elif isinstance(child, ast.arguments):
                    for default in [*child.defaults, *(d for d in child.kw_defaults if d)]:
                        self._visit_expr(default, line)
        for name in ("body", "orelse", "finalbody"):
            sub = getattr(stmt, name, None)
            if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                nested = in_function or isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
                if isinstance(stmt, ast.ClassDef):
                    nested = in_function
                self._visit_body(sub, nested)
        for handler in getattr(stmt, "handlers", []) or []:
            if isinstance(handler, ast.ExceptHandler):
                self._visit_body(handler.body, in_function)
        if isinstance(stmt, ast.Match):
            for case in stmt.cases:
                self._visit_body(case.body, in_function)

    def _negate(self, node: ast.If | ast.While | ast.IfExp, stmt_line: int) -> None:
        span = _span(self.src, node.test)
        if not span:
            return
        text = self.src.data[span[0]:span[1]]

        def negate(copy_node: Any) -> None:
            copy_node.test = ast.UnaryOp(op=ast.Not(), operand=copy_node.test)

        self.add(node, "negate", span[0], span[1], b"not (" + text + b")", stmt_line, negate,
                 line=node.test.lineno)

    def _visit_expr(self, expr: ast.expr, stmt_line: int) -> None:
        for node in ast.walk(expr):
            if id(node) in self.skip:
                continue
            if isinstance(node, ast.IfExp):
                self._negate(node, stmt_line)
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                for i, op in enumerate(node.ops):
                    swap: Any = _COMPARE.get(type(op))
                    if swap:
                        self._operator(node, operands[i], operands[i + 1], swap, stmt_line, "comparison",
                                       lambda n, i=i, new=swap[0]: n.ops.__setitem__(i, new()))
            elif isinstance(node, ast.BinOp):
                swap = _ARITH.get(type(node.op))
                if swap:
                    self._operator(node, node.left, node.right, swap, stmt_line, "arithmetic",
                                   lambda n, new=swap[0]: setattr(n, "op", new()))
            elif isinstance(node, ast.BoolOp):
                swap = _BOOL[type(node.op)]
                if len(node.values) == 2:  # a longer chain is one node: no single-token edit
                    self._operator(node, node.values[0], node.values[1], swap, stmt_line, "boolean",
                                   lambda n, new=swap[0]: setattr(n, "op", new()))
            elif isinstance(node, ast.Constant):
                self._constant(node, stmt_line)

    def _operator(self, node: ast.AST, left: Any, right: Any, swap: tuple[Any, str, str],
                  stmt_line: int, kind: str, apply: Any) -> None:
        a, b = _span(self.src, left), _span(self.src, right)
        if not a or not b or a[1] > b[0]:
            return
        gap = self.src.data[a[1]:b[0]]
        edited = _gap_edit(gap, swap[1], swap[2])
        if edited is None:
            return
        self.add(node, kind, a[1], b[0], edited, stmt_line, apply, gap=(swap[1], swap[2]),
                 line=right.lineno if gap.count(b"\n") else left.end_lineno)

    def _constant(self, node: ast.Constant, stmt_line: int) -> None:
        span = _span(self.src, node)
        if not span or node.lineno != node.end_lineno:
            return
        value = node.value
        news: list[Any] = []
        if isinstance(value, bool):
            news = [not value]
        elif isinstance(value, int):
            news = [value + 1] + ([value - 1] if value > 0 else [])
        elif isinstance(value, str) and value and not (node.kind == "u"):
            news = [""]
        for new in news:
            self.add(node, "constant", span[0], span[1], repr(new).encode(), stmt_line,
                     lambda n, new=new: setattr(n, "value", new))


def _annotations(node: ast.AST) -> list[ast.AST]:
    out: list[ast.AST] = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
        out.append(node.returns)
    elif isinstance(node, ast.arg) and node.annotation:
        out.append(node.annotation)
    elif isinstance(node, ast.AnnAssign):
        out.append(node.annotation)
    return out


def _augassign_candidates(finder: _Finder) -> None:
    for node in ast.walk(finder.tree):
        if isinstance(node, ast.AugAssign):
            swap = _ARITH.get(type(node.op))
            a, b = _span(finder.src, node.target), _span(finder.src, node.value)
            if not swap or not a or not b:
                continue
            edited = _gap_edit(finder.src.data[a[1]:b[0]], swap[1] + "=", swap[2] + "=")
            if edited is not None:
                finder.add(node, "arithmetic", a[1], b[0], edited, node.lineno,
                           lambda n, new=swap[0]: setattr(n, "op", new()))


def _first_line(stmt: ast.stmt) -> int:
    """The first line of a statement's text (its decorators come before its ``def``)."""
    return min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", ()))])


def _segment(src: _Source, tree: ast.Module, top: int) -> tuple[int, int, int] | None:
    """(start, end, first line) of the whole lines that hold top-level statement ``top`` and
    nothing else, or None (it shares a line with another statement, or does not start a line)."""
    stmt = tree.body[top]
    first, last = _first_line(stmt), stmt.end_lineno or stmt.lineno
    if stmt.col_offset != 0 or (top > 0 and (tree.body[top - 1].end_lineno or 0) >= first):
        return None
    if top + 1 < len(tree.body) and _first_line(tree.body[top + 1]) <= last:
        return None
    end = src.starts[last] if last < len(src.starts) else len(src.data)
    return src.starts[first - 1], end, first


#: the one ``__future__`` import that changes how text parses
_FLUFL = b"barry_as_FLUFL"


def _parse_statement(src: _Source, tree: ast.Module, cand: _Candidate) -> ast.Module | None:
    """The mutated module's tree, parsing only the lines of the statement the edit is in.

    Those lines start with a fresh logical line and are followed by one (they hold
    only that statement), so the text before and after tokenizes as before: when
    the edited lines parse to one statement alone, the whole mutated text parses
    to the same statements with that one replaced. The other statements are the
    original tree's own nodes. None: the fast path does not apply (parse it all).
    """
    top = cand.index[0]
    if _FLUFL in src.data:
        return None
    segment = _segment(src, tree, top)
    if segment is None or not segment[0] <= cand.start <= cand.end <= segment[1]:
        return None
    start, end, first = segment
    # blank lines before it: its nodes get their line numbers in the file
    text = b"\n" * (first - 1) + src.data[start:cand.start] + cand.replacement + src.data[cand.end:end]
    try:
        alone = ast.parse(text.decode("utf-8"))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None
    if len(alone.body) != 1:
        return None
    return ast.Module(body=[*tree.body[:top], alone.body[0], *tree.body[top + 1:]], type_ignores=[])


def _verify(src: _Source, tree: ast.Module, cand: _Candidate) -> tuple[str, str, str, ast.Module] | None:
    """(mutated source, line before, line after, its tree), or None when the edit is not the mutation."""
    data = src.data[:cand.start] + cand.replacement + src.data[cand.end:]
    top, position = cand.index
    try:
        mutated_text = data.decode("utf-8")
        mutated = _parse_statement(src, tree, cand) or ast.parse(mutated_text)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None
    if len(mutated.body) != len(tree.body):
        return None
    # the other statements' text is unchanged: same kind and same place means same tree
    for j, (old, new) in enumerate(zip(tree.body, mutated.body, strict=True)):
        if j != top and (type(old) is not type(new) or _where(old) != _where(new)):
            return None
    target = next(node for i, node in enumerate(ast.walk(tree.body[top])) if i == position)
    saved_class = target.__class__
    saved = {k: (list(v) if isinstance(v, list) else v) for k, v in target.__dict__.items()}
    try:
        cand.apply(target)  # in place, undone below: cheaper than copying the statement
        same = _same(tree.body[top], mutated.body[top])
    finally:
        target.__class__ = saved_class
        target.__dict__.clear()
        target.__dict__.update(saved)
    if not same:
        return None
    before = src.line_text(src.data, cand.line)
    after = src.line_text(data, cand.line)
    return mutated_text, before, after, mutated


def _same(a: Any, b: Any) -> bool:
    """``ast.dump(a) == ast.dump(b)`` (fields, not positions), without building the strings."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, ast.AST):
            stack.extend((getattr(x, name, None), getattr(y, name, None)) for name in x._fields)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, (float, complex)):
            if repr(x) != repr(y):  # -0.0 is not 0.0, and nan is nan, as dump shows them
                return False
        elif x != y:
            return False
    return True


def _where(node: Any) -> tuple[Any, ...]:
    return (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)


def content_seed(sources: dict[str, str]) -> int:
    digest = hashlib.sha256()
    for path in sorted(sources):
        digest.update(path.encode() + b"\0" + sources[path].encode("utf-8", "replace") + b"\0")
    return int.from_bytes(digest.digest()[:8], "big")


def generate(
    sources: dict[str, str],
    *,
    covered: dict[str, set[int]] | None,
    entrypoint: str | None,
    max_mutants: int,
) -> tuple[list[Mutant], dict[str, Any]]:
    """Select up to ``max_mutants`` verified mutants; deterministic for the same sources.

    ``covered``: lines executed by the tests per file (None: every line counts).
    The null entrypoint mutant comes first, then one mutant per covered line
    (lines in a seeded order), then a second per line, and so on.
    """
    module, _, function = (entrypoint or "").partition(":")
    entry_file = None
    if module:
        base = module.replace(".", "/")
        for option in (f"{base}.py", f"{base}/__init__.py"):
            if option in sources:
                entry_file = option
                break
    info: dict[str, Any] = {"files": 0, "unparsable": [], "candidates": 0,
                            "null_entrypoint": "absent"}
    trees: dict[str, ast.Module] = {}
    texts: dict[str, _Source] = {}
    candidates: list[_Candidate] = []
    for path in sorted(sources):
        text = sources[path]
        if len(text) > MAX_SOURCE_BYTES:
            info["unparsable"].append(path)
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            info["unparsable"].append(path)
            continue
        info["files"] += 1
        trees[path] = tree
        finder = _Finder(path, text, tree, function if path == entry_file else None)
        texts[path] = finder.src
        try:
            finder.run()
            _augassign_candidates(finder)
        except RecursionError:
            info["unparsable"].append(path)
            continue
        for cand in finder.out:
            if cand.kind in ("null_entrypoint", "raising_entrypoint"):
                candidates.append(cand)
            elif covered is None or cand.stmt_line in covered.get(path, ()):
                candidates.append(cand)
        if len(candidates) > MAX_CANDIDATES:
            break
    info["candidates"] = len(candidates)
    rng = random.Random(content_seed(sources))
    first = [c for c in candidates if c.kind == "null_entrypoint"]
    second = [c for c in candidates if c.kind == "raising_entrypoint"]
    by_line: dict[tuple[str, int], list[_Candidate]] = {}
    for cand in candidates:
        if cand.kind not in ("null_entrypoint", "raising_entrypoint"):
            by_line.setdefault((cand.file, cand.line), []).append(cand)
    keys = sorted(by_line)
    rng.shuffle(keys)
    for key in keys:
        group = by_line[key]
        rng.shuffle(group)
        group.sort(key=lambda c: OPERATORS.index(c.kind))  # stable: random within a kind
    ordered: list[_Candidate] = [*first, *second]
    depth = 0
    while True:
        layer = [by_line[k][depth] for k in keys if depth < len(by_line[k])]
        if not layer:
            break
        ordered.extend(layer)
        depth += 1
    mutants: list[Mutant] = []
    for cand in ordered:
        if len(mutants) >= max_mutants:
            break
        checked = _verify(texts[cand.file], trees[cand.file], cand)
        if checked is None:
            continue
        text, before, after, mutated_tree = checked
        if cand.kind in ("null_entrypoint", "raising_entrypoint"):
            head = _Source.line_text(texts[cand.file].data, cand.def_line)
            before = f"{head} <body>"
            after = f"{head} {'return None' if cand.kind == 'null_entrypoint' else 'raise NotImplementedError'}"
        mutants.append(Mutant(cand.file, cand.line, cand.kind, before, after, text,
                              cand.stmt_line, cand.lines, mutated_tree, cand.index[0]))
        if cand.kind == "null_entrypoint":
            info["null_entrypoint"] = "made"
    if entry_file is None and module:
        info["null_entrypoint"] = "absent: the entrypoint's module is not among the mutated files"
    elif info["null_entrypoint"] == "absent" and function:
        info["null_entrypoint"] = (f"absent: {function!r} is not a function defined at the top level "
                                   f"of {entry_file}")
    return mutants, info


# -- running mutants -----------------------------------------------------------------


def covered_lines(job: dict[str, Any]) -> tuple[dict[str, set[int]] | None, dict[str, dict[int, list[str]]] | None]:
    """Covered lines per file, and the tests per line when the runner sent ``line_tests``."""
    line_tests = job.get("line_tests")
    if isinstance(line_tests, dict) and line_tests:
        tests: dict[str, dict[int, list[str]]] = {}
        for path, lines in line_tests.items():
            if not isinstance(lines, dict):
                continue
            rel = _relative(str(path))
            for line, ids in lines.items():
                try:
                    number = int(line)
                except (TypeError, ValueError):
                    continue
                if isinstance(ids, list) and ids:
                    tests.setdefault(rel, {})[number] = [str(i) for i in ids]
        return {p: set(lines) for p, lines in tests.items()}, tests
    coverage = job.get("coverage")
    if isinstance(coverage, dict) and isinstance(coverage.get("files"), dict):
        covered: dict[str, set[int]] = {}
        missing = {_relative(str(p)): set(d.get("missing_lines") or [])
                   for p, d in coverage["files"].items() if isinstance(d, dict)}
        for path, text in job["sources"].items():
            if path not in missing:
                covered[path] = set()  # never imported by any test
                continue
            lines = set(range(1, text.count("\n") + 2))
            covered[path] = lines - missing[path]
        return covered, None
    return None, None


def _relative(path: str) -> str:
    prefix = SKILL_DIR + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


class _Selector:
    """pytest plugin of the child: deselect what does not cover the line; count outcomes."""

    def __init__(self, nodeids: set[str] | None) -> None:
        self.nodeids = nodeids
        self.passed = 0
        self.bad = 0

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
        if self.nodeids is None:
            return
        keep = [i for i in items if i.nodeid in self.nodeids]
        drop = [i for i in items if i.nodeid not in self.nodeids]
        items[:] = keep
        if drop:
            config.hook.pytest_deselected(items=drop)

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.bad += 1
        elif report.when == "call" and report.passed:
            self.passed += 1

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.bad += 1


def _pytest_args(test_files: list[str]) -> list[str]:
    """The dynamic phase's trusted configuration (harness pytest.ini, no conftest, no plugin
    autoload, importlib mode), plus what only speeds a mutant up: stop at the first failure,
    no capture (output goes to /dev/null), plain asserts (only pass/fail matters), no
    terminal report."""
    return [
        "-c", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytest.ini"),
        "--rootdir", SKILL_DIR, "--import-mode=importlib", "--noconftest",
        "-p", "no:cacheprovider", "-p", "no:pytester", "-p", "no:terminal", "-p", "no:junitxml",
        "-p", "no:pastebin", "-p", "no:stepwise", "-p", "no:unraisableexception",
        "-p", "no:threadexception", "-p", "no:setuponly", "-p", "no:setupplan",
        "--basetemp", "/tmp/pytest",
        "-x", "--capture=no", "--assert=plain", *test_files,
    ]


#: where the warm-up session's directory is made (a new one each time, named at random)
WARM_PARENT = "/tmp"
_WARM_TEST = b"""import pytest


@pytest.fixture
def value(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDGATE_WARM", "1")
    return 1


@pytest.mark.parametrize("x", [1, 2])
def test_warm(value, x, capsys):
    assert value * x == x
    assert x == pytest.approx(x)
    with pytest.raises(ValueError):
        raise ValueError
"""


def warm_up() -> None:
    """One pytest session in the server on the harness's own test file (never the skill's):
    the modules pytest imports lazily are loaded once, before any fork."""
    import pdb  # noqa: F401 - imported lazily by pytest's debugging plugin

    import pytest

    # a directory of its own, new and private (a server started after the dynamic phase finds
    # the scratch directories emptied; this does not depend on that): nothing else in it is read
    warm_dir = tempfile.mkdtemp(prefix="sandgate-warm-", dir=WARM_PARENT)
    fd = os.open(os.path.join(warm_dir, "test_warm.py"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_WARM_TEST)
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        args = _pytest_args([os.path.join(warm_dir, "test_warm.py")])
        args[args.index("--rootdir") + 1] = warm_dir
        pytest.main(args)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
        shutil.rmtree(warm_dir, ignore_errors=True)
        for name in [m for m in sys.modules if m == "test_warm" or m.endswith(".test_warm")]:
            del sys.modules[name]


DEPS_DIR = "/opt/sandgate/deps"


def preload_dependencies(deps_dir: str = DEPS_DIR) -> list[str]:
    """Import the skill's locked third-party packages (a derived image's ``/opt/sandgate/deps``)
    once in the server, before any fork: a mutant's session then does not import pandas again,
    and its timeout (from the tests' own durations) is not eaten by imports. These are the
    operator-allowlisted wheels of the lock, never the skill's code. Returns the modules loaded."""
    if not os.path.isdir(deps_dir):
        return []
    from importlib import metadata

    names: set[str] = set()
    for dist in metadata.distributions(path=[deps_dir]):
        top = dist.read_text("top_level.txt")
        if top:
            names.update(line.strip() for line in top.splitlines() if line.strip())
            continue
        for entry in dist.files or []:
            first = entry.parts[0] if entry.parts else ""
            if first.endswith((".dist-info", ".data")) or first == "..":
                continue
            if first.endswith(".py"):
                names.add(first[:-3])
            elif len(entry.parts) > 1:
                names.add(first)
    loaded = []
    for name in sorted(names):
        if not name.isidentifier() or name.startswith("_"):
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - preloading only: the skill's own import reports it
            continue
        loaded.append(name)
    return loaded


def prepare_config(test_files: list[str]) -> Any:
    """pytest's configuration, built once in the server before any fork.

    Parsing the arguments and the harness's pytest.ini and registering the
    built-in plugins imports nothing of the skill (no conftest, no autoload,
    no collection); each child starts from a copy and only runs the session.
    Built from :func:`base_config` (once per server, in its preparation when it
    is warm) with ``test_files`` as its arguments.
    """
    config = base_config()
    config.args = list(test_files)
    config.args_source = type(config).ArgsSource.ARGS
    return config


_BASE_CONFIG: list[Any] = []


def base_config() -> Any:
    """The trusted configuration without test paths, invoked from the skill's directory
    (test paths resolve against it): parsed once per server; :func:`prepare_config` gives
    it the test files (each child runs a copy, forked after that)."""
    if not _BASE_CONFIG:
        from _pytest.config import _prepareconfig

        here = os.getcwd()
        os.makedirs(SKILL_DIR, mode=0o755, exist_ok=True)
        os.chdir(SKILL_DIR)
        try:
            _BASE_CONFIG.append(_prepareconfig(_pytest_args([]), None))
        finally:
            os.chdir(here)
    return _BASE_CONFIG[0]


class ResetError(RuntimeError):
    """Something a test left could not be removed: no run may start from that state."""


def _unlock(path: str) -> None:
    """Give the owner back write and search permission on ``path`` and every directory under it
    (symlinks are never followed): a test can make a directory read-only, or unreadable, to
    keep what it left in it; it cannot make one its own user may not change back."""
    stack = [path]
    while stack:
        here = stack.pop()
        try:
            os.chmod(here, 0o700)
        except OSError:
            pass
        try:
            with os.scandir(here) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            pass


def _remove(path: str) -> None:
    try:
        is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if not is_dir:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):  # a read-only or unreadable directory somewhere under it
        _unlock(path)
        shutil.rmtree(path, ignore_errors=True)


def _reset_tree(files: dict[str, bytes], mutated: tuple[str, str] | None) -> None:
    """/work/skill = the pristine files (+ a mutated one); scratch directories emptied.

    Every scratch directory this user owns gets its permissions back first (a test may have
    made it read-only), and must be empty afterwards (/work but for the skill's directory):
    whatever stays raises :class:`ResetError`, so no run starts from state an earlier one left
    (a counter of runs, or a package a later pytest session would import)."""
    me = os.getuid()
    left: list[str] = []
    for scratch in (SKILL_DIR, *SCRATCH_DIRS):
        try:
            info = os.lstat(scratch)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            if scratch == SKILL_DIR:
                os.unlink(scratch)  # a symlink (or file) put where the tree goes; made again below
            continue
        if info.st_uid == me:
            os.chmod(scratch, 0o755)
        if not os.access(scratch, os.W_OK | os.X_OK):
            continue  # neither this user nor a test (the same user) can write in it
        for name in os.listdir(scratch):
            path = os.path.join(scratch, name)
            if path == SKILL_DIR:
                continue  # emptied on its own above (a non-directory there was unlinked)
            try:
                _remove(path)
            except OSError:
                pass
        keep = {os.path.basename(SKILL_DIR)} if scratch == os.path.dirname(SKILL_DIR) else set()
        left += [os.path.join(scratch, n) for n in os.listdir(scratch) if n not in keep]
    if left:
        raise ResetError(f"could not remove what a run left: {sorted(left)[:5]}")
    os.makedirs(HOME_DIR, exist_ok=True)
    tree = dict(files)
    if mutated is not None:
        tree[mutated[0]] = mutated[1].encode("utf-8")
    write_tree(SKILL_DIR, tree)


def module_name(rel: str) -> str:
    """The import name of a skill file: ``pkg/mod.py`` → ``pkg.mod``, ``pkg/__init__.py`` → ``pkg``."""
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def install_mutant(rel: str, source: Any, namespace: dict[str, Any] | None = None) -> None:
    """Import the mutated source in place of ``rel`` without changing the file on disk.

    A meta-path finder answers for the module's import name only when the
    normal path finder resolves that name to the same file; its loader is a
    genuine ``SourceFileLoader`` whose ``get_code`` compiles the mutated text
    (or gives the schemata's code, compiled beforehand) under the original
    file name. The file, ``get_data``, ``get_source``,
    ``inspect`` and ``linecache`` all show the pristine source, so a test
    cannot tell a mutant run from its own by reading source; only code-object
    introspection (``__code__``, ``get_code``, ``compile``) can.
    """
    import importlib.machinery
    import importlib.util

    path = os.path.join(SKILL_DIR, rel)
    name = module_name(rel)
    mutated: Any = source.encode("utf-8") if isinstance(source, str) else source

    def loader_for(fullname: str) -> Any:
        # a genuine SourceFileLoader (its type is what a normal import gives), with the
        # reads of the module's source answered from memory
        loader = importlib.machinery.SourceFileLoader(fullname, path)

        def get_code(_fullname: str) -> Any:
            if isinstance(mutated, types.CodeType):  # compiled under ``path`` already
                return mutated
            return compile(mutated, path, "exec", dont_inherit=True)

        # get_data / get_source still read the pristine file
        loader.get_code = get_code  # type: ignore[method-assign,assignment]
        if namespace is not None:  # a schemata module: its dispatch cell is there before it runs

            def create_module(_spec: Any) -> Any:
                module = types.ModuleType(fullname)
                module.__dict__.update(namespace)
                return module

            loader.create_module = create_module  # type: ignore[method-assign,assignment]
        return loader

    class Finder:
        @staticmethod
        def find_spec(fullname: str, search: Any = None, target: Any = None) -> Any:
            if fullname != name:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, search)
            if spec is None or spec.origin != path:
                return None
            return importlib.util.spec_from_file_location(
                fullname, path, loader=loader_for(fullname),
                submodule_search_locations=spec.submodule_search_locations)

    sys.meta_path.insert(0, Finder)


#: address space a child may add to what it inherited (set from the sandbox's memory limit)
CHILD_MEMORY = {"bytes": 0}


def _detach(keep: tuple[int, ...]) -> None:
    """In a child about to run submitted code: its own session, ``keep`` as fds 3, 4, ...,
    every other descriptor closed (0-2 on /dev/null), first in line for the OOM killer."""
    os.setsid()
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in keep]  # out of the way of 3, 4, ...
    for target, fd in enumerate(moved, 3):
        os.dup2(fd, target)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3 + len(keep), 65536)
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass


def _limit_memory(size: int | None = None) -> None:
    """A mutant that allocates without end gets MemoryError before the OOM killer acts.

    ``size``: this process's address space in bytes, when the caller measured it before
    forking (a schemata child does once: every grandchild starts at its size)."""
    extra = CHILD_MEMORY["bytes"]
    if extra <= 0:
        return
    try:
        if size is None:
            size = _address_space()
        resource.setrlimit(resource.RLIMIT_AS, (size + extra, size + extra))
    except (OSError, ValueError):
        pass


def _address_space() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(nodeids: set[str] | None, test_files: list[str], config: Any,
           mutated: tuple[str, str] | None = None) -> None:
    """In the forked child: never returns."""
    code = 3
    try:
        _detach(())
        _limit_memory()
        os.chdir(SKILL_DIR)
        sys.path.append(SKILL_DIR)
        if mutated is not None:
            install_mutant(*mutated)
        selector = _Selector(nodeids)
        if config is None:
            import pytest

            pytest.main(_pytest_args(test_files), plugins=[selector])
        else:
            config.pluginmanager.register(selector, "sandgate-mutation-selector")
            config.hook.pytest_cmdline_main(config=config)
        code = 0 if selector.passed > 0 and selector.bad == 0 else 1
    except BaseException:  # noqa: BLE001 - anything is a kill
        code = 2
    os._exit(code)



# -- mutant schemata -----------------------------------------------------------------

#: the dispatch cell's name in a schemata module (a one-item list: the active token)
ACTIVE_NAME = "_sandgate_active__"
_CODE_FLAGS = 0x20 | 0x80 | 0x200  # generator, coroutine, async generator


@dataclass
class Schemata:
    """All schemata-able mutants of the skill compiled into one module per file.

    Every mutated function (a top-level function, or a method of a top-level
    class) keeps its signature; its body becomes ``if active == token_1:
    <mutant 1's body> elif ...: ... else: <the original body>``, plus one
    *identity* branch (a copy of the original body under its own token) that
    a control uses, so that a control is dispatched exactly like a mutant.
    A mutant that changes anything else (module-level code, defaults,
    decorators, a function's locals or its generator/coroutine kind) is not
    in the schemata and runs in a child of its own.
    """

    trees: dict[str, ast.Module]
    #: mutant index -> token; mutant index -> the token of its function's identity branch
    tokens: dict[int, str]
    identity: dict[int, str]
    #: each file's schemata compiled under its path in the sandbox (the child imports these)
    codes: dict[str, Any] = field(default_factory=dict)


def _units(tree: ast.Module) -> dict[tuple[int, int], ast.FunctionDef | ast.AsyncFunctionDef]:
    """The dispatchable functions: ``(top, -1)`` top-level defs, ``(top, i)`` methods."""
    out: dict[tuple[int, int], Any] = {}
    for top, stmt in enumerate(tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[(top, -1)] = stmt
        elif isinstance(stmt, ast.ClassDef):
            for i, sub in enumerate(stmt.body):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[(top, i)] = sub
    return out


def _qualname(tree: ast.Module, key: tuple[int, int]) -> str:
    top, i = key
    stmt: Any = tree.body[top]
    return stmt.name if i < 0 else f"{stmt.name}.{stmt.body[i].name}"


def _code_of(code: Any, qualname: str) -> Any:
    """The code object of the top-level function or method ``qualname`` (None if not unique)."""
    found = []
    stack = [code]
    while stack:
        current = stack.pop()
        for const in current.co_consts:
            if hasattr(const, "co_qualname"):
                if const.co_qualname == qualname:
                    found.append(const)
                elif "." not in const.co_qualname:  # a class body: look for its methods
                    stack.append(const)
    return found[0] if len(found) == 1 else None


def _compatible(before: Any, after: Any, module_names: set[str]) -> bool:
    """Does the mutated body mean the same inside the original function as on its own?

    Same generator/coroutine kind; its locals and cells are among the original's;
    and no name it (or a function nested in it) reads as a global is a local or a
    cell of the original (in the merged function that read would be a local one).
    """
    if before.co_flags & _CODE_FLAGS != after.co_flags & _CODE_FLAGS:
        return False
    if not set(after.co_varnames) <= set(before.co_varnames) or not set(after.co_cellvars) <= set(
            before.co_cellvars) or set(after.co_freevars) != set(before.co_freevars):
        return False
    # a name neither bound at module level nor a builtin raises NameError either way
    # (UnboundLocalError is one): only the others could mean something else
    local = {*before.co_varnames, *before.co_cellvars}
    if "*" not in module_names:
        local &= module_names | set(dir(builtins))
    names: set[str] = set()
    stack = [after]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return not names & local


def _module_names(tree: ast.Module) -> set[str]:
    """Names bound at module level or declared ``global`` anywhere (``"*"``: unknown)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names.update(node.names)
        elif isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            names.add("*")
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            stack.extend(node.decorator_list)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        stack.extend(ast.iter_child_nodes(node))
    return names


def _dump(node: Any) -> str:
    return ast.dump(node, include_attributes=False)


def _changed_lines(before: str, after: str) -> set[int] | None:
    """The 1-based lines that differ between two texts of the same line count, or None."""
    old, new = before.splitlines(), after.splitlines()
    if len(old) != len(new):
        return None
    return {n for n, (x, y) in enumerate(zip(old, new, strict=True), 1) if x != y}


def _unit_of(original: ast.Module, mutated: ast.Module, before: str | None = None,
             after: str | None = None, top: int = -1) -> tuple[int, int] | None:
    """The one dispatchable function whose body (only) the mutant changes, or None.

    Given both texts, a statement at the same lines in both trees with none of its
    lines changed is the same text at the same place, so the same tree: it is not
    dumped and compared (most of the cost, done for every mutant).
    """
    if len(original.body) != len(mutated.body):
        return None
    lines = _changed_lines(before, after) if before is not None and after is not None else None

    def differs(x: Any, y: Any) -> bool:
        if lines is not None and (x.lineno, x.end_lineno) == (y.lineno, y.end_lineno) and not any(
                x.lineno <= n <= (x.end_lineno or x.lineno) for n in lines):
            return False
        return _dump(x) != _dump(y)

    if 0 <= top < len(original.body):
        # _verify checked that the others are the same trees, and that this one is the
        # original with the edit applied (an edit that changes nothing is a variant that
        # behaves as the original: it survives, as it would in a child of its own)
        changed = [top]
    else:
        changed = [i for i, (a, b) in enumerate(zip(original.body, mutated.body, strict=True)) if differs(a, b)]
    if len(changed) != 1:
        return None
    top = changed[0]
    a, b = original.body[top], mutated.body[top]
    if type(a) is not type(b):
        return None

    def same_head(x: Any, y: Any) -> bool:
        if type(x) is not type(y) or not isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return False
        return (x.name == y.name and _dump(x.args) == _dump(y.args)
                and [_dump(d) for d in x.decorator_list] == [_dump(d) for d in y.decorator_list]
                and (_dump(x.returns) if x.returns else "") == (_dump(y.returns) if y.returns else ""))

    if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return (top, -1) if same_head(a, b) else None
    if not isinstance(a, ast.ClassDef) or not isinstance(b, ast.ClassDef):
        return None
    if (a.name != b.name or len(a.body) != len(b.body)
            or [_dump(x) for x in (*a.bases, *a.keywords, *a.decorator_list)]
            != [_dump(x) for x in (*b.bases, *b.keywords, *b.decorator_list)]):
        return None
    inner = [i for i, (x, y) in enumerate(zip(a.body, b.body, strict=True)) if differs(x, y)]
    if len(inner) != 1 or not same_head(a.body[inner[0]], b.body[inner[0]]):
        return None
    return (top, inner[0])


def build_schemata(sources: dict[str, str], mutants: list[Mutant]) -> Schemata:
    """The schemata of ``mutants`` (see :class:`Schemata`); deterministic but for the tokens."""
    trees: dict[str, ast.Module] = {}
    tokens: dict[int, str] = {}
    identity: dict[int, str] = {}
    codes: dict[str, Any] = {}
    variants: dict[str, dict[tuple[int, int], list[tuple[str, list[ast.stmt]]]]] = {}
    originals: dict[str, tuple[ast.Module, Any, set[str]]] = {}
    keys: dict[int, tuple[int, int]] = {}
    for index, mutant in enumerate(mutants):
        text = sources.get(mutant.file)
        if text is None or ACTIVE_NAME in text:
            continue
        try:
            if mutant.file not in originals:
                tree = ast.parse(text)
                originals[mutant.file] = (tree, compile(tree, mutant.file, "exec", dont_inherit=True),
                                          _module_names(tree))
            original, original_code, bound = originals[mutant.file]
            # a fresh tree per mutant: its function body is moved into the schemata
            mutated = mutant.tree if mutant.tree is not None else ast.parse(mutant.source)
            mutant.tree = None
            key = _unit_of(original, mutated, text, mutant.source, mutant.top)
            if key is None:
                continue
            qualname = _qualname(original, key)
            before = _code_of(original_code, qualname)
            # only the changed top-level statement is compiled: its code is the same as in the module
            futures = [stmt for stmt in mutated.body if isinstance(stmt, ast.ImportFrom)
                       and stmt.module == "__future__"]
            alone = ast.Module(body=[*futures, mutated.body[key[0]]], type_ignores=[])
            after = _code_of(compile(alone, mutant.file, "exec", dont_inherit=True), qualname)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if before is None or after is None or not _compatible(before, after, bound):
            continue
        body = _units(mutated)[key].body
        keys[index] = key
        tokens[index] = f"m{secrets.token_hex(8)}"
        variants.setdefault(mutant.file, {}).setdefault(key, []).append((tokens[index], body))
    for path, units in variants.items():
        tree = originals[path][0]  # not read again: its bodies become the schemata's
        found = _units(tree)
        copies = _units(ast.parse(sources[path]))  # fresh copies of the original bodies
        unit_identity: dict[tuple[int, int], str] = {}
        for key, branches in units.items():
            func = found[key]
            same = f"c{secrets.token_hex(8)}"
            unit_identity[key] = same
            chain: list[ast.stmt] = func.body
            where = func.body[0]
            for token, body in [*branches, (same, copies[key].body)][::-1]:
                # every new node placed at the body's first statement (nothing else to fix)
                parts = [ast.Name(id=ACTIVE_NAME, ctx=ast.Load()), ast.Constant(value=0),
                         ast.Constant(value=token)]
                left = ast.Subscript(value=parts[0], slice=parts[1], ctx=ast.Load())
                test = ast.Compare(left=left, ops=[ast.Eq()], comparators=[parts[2]])
                branch = ast.If(test=test, body=body, orelse=chain)
                for node in (*parts, left, test, branch):
                    ast.copy_location(node, where)
                chain = [branch]
            func.body = chain
        try:
            codes[path] = compile(tree, os.path.join(SKILL_DIR, path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            for index in [i for i, m in enumerate(mutants) if m.file == path]:
                tokens.pop(index, None)
            continue
        trees[path] = tree
        for index, mutant in enumerate(mutants):
            if mutant.file == path and index in tokens:
                identity[index] = unit_identity[keys[index]]
    tokens = {i: t for i, t in tokens.items() if mutants[i].file in trees}
    return Schemata(trees, tokens, identity, {path: codes[path] for path in trees})


class _SchemataLoop:
    """pytest plugin of the schemata child: after collection, run commands instead of the tests.

    Each command (one JSON line on fd 3: the active token, the selected node ids,
    the timeout) is run in a forked grandchild that sets the token and runs the
    selected items through pytest's own protocol; its outcome goes back on fd 4.
    The grandchild is a fresh copy of the collected session each time: whatever a
    mutant changes in memory dies with it.
    """

    def __init__(self, active: list[Any], counter: _Selector) -> None:
        self.active, self.counter = active, counter
        self.running = False  # True in a grandchild

    def pytest_runtest_makereport(self, item: Any, call: Any) -> None:
        """In a grandchild, the first failure decides (killed): no failure report is formatted."""
        if not self.running or call.excinfo is None or item.get_closest_marker("xfail") is not None:
            return
        from _pytest.outcomes import Skipped

        if not call.excinfo.errisinstance(Skipped):
            os._exit(1)

    def pytest_runtestloop(self, session: Any) -> bool:
        if self.counter.bad or session.testsfailed:
            os._exit(4)
        commands = os.fdopen(3, "rb", buffering=0)
        answers = os.fdopen(4, "wb", buffering=0)
        for item in session.items:
            try:
                item.location  # noqa: B018 - computed once here, not again in every grandchild
            except Exception:  # noqa: BLE001 - the grandchild's run reports it
                pass
        answers.write(b'{"ready": true}\n')
        gc.collect()
        gc.freeze()  # grandchildren do not copy the collected session's pages when they collect
        try:
            size: int | None = _address_space()  # each grandchild's, at its fork
        except (OSError, ValueError):
            size = None
        for line in iter(commands.readline, b""):
            command = json.loads(line)
            wanted = command.get("nodeids")
            chosen = None if wanted is None else set(wanted)
            items = [i for i in session.items if chosen is None or i.nodeid in chosen]
            pid = os.fork()
            if pid == 0:
                code = 3
                try:
                    os.setsid()
                    os.close(3)
                    os.close(4)
                    _limit_memory(size)
                    self.active[0] = command.get("token")
                    self.running = True
                    for position, item in enumerate(items):
                        following = items[position + 1] if position + 1 < len(items) else None
                        item.config.hook.pytest_runtest_protocol(item=item, nextitem=following)
                        if self.counter.bad:
                            break
                    code = 0 if self.counter.passed > 0 and self.counter.bad == 0 else 1
                except BaseException:  # noqa: BLE001 - anything is a kill
                    code = 2
                os._exit(code)
            outcome, seconds = _reap(pid, float(command.get("timeout") or 1.5),
                                     cleanup=lambda pid=pid: _kill_group(pid))
            answers.write(json.dumps({"outcome": outcome, "seconds": round(seconds, 4)}).encode() + b"\n")
        os._exit(0)


def _schemata_child(commands: int, answers: int, schemata: Schemata, config: Any) -> None:
    """The schemata child (forked from the server, which never imports the skill): never returns."""
    code = 3
    try:
        _detach((commands, answers))
        os.chdir(SKILL_DIR)
        sys.path.append(SKILL_DIR)
        active: list[Any] = [None]
        for rel, tree in schemata.trees.items():
            install_mutant(rel, schemata.codes.get(rel, tree), {ACTIVE_NAME: active})
        counter = _Selector(None)
        config.pluginmanager.register(counter, "sandgate-mutation-selector")
        config.pluginmanager.register(_SchemataLoop(active, counter), "sandgate-schemata-loop")
        config.hook.pytest_cmdline_main(config=config)
    except BaseException:  # noqa: BLE001 - the server sees the channel close
        code = 2
    os._exit(code)


class _SchemataRunner:
    """The server's side of the schemata child: start it, send it commands, restart it when a
    command times out or it dies (the remaining mutants then run in a fresh one)."""

    #: starts at most; after that, the remaining mutants run one child each
    MAX_STARTS = 3

    def __init__(self, schemata: Schemata, config_for: Any, tests: list[str], files: dict[str, bytes],
                 start_timeout: float) -> None:
        self.schemata, self.config_for, self.tests, self.files = schemata, config_for, tests, files
        self.start_timeout = start_timeout
        self.pid: int | None = None
        self.starts = 0
        self.broken = not schemata.tokens  # or, at its first start, no configuration
        self.commands = self.answers = -1
        self.buffer = b""

    def alive(self) -> bool:
        if self.pid is None and not self.broken:
            self._start()
        return self.pid is not None

    def _start(self) -> None:
        config = self.config_for(self.tests)  # its arguments, for this fork
        if self.starts >= self.MAX_STARTS or config is None:
            self.broken = True
            return
        self.starts += 1
        _reset_tree(self.files, None)
        cmd_r, cmd_w = os.pipe()
        ans_r, ans_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _schemata_child(cmd_r, ans_w, self.schemata, config)
        os.close(cmd_r)
        os.close(ans_w)
        self.pid, self.commands, self.answers, self.buffer = pid, cmd_w, ans_r, b""
        ready = self._answer(self.start_timeout)
        if not isinstance(ready, dict) or not ready.get("ready"):
            self.stop()
            self.broken = True  # collection differs here: every mutant runs in a child of its own

    def _answer(self, timeout: float) -> Any:
        end = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.answers], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.answers, 65536)
            if not chunk or len(self.buffer) > 65536:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return None

    def cleanup(self) -> None:
        """After a run: every process but the server, this child and PID 1 is killed."""
        if self.pid is None:
            _kill_others()
        elif not _kill_strays(self.pid):
            self.stop()

    def stop(self) -> None:
        if self.pid is not None:
            for fd in (self.commands, self.answers):
                try:
                    os.close(fd)
                except OSError:
                    pass
            _kill_others()
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        self.pid = None

    def run(self, token: str, selected: set[str] | None, timeout: float) -> tuple[str, float]:
        """One mutant (or control) in a grandchild: (outcome, seconds), like ``_reap``."""
        assert self.pid is not None
        started = time.monotonic()
        _reset_tree(self.files, None)  # what the last grandchild wrote is gone
        command = {"token": token, "nodeids": sorted(selected) if selected is not None else None,
                   "timeout": timeout}
        try:
            os.write(self.commands, json.dumps(command).encode() + b"\n")
        except OSError:
            self.stop()
            return "killed", time.monotonic() - started
        answer = self._answer(timeout + 1.0)
        outcome = answer.get("outcome") if isinstance(answer, dict) else None
        if outcome not in ("killed", "survived", "timed_out"):
            # the child hung (its own watchdog did not answer) or died: the mutant is what a
            # child of its own would have been, and the next one gets a fresh schemata child
            self.stop()
            return ("timed_out" if answer is None and time.monotonic() - started >= timeout else "killed",
                    time.monotonic() - started)
        self.cleanup()
        return str(outcome), float(answer.get("seconds") or 0.0)


def _kill_strays(keep: int) -> bool:
    """Kill every process but this one, ``keep`` and PID 1; False if some kept coming back."""
    return kill_strays(keep)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _kill_others() -> None:
    kill_everything_else()  # everything but this process and PID 1


def _reap(pid: int, timeout: float, cleanup: Any = None) -> tuple[str, float]:
    """Wait for child ``pid`` up to ``timeout``: (outcome, seconds); then ``cleanup()`` (default:
    kill every process but this one and PID 1)."""
    cleanup = cleanup or _kill_others
    started = time.monotonic()
    delay = 0.002
    watched = False  # one wait on a pidfd (no polling delay); without pidfds, a growing sleep
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if not watched:
            watched = True
            if exited_within(pid, max(0.0, timeout - (time.monotonic() - started)) + 0.001):
                continue  # reaped by the next waitpid (or, should it not be, polled for)
        if time.monotonic() - started > timeout:
            _kill_group(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            cleanup()
            os.waitpid(pid, 0)
            return "timed_out", time.monotonic() - started
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)
    seconds = time.monotonic() - started
    cleanup()
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "survived", seconds
    return "killed", seconds


def _selection(mutant: Mutant, per_line: dict[str, dict[int, list[str]]] | None,
               all_tests: list[str]) -> tuple[set[str] | None, list[str]]:
    if per_line is None:
        return None, all_tests
    lines = per_line.get(mutant.file, {})
    ids: set[str] = set()
    for line in {*mutant.lines, mutant.stmt_line, mutant.line}:
        ids.update(lines.get(line, ()))
    if not ids:
        return None, all_tests
    files = sorted({i.split("::", 1)[0] for i in ids})
    return ids, [f for f in files if f in all_tests] or all_tests


def _durations(job: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for case in job.get("cases") or []:
        if isinstance(case, dict):
            try:
                out[str(case.get("nodeid"))] = float(case.get("duration_seconds") or 0.0)
            except (TypeError, ValueError):
                continue
    return out


def mutant_timeout(selected: set[str] | None, durations: dict[str, float], baseline: float) -> float:
    """Generous: the selected tests took ``t`` in the dynamic phase; allow 1 s + 3 t, 1.5..30 s."""
    t = baseline if selected is None else sum(durations.get(i, baseline) for i in selected)
    return max(1.5, min(30.0, 1.0 + 3.0 * t))


def decision(outcomes: list[str], total: int, min_score: float, null_must_be_killed: bool,
             null_outcome: str | None) -> str | None:
    """``"pass"`` / ``"fail"`` once the mutants not yet run cannot change the gates' outcome, else None.

    ``outcomes``: of the mutants run so far; ``total``: mutants selected. The score
    gate counts killed + timed out over run: if every remaining mutant survived the
    score would still reach ``min_score`` (pass decided), or if every remaining one
    were killed it would still fall short (fail decided). Stopping early therefore
    never changes the verdict under the policy the job was made for; the reported
    score is over the mutants that ran.
    """
    if null_must_be_killed and null_outcome == "survived":
        return "fail"
    run = len(outcomes)
    if not total or run == 0:
        return None
    killed = sum(1 for o in outcomes if o in ("killed", "timed_out"))
    remaining = max(0, total - run)
    if min_score <= 0:
        return "pass"
    if 100.0 * killed / total >= min_score:
        return "pass"
    if 100.0 * (killed + remaining) / total < min_score:
        return "fail"
    return None


def serve(job: dict[str, Any], write: Any) -> None:
    started = time.monotonic()
    budget_end = started + max(0.0, float(job.get("seconds", 20.0)))
    import pytest  # noqa: F401 - the toolchain, imported once, before any fork

    files = {p: bytes.fromhex(h) for p, h in job["files"].items()}
    CHILD_MEMORY["bytes"] = int(job.get("memory_bytes") or 0) // 2
    tests = [str(t) for t in job.get("tests", [])]
    listed = job.get("module_files")
    sources = {}
    for path, data in files.items():
        wanted = path in listed if isinstance(listed, list) else path.endswith(".py")
        if wanted and path.endswith(".py") and path not in tests:
            try:
                sources[path] = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    job["sources"] = sources
    covered, per_line = covered_lines(job)
    mutants, info = generate(sources, covered=covered, entrypoint=job.get("entrypoint"),
                             max_mutants=int(job.get("max_mutants", 20)))
    schemata = build_schemata(sources, mutants)
    durations = _durations(job)
    baseline = float(job.get("baseline_seconds") or sum(durations.values()) or 1.0)
    stop_when_decided = bool(job.get("stop_when_decided", True))
    min_score = float(job.get("min_score") or 0.0)
    null_must_be_killed = bool(job.get("null_must_be_killed", True))
    write({"plan": {**info, "total": len(mutants), "line_tests": per_line is not None,
                    "selections": len({tuple(sorted(_selection(m, per_line, tests)[0] or ())) for m in mutants}),
                    "schemata": len(schemata.tokens),
                    "generate_seconds": round(time.monotonic() - started, 4)}})

    _reset_tree(files, None)
    os.chdir(SKILL_DIR)

    def config_for(test_files: list[str]) -> Any:
        """The configuration for the next fork (one object: its arguments are set for each)."""
        try:
            return prepare_config(sorted(test_files))
        except Exception:  # noqa: BLE001 - the child then configures pytest itself
            return None

    prepare()
    runner = _SchemataRunner(schemata, config_for, tests, files,  # built before any fork
                             mutant_timeout(None, durations, baseline))
    gc.freeze()  # children do not copy the server's heap when they collect

    def run_one(token: str | None, selected: set[str] | None, test_files: list[str], timeout: float,
                mutated: tuple[str, str] | None) -> tuple[str, float]:
        """In the schemata child when the mutant is in the schemata, else in a child of its own."""
        if token is not None and runner.alive():
            return runner.run(token, selected, timeout)
        _reset_tree(files, None)
        child_config = config_for(test_files)
        pid = os.fork()
        if pid == 0:
            _child(selected, test_files, child_config, mutated)
        return _reap(pid, timeout, runner.cleanup)

    def index_of(mutant: Mutant) -> int:
        return next(i for i, m in enumerate(mutants) if m is mutant)

    # The control: the unmutated skill, run exactly like a mutant (with the tests some
    # mutant selects) at a position chosen at random (not from the content), must
    # survive; otherwise every kill is meaningless (flaky tests, or tests that fail
    # whenever they run here, or whenever some other test did not run before them).
    # Closing controls after the last mutant, when any was killed, cover the other
    # test selections the mutants that ran used (up to MAX_CONTROLS in all, chosen at
    # random beyond that): tests that start failing later in the phase, or only
    # without some other test, fail them too.
    def selection_key(mutant: Mutant) -> tuple[str, ...] | None:
        selected, _ = _selection(mutant, per_line, tests)
        return None if selected is None else tuple(sorted(selected))

    controlled: set[tuple[str, ...] | None] = set()

    def control(tag: str, like: Mutant) -> bool:
        controlled.add(selection_key(like))
        selected, test_files = _selection(like, per_line, tests)
        outcome, seconds = run_one(schemata.identity.get(index_of(like)), selected, test_files,
                                   mutant_timeout(selected, durations, baseline), None)
        write({tag: {"outcome": outcome, "seconds": round(seconds, 4),
                     "tests": len(selected) if selected is not None else None}})
        return outcome == "survived"

    control_at = 1 + secrets.randbelow(min(3, len(mutants))) if mutants else 0
    runs: list[Mutant | None] = list(mutants)
    runs.insert(control_at, None)
    number = -1
    taken: list[float] = []
    outcomes: list[str] = []
    null_outcome: str | None = None
    control_done = False
    ran: list[Mutant] = []
    for item in runs:
        if item is None:
            if not control("control", mutants[secrets.randbelow(len(mutants))]):
                break
            control_done = True
        else:
            number += 1
            mutant = item
            selected, test_files = _selection(mutant, per_line, tests)
            timeout = mutant_timeout(selected, durations, baseline)
            now = time.monotonic()
            # The null entrypoint always runs (it is first) with its whole timeout; the rest
            # start while the budget lasts, and may overrun it by at most a second. A mutant
            # cut short by the budget rather than by its own timeout is not counted.
            # ... and time for one closing control is kept in reserve
            expected = statistics.median(taken) if taken else min(timeout, baseline)
            if number > 0 and now + 2 * expected > budget_end:
                write({"budget_exhausted": True})
                break
            effective = timeout if number == 0 else max(0.2, min(timeout, budget_end + 1.0 - now))
            outcome, seconds = run_one(schemata.tokens.get(number), selected, test_files, effective,
                                       (mutant.file, mutant.source))
            if outcome == "timed_out" and effective < timeout:
                write({"budget_exhausted": True})
                break
            taken.append(seconds)
            outcomes.append(outcome)
            ran.append(mutant)
            if mutant.operator == "null_entrypoint":
                null_outcome = outcome
            write({"mutant": {**mutant.describe(), "outcome": outcome, "seconds": round(seconds, 4),
                              "tests": len(selected) if selected is not None else None}})
        if stop_when_decided and control_done and len(outcomes) < len(mutants):
            decided = decision(outcomes, len(mutants), min_score, null_must_be_killed, null_outcome)
            if decided is not None:
                write({"decided": decided})
                break
    if control_done and any(o in ("killed", "timed_out") for o in outcomes):
        left: dict[tuple[str, ...] | None, Mutant] = {}
        for mutant in ran:
            left.setdefault(selection_key(mutant), mutant)
        pending = [m for key, m in left.items() if key not in controlled]
        room = max(1, MAX_CONTROLS - len(controlled))
        while len(pending) > room:
            pending.pop(secrets.randbelow(len(pending)))
        if not pending:  # every selection is controlled: one more, at the end, with a random one
            pending = [ran[secrets.randbelow(len(ran))]]
        expected = statistics.median(taken) if taken else baseline
        for i, mutant in enumerate(pending):
            # the first always runs (the time was kept for it); the others while the budget lasts
            if i > 0 and time.monotonic() + expected > budget_end + 1.0:
                break
            if not control("closing_control", mutant):
                break
    runner.stop()
    _reset_tree(files, None)
    write({"done": True, "seconds": round(time.monotonic() - started, 4)})


_PREPARED: list[bool] = []


def prepare() -> None:
    """What depends on nothing submitted, once per server: pytest's lazy imports warmed on
    the harness's own test file, the image's locked packages imported."""
    if _PREPARED:
        return
    _PREPARED.append(True)
    import pytest  # noqa: F401

    try:
        warm_up()
    except Exception:  # noqa: BLE001 - warming only
        pass
    preload_dependencies()
    try:
        base_config()
    except Exception:  # noqa: BLE001 - built (or reported) when the job needs it
        pass


def main() -> None:
    """``python3 -I -m sandgate_harness.mutation RESULT_FD [--warm=READY_FD]``: with ``--warm``
    (the harness starts it before the payload arrives) it prepares before reading its job and
    then writes one byte to READY_FD."""
    result_fd = int(sys.argv[1])
    os.set_inheritable(result_fd, False)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE=0
    except Exception:  # noqa: BLE001 - best effort
        pass
    for arg in sys.argv[2:]:
        if arg.startswith("--warm="):  # prepared before the job, then one byte says so
            ready = int(arg.partition("=")[2])
            os.set_inheritable(ready, False)
            prepare()
            gc.collect()
            os.write(ready, b"R")
            os.close(ready)
    hide_command_line()  # the mutants' children are forked from here, and run submitted code
    job = json.loads(sys.stdin.buffer.read())
    out = os.fdopen(result_fd, "wb", buffering=0)

    T0 = time.monotonic()
    def write(event: dict[str, Any]) -> None:
        event["_t"] = round(time.monotonic() - T0, 4)
        out.write(json.dumps(event).encode() + b"\n")

    serve(job, write)
    out.close()
    os._exit(0)  # no interpreter teardown (tens of milliseconds with pytest loaded)


def summarise(events: list[dict[str, Any]], problem: str | None) -> dict[str, Any]:
    """The harness's ``mutation`` section from the server's events."""
    plan: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    done, exhausted, seconds, control = False, False, None, None
    decided: str | None = None
    controls = 0
    first: Any = None  # the server's clock (its "_t") when the first run ended
    for event in events:
        if first is None and ("mutant" in event or "control" in event):
            first = event.get("_t")
        if "plan" in event:
            plan = event["plan"] if isinstance(event["plan"], dict) else {}
        elif "mutant" in event:
            if isinstance(event["mutant"], dict):
                results.append(event["mutant"])
        elif "control" in event or "closing_control" in event:
            tag = "control" if "control" in event else "closing_control"
            controls += 1
            outcome = event[tag].get("outcome") if isinstance(event[tag], dict) else None
            if tag == "control" or control == "survived":
                control = outcome
            if outcome != "survived" and problem is None:
                problem = (f"the unmutated skill did not pass its tests in the mutation runner "
                           f"({tag.replace('_', ' ')}: {outcome}): its tests fail or hang when run "
                           f"again, so no kill counts")
        elif event.get("budget_exhausted"):
            exhausted = True
        elif event.get("decided") in ("pass", "fail"):
            decided = event["decided"]
        elif event.get("done"):
            done, seconds = True, event.get("seconds")
    counts = {k: sum(1 for r in results if r.get("outcome") == k) for k in ("killed", "survived", "timed_out")}
    null = next((r for r in results if r.get("operator") == "null_entrypoint"), None)
    if not done and problem is None:
        problem = "the mutation server stopped before finishing"
    return {
        "ran": True,
        "complete": done,
        "problem": problem,
        "total": int(plan.get("total", 0)),
        "generated": int(plan.get("candidates", 0)),
        "run": len(results),
        **counts,
        "budget_exhausted": exhausted,
        "decided_early": decided,
        "line_tests": bool(plan.get("line_tests")),
        "control": control,
        "controls": controls,
        "selections": int(plan.get("selections") or 0),
        "null_entrypoint": null["outcome"] if null else str(plan.get("null_entrypoint", "absent")),
        "unparsable": plan.get("unparsable", []),
        "mutants": results,
        "seconds": seconds,
        "generate_seconds": plan.get("generate_seconds"),
        "children_seconds": round(sum(float(r.get("seconds") or 0) for r in results), 4),
        "controls_seconds": round(sum(float(e[t].get("seconds") or 0) for e in events
                                      for t in ("control", "closing_control")
                                      if isinstance(e.get(t), dict)), 4),
        "first_run_seconds": first if isinstance(first, (int, float)) else None,
        "server_seconds": events[-1].get("_t") if events and isinstance(events[-1].get("_t"), (int, float)) else None,
    }


__all__ = ["Mutant", "generate", "serve", "summarise", "decision", "mutant_timeout", "content_seed",
           "OPERATORS"]

if __name__ == "__main__":
    main()
