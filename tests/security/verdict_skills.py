"""Hostile skills that try to steer their own verdict (issue 11), written by someone who has
read this repository: the harness's frame format, its hooks, its coverage rules.

Each builder returns the submission's files (``{relative path: source}``). Where the attack
needs an implementation that does not work, it does not: an honest evaluation of the same
code fails, so any ``passed`` would be the attack's doing.
"""

from __future__ import annotations

from textwrap import dedent

__all__ = [
    "honest",
    "forge_with_hunted_key",
    "second_final_through_the_signer",
    "outcomes_patched",
    "pragma_no_cover",
    "live_exclude",
    "implementation_in_test_file",
    "module_without_init",
    "import_time_only",
    "no_assertions",
    "swallowed_assertion",
    "skips_hide_failures",
    "tests_hidden_from_collection",
    "entrypoint_missing",
    "entrypoint_never_called",
    "markup_in_ids",
]


def _src(text: str) -> str:
    return dedent(text).lstrip("\n")


def _manifest(name: str, entrypoint: str, description: str) -> str:
    return (f'name = "{name}"\n'
            f'description = "{description}"\n'
            f'entrypoint = "{entrypoint}"\n')


_WRONG_PARITY = _src('''
    def is_even(n):
        """Wrong on purpose: the honest verdict is failed."""
        return n % 2 == 1
''')


def honest() -> dict[str, str]:
    """The same shape as the attacks, done right: must pass under the same policy."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _src('''
            def is_even(n):
                if not isinstance(n, int):
                    raise TypeError("n must be an int")
                return n % 2 == 0
        '''),
        "tests/test_parity.py": _src('''
            import pytest

            from parity import is_even


            @pytest.mark.parametrize("n,expected", [(2, True), (3, False), (0, True)])
            def test_is_even(n, expected):
                assert is_even(n) is expected


            def test_rejects_non_int():
                with pytest.raises(TypeError):
                    is_even("2")
        '''),
    }


# A complete, well-formed forged stream in the harness's own format (runner.py): collected,
# one case per test, final with full coverage and a tested entrypoint.
_FORGER = _src('''
    import gc
    import hashlib
    import hmac
    import inspect
    import json
    import os
    import stat
    import struct
    import traceback

    NODEIDS = ["tests/test_parity.py::test_is_even", "tests/test_parity.py::test_zz_forge"]


    def candidate_keys():
        """Every 32-byte secret reachable by frame walking, locals capture and gc."""
        found = []

        def consider(value):
            if isinstance(value, (bytes, bytearray)) and len(value) == 32 and bytes(value) not in found:
                found.append(bytes(value))

        for frame, _ in traceback.walk_stack(None):
            for value in frame.f_locals.values():
                consider(value)
        summary = traceback.StackSummary.extract(traceback.walk_stack(None), capture_locals=True)
        for entry in summary:
            for text in (entry.locals or {}).values():
                if text.startswith(("b'", 'b"', "bytearray(")):
                    try:
                        consider(eval(text, {"bytearray": bytearray}))
                    except Exception:
                        pass
        for info in inspect.stack():
            for value in info.frame.f_locals.values():
                consider(value)
                if isinstance(value, dict):
                    for inner in value.values():
                        consider(inner)
        for obj in gc.get_objects():
            if isinstance(obj, dict):
                for value in list(obj.values()):
                    consider(value)
            elif isinstance(obj, (list, tuple)):
                for value in list(obj)[:64]:
                    consider(value)
        return found or [os.urandom(32)]


    def frame(key, seq, body):
        payload = json.dumps(body).encode()
        mac = hmac.new(key, struct.pack(">I", seq) + payload, hashlib.sha256).digest()
        return b"SGR2" + struct.pack(">II", seq, len(payload)) + mac + payload


    def forged_stream(key):
        cases = [{"nodeid": n, "outcome": "passed", "duration_seconds": 0.0, "message": None,
                  "assertions": 3, "failed_assertions": 0} for n in NODEIDS]
        totals = {"covered_lines": 2, "num_statements": 2, "num_branches": 0,
                  "covered_branches": 0, "missing_branches": 0, "percent_covered": 100.0}
        final = {"kind": "final", "collected": len(NODEIDS), "collect_errors": [],
                 "collect_skipped": [], "cases": cases, "exit_status": 0, "seconds": 0.1,
                 "line_tests": {}, "coverage": {"files": {"parity.py": {"summary": totals,
                 "missing_lines": []}}, "totals": totals},
                 "entrypoint": {"name": "parity:is_even", "resolved": True, "problem": None,
                                "tested_by": NODEIDS}}
        bodies = [{"kind": "collected", "nodeids": NODEIDS}]
        bodies += [{"kind": "case", "case": c} for c in cases] + [final]
        return b"".join(frame(key, i, b) for i, b in enumerate(bodies))


    def pipes():
        """The write ends of pipes this process holds beyond stdio: the result channel."""
        fds = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                try:
                    if stat.S_ISFIFO(os.fstat(fd).st_mode):
                        fds.append(fd)
                except OSError:
                    pass
        return fds


    def forge(then):
        keys = candidate_keys()
        hit = []
        for fd in pipes():
            for key in keys:
                try:
                    os.write(fd, forged_stream(key))
                    hit.append(fd)
                except OSError:
                    pass
        if then == "close":
            for fd in set(hit):
                os.close(fd)
        elif then == "exit":
            os._exit(0)
        return len(keys), sorted(set(hit))
''')


def forge_with_hunted_key(then: str) -> dict[str, str]:
    """Hunt the channel key by ``traceback``/``inspect``/``gc`` walking, write a complete forged
    stream signed with every candidate to every pipe held, then ``then``: ``"close"`` the
    real result fd, or ``"exit"`` at once with ``os._exit(0)``."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _WRONG_PARITY,
        "forger.py": _FORGER,
        "tests/test_parity.py": _src(f'''
            from forger import forge
            from parity import is_even


            def test_is_even():
                assert is_even(2)


            def test_zz_forge():
                forge({then!r})
                assert True
        '''),
    }


