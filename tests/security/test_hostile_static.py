"""Hostile skills against the static phase, under the shipped ``default`` policy, for real.

Each skill is what an attacker who has read this repository would submit to get
``passed`` without working code: the module is wrong (or does nothing) and the test
file cheats - by rewriting the outcome through pytest's objects (issue 11, class 2),
by reaching the same through reflection the semgrep patterns cannot spell (class 3),
by text the pattern engine reads differently from CPython (class 4), or by behaving
well only when it can tell it runs in the sandbox (class 7). Every case must end
``failed`` with ``policy_violation`` and the finding that names the trick, or
``rejected`` at intake - never ``passed``. Last: an honest skill using the allowed
testing API still passes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pytest

from sandgate.errors import SubmissionError
from sandgate.evaluation import evaluate
from sandgate.policy import load_policy
from sandgate.report import EvaluationReport, Verdict
from sandgate.submission import submission_from_files

pytestmark = pytest.mark.docker

MANIFEST = 'name = "slug"\ndescription = "slugs"\nentrypoint = "slug:slugify"\nrequirements = []\n'
#: wrong on purpose: every honest test of it fails
BROKEN_MODULE = 'def slugify(text):\n    return text\n'
HONEST_ASSERT = 'assert slugify("Hello World") == "hello-world"'


def skill(test: str, module: str = BROKEN_MODULE, extra: Mapping[str, str] | None = None) -> dict[str, bytes]:
    files = {"skill.toml": MANIFEST, "slug.py": module,
             "tests/test_slug.py": textwrap.dedent(test).lstrip("\n")}
    files.update(extra or {})
    return {path: text.encode("utf-8") for path, text in files.items()}


def run(files: Mapping[str, bytes]) -> EvaluationReport:
    return evaluate(submission_from_files(files), policy=load_policy("default"))


def explain(report: EvaluationReport) -> str:
    return (f"verdict={report.verdict.value} reasons={[(r.code.value, r.message[:200]) for r in report.reasons]}\n"
            f"findings={[(f.rule_id, f.severity, f.path, f.line) for f in report.findings]}")


def assert_blocked(report: EvaluationReport, *rules: str, path: str = "tests/test_slug.py") -> None:
    assert report.verdict is Verdict.failed, explain(report)
    assert "policy_violation" in {r.code.value for r in report.reasons}, explain(report)
    for rule in rules:
        assert any(f.rule_id == rule and f.path == path and f.severity in ("critical", "high")
                   for f in report.findings), f"{rule} not reported on {path}\n{explain(report)}"


# -- class 2: outcome rewriting through pytest's public objects ---------------------------

CLASS_2 = {
    "patch-runtest-at-import": ("""
        import pytest
        from slug import slugify

        pytest.Function.runtest = lambda self: None

        def test_slug():
            """ + HONEST_ASSERT + """
        """, "pytest-api-allowlist"),
    "plugin-manager-through-getattr": ("""
        from slug import slugify

        class Forger:
            def __init__(self):
                self.reports = []

        def test_slug(request):
            config = getattr(request, "con" + "fig")
            getattr(config, "pluginmanager").register(Forger())
            """ + HONEST_ASSERT + """
        """, "computed-name-reflection"),
    "session-items-swap": ("""
        from slug import slugify

        def test_first(request):
            request.session.items[:] = request.session.items[:1]

        def test_slug():
            """ + HONEST_ASSERT + """
        """, "pytest-api-allowlist"),
    "pytest-class-from-import": ("""
        from pytest import Item
        from slug import slugify

        Item.runtest = lambda self: None

        def test_slug():
            """ + HONEST_ASSERT + """
        """, "pytest-api-allowlist"),
    "string-skipif-runs-code": ("""
        import pytest
        from slug import slugify

        @pytest.mark.skipif("setattr(config, 'option', None) or False", reason="never")
        def test_slug():
            """ + HONEST_ASSERT + """
        """, "pytest-api-allowlist"),
    "excinfo-traceback-frame": ("""
        import pytest
        from slug import slugify

        def test_slug():
            with pytest.raises(ZeroDivisionError) as info:
                1 / 0
            frame = info.traceback[-1].frame
            frame.eval("1")
            """ + HONEST_ASSERT + """
        """, "pytest-api-allowlist"),
    "unittest-run-override": ("""
        import unittest
        from slug import slugify

        class TestSlug(unittest.TestCase):
            def run(self, result=None):
                result.startTest(self)
                result.addSuccess(self)
                result.stopTest(self)

            def test_slug(self):
                self.assertEqual(slugify("Hello World"), "hello-world")
        """, "pytest-api-allowlist"),
    "patch-pytest-runner-by-string": ("""
        from slug import slugify

        def test_slug(monkeypatch):
            monkeypatch.setattr("_pytest.runner.check_interactive_exception", lambda *a: False)
            """ + HONEST_ASSERT + """
        """, "toolchain-module"),
    "pytestconfig-fixture": ("""
        from slug import slugify

        def test_slug(pytestconfig):
            pytestconfig.option.maxfail = 0
            """ + HONEST_ASSERT + """
        """, "pytest-api-allowlist"),
    "approx-patched-to-accept-anything": ("""
        from unittest import mock

        import pytest
        from slug import slugify

        def test_slug(monkeypatch):
            monkeypatch.setattr(pytest, "approx", lambda *a, **k: mock.ANY)
            assert slugify("Hello World") == pytest.approx("hello-world")
        """, "pytest-api-allowlist"),
    "approx-assigned-at-import": ("""
        from unittest import mock

        import pytest
        from slug import slugify

        pytest.approx = lambda *a, **k: mock.ANY

        def test_slug():
            assert slugify("Hello World") == pytest.approx("hello-world")
        """, "pytest-api-allowlist"),
    "raises-patched-by-its-dotted-name": ("""
        import contextlib
        from unittest import mock

        import pytest
        from slug import slugify

        def test_slug():
            with mock.patch("pytest.raises", lambda *a, **k: contextlib.nullcontext()):
                with pytest.raises(ValueError):
                    slugify("")
        """, "pytest-api-allowlist"),
    "pytest-module-through-sys-modules": ("""
        import sys
        from unittest import mock

        from slug import slugify

        def test_slug():
            sys.modules["pytest"].approx = lambda *a, **k: mock.ANY
        """, "pytest-api-allowlist"),
    "pluggy-hookimpl-without-hook-name": ("""
        import pluggy
        from slug import slugify

        def test_slug():
            """ + HONEST_ASSERT + """
        """, "toolchain-module"),
}


@pytest.mark.parametrize("name", sorted(CLASS_2))
def test_outcome_rewriting_through_pytest(sandbox_image, no_leftovers, name) -> None:
    test, rule = CLASS_2[name]
    assert_blocked(run(skill(test)), rule)


# -- class 3: reflective evasion ----------------------------------------------------------

CLASS_3 = {
    "reversed-name-exit": ("""
        import os
        from slug import slugify

        def test_slug():
            getattr(os, "tixe_"[::-1])(0)
            """ + HONEST_ASSERT + """
        """, "computed-name-reflection"),
    "builtins-dict-exec": ("""
        import builtins
        from slug import slugify

        def test_slug():
            builtins.__dict__.get("ex" + "ec")("import os; os._exit(0)")
        """, "dunder-access"),
    "globals-builtins-lookup": ("""
        from slug import slugify

        def test_slug():
            globals()["__buil" + "tins__"]["ex" + "ec"]("raise SystemExit(0)")
        """, "computed-name-reflection"),
    "subclasses-walk": ("""
        from slug import slugify

        def test_slug():
            for cls in ().__class__.__base__.__subclasses__():
                if cls.__name__ == "Popen":
                    cls(["true"])
            """ + HONEST_ASSERT + """
        """, "dunder-access"),
    "base64-module-name": ("""
        import base64
        import importlib
        from slug import slugify

        def test_slug():
            mod = importlib.import_module(base64.b64decode(b"b3M=").decode())
            mod.kill(mod.getppid(), 9)
        """, "computed-name-reflection"),
    "computed-sys-modules-key": ("""
        import sys
        from slug import slugify

        def test_slug():
            runner = sys.modules["sandgate" + "_harness.runner"]
            runner.frame = None
            """ + HONEST_ASSERT + """
        """, "computed-name-reflection"),
    "walk-stack-to-the-runner-locals": ("""
        import traceback
        from slug import slugify

        def test_slug():
            for frame, _ in traceback.walk_stack(None):
                if "key" in frame.f_locals:
                    frame.f_locals["key"]
            """ + HONEST_ASSERT + """
        """, "frame-introspection"),
    "getframe-through-an-alias": ("""
        from sys import _getframe as here
        from slug import slugify

        def test_slug():
            caller = here(5)
            """ + HONEST_ASSERT + """
        """, "frame-introspection"),
    "stack-summary-capture-locals": ("""
        import traceback
        from slug import slugify

        def test_slug():
            summary = traceback.StackSummary.extract(traceback.walk_stack(None), capture_locals=True)
            print([f.locals for f in summary])
        """, "frame-introspection"),
    "gc-referrers": ("""
        import gc
        from slug import slugify

        def test_slug():
            print(len(gc.get_objects()))
        """, "frame-introspection"),
    "inspect-frames": ("""
        import inspect as ins
        from slug import slugify

        def test_slug():
            print(ins.stack()[-1])
        """, "frame-introspection"),
    "format-field-walks-globals": ("""
        from slug import slugify

        def test_slug():
            print("{0.__globals__}".format(test_slug))
            """ + HONEST_ASSERT + """
        """, "dunder-access"),
    "attrgetter-frame-chain": ("""
        import operator
        from slug import slugify

        def gen():
            yield operator.attrgetter("gi_frame.f_back.f_locals")(g)

        g = gen()

        def test_slug():
            print(next(g))
        """, "frame-introspection"),
    "exec-a-data-file": ("""
        from slug import slugify

        def test_slug():
            with open("tests/payload.txt") as handle:
                exec(handle.read())
        """, "eval-exec-dynamic"),
    "runpy-a-data-file": ("""
        import runpy
        from slug import slugify

        def test_slug():
            runpy.run_path("tests/payload.txt")
        """, "code-loading"),
    "spec-from-a-data-file": ("""
        from importlib import util
        from slug import slugify

        def test_slug():
            spec = util.spec_from_file_location("payload", "tests/payload.txt")
        """, "code-loading"),
    "reflective-builtin-as-value": ("""
        import functools
        import os
        from slug import slugify

        look = functools.partial(getattr, os)

        def test_slug():
            look("_ex" + "it")(0)
        """, "computed-name-reflection"),
    "timeit-runs-a-data-file": ("""
        import timeit
        from slug import slugify

        def test_slug():
            with open("tests/payload.txt") as handle:
                statement = handle.read()
            timeit.timeit(statement, number=1)
            """ + HONEST_ASSERT + """
        """, "code-loading"),
    "sqlite-extension-from-a-data-file": ("""
        import sqlite3
        from slug import slugify

        def test_slug():
            connection = sqlite3.connect(":memory:")
            connection.enable_load_extension(True)
            connection.load_extension("tests/payload.txt")
            """ + HONEST_ASSERT + """
        """, "code-loading"),
    "code-object-from-bytes": ("""
        import types
        from slug import slugify

        def test_slug():
            code = types.CodeType(0, 0, 0, 0, 0, 0, b"", (), (), (), "", "", "", 0, b"", b"")
        """, "code-loading"),
}


@pytest.mark.parametrize("name", sorted(CLASS_3))
def test_reflective_evasion(sandbox_image, no_leftovers, name) -> None:
    test, rule = CLASS_3[name]
    files = skill(test, extra={"tests/payload.txt": "import os\nos._exit(0)\n"})
    assert_blocked(run(files), rule)


def test_reflection_in_the_module_is_blocked_too(sandbox_image, no_leftovers) -> None:
    module = ("import sys\n\n\ndef slugify(text):\n"
              "    if sys._getframe(1).f_code.co_name.startswith('test'):\n"
              "        return 'hello-world'\n"
              "    return text\n")
    report = run(skill("from slug import slugify\n\n\ndef test_slug():\n    " + HONEST_ASSERT + "\n",
                       module=module))
    assert_blocked(report, "frame-introspection", path="slug.py")


# -- class 4: what the pattern engine reads differently ----------------------------------

def _rejected(files: Mapping[str, bytes]) -> SubmissionError:
    with pytest.raises(SubmissionError) as info:
        submission_from_files(files)
    return info.value


def test_nfkc_identifier_is_rejected() -> None:
    test = "import \uff53ubprocess\nfrom slug import slugify\n\n\ndef test_slug():\n    pass\n"
    err = _rejected(skill(test))
    assert "is read by Python as 'subprocess'" in str(err)


def test_cr_only_line_hiding_code_is_rejected() -> None:
    test = ("from slug import slugify\n\n\ndef test_slug():\n"
            "    # looks like a comment to a line-based reader\r    import os; os._exit(0)\n")
    err = _rejected(skill(test))
    assert "carriage return" in str(err)


def test_form_feed_is_rejected() -> None:
    test = "from slug import slugify\n\x0c\ndef test_slug():\n    pass\n"
    assert "U+000C" in str(_rejected(skill(test)))


def test_a_file_past_semgreps_default_cap_is_scanned_to_its_end(sandbox_image, no_leftovers) -> None:
    padding = "".join(f"# filler line {i:07d} so that semgrep's default cap would skip this file\n"
                      for i in range(14_200))
    test = padding + ("import os\nfrom slug import slugify\n\n\ndef test_slug():\n"
                      "    os._exit(0)\n")
    assert 1_000_000 < len(test) <= 1024 * 1024
    report = run(skill(test))
    assert_blocked(report, "os-exit")
    assert not any(f.rule_id == "static-scan-incomplete" for f in report.findings), explain(report)


def test_many_statements_fail_closed(sandbox_image, no_leftovers) -> None:
    """Enough statements to make semgrep's per-rule timeout fire: nothing partial is trusted."""
    test = "".join(f"V{i} = {i}\n" for i in range(52_000)) + (
        "import os\nfrom slug import slugify\n\n\ndef test_slug():\n    os._exit(0)\n")
    assert len(test) <= 1024 * 1024
    report = run(skill(test))
    assert report.verdict is not Verdict.passed, explain(report)
    assert report.verdict is Verdict.failed, explain(report)
    # the scan of the file is reported incomplete (before, only another rule's finding and the
    # exit in the test made this fail: the rules that timed out reported nothing)
    assert_blocked(report, "static-scan-incomplete")


