"""The public API is pinned: a change here is a deliberate, visible decision."""

from __future__ import annotations

import subprocess
import sys

import sandgate

EXPECTED = [
    "EvaluationReport",
    "Policy",
    "SandgateError",
    "Settings",
    "Submission",
    "__version__",
    "connect",
    "evaluate",
    "get_settings",
    "load_policy",
    "load_submission",
]


def test_exported_members() -> None:
    assert sorted(sandgate.__all__) == sorted(EXPECTED)
    for name in sandgate.__all__:
        assert getattr(sandgate, name) is not None, name


def test_import_is_lazy() -> None:
    code = "import sys, sandgate; print(sorted(m for m in ('docker', 'fastapi', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        sandgate.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