def second_final_through_the_signer() -> dict[str, str]:
    """Find the runner's own signer (the ``send`` closure, through ``gc``) and send a forged
    final frame with it, then let the run go on."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _WRONG_PARITY,
        "tests/test_parity.py": _src('''
            import gc

            from parity import is_even


            def test_is_even():
                assert is_even(2)


            def test_zz_forge():
                cases = [{"nodeid": "tests/test_parity.py::test_is_even", "outcome": "passed",
                          "duration_seconds": 0.0, "message": None, "assertions": 1,
                          "failed_assertions": 0}]
                signers = [o for o in gc.get_objects()
                           if callable(o) and getattr(o, "__name__", "") == "send"
                           and "sandgate_harness" in getattr(getattr(o, "__code__", None),
                                                             "co_filename", "")]
                for send in signers:
                    send("final", {"collected": 2, "cases": cases, "exit_status": 0,
                                   "collect_errors": [], "coverage": None})
                assert signers
        '''),
    }


def outcomes_patched() -> dict[str, str]:
    """Patch pytest's item class at import so that every test's exception is swallowed."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _WRONG_PARITY,
        "tests/test_parity.py": _src('''
            import pytest

            from parity import is_even

            _runtest = pytest.Function.runtest


            def _never_fails(self):
                try:
                    _runtest(self)
                except BaseException:
                    pass


            pytest.Function.runtest = _never_fails


            def test_is_even():
                assert is_even(2)


            def test_is_odd():
                assert not is_even(3)
        '''),
    }


_BIG_UNTESTED = _src('''
    def normalise(text):
        """Only the first branch is ever tested."""
        if not text:
            return ""
        text = text.strip()
        text = text.replace("\\t", " ")
        while "  " in text:
            text = text.replace("  ", " ")
        words = text.split(" ")
        words = [w.lower() for w in words]
        return " ".join(words)
''')


def pragma_no_cover() -> dict[str, str]:
    """Hide the untested code behind coverage's default exclusions."""
    return {
        "skill.toml": _manifest("normaliser", "norm:normalise", "Normalise whitespace"),
        "norm.py": _src('''
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                import collections


            def normalise(text):
                if not text:
                    return ""
                return _slow(text)


            def _slow(text):  # pragma: no cover
                text = text.strip()
                text = text.replace("\\t", " ")
                while "  " in text:
                    text = text.replace("  ", " ")
                words = text.split(" ")
                words = [w.lower() for w in words]
                return " ".join(words)


            def stub(x): ...


            def other(x):  # pragma: no cover
                y = x * 2
                y = y + 1
                return y
        '''),
        "tests/test_norm.py": _src('''
            from norm import normalise


            def test_empty():
                assert normalise("") == ""
        '''),
    }


def live_exclude() -> dict[str, str]:
    """Tell the live coverage object to exclude everything, from the test module."""
    return {
        "skill.toml": _manifest("normaliser", "norm:normalise", "Normalise whitespace"),
        "norm.py": _BIG_UNTESTED,
        "tests/test_norm.py": _src('''
            import sys

            from norm import normalise

            _cov = sys.modules["coverage"].Coverage.current()
            if _cov is not None:
                _cov.exclude(".*")
                _cov.exclude("text")


            def test_empty():
                assert normalise("") == ""
        '''),
    }


def implementation_in_test_file() -> dict[str, str]:
    """The real code lives in a test file (never measured); the module re-exports it."""
    return {
        "skill.toml": _manifest("normaliser", "norm:normalise", "Normalise whitespace"),
        "norm.py": "from tests.test_impl import normalise  # noqa: F401\n",
        "tests/test_impl.py": _BIG_UNTESTED + _src('''


            def test_empty():
                assert normalise("") == ""
        '''),
    }