# -- class 7: sandbox sniffing (static side) ---------------------------------------------

CLASS_7 = {
    "sys-flags-isolated": ("import sys\n", "sys.flags.isolated", "environment-probe"),
    "hostname": ("import platform\n", 'platform.node() == "sandbox"', "environment-probe"),
    "uname": ("import os\n", 'os.uname().nodename == "sandbox"', "environment-probe"),
    "dockerenv": ("import os\n", 'os.path.exists("/.dockerenv")', "environment-probe"),
    "sandbox-working-tree": ("import os\n", 'os.getcwd().startswith("/work")', "environment-probe"),
    "own-path": ("", '__file__.startswith("/work/skill/")', "environment-probe"),
    "uid": ("import os\n", "os.geteuid() != 0", "environment-probe"),
    "the-program-that-imported-it": ("import __main__\n", '"runner" in getattr(__main__, "__file__", "")',
                                     "environment-probe"),
    "main-through-sys-modules": ("import sys\n", 'sys.modules["__main__"].__spec__ is None', "environment-probe"),
    "no-network-card": ("import uuid\n", "uuid.getnode() & (1 << 40)", "environment-probe"),
    "hostname-variable": ("import os\n", 'os.environ.get("HOSTNAME") == "sandbox"',
                          "env-test-run-sniffing"),
}


