"""Shared fixtures. Tests that need Docker FAIL (never skip) when no engine answers.

``tests/`` is a package tree: helpers are imported by their package path
(``from tests.integration.api_harness import ...``); ``pyproject.toml`` puts the
repository root and the harness (``sandbox_images/harness``) on ``pythonpath``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# helper modules whose asserts should explain themselves (before any test module imports them)
pytest.register_assert_rewrite(
    "tests.integration.api_harness",
    "tests.integration.conftest_store",
)

from sandgate.config import Settings  # noqa: E402  (after the assert-rewrite registration)

# -- parallel runs (pytest-xdist, ``make test`` runs ``-n $TEST_WORKERS --dist loadgroup``) -----------------
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

#: the longest modules start first, so that no worker is left with one of them at the end
LONG_FIRST = (
    "tests/integration/test_deps.py",  # the derived-images group (with test_pool and test_hostile_deps): the longest
    "tests/security/test_hostile_oracle.py",
    "tests/security/test_hostile_runtime.py",
    "tests/integration/test_api_lifecycle.py",
    "tests/integration/test_mutation.py",
    "tests/integration/test_api_auth.py",
    "tests/integration/test_api_fuzz.py",
)


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist") or config.getoption("dist", "no") == "no":
        return  # a plain run keeps the collection order
    rank = {module: i for i, module in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_module_of(item), len(rank)))  # stable: order within a module kept
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            module = _module_of(item)
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(module, module)))


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