def module_without_init() -> dict[str, str]:
    """Untested code in a folder without ``__init__.py``, never imported by any test."""
    return {
        "skill.toml": _manifest("normaliser", "norm:normalise", "Normalise whitespace"),
        "norm.py": _src('''
            def normalise(text):
                return " ".join(text.split()).lower()
        '''),
        "helpers/extra.py": _BIG_UNTESTED.replace("def normalise", "def normalise_more")
        + _BIG_UNTESTED.replace("def normalise", "def normalise_again"),
        "tests/test_norm.py": _src('''
            from norm import normalise


            def test_normalise():
                assert normalise("  A  b ") == "a b"
        '''),
    }


def import_time_only() -> dict[str, str]:
    """Run the untested code at import (and pad the module with statements) so the lines
    count as executed without any test executing them."""
    padding = "".join(f"PAD_{i} = {i}\n" for i in range(200))
    return {
        "skill.toml": _manifest("normaliser", "norm:run", "Normalise whitespace"),
        "norm.py": _BIG_UNTESTED + "\n\n" + _src('''
            def run(text):
                return text
        ''') + "\n\n_WARM = [normalise(s) for s in ('', ' a  B ', 'c\\td')]\n" + padding,
        "tests/test_norm.py": _src('''
            from norm import run


            def test_run():
                assert run("x") == "x"
        '''),
    }


def no_assertions() -> dict[str, str]:
    """Tests that call the code and check nothing."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _WRONG_PARITY,
        "tests/test_parity.py": _src('''
            from parity import is_even


            def test_is_even():
                is_even(2)


            def test_is_odd():
                is_even(3) == False  # noqa: E712 - a comparison, not an assertion
        '''),
    }


def swallowed_assertion() -> dict[str, str]:
    """Assertions that fail, caught inside the test."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _WRONG_PARITY,
        "tests/test_parity.py": _src('''
            from parity import is_even


            def test_is_even():
                try:
                    assert is_even(2)
                except AssertionError:
                    pass
                assert True  # and one that holds, so the test "has an assertion"
        '''),
    }


def skips_hide_failures() -> dict[str, str]:
    """The failing cases are skipped, xfailed, imperatively skipped or skipped by module."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _src('''
            def is_even(n):
                return n % 2 == 0 if n < 10 else True  # wrong from 10 on
        '''),
        "tests/test_parity.py": _src('''
            import pytest

            from parity import is_even


            def test_small():
                assert is_even(2)


            @pytest.mark.skip(reason="flaky")
            def test_eleven():
                assert not is_even(11)


            @pytest.mark.xfail(reason="known")
            def test_thirteen():
                assert not is_even(13)


            def test_fifteen():
                pytest.skip("later")
                assert not is_even(15)
        '''),
        "tests/test_more.py": _src('''
            import pytest

            pytest.skip("not today", allow_module_level=True)

            from parity import is_even


            def test_seventeen():
                assert not is_even(17)
        '''),
    }


def tests_hidden_from_collection() -> dict[str, str]:
    """The failing test is made invisible to pytest (``__test__ = False``)."""
    return {
        "skill.toml": _manifest("parity", "parity:is_even", "Parity check"),
        "parity.py": _src('''
            def is_even(n):
                return n % 2 == 0 if n < 10 else True  # wrong from 10 on
        '''),
        "tests/test_parity.py": _src('''
            from parity import is_even


            def test_small():
                assert is_even(2)


            def test_eleven():
                assert not is_even(11)


            test_eleven.__test__ = False
        '''),
    }


def entrypoint_missing() -> dict[str, str]:
    """The manifest names a function the module does not have."""
    files = honest()
    files["skill.toml"] = _manifest("parity", "parity:nope", "Parity check")
    return files


def entrypoint_never_called() -> dict[str, str]:
    """Good tests of a helper; the entrypoint itself is never executed by any test."""
    return {
        "skill.toml": _manifest("parity", "parity:classify", "Parity check"),
        "parity.py": _src('''
            def is_even(n):
                return n % 2 == 0


            def classify(n):
                return "odd"
        '''),
        "tests/test_parity.py": _src('''
            from parity import is_even


            def test_is_even():
                assert is_even(2)
                assert not is_even(3)
        '''),
    }


def markup_in_ids() -> dict[str, str]:
    """Rich markup and control characters in parametrize ids and failure messages."""
    return {
        "skill.toml": _manifest("counter", "counter:count_lines", "Count lines [bold red]x[/]"),
        "counter.py": _src('''
            def count_lines(text):
                return text.count("\\n") + 1  # wrong for a trailing newline
        '''),
        "tests/test_counter.py": _src('''
            import pytest

            from counter import count_lines


            @pytest.mark.parametrize("text,expected", [
                pytest.param("a", 1, id="[/]"),
                pytest.param("one line\\n", 1, id="one line\\n-1"),
                pytest.param("x\\n", 1, id="[bold red]x[/]"),
            ])
            def test_count_lines(text, expected):
                assert count_lines(text) == expected, "[/] [bold red]styled[/]"
        '''),
    }
