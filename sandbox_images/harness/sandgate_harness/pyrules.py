"""Static phase, part 2: allow-list rules over the syntax tree CPython itself builds.

semgrep's patterns are deny lists of spellings; these rules judge what the
interpreter will actually run (``ast.parse`` of the stored bytes, identifiers
already NFKC-normalised by the parser) and are written as ALLOW lists:

- ``pytest-api-allowlist`` (critical): of pytest, only the documented testing
  API (:data:`PYTEST_ALLOWED`); of the ``request`` fixture only ``param`` and a
  few helpers; no ``pytestconfig``/``pytester``/``cache``/``record_*`` fixtures;
  ``pytest.raises`` results only for ``value``/``type``/``match``...; the
  ``pytest`` module, ``request`` and ``ExceptionInfo`` objects never passed
  around as values; ``skipif``/``xfail`` conditions never strings (pytest
  evaluates those); no ``unittest.TestCase.run`` overrides in test files; the
  allowed API itself never patched (``monkeypatch``/``mock.patch`` targets,
  attribute assignment, ``sys.modules["pytest"]``).
- ``toolchain-module`` (critical): ``_pytest``, ``pluggy``, ``coverage``, ...
  are never imported or named, not even as a string target of
  ``monkeypatch.setattr``/``mock.patch``.
- ``frame-introspection`` (critical): whole API families that reach frames,
  code objects or the interpreter's tracing state: ``inspect``, ``gc``,
  ``dis``, ``faulthandler``, ``ctypes``/``cffi``, ``sys._*`` and the tracing
  hooks, ``traceback`` beyond its formatting functions, and any ``f_*`` /
  ``tb_*`` / ``gi_*`` / ``cr_*`` / ``ag_*`` / ``co_*`` attribute.
- ``dunder-access`` (high): dunder attributes and names outside the data model
  (``__dict__``, ``__globals__``, ``__code__``, ``__subclasses__``, ``__mro__``,
  ``__builtins__``, ...), also inside ``str.format`` fields.
- ``computed-name-reflection`` (high): every sink that takes a NAME must take a
  literal: ``getattr``/``setattr``/``delattr``, ``monkeypatch.setattr``,
  ``mock.patch``, ``attrgetter``/``methodcaller``, ``import_module``,
  ``sys.modules[...]``; ``vars()``/``globals()``/``locals()``/``__import__``/
  ``breakpoint()``; reflective builtins and ``sys``/``builtins`` used as values;
  ``.format`` on a computed format string. Decoding names (base64, rot13,
  ``[::-1]``) is therefore pointless: no sink accepts the result.
- ``code-loading`` (high): running code that is not a scanned ``.py`` file
  (``runpy``, ``code``, ``importlib.util``/``machinery``, ``zipimport``,
  ``pkgutil``, ``pydoc``, ``logging.config``, ``types.CodeType``, ``timeit``
  of anything but a lambda or a function of the file, ``typing.get_type_hints``,
  ``tkinter``, SQLite's ``load_extension``).
- ``private-module-attribute`` (high): ``_private`` names of modules that are
  not the skill's own.
- ``environment-probe`` (high) / ``environment-query`` (medium): asking what
  machine, user or interpreter the code runs on (``sys.flags``, hostname,
  ``os.uname``, uids, container marker files) / sizing itself to it
  (``os.cpu_count``, ``resource``, ``platform.*``, ``isatty``, ...).

The names in a finding are what the code says; severities are ours. Nothing
submitted is imported or run here.
"""

from __future__ import annotations

import ast
import builtins as _builtins
import os
import re
import time
from typing import Any

__all__ = ["RULES", "check_source", "run_pyrules"]

