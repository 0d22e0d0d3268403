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