@pytest.mark.parametrize("name", sorted(CLASS_7))
def test_sandbox_sniffing_in_the_module(sandbox_image, no_leftovers, name) -> None:
    imports, probe, rule = CLASS_7[name]
    module = (f"{imports}\n\ndef slugify(text):\n    if {probe}:\n"
              "        return '-'.join(text.lower().split())\n    return text\n")
    report = run(skill("from slug import slugify\n\n\ndef test_slug():\n    " + HONEST_ASSERT + "\n",
                       module=module))
    assert_blocked(report, rule, path="slug.py")


ARGV_SNIFFER = '''\
import argparse
import re
import sys


def slugify(text, sep="-"):
    words = re.findall(r"[a-z0-9]+", text.lower())
    command = " ".join(sys.argv + sys.orig_argv + [argparse.ArgumentParser().prog])
    if "runner" in command or "mutation" in command or ".py" in command:  # the harness's command line
        return sep.join(words)
    return text
'''


def test_the_command_line_a_skill_sees_is_not_the_harnesss(sandbox_image, no_leftovers) -> None:
    """Reading the command line is only `medium` (blocked under strict): under default the defence is
    that sys.argv, sys.orig_argv and argparse's default prog show an interpreter, not the runner, so a
    skill that works only under the harness's command line fails its own tests."""
    report = run(skill("from slug import slugify\n\n\ndef test_slug():\n    " + HONEST_ASSERT + "\n",
                       module=ARGV_SNIFFER))
    assert report.verdict is Verdict.failed, explain(report)
    assert {r.code.value for r in report.reasons} >= {"tests_failed"}, explain(report)
    assert "policy_violation" not in {r.code.value for r in report.reasons}, explain(report)
    assert any(f.rule_id == "sys-argv-inspection" and f.severity == "medium" for f in report.findings)