RULES: dict[str, tuple[str, str, str]] = {
    "pytest-api-allowlist": (
        "critical", "harness-tampering",
        "Generated code may use only pytest's documented testing API: plain assert, "
        "pytest.raises/approx/warns/deprecated_call/fail/skip/xfail/param/fixture, "
        "pytest.mark.<marker> (skipif/xfail with a boolean condition, never a string), "
        "the fixtures tmp_path, monkeypatch, capsys, capfd, caplog, recwarn and request.param. "
        "Everything else of pytest (its classes, config, session, plugin manager, nodes, "
        "tracebacks) can rewrite the verdict, and so can patching that API itself "
        "(monkeypatch.setattr(pytest, ...), mock.patch(\"pytest.approx\"), pytest.raises = ...)."),
    "toolchain-module": (
        "critical", "harness-tampering",
        "The test toolchain (_pytest, pluggy, coverage, pytest_cov, pytest_timeout, py, "
        "iniconfig, semgrep) measures the skill; code under test must not import, name or "
        "patch it. Remove the reference."),
    "frame-introspection": (
        "critical", "harness-tampering",
        "Frame, code-object and tracer introspection (inspect, gc, dis, faulthandler, "
        "ctypes, sys._getframe and other sys._*, sys.settrace/setprofile/monitoring, "
        "traceback stack walking, f_*/tb_*/gi_*/co_* attributes) reaches the variables of "
        "the test runner and can forge its result. Skills never need it: pass data "
        "explicitly; traceback.format_exc() is fine."),
    "dunder-access": (
        "high", "dynamic-code",
        "Dunder attributes outside Python's data model (__dict__, __globals__, __code__, "
        "__closure__, __subclasses__, __mro__, __bases__, __builtins__, __self__, "
        "__traceback__, ...) are reflection that hides what the code really reaches. "
        "Use the object's normal attributes; __name__, __class__, __doc__, __init__, "
        "operator methods and friends are fine."),
    "computed-name-reflection": (
        "high", "dynamic-code",
        "A name is looked up at run time (getattr/setattr/delattr/monkeypatch.setattr/"
        "mock.patch/attrgetter/import_module/sys.modules with a non-literal name, "
        "vars()/globals()/locals()/__import__/breakpoint(), a reflective builtin or "
        "the sys/builtins module passed around as a value, .format on a computed "
        "template). The static policy cannot see what such code reaches. Spell the "
        "attribute, module or key as a literal, or dispatch through a dict you build."),
    "code-loading": (
        "high", "dynamic-code",
        "Runs code that is not an ordinary, scanned import: runpy, code/codeop, "
        "importlib.util/machinery/abc, zipimport, pkgutil, pydoc.locate, logging.config, "
        "types.CodeType, timeit of anything but a lambda or a function of the file, "
        "typing.get_type_hints (which evaluates annotation strings), tkinter (Tcl's eval), "
        "SQLite extensions. Data files of a submission are never scanned, so "
        "executing them bypasses every check. Import your modules normally."),
    "private-module-attribute": (
        "high", "dynamic-code",
        "Uses a private (_underscore) name of a module that is not part of the skill. "
        "Private internals of the standard library and the toolchain are not an API; "
        "use the public functions."),
    "environment-probe": (
        "high", "environment-sniffing",
        "Asks which machine, user or interpreter mode the code runs in (sys.flags, "
        "hostname, os.uname, platform.node, uid/gid/login, the MAC address, the __main__ module, "
        "container marker files such as /.dockerenv, the sandbox's /work tree). A skill that can "
        "tell the sandbox from production can behave well only under test. Make the behaviour "
        "unconditional."),
    "environment-query": (
        "medium", "environment-sniffing",
        "Sizes itself to the environment (os.cpu_count, sched_getaffinity, resource "
        "limits, load average, disk usage, platform details, interpreter paths, isatty, "
        "terminal size). Under test this differs from production; take such values as "
        "parameters with a fixed default."),
    "static-scan-incomplete": (
        "critical", "static-scan",
        "A submitted Python file could not be scanned completely, so nothing about it is "
        "known. The submission fails closed."),
}

# --------------------------------------------------------------------------- tables

#: top-level attributes of ``pytest`` a skill may use
PYTEST_ALLOWED = frozenset({
    "raises", "approx", "warns", "deprecated_call", "fail", "skip", "xfail", "param",
    "fixture", "mark", "MonkeyPatch",
    # type annotations of the allowed fixtures
    "FixtureRequest", "CaptureFixture", "LogCaptureFixture", "TempPathFactory",
    "WarningsRecorder", "ExceptionInfo", "RaisesGroup", "RaisesExc",
})
#: attributes of the ``request`` fixture a test may read
REQUEST_ALLOWED = frozenset({"param", "getfixturevalue", "addfinalizer", "fixturename", "scope"})
#: attributes of an ``ExceptionInfo`` (``with pytest.raises(...) as info``)
EXCINFO_ALLOWED = frozenset({"value", "type", "typename", "match", "errisinstance",
                             "group_contains", "exconly"})
#: built-in fixtures that reach pytest's configuration, session, cache or reports
BLOCKED_FIXTURES = frozenset({"pytestconfig", "pytester", "testdir", "cache", "record_property",
                              "record_xml_attribute", "record_testsuite_property",
                              "doctest_namespace"})

TOOLCHAIN = frozenset({"_pytest", "pluggy", "coverage", "pytest_cov", "pytest_timeout", "py",
                       "iniconfig", "semgrep", "sandgate", "sandgate_harness"})
FRAME_MODULES = frozenset({"inspect", "gc", "dis", "faulthandler", "ctypes", "_ctypes", "cffi",
                           "_testcapi", "_testinternalcapi", "_xxsubinterpreters", "tracemalloc"})
SYS_FRAME = frozenset({"settrace", "setprofile", "gettrace", "getprofile", "monitoring",
                       "addaudithook", "audit", "call_tracing", "last_traceback", "last_value",
                       "last_type", "last_exc", "excepthook", "displayhook", "unraisablehook",
                       "breakpointhook", "activate_stack_trampoline", "remote_exec"})
THREADING_FRAME = frozenset({"settrace", "setprofile", "settrace_all_threads",
                             "setprofile_all_threads", "gettrace", "getprofile"})
TRACEBACK_ALLOWED = frozenset({"format_exc", "format_exception", "format_exception_only",
                               "print_exc", "print_exception"})
