"""The ground floor: pure modules everything else imports downward.

``names``, ``limits``, ``report`` (with ``oracle_report``), ``examples``, ``records``, ``logs``, ``environ``
(and ``errors``) import only the standard library, pydantic and each other; an HTTP-only
consumer (``sandgate.client``) loads neither SQLAlchemy nor pydantic nor the
store; ``policy/`` does not import ``evaluation/`` (the report contract is on the ground floor).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "platform" / "sandgate"
GROUND = ("names", "limits", "report", "oracle_report", "examples", "records", "logs", "errors", "environ")
ALLOWED_THIRD_PARTY = {"pydantic"}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("name", GROUND)
def test_ground_floor_imports_only_stdlib_pydantic_and_itself(name: str) -> None:
    wrong = []
    for module in _imports(PKG / f"{name}.py", top_level_only=False):
        root = module.split(".")[0]
        if root == "sandgate":
            if module.removeprefix("sandgate.") not in GROUND:
                wrong.append(module)
        elif root not in sys.stdlib_module_names and root not in ALLOWED_THIRD_PARTY and root != "__future__":
            wrong.append(module)
    assert wrong == [], f"sandgate.{name} imports {wrong}"


def test_policy_does_not_import_evaluation() -> None:
    """evaluation/ uses policy/ (gates decide its verdict); policy/ reads only the report contract."""
    imported = {m for p in (PKG / "policy").rglob("*.py") for m in _imports(p, top_level_only=False)}
    assert not {m for m in imported if m.startswith("sandgate.evaluation")}


def test_the_http_client_loads_no_database_layer() -> None:
    code = (
        "import sys, sandgate.client; "
        "print(sorted(m for m in ('sqlalchemy', 'sandgate.store', 'sandgate.store.keys', 'docker') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_skill_name_pattern_is_written_once() -> None:
    pattern = "[a-z][a-z0-9_]{0,62}"
    holders = sorted(
        str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if pattern in p.read_text()
    )
    assert holders == ["names.py"], holders
