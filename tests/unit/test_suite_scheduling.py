"""The suite's own parallel layout: a module runs whole in one xdist worker, a shared group too.

``--dist loadgroup`` once did this through ``xdist_group`` marks, which xdist turns into a node id
suffix; pytest 9.2's node ids no longer take it, and every module was silently spread test by test
over the workers (the derived-images modules then raced each other). This runs a real
``pytest -n 2`` over modules of the suite and checks where each test ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[2]
#: small, fast modules with several tests each
MODULES = ("tests/unit/test_pysource.py", "tests/unit/test_wire.py", "tests/unit/test_canary_analysis.py")


def make_test_flags() -> list[str]:
    """The ``--dist`` and scheduling flags of the Makefile's ``test`` recipe."""
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has a test recipe"
    line = next(line for line in recipe.group(1).splitlines() if "pytest" in line)
    words = line.split()
    flags = [w for w in words if w.startswith("--no-loadscope")]
    if "--dist" in words:
        flags += ["--dist", words[words.index("--dist") + 1]]
    return flags


def test_each_module_runs_whole_in_one_worker(tmp_path: Path) -> None:
    """With the Makefile's own flags."""
    modules = list(MODULES)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", *make_test_flags(), "-v",
         "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "basetemp"), *modules],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, module in re.findall(r"^\[(gw\d+)\] .*?PASSED (\S+?)::", proc.stdout, re.M):
        workers[module].add(worker)
    assert set(workers) == set(modules), proc.stdout[-3000:]
    assert all(len(w) == 1 for w in workers.values()), dict(workers)
    assert len(set().union(*workers.values())) == 2, "both workers took a module"


def test_shared_groups_are_one_unit_and_the_rest_one_unit_per_module(
        pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler xdist gets from the suite's hook splits node ids into our units."""
    from xdist.remote import Producer

    monkeypatch.setattr(pytestconfig.option, "tx", ["2*popen"])  # what ``-n 2`` sets
    sched = pytestconfig.hook.pytest_xdist_make_scheduler(config=pytestconfig, log=Producer("t", enabled=False))
    assert isinstance(sched, conftest.ModuleGroups)
    shared = conftest.SHARED_GROUPS
    assert len(set(shared.values())) < len(shared)  # a group holds several modules
    for module, group in shared.items():
        assert sched._split_scope(f"{module}::test_x[a@b]") == group
    assert sched._split_scope("tests/unit/test_wire.py::test_x@y") == "tests/unit/test_wire.py"
    assert sched._split_scope("tests/unit/test_wire.py::Case::test_y") == "tests/unit/test_wire.py"
    for module in conftest.LONG_FIRST:
        assert (ROOT / module).exists(), module