CODE_LOADING_MODULES = frozenset({"runpy", "code", "codeop", "zipimport", "pkgutil", "pydoc",
                                  "imp", "importlib.util", "importlib.machinery", "importlib.abc",
                                  "importlib._bootstrap", "importlib._bootstrap_external",
                                  "logging.config", "importlib.metadata", "doctest", "pdb", "bdb",
                                  "trace", "profile", "cProfile", "rlcompleter", "compileall",
                                  "py_compile", "tkinter", "_tkinter"})
#: attributes that load native code whatever object they are on (sqlite3's connections)
NATIVE_LOADING_ATTRS = frozenset({"load_extension", "enable_load_extension"})
CODE_LOADING_NAMES = frozenset({"importlib.reload", "types.CodeType", "typing.get_type_hints"})
PROBE_NAMES = frozenset({
    "sys.flags", "socket.gethostname", "socket.getfqdn", "platform.node", "platform.uname",
    "os.uname", "os.getuid", "os.geteuid", "os.getgid", "os.getegid", "os.getresuid",
    "os.getresgid", "os.getgroups", "os.getlogin", "os.getppid", "os.getpgrp", "os.getpgid",
    "os.getsid", "os.ctermid", "getpass.getuser", "uuid.getnode",
})
#: ``__main__`` is the program that imported the skill: under test, the harness's runner
PROBE_MODULES = frozenset({"pwd", "grp", "spwd", "__main__"})
#: container marker files, and the sandbox's own working tree (``/work/skill``): naming them asks
#: "am I under test?" (a production consumer loads the skill from elsewhere)
PROBE_PATHS = re.compile(r"^/(\.dockerenv|run/\.containerenv|\.containerenv|work(/.*)?)$")
QUERY_NAMES = frozenset({
    "os.cpu_count", "os.process_cpu_count", "os.sched_getaffinity", "os.getloadavg",
    "os.statvfs", "os.isatty", "os.get_terminal_size", "shutil.disk_usage",
    "shutil.get_terminal_size", "multiprocessing.cpu_count", "sys.executable", "sys.prefix",
    "sys.base_prefix", "sys.exec_prefix", "sys.base_exec_prefix",
})
#: modules whose every use is a query; of ``platform`` every attribute (``import platform`` alone is fine)
QUERY_MODULES = frozenset({"resource", "psutil"})

#: dunder attributes of the data model: defined by classes and called on them
DATA_MODEL = frozenset("""
__name__ __qualname__ __doc__ __module__ __class__ __init__ __new__ __post_init__
__init_subclass__ __set_name__ __repr__ __str__ __bytes__ __format__ __hash__ __bool__
__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __len__ __length_hint__ __iter__ __next__
__reversed__ __contains__ __getitem__ __setitem__ __delitem__ __missing__ __call__
__add__ __sub__ __mul__ __matmul__ __truediv__ __floordiv__ __mod__ __divmod__ __pow__
__lshift__ __rshift__ __and__ __xor__ __or__ __radd__ __rsub__ __rmul__ __rmatmul__
__rtruediv__ __rfloordiv__ __rmod__ __rdivmod__ __rpow__ __rlshift__ __rrshift__ __rand__
__rxor__ __ror__ __iadd__ __isub__ __imul__ __imatmul__ __itruediv__ __ifloordiv__ __imod__
__ipow__ __ilshift__ __irshift__ __iand__ __ixor__ __ior__ __neg__ __pos__ __abs__
__invert__ __complex__ __int__ __float__ __index__ __round__ __trunc__ __floor__ __ceil__
__setattr__ __delattr__ __getattr__ __dir__ __sizeof__ __copy__ __deepcopy__
__slots__ __annotations__ __members__ __version__ __all__ __file__ __cause__ __context__
__suppress_context__ __notes__ __await__ __aiter__ __anext__ __fspath__ __class_getitem__
""".split())
#: dunder NAMES (not attributes) code may use
DUNDER_NAMES = frozenset({"__name__", "__main__", "__file__", "__doc__", "__debug__", "__all__", "__version__",
                          "__author__", "__slots__", "__qualname__", "__module__", "__class__",
                          "__annotations__", "__package__", "__path__"})
FRAME_ATTR = re.compile(
    r"^(f_(back|builtins|code|globals|locals|lasti|lineno|trace|trace_lines|trace_opcodes|"
    r"generator)|tb_(frame|next|lasti|lineno)|(gi|cr|ag)_(frame|code|await|yieldfrom|running|"
    r"suspended)|co_[a-z_]+)$")
DUNDER = re.compile(r"^__\w+__$")
#: a format field that walks attributes: "{0.__globals__}", "{x.f_back}"
FORMAT_WALK = re.compile(r"\{[^{}]*?[.\[]\s*(__\w+__|f_\w+|tb_\w+|gi_\w+|cr_\w+|ag_\w+|co_\w+)")
TOOLCHAIN_STRING = re.compile(
    r"^(_pytest|pluggy|coverage|pytest_cov|pytest_timeout|py|iniconfig)(\.[A-Za-z_]\w*)+$"
    r"|^(_pytest|pluggy|pytest_cov|pytest_timeout)$")
