"""The dynamic phase's child process: pytest + coverage, results streamed as HMAC frames.

Run as ``python3 -I -m sandgate_harness.runner KEY_FD RESULT_FD JOB_FD``. It imports the
toolchain first (pytest, its default plugins, coverage: nothing submitted), then blocks
reading its job (JSON, to end of file) from ``JOB_FD``: the harness starts it early and
sends the job only after the static phase.

The key is read (into a buffer that is zeroed at once, the key itself living only
in OpenSSL's HMAC state) and its pipe closed before any submitted code is imported.
No frame of this module holds the key, the signer or the result fd as a local
while tests run: the signer is a closure owned by the collector plugin.

Frames (``SGR2``): ``magic | seq u32 | length u32 | hmac-sha256(key, seq || payload) | payload``,
``seq`` counting from 0. The stream is: one ``collected`` frame (the node ids), one
``case`` frame per test as soon as it finished, then exactly one ``final`` frame
(summary, coverage, entrypoint check); the harness checks that the final summary
agrees with the streamed frames, and that nothing follows it.

Everything here runs in the process that also runs submitted code: the results
are that process's claims, made expensive to forge, not impossible (README).
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import os
import struct
import sys
import time
from collections import defaultdict
from typing import Any

from sandgate_harness.procs import hide_command_line, kill_all_but

MAGIC = b"SGR2"
HEADER = 4 + 4 + 4 + 32
#: coverage context of everything that runs while a test runs: ``T:<nodeid>``
TEST_CONTEXT = "T:"
OUTSIDE_CONTEXT = "outside-tests"


def frame(key: bytes, seq: int, payload: bytes) -> bytes:
    """One frame (used by the harness's tests; the runner signs through :func:`_open_channel`)."""
    mac = hmac.new(key, struct.pack(">I", seq) + payload, hashlib.sha256).digest()
    return MAGIC + struct.pack(">II", seq, len(payload)) + mac + payload


def _open_channel(key_fd: int, result_fd: int) -> Any:
    """Read the key and return ``send(kind, body)``; the key never exists as a Python object.

    ``send`` numbers its frames and refuses anything after ``final``.
    """
    buf = bytearray(32)
    got = os.readv(key_fd, [buf])
    os.close(key_fd)
    if got != 32:
        raise SystemExit("runner: short key")
    signer = hmac.new(buf, digestmod="sha256")  # OpenSSL-backed: the key is copied into C memory
    buf[:] = b"\0" * 32
    os.set_inheritable(result_fd, False)
    state = {"seq": 0, "closed": False}

    def send(kind: str, body: dict[str, Any]) -> None:
        if state["closed"]:
            raise RuntimeError("the result channel is closed")
        payload = json.dumps({"kind": kind, **body}).encode()
        seq = state["seq"]
        state["seq"] = seq + 1
        mac = signer.copy()
        mac.update(struct.pack(">I", seq) + payload)
        view = memoryview(MAGIC + struct.pack(">II", seq, len(payload)) + mac.digest() + payload)
        while view:
            view = view[os.write(result_fd, view):]
        if kind == "final":
            state["closed"] = True
            os.close(result_fd)

    return send


class _Collector:
    """A pytest plugin object: per-test outcomes straight from pytest's hooks, streamed."""

    def __init__(self, cov: Any) -> None:
        self._cov = cov
        self.collected: list[str] = []
        self.collect_errors: list[dict[str, Any]] = []
        self.collect_skipped: list[dict[str, Any]] = []
        self.cases: dict[str, dict[str, Any]] = {}
        self.exit_status: int | None = None
        self.current: str | None = None
        self.passes: dict[str, int] = defaultdict(int)
        self.checks: dict[str, int] = defaultdict(int)
        self.explained: dict[str, int] = defaultdict(int)

    # -- collection ---------------------------------------------------------
    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors.append({"nodeid": report.nodeid or "<collection>",
                                        "message": _longrepr(report)})
        elif report.skipped:
            self.collect_skipped.append({"nodeid": report.nodeid or "<collection>",
                                         "message": _longrepr(report)})

    def pytest_collection_finish(self, session: Any) -> dict[str, Any]:
        self.collected = [str(item.nodeid) for item in session.items]
        return {"nodeids": self.collected}

    # -- each test ------------------------------------------------------------
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.current = nodeid
        self._cov.switch_context(TEST_CONTEXT + nodeid)

    def pytest_assertion_pass(self, item: Any, lineno: int, orig: str, expl: str) -> None:
        if self.current is not None:
            self.passes[self.current] += 1

    def count_check(self) -> None:
        """A pytest.raises / pytest.warns / unittest assert* that held."""
        if self.current is not None:
            self.checks[self.current] += 1

    def count_explained(self) -> None:
        """A rewritten assert built its message: it passed (hook follows) or it failed."""
        if self.current is not None:
            self.explained[self.current] += 1

    def pytest_runtest_logreport(self, report: Any) -> None:
        case = self.cases.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": None,
                                                      "duration_seconds": 0.0, "message": None})
        case["duration_seconds"] += float(getattr(report, "duration", 0.0) or 0.0)
        wasxfail = hasattr(report, "wasxfail")
        if report.when == "call":
            if report.passed:
                case["outcome"] = "xpassed" if wasxfail else "passed"
            elif report.skipped:
                case["outcome"] = "xfailed" if wasxfail else "skipped"
            else:
                case["outcome"] = "failed"
                case["message"] = _longrepr(report)
        elif report.failed:  # setup or teardown error
            case["outcome"] = "error"
            case["message"] = f"error in {report.when}: " + _longrepr(report)
        elif report.skipped and case["outcome"] is None:
            case["outcome"] = "xfailed" if wasxfail else "skipped"

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> dict[str, Any]:
        self._cov.switch_context(OUTSIDE_CONTEXT)
        self.current = None
        case = self.cases.setdefault(nodeid, {"nodeid": nodeid, "outcome": None,
                                              "duration_seconds": 0.0, "message": None})
        passes = self.passes.get(nodeid, 0)
        case["assertions"] = passes + self.checks.get(nodeid, 0)
        case["failed_assertions"] = max(0, self.explained.get(nodeid, 0) - passes)
        case["duration_seconds"] = round(case["duration_seconds"], 6)
        return {"case": case}

    def pytest_sessionfinish(self, session: Any, exitstatus: Any) -> None:
        self.exit_status = int(exitstatus)


