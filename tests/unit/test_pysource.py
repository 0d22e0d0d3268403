"""sandgate.pysource: every parse of the platform behind one lock (CPython 3.11's AST constructor
keeps its recursion depth per interpreter; threads parsing at once fail with SystemError)."""

from __future__ import annotations

import ast
import gc
import re
import threading
import time
from pathlib import Path

import pytest

from sandgate import pysource

PLATFORM = Path(__file__).resolve().parents[2] / "platform" / "sandgate"
NESTED = "def f(x):\n" + "".join(f"    if x > {i}:\n        x = [x, {{'a': ({i}, x)}}]\n" for i in range(100)) + \
    "    return x\n"


def test_no_other_module_of_the_platform_calls_ast_parse() -> None:
    calls = re.compile(r"\bast\.parse\(|\bast\.literal_eval\(|PyCF_ONLY_AST")
    offenders = [f"{p.relative_to(PLATFORM)}:{n}" for p in PLATFORM.rglob("*.py") if p.name != "pysource.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if calls.search(line.split("#", 1)[0])]
    assert offenders == [], "parse through sandgate.pysource.parse"


def test_the_lock_is_held_for_the_whole_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = ast.parse

    def spy(*args, **kwargs):
        seen.append(pysource._LOCK.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(pysource.ast, "parse", spy)
    tree = pysource.parse("x = 1", filename="m.py")
    assert seen == [True] and isinstance(tree, ast.Module)
    assert isinstance(pysource.parse("1 + 2", mode="eval"), ast.Expression)
    with pytest.raises(SyntaxError):
        pysource.parse("def (:")
    assert not pysource._LOCK.locked()


class _Finaliser:
    def __del__(self) -> None:
        time.sleep(0)  # a thread switch in the middle of a collection


def test_threads_parsing_at_once_never_fail() -> None:
    """The hazard's conditions (collections with finalisers during tree construction, in
    several threads): through pysource.parse not one SystemError."""
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(25):
            junk = [_Finaliser() for _ in range(5)]
            for j in junk:
                j.cycle = j  # type: ignore[attr-defined]
            del junk
            try:
                pysource.parse(NESTED)
            except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)
                return

    old = gc.get_threshold()
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*old)
    assert errors == []