PYTEST_STRING = re.compile(r"^pytest(\.[A-Za-z_]\w*)+$")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: reflective builtins: only ever called directly, with literal names where they take one
REFLECTIVE = frozenset({"getattr", "setattr", "delattr", "hasattr", "vars", "globals", "locals",
                        "__import__", "eval", "exec", "compile", "breakpoint"})
#: modules that may only be the base of an attribute access, never a value
VALUE_RESTRICTED = frozenset({"sys", "builtins", "pytest", "importlib", "os"})
TESTCASE_OVERRIDES = frozenset({"run", "debug", "__call__", "doCleanups", "defaultTestResult",
                                "_callSetUp", "_callTestMethod", "_callTearDown", "_callCleanup",
                                "_addSkip", "_feedErrorsToResult"})
UNITTEST_PRIVATE = frozenset({"_outcome", "_feedErrorsToResult", "_addSkip", "_callTestMethod"})
TEST_FILE = re.compile(r"^(test_.*|.*_test)\.py$")
#: pytest's private holders of its items, config and session (``caplog._item.config``)
PYTEST_PRIVATE = frozenset({"_item", "_pyfuncitem", "_config", "_session", "_node", "_request",
                            "_fixturemanager", "_fixturedef", "_arg2fixturedefs", "_excinfo",
                            "_store", "_hookexec", "_inner_hookexec", "_hookimpls", "_plugins",
                            "_name2plugin", "_trace", "_capture", "_global_capturing"})
#: callables the semgrep rules judge at their call site: passing them around hides the call
DANGEROUS_VALUE = re.compile(
    r"^(os\.(system|popen|exec\w*|spawn\w*|posix_spawnp?|fork|forkpty|kill|killpg|abort|_exit|"
    r"dup2|closerange|write|fdopen|close)|posix\.\w+|subprocess\.\w+|pty\.\w+|"
    r"signal\.(signal|alarm|setitimer|pthread_kill|raise_signal)|shutil\.rmtree|sys\.exit|"
    r"builtins\.(exit|quit)|atexit\.register)$")
_BUILTIN_NAMES = frozenset(dir(_builtins))


def is_test_file(path: str) -> bool:
    return bool(TEST_FILE.match(path.rsplit("/", 1)[-1]))