def _longrepr(report: Any) -> str:
    try:
        text = str(report.longreprtext)
    except Exception:  # noqa: BLE001 - never let a hostile repr break reporting
        text = "<unprintable>"
    return text[-4000:]


# -- assertions the hook does not see ------------------------------------------------


class _Counted:
    """A context manager around pytest.raises/warns that counts a check when it held."""

    def __init__(self, inner: Any, on_held: Any, suppresses: bool) -> None:
        self._inner, self._on_held, self._suppresses = inner, on_held, suppresses

    def __enter__(self) -> Any:
        return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        result = self._inner.__exit__(*exc)  # raises when the expectation failed
        if (result if self._suppresses else exc[0] is None):
            self._on_held()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _instrument(pytest: Any, collector: _Collector) -> None:
    """Count pytest.raises/warns, unittest asserts and failed rewritten asserts (trusted wrappers)."""
    import unittest

    import _pytest.assertion.rewrite as rewrite

    def checked(original: Any, suppresses: bool) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
                return _Counted(result, collector.count_check, suppresses)
            collector.count_check()  # the function form returned: the expectation held
            return result
        wrapper.__doc__ = original.__doc__
        wrapper.__name__ = getattr(original, "__name__", "wrapper")
        return wrapper

    pytest.raises = checked(pytest.raises, True)
    pytest.warns = checked(pytest.warns, False)

    explain = rewrite._format_explanation

    def format_explanation(*args: Any, **kwargs: Any) -> Any:
        collector.count_explained()
        return explain(*args, **kwargs)

    rewrite._format_explanation = format_explanation

    def held(method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            collector.count_check()
            return result
        wrapper.__name__ = method.__name__
        return wrapper

    for name in dir(unittest.TestCase):
        if name.startswith("assert"):
            method = getattr(unittest.TestCase, name)
            if callable(method):
                setattr(unittest.TestCase, name, held(method))


# -- coverage by the harness's rules ---------------------------------------------------


def function_body_lines(source: str) -> set[int]:
    """Lines inside function bodies (any depth). Module and class bodies run at import."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first, last = node.body[0], node.body[-1]
            lines.update(range(first.lineno, (last.end_lineno or last.lineno) + 1))
        elif isinstance(node, ast.Lambda):
            lines.update(range(node.body.lineno, (node.body.end_lineno or node.body.lineno) + 1))
    return lines


def measure(data: Any, skill_dir: str, sources: list[str], passed: set[str]) -> tuple[dict, dict]:
    """(coverage summary, line_tests) from raw coverage data, by the harness's rules only.

    Every source file counts, imported or not. Statements are those inside function
    bodies; a statement is covered when it ran while a test ran (context ``T:<id>``);
    nothing is excluded (no pragma, no stub, no TYPE_CHECKING rule applies).
    """
    from coverage.parser import PythonParser

    keep = ("covered_lines", "num_statements", "num_branches", "covered_branches",
            "missing_branches", "percent_covered")
    files: dict[str, Any] = {}
    line_tests: dict[str, dict[str, list[str]]] = {}
    totals = dict.fromkeys(keep[:-1], 0)
    data.set_query_contexts(["^" + TEST_CONTEXT])
    for rel in sources:
        path = os.path.realpath(os.path.join(skill_dir, rel))
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        parser = PythonParser(text=text, filename=path, exclude=None)
        parser.parse_source()
        body = function_body_lines(text)
        statements = {line for line in parser.statements if line in body}
        executed = parser.translate_lines(data.lines(path) or [])
        covered = statements & executed
        exits = parser.exit_counts()
        branch_lines = {line for line in statements if exits.get(line, 0) > 1}
        possible = {arc for arc in parser.arcs() if arc[0] in branch_lines}
        taken = parser.translate_arcs(data.arcs(path) or []) if data.has_arcs() else set()
        hit = possible & set(taken)
        summary = {
            "covered_lines": len(covered), "num_statements": len(statements),
            "num_branches": len(possible), "covered_branches": len(hit),
            "missing_branches": len(possible) - len(hit),
        }
        summary["percent_covered"] = (100.0 * len(covered) / len(statements)) if statements else 100.0
        files[rel] = {"summary": summary, "missing_lines": sorted(statements - executed),
                      # the lines where a branch was never taken (each missed arc's source line)
                      "missing_branch_lines": sorted({arc[0] for arc in possible - hit})}
        for key in totals:
            totals[key] += summary[key]
        by_line: dict[str, list[str]] = {}
        for line, contexts in sorted(data.contexts_by_lineno(path).items()):
            tests = sorted({c[len(TEST_CONTEXT):] for c in contexts
                            if c.startswith(TEST_CONTEXT) and c[len(TEST_CONTEXT):] in passed})
            if tests and line > 0:
                by_line.setdefault(str(parser.first_line(line)), [])
                by_line[str(parser.first_line(line))] = sorted(
                    set(by_line[str(parser.first_line(line))]) | set(tests))
        line_tests[rel] = by_line
    data.set_query_contexts(None)
    totals["percent_covered"] = (100.0 * totals["covered_lines"] / totals["num_statements"]
                                 if totals["num_statements"] else 100.0)
    return {"files": files, "totals": totals, "rules": "harness: function bodies, test contexts, "
                                                       "no exclusions"}, line_tests


def check_entrypoint(entrypoint: str, skill_dir: str, sources: list[str], data: Any,
                     passed: set[str]) -> dict[str, Any]:
    """Does ``module:attr`` resolve to a callable defined in the skill, run by a passing test?"""
    import importlib

    result: dict[str, Any] = {"name": entrypoint, "resolved": False, "problem": None,
                              "tested_by": []}
    module_name, _, attr = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        result["problem"] = f"{module_name!r} has no attribute {attr!r}"
        return result
    except BaseException as exc:  # noqa: BLE001 - the skill's import may raise anything
        result["problem"] = f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"[:500]
        return result
    if not callable(target):
        result["problem"] = f"{entrypoint!r} is a {type(target).__name__}, not a callable"
        return result
    code = getattr(target, "__code__", None)
    if code is None and isinstance(target, type):
        for name in ("__init__", "__call__", "__new__"):
            code = getattr(getattr(target, name, None), "__code__", None)
            if code is not None:
                break
    if code is None:
        # the code of a callable instance's __call__ (not a callability test)
        code = getattr(getattr(target, "__call__", None), "__code__", None)  # noqa: B004
    result["resolved"] = True
    if code is None:
        result["problem"] = "the entrypoint is not a Python function: the harness cannot tell it ran"
        return result
    path = os.path.realpath(code.co_filename)
    rel = os.path.relpath(path, os.path.realpath(skill_dir))
    if rel not in sources:
        result["problem"] = f"the entrypoint's code is not in a module of the skill ({rel})"
        return result
    lines = {line for _, _, line in code.co_lines() if line}
    body = (lines - {code.co_firstlineno}) or lines
    data.set_query_contexts(["^" + TEST_CONTEXT])
    tested: set[str] = set()
    for line, contexts in data.contexts_by_lineno(path).items():
        if line in body:
            tested.update(c[len(TEST_CONTEXT):] for c in contexts if c.startswith(TEST_CONTEXT))
    data.set_query_contexts(None)
    result["tested_by"] = sorted(tested & passed)
    return result


def _plugin(collector: _Collector, send: Any) -> Any:
    """The object pytest sees: hook functions only. The signer lives in their closures,
    so no attribute of any object reachable through pytest's public API holds it."""
    def pytest_collection_finish(session: Any) -> None:
        send("collected", collector.pytest_collection_finish(session))

    def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
        send("case", collector.pytest_runtest_logfinish(nodeid, location))

    def pytest_assertion_pass(item: Any, lineno: int, orig: str, expl: str) -> None:
        collector.pytest_assertion_pass(item, lineno, orig, expl)

    hooks = _Hooks()
    hooks.__dict__.update(
        pytest_collection_finish=pytest_collection_finish,
        pytest_runtest_logfinish=pytest_runtest_logfinish,
        pytest_assertion_pass=pytest_assertion_pass,
        # bound methods of the collector, which holds outcomes, never the signer
        pytest_collectreport=collector.pytest_collectreport,
        pytest_runtest_logstart=collector.pytest_runtest_logstart,
        pytest_runtest_logreport=collector.pytest_runtest_logreport,
        pytest_sessionfinish=collector.pytest_sessionfinish,
    )
    return hooks


class _Hooks:
    """A plain, hashable holder of hook functions (pytest registers it as the plugin)."""


def _warm() -> None:
    """Import what every run imports, before the job (and so any submitted file) exists."""
    import importlib

    import coverage  # noqa: F401
    import coverage.parser  # noqa: F401
    import pytest  # noqa: F401
    from _pytest.config import default_plugins

    for name in default_plugins:
        try:
            importlib.import_module(f"_pytest.{name}")
        except ImportError:
            pass


def _read_job(job_fd: int) -> dict[str, Any]:
    chunks = []
    while True:
        chunk = os.read(job_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(job_fd)
    if not chunks:
        raise SystemExit(0)  # no job: the evaluation had no dynamic phase
    return json.loads(b"".join(chunks))


def main() -> None:
    _warm()
    config = _read_job(int(sys.argv[3]))
    finish = _start(int(sys.argv[1]), int(sys.argv[2]), config)
    finish(config)


def _start(key_fd: int, result_fd: int, config: dict[str, Any]) -> Any:
    """Everything before submitted code runs, then pytest; returns ``finish(config)``.

    While tests run, this frame holds no key, no signer and no fd (``del`` below).
    """
    send = _open_channel(key_fd, result_fd)

    import coverage
    import pytest

    skill_dir = config["skill_dir"]
    sys.path.append(skill_dir)  # appended: stdlib and the toolchain always win
    cov = coverage.Coverage(
        data_file=None,
        branch=True,
        source=[skill_dir],
        omit=[os.path.join(skill_dir, t) for t in config["tests"]],
        config_file=False,
    )
    # Not used for the numbers (measure() parses with no exclusions at all), but
    # nothing coverage itself reports may honour the default exclusions either.
    for option in ("report:exclude_lines", "report:exclude_also", "report:partial_branches",
                   "report:partial_also"):
        cov.set_option(option, [])
    cov.config.partial_always_list = []
    collector = _Collector(cov)
    plugin = _plugin(collector, send)
    finish = _finisher(collector, cov, send)
    del send, key_fd, result_fd  # this frame is on the stack while tests run
    _instrument(pytest, collector)
    args = [
        "-c", os.path.join(os.path.dirname(__file__), "pytest.ini"),
        "--rootdir", skill_dir,
        "--import-mode=importlib",
        "--noconftest",
        "-p", "no:cacheprovider",
        "-p", "no:pytester",
        "--basetemp", "/tmp/pytest",
        "-q", "-rfE", "--color=no",
        # tee: what tests print also reaches the harness's capped pipe at once, so
        # an output flood is stopped by the cap instead of filling pytest's buffer
        "--capture=tee-sys",
        *config["tests"],
    ]
    hide_command_line()  # pytest is given its arguments: sys.argv is the skill's to see
    started = time.monotonic()
    cov.start()
    cov.switch_context(OUTSIDE_CONTEXT)
    try:
        pytest_exit = int(pytest.main(args, plugins=[plugin]))
    finally:
        cov.stop()
    return finish(time.monotonic() - started, pytest_exit)


def _finisher(collector: _Collector, cov: Any, send: Any) -> Any:
    def finish(seconds: float, pytest_exit: int) -> Any:
        return lambda config: _finish_with(collector, cov, send, config, seconds, pytest_exit)
    return finish


def _finish_with(collector: _Collector, cov: Any, send: Any, config: dict[str, Any],
                 seconds: float, pytest_exit: int) -> None:
    # Whatever submitted code left running dies now, before results are built (all but the
    # harness's warm mutation server, which the harness names; the harness kills again after).
    keep = config.get("keep_pid")
    kill_all_but(keep if isinstance(keep, int) and keep > 1 else None)
    skill_dir = config["skill_dir"]
    tests = set(config["tests"])
    sources = config.get("sources")
    if sources is None:
        sources = sorted(
            os.path.relpath(os.path.join(root, name), skill_dir)
            for root, _, names in os.walk(skill_dir) for name in names if name.endswith(".py"))
        sources = [s for s in sources if s not in tests]
    passed = {nodeid for nodeid, case in collector.cases.items() if case.get("outcome") == "passed"}
    data = cov.get_data()
    try:
        coverage_json, line_tests = measure(data, skill_dir, sources, passed)
    except Exception as exc:  # noqa: BLE001 - reported, fails the coverage gate closed
        coverage_json, line_tests = {"error": f"{type(exc).__name__}: {exc}"}, {}
    entrypoint = None
    if config.get("entrypoint"):
        try:
            entrypoint = check_entrypoint(config["entrypoint"], skill_dir, sources, data, passed)
        except Exception as exc:  # noqa: BLE001
            entrypoint = {"name": config["entrypoint"], "resolved": False, "tested_by": [],
                          "problem": f"the entrypoint check failed: {type(exc).__name__}: {exc}"}
    exit_status = collector.exit_status
    result = {
        "coverage": coverage_json,
        "line_tests": line_tests,
        "entrypoint": entrypoint,
        "collected": len(collector.collected),
        "collect_errors": collector.collect_errors,
        "collect_skipped": collector.collect_skipped,
        "cases": [collector.cases[n] for n in collector.cases],
        "exit_status": exit_status if exit_status is not None else pytest_exit,
        "seconds": seconds,
    }
    send("final", result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no atexit hook or finaliser of submitted code runs after the final frame


if __name__ == "__main__":
    main()
