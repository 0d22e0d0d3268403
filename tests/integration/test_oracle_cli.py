"""``sandgate evaluate`` carries the oracle section: ``--json`` and the readable table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "skills"
pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftovers")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandgate", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


def test_json_report_carries_the_oracle_section() -> None:
    proc = run_cli("evaluate", str(EXAMPLES / "unit_convert"), "--json")
    assert proc.returncode == 0, proc.stderr
    oracle = json.loads(proc.stdout)["oracle"]
    assert oracle["status"] == "ran" and oracle["failures"] == []
    assert oracle["calls"] == {"example": 7, "contract": 40} and oracle["passed"] == oracle["calls"]
    units = "Literal['mm', 'm', 'km', 'in', 'mi', 'g', 'kg', 'lb', 'C', 'F']"
    assert oracle["signature"] == f"(value: float, from_unit: {units}, to_unit: {units}) -> float"
    # the manifest's schema narrows the generated units: some calls return a value
    assert oracle["contract_values"] > 0


def test_readable_report_shows_failing_calls_as_a_table(tmp_path: Path) -> None:
    skill = tmp_path / "adder"
    (skill / "tests").mkdir(parents=True)
    (skill / "skill.toml").write_text(
        'name = "adder"\nentrypoint = "adder:add"\n[[examples]]\nname = "[bold]two[/]"\n'
        'args = [1, 1]\nexpect = 2\n')
    (skill / "adder.py").write_text("def add(a: int, b: int) -> int:\n    return a * b\n")
    (skill / "tests" / "test_adder.py").write_text(
        "from adder import add\n\ndef test_add():\n    assert add(2, 2) == 4\n")
    proc = run_cli("evaluate", str(skill))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "examples_failed" in out and "oracle: failing calls" in out
    assert "[bold]two[/]" in out and "1, 1" in out, out