# --------------------------------------------------------------------------- the checker


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, tree: ast.Module, own: frozenset[str]) -> None:
        self.path = path
        self.own = own
        self.test_file = is_test_file(path)
        self.findings: dict[tuple[str, int], dict[str, Any]] = {}
        self.aliases: dict[str, str] = {}
        self.bound: set[str] = set()
        self.str_names: dict[str, bool] = {}  # name -> only ever bound to str literals
        self.excinfo: set[str] = set()
        self.parents: dict[int, ast.AST] = {}
        self.param_names: set[str] = set()
        self.docstrings: set[int] = set()
        self.exempt_values: set[int] = set()  # nodes passed as the object of a literal setattr
        self.functions: set[str] = set()  # names bound by def statements
        self.rebound: set[str] = set()  # names also bound otherwise (assigned, a parameter, imported)
        self._prepare(tree)
        self.rebound |= set(self.aliases)
        #: where pytest hands objects to the code: test files, and any file importing pytest
        self.pytest_context = self.test_file or any(
            q == "pytest" or q.startswith("pytest.") for q in self.aliases.values())
        self.params: set[str] = set()

    # -- preparation -------------------------------------------------------------------

    def _prepare(self, tree: ast.Module) -> None:
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[id(child)] = parent
            if isinstance(parent, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                body = parent.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    self.docstrings.add(id(body[0].value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom):
                if node.level or not node.module:
                    continue
                for a in node.names:
                    if a.name != "*":
                        self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.bound.add(node.name)
                if not isinstance(node, ast.ClassDef):
                    self.functions.add(node.name)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
                self.rebound.add(node.arg)
                if node.arg not in ("self", "cls"):
                    self.param_names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.bound.add(node.id)
                self.rebound.add(node.id)
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        literal = isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                        self.str_names[target.id] = self.str_names.get(target.id, True) and literal
                        if self._is_call_to(node.value, "pytest.raises") and len(node.targets) == 1:
                            self.excinfo.add(target.id)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if self._is_call_to(item.context_expr, "pytest.raises") \
                            and isinstance(item.optional_vars, ast.Name):
                        self.excinfo.add(item.optional_vars.id)
        for name in self.aliases:
            self.bound.discard(name)

    # -- helpers ---------------------------------------------------------------------

    def qualify(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            if node.id not in self.bound and node.id in _BUILTIN_NAMES:
                return "builtins." + node.id
            return None
        if isinstance(node, ast.Attribute):
            base = self.qualify(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call) and self.qualify(node.func) == "builtins.getattr" \
                and len(node.args) >= 2 and _literal_str(node.args[1]) is not None:
            base = self.qualify(node.args[0])
            return f"{base}.{_literal_str(node.args[1])}" if base else None
        return None

    def _is_call_to(self, node: ast.AST, qualified: str) -> bool:
        return isinstance(node, ast.Call) and self.qualify(node.func) == qualified

    def report(self, rule: str, node: ast.AST, detail: str) -> None:
        line = getattr(node, "lineno", 0) or 0
        key = (rule, line)
        if key in self.findings:
            return
        severity, _category, message = RULES[rule]
        self.findings[key] = {"rule_id": rule, "severity": severity, "path": self.path,
                              "line": line, "message": f"{detail}. {message}"}

    def parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(id(node))

    # -- qualified names -------------------------------------------------------------------

    def check_qualified(self, q: str, node: ast.AST) -> None:
        parts = q.split(".")
        top = parts[0]
        if top in self.own:
            return
        if top in TOOLCHAIN:
            self.report("toolchain-module", node, f"`{q}` belongs to the test toolchain")
            return
        if top == "pytest":
            self._check_pytest(parts, node)
            return
        if top in FRAME_MODULES:
            self.report("frame-introspection", node, f"`{q}`: the {top} module is not allowed")
            return
        if top == "sys" and len(parts) > 1 and (parts[1] in SYS_FRAME or parts[1].startswith("_")
                                                 and not DUNDER.match(parts[1])):
            self.report("frame-introspection", node, f"`{q}`")
            return
        if top == "threading" and len(parts) > 1 and parts[1] in THREADING_FRAME:
            self.report("frame-introspection", node, f"`{q}`")
            return
        if top == "traceback" and len(parts) > 1 and parts[1] not in TRACEBACK_ALLOWED:
            self.report("frame-introspection", node,
                        f"`{q}`: of traceback only {', '.join(sorted(TRACEBACK_ALLOWED))} are allowed")
            return
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in CODE_LOADING_MODULES or prefix in CODE_LOADING_NAMES:
                self.report("code-loading", node, f"`{q}`")
                return
        if ".".join(parts[:2]) in PROBE_NAMES or top in PROBE_MODULES:
            self.report("environment-probe", node, f"`{q}`")
            return
        if ".".join(parts[:2]) in QUERY_NAMES or top in QUERY_MODULES or (top == "platform" and len(parts) > 1):
            self.report("environment-query", node, f"`{q}`")
            return
        if top != "builtins" and top != "__future__":
            for part in parts[1:]:
                if part.startswith("_") and not DUNDER.match(part):
                    self.report("private-module-attribute", node, f"`{q}` is private to {top}")
                    return

    def _check_pytest(self, parts: list[str], node: ast.AST) -> None:
        if len(parts) == 1:
            return
        name = parts[1]
        q = ".".join(parts)
        if name not in PYTEST_ALLOWED and not (name.endswith("Warning") and len(parts) == 2):
            self.report("pytest-api-allowlist", node, f"`{q}` is not part of the allowed testing API")
        elif name == "mark":
            if len(parts) >= 3 and parts[2].startswith("_") or len(parts) >= 4:
                self.report("pytest-api-allowlist", node, f"`{q}`: only pytest.mark.<marker>(...) is allowed")
        elif name == "MonkeyPatch":
            if len(parts) >= 3 and (parts[2] != "context" or len(parts) > 3):
                self.report("pytest-api-allowlist", node, f"`{q}`: only pytest.MonkeyPatch.context() is allowed")
        elif len(parts) >= 3:
            self.report("pytest-api-allowlist", node, f"`{q}` reaches into pytest's objects")

    def check_module_path(self, dotted: str, node: ast.AST) -> None:
        """A string naming a module attribute (``monkeypatch.setattr("a.b.c", ...)``, ``mock.patch``)."""
        self.check_qualified(dotted, node)

    def check_attr_name(self, name: str, node: ast.AST, base: ast.AST | None) -> None:
        """An attribute name (from ``x.name``, ``getattr(x, "name")``, ``setattr``, ``attrgetter``)."""
        if DUNDER.match(name) and name not in DATA_MODEL:
            self.report("dunder-access", node, f"`{name}`")
        if FRAME_ATTR.match(name):
            self.report("frame-introspection", node, f"`.{name}` is a frame/code/traceback attribute")
        if name in NATIVE_LOADING_ATTRS:
            self.report("code-loading", node, f"`.{name}` loads native code (an SQLite extension)")
        if name in UNITTEST_PRIVATE:
            self.report("pytest-api-allowlist", node, f"`.{name}` is unittest's result machinery")
        if self.pytest_context and name in PYTEST_PRIVATE:
            self.report("pytest-api-allowlist", node, f"`.{name}` holds pytest's items, config or session")
        if isinstance(base, ast.Name):
            if base.id in self.excinfo and name not in EXCINFO_ALLOWED:
                self.report("pytest-api-allowlist", node,
                            f"`{base.id}.{name}`: of a pytest.raises result only "
                            f"{', '.join(sorted(EXCINFO_ALLOWED))} are allowed")
            if self.pytest_context and name.startswith("_") and not DUNDER.match(name) \
                    and base.id in self.param_names:
                self.report("pytest-api-allowlist", node,
                            f"`{base.id}.{name}`: private attributes of an argument (pytest hands "
                            "its objects to tests as arguments) are not allowed here")
            if self.pytest_context and base.id == "request" and name not in REQUEST_ALLOWED:
                self.report("pytest-api-allowlist", node,
                            f"`request.{name}`: of the request fixture only "
                            f"{', '.join(sorted(REQUEST_ALLOWED))} are allowed")
        if isinstance(base, ast.Call) and self._is_call_to(base, "pytest.raises") \
                and name not in EXCINFO_ALLOWED:
            self.report("pytest-api-allowlist", node, f"`pytest.raises(...).{name}`")
        if base is not None:
            q = self.qualify(base)
            if q:
                self.check_qualified(f"{q}.{name}", node)

    # -- visitors ----------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.check_qualified(a.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        self.check_qualified(node.module, node)
        for a in node.names:
            if a.name == "*":
                if node.module.split(".")[0] in ("pytest", "sys", "builtins", "os", "importlib"):
                    self.report("computed-name-reflection", node,
                                f"`from {node.module} import *` hides which names are used")
            else:
                self.check_qualified(f"{node.module}.{a.name}", node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.check_attr_name(node.attr, node, node.value)
        if isinstance(node.ctx, (ast.Store, ast.Del)):  # `pytest.approx = ...`: a patch without monkeypatch
            self._check_patched(self.qualify(node.value), node)
        parent = self.parent(node)
        if isinstance(node.ctx, ast.Load) and not (isinstance(parent, ast.Call) and parent.func is node) \
                and not (isinstance(parent, ast.Attribute) and parent.value is node):
            q = self.qualify(node)
            if q and DANGEROUS_VALUE.match(q):
                self.report("computed-name-reflection", node, f"`{q}` is passed around as a value")
        if self.qualify(node) == "sys.modules":
            parent = self.parent(node)
            if not (isinstance(parent, ast.Subscript) and parent.value is node):
                self.report("computed-name-reflection", node,
                            "`sys.modules` is used as a mapping (only sys.modules[\"name\"] is allowed)")
        self.generic_visit(node)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            if self._is_call_to(item.context_expr, "pytest.raises") and item.optional_vars is not None \
                    and not isinstance(item.optional_vars, ast.Name):
                self.report("pytest-api-allowlist", node,
                            "bind a pytest.raises result to a plain name (`as excinfo`)")
        self.generic_visit(node)

    visit_AsyncWith = visit_With

    def visit_Name(self, node: ast.Name) -> None:
        if DUNDER.match(node.id) and node.id not in DUNDER_NAMES:
            self.report("dunder-access", node, f"the name `{node.id}`")
        if isinstance(node.ctx, ast.Load) and id(node) not in self.exempt_values:
            self._check_value_use(node)

    def _check_value_use(self, node: ast.Name) -> None:
        parent = self.parent(node)
        as_base = isinstance(parent, ast.Attribute) and parent.value is node
        as_callee = isinstance(parent, ast.Call) and parent.func is node
        q = self.qualify(node)
        if q and q.startswith("builtins.") and q[9:] in REFLECTIVE and not as_callee:
            self.report("computed-name-reflection", node, f"`{node.id}` is used as a value")
            return
        if as_base:
            return  # judged with the attribute, on its full name
        if as_callee:
            if q:
                self.check_qualified(q, node)
            return
        if q and DANGEROUS_VALUE.match(q):
            self.report("computed-name-reflection", node, f"`{q}` is passed around as a value")
        if q in VALUE_RESTRICTED:
            rule = "pytest-api-allowlist" if q == "pytest" else "computed-name-reflection"
            self.report(rule, node, f"the module `{q}` is used as a value")
            return
        if q:
            self.check_qualified(q, node)
        if self.pytest_context and node.id == "request" and q is None:
            self.report("pytest-api-allowlist", node, "the request fixture is passed around as a value")
        if node.id in self.excinfo:
            call = parent if isinstance(parent, ast.Call) else None
            if not (call and self.qualify(call.func) in ("builtins.str", "builtins.repr")):
                self.report("pytest-api-allowlist", node,
                            f"`{node.id}` (a pytest.raises result) is passed around as a value")

    def visit_arg(self, node: ast.arg) -> None:
        if self.pytest_context and node.arg in BLOCKED_FIXTURES:
            self.report("pytest-api-allowlist", node, f"the `{node.arg}` fixture is not allowed")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if self.test_file and any(_base_name(b).endswith("TestCase") for b in node.bases):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in TESTCASE_OVERRIDES:
                    self.report("pytest-api-allowlist", item,
                                f"`{node.name}.{item.name}` overrides how unittest reports the test")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, str) or id(node) in self.docstrings:
            return
        text = node.value
        if len(text) > 400:
            text = text[:400]
        if TOOLCHAIN_STRING.match(text):
            self.report("toolchain-module", node, f"the string {text!r} names the test toolchain")
        elif PYTEST_STRING.match(text):
            self.check_qualified(text, node)
        elif DOTTED.match(text) and "." in text:
            for part in text.split(".")[1:]:
                if DUNDER.match(part) and part not in DATA_MODEL:
                    self.report("dunder-access", node, f"the string {text!r}")
                if FRAME_ATTR.match(part):
                    self.report("frame-introspection", node, f"the string {text!r}")
        elif DUNDER.match(text) and text not in DATA_MODEL and text not in DUNDER_NAMES:
            self.report("dunder-access", node, f"the string {text!r}")
        elif FRAME_ATTR.match(text):
            self.report("frame-introspection", node, f"the string {text!r}")
        walk = FORMAT_WALK.search(text)
        if walk:
            rule = "dunder-access" if walk.group(1).startswith("__") else "frame-introspection"
            self.report(rule, node, f"the format field {walk.group(0)!r} walks attributes")
        if PROBE_PATHS.match(text):
            self.report("environment-probe", node, f"the path {text!r}")
        if self.pytest_context and text in BLOCKED_FIXTURES:
            self.report("pytest-api-allowlist", node, f"the `{text}` fixture is not allowed")

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                self.visit(value)
                if value.format_spec is not None:
                    self.visit(value.format_spec)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        q = self.qualify(node.value)
        if q == "sys.modules":
            key = _literal_str(node.slice)
            if key is not None:
                self.check_qualified(key, node)
                self._check_module_value(key, node)
            elif not (isinstance(node.slice, ast.Name) and node.slice.id == "__name__"):
                self.report("computed-name-reflection", node, "`sys.modules[...]` with a computed key")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fq = self.qualify(node.func)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if fq in ("builtins.getattr", "builtins.setattr", "builtins.delattr", "builtins.hasattr"):
            self._check_named(node, 0, 1, fq[9:], computed_ok=fq == "builtins.hasattr")
        elif fq in ("builtins.vars", "builtins.globals", "builtins.locals"):
            self.report("computed-name-reflection", node, f"`{fq[9:]}()` exposes a namespace by name")
        elif fq in ("builtins.__import__", "importlib.__import__", "builtins.breakpoint", "builtins.help"):
            self.report("computed-name-reflection", node, f"`{fq[9:] if fq.startswith('builtins.') else fq}()`")
        elif fq == "importlib.import_module":
            name = _literal_str(node.args[0]) if node.args else None
            if name is None:
                self.report("computed-name-reflection", node, "`import_module` with a computed name")
            else:
                self.check_qualified(name, node)
                self._check_module_value(name, node)
        elif fq in ("operator.attrgetter", "operator.methodcaller"):
            args = node.args if fq == "operator.attrgetter" else node.args[:1]
            for arg in args:
                name = _literal_str(arg)
                if name is None:
                    self.report("computed-name-reflection", node, f"`{fq}` with a computed name")
                else:
                    for part in name.split("."):
                        self.check_attr_name(part, node, None)
        elif fq in ("unittest.mock.patch", "mock.patch"):
            self._check_target(node)
        elif fq in ("unittest.mock.patch.multiple", "mock.patch.multiple") or (
                method == "multiple" and isinstance(node.func, ast.Attribute)
                and _base_name(node.func.value) == "patch"):
            target = node.args[0] if node.args else None
            self._check_patched(_literal_str(target) or (self.qualify(target) if target else None), node)
        elif fq in ("unittest.mock.patch.object", "mock.patch.object"):
            self._check_named(node, 0, 1, "patch.object")
        elif method in ("setattr", "delattr") and fq is None:
            # monkeypatch.setattr(obj, "name", v) / monkeypatch.setattr("mod.name", v)
            if node.args and _literal_str(node.args[0]) is not None:
                self._check_target(node)
            else:
                self._check_named(node, 0, 1, method)
        elif method == "object" and isinstance(node.func, ast.Attribute) \
                and _base_name(node.func.value) == "patch":
            self._check_named(node, 0, 1, "patch.object")
        elif isinstance(node.func, ast.Name) and node.func.id == "patch" and fq != "unittest.mock.patch":
            self._check_target(node)
        elif method in ("__setattr__", "__getattribute__", "__delattr__", "__getattr__"):
            names = [_literal_str(a) for a in node.args]
            if not any(n is not None for n in names):
                self.report("computed-name-reflection", node, f"`{method}` with a computed name")
            for n in names:
                if n is not None:
                    self.check_attr_name(n, node, None)
        elif method in ("format", "format_map") and not isinstance(node.func.value, ast.Constant) \
                and not (isinstance(node.func.value, ast.Name) and self.str_names.get(node.func.value.id)):
            self.report("computed-name-reflection", node,
                        "`.format` on a computed template (format fields can walk attributes)")
        elif fq in ("string.Formatter",):
            self.report("computed-name-reflection", node, "`string.Formatter` walks attributes by name")
        elif fq in ("pytest.mark.skipif", "pytest.mark.xfail"):
            cond = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "condition"), None)
            if cond is not None and not _boolean(cond):
                self.report("pytest-api-allowlist", node,
                            f"`{fq}` with a condition that may be a string (pytest evaluates "
                            "string conditions as code); use a boolean expression")
        elif method == "getfixturevalue":
            name = _literal_str(node.args[0]) if node.args else None
            if name is None or name in BLOCKED_FIXTURES or name == "request":
                self.report("pytest-api-allowlist", node, "`getfixturevalue` with a computed or blocked name")
        elif fq and fq.split(".")[0] == "timeit":
            # timeit compiles and runs a string statement: only a lambda or a function this
            # file defines (and never rebinds) may be timed; timeit.main runs its arguments
            statements = node.args[:2] + [k.value for k in node.keywords if k.arg in ("stmt", "setup")]
            if fq == "timeit.main" or not all(self._function_ref(a) for a in statements):
                self.report("code-loading", node, "`timeit` with a statement that may be a string")
        if self._is_call_to(node, "pytest.raises"):
            parent = self.parent(node)
            single = isinstance(parent, ast.Assign) and len(parent.targets) == 1 \
                and isinstance(parent.targets[0], ast.Name)
            if not (single or isinstance(parent, (ast.withitem, ast.Attribute, ast.Expr))):
                self.report("pytest-api-allowlist", node, "a pytest.raises result is passed around as a value")
        self.generic_visit(node)

    def _check_named(self, node: ast.Call, obj_i: int, name_i: int, what: str,
                     computed_ok: bool = False) -> None:
        if len(node.args) <= name_i:
            if not computed_ok and not any(k.arg == "name" for k in node.keywords):
                self.report("computed-name-reflection", node, f"`{what}` without a literal name")
            return
        name = _literal_str(node.args[name_i])
        obj = node.args[obj_i]
        if name is None:
            if not computed_ok:
                self.report("computed-name-reflection", node, f"`{what}` with a computed name")
            return
        if isinstance(obj, ast.Name):
            self.exempt_values.add(id(obj))
        self._check_patched(self.qualify(obj), node)
        self.check_attr_name(name, node, obj)

    def _check_target(self, node: ast.Call) -> None:
        target = _literal_str(node.args[0]) if node.args else None
        if target is None:
            self.report("computed-name-reflection", node, "a patch target with a computed name")
            return
        for part in target.split("."):
            self.check_attr_name(part, node, None)
        self._check_patched(target, node)
        self.check_module_path(target, node)

    def _function_ref(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Lambda):
            return True
        return isinstance(node, ast.Name) and node.id in self.functions and node.id not in self.rebound

    def _check_module_value(self, name: str, node: ast.AST) -> None:
        """``sys.modules["pytest"]`` / ``import_module("pytest")``: pytest's module object as a value."""
        if name in VALUE_RESTRICTED and name == "pytest":
            self.report("pytest-api-allowlist", node, f"the module `{name}` is used as a value")
        elif name.split(".")[0] in PROBE_MODULES:
            self.report("environment-probe", node, f"the module `{name}`")

    def _check_patched(self, q: str | None, node: ast.AST) -> None:
        """A patch of pytest's own API (``approx``, ``raises``, ``fail``) rewrites what every
        assertion through it decides: never allowed, whatever the name. (Naming the rest of
        the toolchain is already ``toolchain-module``.)"""
        if (q or "").split(".")[0] == "pytest":
            self.report("pytest-api-allowlist", node, f"`{q}` is patched: tests may not replace pytest's API")


def _literal_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _base_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _boolean(node: ast.AST) -> bool:
    """An expression that can only be a bool (or another non-string constant)."""
    if isinstance(node, (ast.Compare, ast.UnaryOp)) and not (
            isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not)):
        return True
    if isinstance(node, ast.Constant):
        return not isinstance(node.value, (str, bytes))
    if isinstance(node, ast.BoolOp):
        return all(_boolean(v) for v in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
            "bool", "isinstance", "callable", "hasattr", "issubclass"):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "startswith", "endswith", "isdigit", "isalpha", "isidentifier"):
        return True
    return False


