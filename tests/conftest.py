"""Shared fixtures. Tests that need Docker FAIL (never skip) when no engine answers.

``tests/`` is a package tree: helpers are imported by their package path
(``from tests.integration.api_harness import ...``); ``pyproject.toml`` puts the
repository root and the harness (``sandbox_images/harness``) on ``pythonpath``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from xdist.scheduler import LoadScopeScheduling

# helper modules whose asserts should explain themselves (before any test module imports them)
pytest.register_assert_rewrite(
    "tests.integration.api_harness",
    "tests.integration.conftest_store",
)

from sandgate.config import Settings  # noqa: E402  (after the assert-rewrite registration)

# -- parallel runs (pytest-xdist, ``make test`` runs ``-n $TEST_WORKERS --dist loadscope``) -----------------
#
# A module runs whole in one worker process, in its own order: modules share module-scoped
# servers and some rely on their order (e.g. "the controller still evaluates a clean skill"
# last). Each worker is its own controller (``sandgate.controller`` = host:pid, so
# ``no_leftovers`` counts only its own containers), starts its own PostgreSQL cluster
# (free port, fresh temporary directory) and its own servers (free ports).
#
# Modules that share an engine-wide resource beyond their own containers form one group,
# which one worker runs in turn:
SHARED_GROUPS = {
    # they remove, build, count and prune the derived images of the sandbox image
    "tests/integration/test_deps.py": "derived-images",
    "tests/security/test_hostile_deps.py": "derived-images",
    # evaluates every example skill, csv_report (pandas) too: it builds that derived image when missing
    "tests/integration/test_pool.py": "derived-images",
}

#: the longest units start first, so that no worker is left with one of them at the end
#: (the order of the per-module sums of ``--durations=0`` on this machine, 3 workers)
LONG_FIRST = (
    "tests/security/test_hostile_static.py",
    "tests/integration/test_deps.py",  # the derived-images group (with test_pool and test_hostile_deps)
    "tests/security/test_hostile_runtime.py",
    "tests/integration/test_fleet.py",
    "tests/integration/test_worker_processes.py",
    "tests/integration/test_python_rules.py",
    "tests/integration/test_api_auth.py",
    "tests/integration/test_mcp.py",
    "tests/integration/test_console_browser.py",
    "tests/integration/test_mutation.py",
    "tests/security/test_hostile_oracle.py",
)


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _group_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return SHARED_GROUPS.get(module, module)


class ModuleGroups(LoadScopeScheduling):
    """xdist's own scope scheduler, whose work units are ours: a module, or a shared group.
    (``--dist loadgroup`` reads ``xdist_group`` marks through a node id suffix, which pytest 9.2's
    node ids no longer take: the suite's modules were then spread over the workers test by test.)"""

    def _split_scope(self, nodeid: str) -> str:
        return _group_of(nodeid)


@pytest.hookimpl(optionalhook=True)  # a run with ``-p no:xdist`` has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> ModuleGroups:
    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # a plain run keeps the collection order
    # in an xdist worker (every worker collects alike): the longest units are handed out first
    rank = {module: i for i, module in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_module_of(item), len(rank)))  # stable: order within a module kept


@pytest.fixture(scope="session")
def docker_client():
    from sandgate.errors import EngineUnavailable
    from sandgate.sandbox import connect

    try:
        return connect(Settings())
    except EngineUnavailable as exc:
        pytest.fail(f"this test needs a Docker engine: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def sandbox_image(docker_client) -> str:
    from sandgate.errors import ImageMissing
    from sandgate.sandbox import require_image

    settings = Settings()
    try:
        require_image(docker_client, settings.image)
    except ImageMissing as exc:
        pytest.fail(f"this test needs the sandbox image: {exc} (make image)", pytrace=False)
    return settings.image


@pytest.fixture
def no_leftovers(docker_client) -> Iterator[None]:
    """Assert that a test leaves no sandbox container behind (and clean up if it did).

    Only this test process's containers count (label ``sandgate.controller``), so
    another controller using the same engine is never disturbed.
    """
    from sandgate.sandbox.runner import (
        CONTROLLER_LABEL,
        MANAGED_LABEL,
        controller_id,
        reap,
    )

    yield
    me = controller_id()
    left = docker_client.api.containers(
        all=True, filters={"label": [f"{MANAGED_LABEL}=true", f"{CONTROLLER_LABEL}={me}"]})
    if left:
        reap(docker_client, controller=me)
        pytest.fail(f"{len(left)} sandbox container(s) left behind: {[c['Names'] for c in left]}")
