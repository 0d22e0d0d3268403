"""Attacks on third-party requirements: a tampered shared wheelhouse, a skill that tries to reach the
network or the index from its derived image, a resubmitted lock that names what the allowlist does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandgate import deps
from sandgate.config import Settings, get_settings
from sandgate.errors import SubmissionError
from sandgate.evaluation import evaluate
from sandgate.policy import load_policy, parse_policy
from sandgate.report import ReasonCode, Verdict
from sandgate.sandbox.deps_image import derived_tag
from sandgate.submission import submission_from_files

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("sandbox_image", "no_leftovers")]


def policy():
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["mutation"]["max_mutants"] = 0
    data["gates"]["min_mutation_score"] = 0.0
    return parse_policy(data, name="test-hostile-deps")


def skill(module: bytes, test: bytes) -> dict[str, bytes]:
    return {
        "skill.toml": b'name = "t"\nentrypoint = "t:f"\nrequirements = ["tabulate>=0.9"]\n',
        "t.py": module,
        "tests/test_t.py": test,
    }


PLAIN = skill(b"import tabulate\n\n\ndef f():\n    return tabulate.tabulate([[1]])\n",
              b"from t import f\n\n\ndef test_f():\n    assert f().strip() == '-\\n1\\n-'\n")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_a_tampered_wheel_in_the_shared_wheelhouse_fails_the_build(home: Path, docker_client) -> None:
    sub = submission_from_files(PLAIN)
    lock = deps.parse_lock(sub.lock or b"")
    deps.ensure_wheels(lock)
    (wheel,) = (home / "wheelhouse" / "sha256").glob("*/tabulate-*.whl")
    wheel.write_bytes(wheel.read_bytes()[:-64] + b"\0" * 64)  # same name, same entry directory, other bytes
    tag = derived_tag(Settings().image, lock.hash)
    try:
        docker_client.images.remove(tag, force=True)
    except Exception:  # noqa: BLE001 - absent
        pass
    report = evaluate(sub, policy=policy())
    assert report.verdict is Verdict.error
    assert report.reasons[0].code is ReasonCode.infrastructure
    assert "hash" in report.reasons[0].message.lower(), report.reasons[0].message
    assert report.sandbox is None  # nothing ran
    from docker.errors import ImageNotFound

    with pytest.raises(ImageNotFound):
        docker_client.images.get(tag)


def test_the_derived_image_has_no_pip_and_no_network() -> None:
    """The skill runs next to its packages, not next to an installer: no pip, no index, no network."""
    module = (b"import importlib.util\nimport socket\n\n\ndef f():\n"
              b"    try:\n        socket.create_connection(('pypi.org', 443), timeout=2)\n"
              b"        net = 'open'\n    except OSError:\n        net = 'closed'\n"
              b"    return [importlib.util.find_spec('pip') is None, net]\n")
    test = b"from t import f\n\n\ndef test_f():\n    assert f() == [True, 'closed']\n"
    files = skill(module, test)
    files["t.py"] = b"import tabulate  # noqa: F401\n" + files["t.py"]
    report = evaluate(submission_from_files(files), policy=policy())
    assert report.dependencies is not None
    assert report.tests.passed == 1 and report.tests.failed == 0, report.output


def test_a_resubmitted_lock_cannot_name_a_package_off_the_allowlist() -> None:
    sub = submission_from_files(PLAIN)
    text = (sub.lock or b"").decode()
    forged = text.replace('# requires: ["tabulate>=0.9"]', '# requires: ["requests"]')
    forged = forged.replace("tabulate==", "requests==")
    files = dict(PLAIN)
    files["skill.toml"] = files["skill.toml"].replace(b"tabulate>=0.9", b"requests")
    files[deps.LOCK_NAME] = forged.encode()
    with pytest.raises(SubmissionError, match="requests is not on the package allowlist"):
        submission_from_files(files)