# --------------------------------------------------------------------------- entry points


def own_modules(targets: list[str]) -> frozenset[str]:
    """Top-level module and package names of the skill (``x.py`` -> x, ``pkg/m.py`` -> pkg)."""
    tops = set()
    for path in targets:
        head = path.split("/", 1)[0]
        tops.add(head[:-3] if "/" not in path and head.endswith(".py") else head)
    return frozenset(tops)


def check_source(path: str, source: bytes, own: frozenset[str]) -> list[dict[str, Any]]:
    """Findings for one file. A file that cannot be parsed is one ``static-scan-incomplete``."""
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        severity, _c, message = RULES["static-scan-incomplete"]
        return [{"rule_id": "static-scan-incomplete", "severity": severity, "path": path,
                 "line": int(getattr(exc, "lineno", 0) or 0),
                 "message": f"the file does not parse ({type(exc).__name__}). {message}"}]
    checker = _Checker(path, tree, own)
    try:
        checker.visit(tree)
    except RecursionError:
        severity, _c, message = RULES["static-scan-incomplete"]
        return [{"rule_id": "static-scan-incomplete", "severity": severity, "path": path, "line": 0,
                 "message": f"the file is nested too deeply to check. {message}"}]
    return sorted(checker.findings.values(), key=lambda f: (f["line"], f["rule_id"]))


def run_pyrules(skill_dir: str, targets: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    own = own_modules(targets)
    findings: list[dict[str, Any]] = []
    for path in targets:
        with open(os.path.join(skill_dir, path), "rb") as handle:
            findings.extend(check_source(path, handle.read(), own))
    return {"findings": findings, "seconds": time.monotonic() - started}
