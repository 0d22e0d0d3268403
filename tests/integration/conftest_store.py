"""Fixtures for the store tests: real SQLite and real PostgreSQL.

Loaded by the store/lifecycle test modules with ``pytest_plugins``. Every
``store`` test runs twice: ``[sqlite]`` (a file under tmp_path) and
``[postgresql]`` (a fresh database in a throwaway server started once per
session by ``tests/pg.py``). Missing PostgreSQL binaries FAIL the tests with
what to install; they are never skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict
from sandgate.store import Store, open_store
from tests import pg as pg_helper

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
TEMPLATE_DB = "sandgate_template"
_counter = itertools.count(1)


# --------------------------------------------------------------------------- stand-ins


@dataclass(frozen=True)
class FakeManifest:
    name: str
    description: str = "a test skill"
    entrypoint: str = "skill:run"
    requirements: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=lambda: ["test_skill.py"])

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "entrypoint": self.entrypoint,
            "requirements": list(self.requirements),
            "tests": list(self.tests),
        }


@dataclass(frozen=True)
class FakeSubmission:
    """Shape of ``sandgate.submission.Submission`` (what the store and lifecycle use)."""

    name: str
    files: Mapping[str, bytes]
    manifest: FakeManifest
    content_hash: str


def make_submission(name: str = "greet", files: Mapping[str, bytes] | None = None, **kw: Any) -> FakeSubmission:
    if files is None:
        files = {
            "skill.py": b"def run(x):\n    return f'hello {x}'\n",
            "test_skill.py": b"from skill import run\n\ndef test_run():\n    assert run('a') == 'hello a'\n",
        }
    files = dict(sorted(files.items()))
    h = hashlib.sha256()
    for path, data in files.items():
        h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    return FakeSubmission(
        name=name,
        files=files,
        manifest=FakeManifest(name=name, **kw),
        content_hash="sha256:" + h.hexdigest(),
    )


def variant(name: str, i: int, **kw: Any) -> FakeSubmission:
    """A distinct content of skill ``name`` (version content number ``i``)."""
    return make_submission(
        name,
        {
            "skill.py": f"def run(x):\n    return x * {i}\n".encode(),
            "test_skill.py": f"from skill import run\n\ndef test_run():\n    assert run(1) == {i}\n".encode(),
        },
        **kw,
    )


def make_policy(name: str = "default", hash: str = "sha256:policy-1", mode: str = "manual") -> Any:
    return SimpleNamespace(
        name=name,
        hash=hash,
        promotion=SimpleNamespace(mode_for=lambda skill: mode),
    )


def make_report(verdict: str = "passed", evaluation_id: str = "x", **kw: Any) -> EvaluationReport:
    reasons = kw.pop("reasons", None)
    if reasons is None:
        reasons = (
            []
            if verdict == "passed"
            else [
                Reason(
                    code={
                        "failed": ReasonCode.tests_failed,
                        "rejected": ReasonCode.invalid_submission,
                        "error": ReasonCode.infrastructure,
                    }[verdict],
                    message=f"fake {verdict}",
                )
            ]
        )
    return EvaluationReport(evaluation_id=evaluation_id, verdict=Verdict(verdict), reasons=reasons, **kw)


class FakeEvaluate:
    """An injectable ``evaluate``: returns a report with ``verdict``, records calls."""

    def __init__(self, verdict: str = "passed") -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, submission: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
        self.calls.append((submission.content_hash, evaluation_id))
        return make_report(
            self.verdict,
            evaluation_id=evaluation_id or "none",
            skill=submission.name,
            content_hash=submission.content_hash,
            policy=policy.name,
            policy_hash=policy.hash,
        )


def passed_version(store: Store, name: str, i: int, policy: Any = None) -> int:
    """Store content ``i`` of ``name`` and record a passed evaluation; return its number."""
    from sandgate.store import evaluations, versions

    policy = policy or make_policy()
    v, _ = versions.create_version(store, submission=variant(name, i), actor="test")
    evaluations.record_evaluation(
        store,
        name=name,
        number=v.number,
        report=make_report("passed", evaluation_id=f"{name}-{i}-{policy.hash}"),
        policy_name=policy.name,
        policy_hash=policy.hash,
    )
    return v.number


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    try:
        with pg_helper.postgres_server() as server:
            yield server
    except pg_helper.PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def pg_template(pg_server: Any) -> str:
    """A database migrated to head once; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    url = pg_server.create_database(TEMPLATE_DB)
    open_store(url).close()
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "store.db"
    open_store(f"sqlite:///{path}").close()
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh database already at head."""
    if backend == "sqlite":
        path = tmp_path / "store.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server = request.getfixturevalue("pg_server")
    template = request.getfixturevalue("pg_template")
    name = f"t_{next(_counter)}"
    url = server.create_database(name, template=template)
    yield url
    server.drop_database(name)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty database (for migration tests)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("pg_server")
    name = f"e_{next(_counter)}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def policy() -> Any:
    return make_policy()