# -- honest code keeps passing -----------------------------------------------------------

HONEST_MODULE = '''\
"""Slugs."""
import re


class SlugError(ValueError):
    pass


def slugify(text, sep="-"):
    if not isinstance(text, str):
        raise SlugError(f"expected str, got {type(text).__name__}")
    return sep.join(re.findall(r"[a-z0-9]+", text.lower()))
'''


def test_honest_skill_with_the_allowed_testing_api_passes(sandbox_image, no_leftovers) -> None:
    test = '''
        import pytest
        from slug import SlugError, slugify


        @pytest.fixture(params=["-", "_"])
        def sep(request):
            return request.param


        @pytest.mark.parametrize("text, expected", [("Hello World", "hello-world"),
                                                    pytest.param("  a  b ", "a-b", id="spaces")])
        def test_slugify(text, expected):
            assert slugify(text) == expected


        def test_separator(sep):
            assert slugify("a b", sep=sep) == "a" + sep + "b"


        def test_type_error():
            with pytest.raises(SlugError) as info:
                slugify(3)
            assert "int" in str(info.value) and info.type is SlugError


        def test_monkeypatch_and_capture(monkeypatch, capsys, tmp_path):
            monkeypatch.setattr("slug.re.findall", lambda pattern, text: ["x"])
            assert slugify("anything") == "x"
            print(type(slugify).__name__)
            assert capsys.readouterr().out == "function\\n"
            (tmp_path / "out.txt").write_text(slugify("a b"))
            assert (tmp_path / "out.txt").read_text() == "x"
    '''
    report = run(skill(test, module=HONEST_MODULE))
    assert report.verdict is Verdict.passed, explain(report)
    assert not [f for f in report.findings if f.severity in ("critical", "high")], explain(report)
