"""Skills with third-party requirements, for real: uv resolves against PyPI, the host downloads the
wheels, Docker builds the derived image with the network off, the skill runs in it; every intake
error is a ``rejected`` verdict with nothing built or run; a consumer without the packages refuses
the version and keeps serving the old one."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandgate import deps
from sandgate.config import Settings, get_settings
from sandgate.errors import SubmissionError
from sandgate.evaluation import evaluate, evaluate_path
from sandgate.policy import load_policy, parse_policy
from sandgate.registry import LoadFailed, RegistryEvent, connect
from sandgate.report import Verdict
from sandgate.sandbox.deps_image import DERIVED_LABEL, LOCK_LABEL, SANDBOX_TAG_LABEL, derived_tag, prune
from sandgate.store import open_store, pointers, versions
from sandgate.submission import submission_from_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "skills"
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("sandbox_image", "no_leftovers")]


def policy():
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"]["timeout_seconds"] = 60
    data["mutation"]["max_mutants"] = 4
    return parse_policy(data, name="test-deps")


def table_skill(requirements: str = '["tabulate>=0.9"]', name: str = "table") -> dict[str, bytes]:
    return {
        "skill.toml": f'name = "{name}"\nentrypoint = "table:render"\nrequirements = {requirements}\n'.encode(),
        "table.py": (b"from tabulate import tabulate\n\n\ndef render(rows):\n"
                     b"    if not rows:\n        raise ValueError('no rows')\n"
                     b"    return tabulate(rows, headers='firstrow', tablefmt='plain')\n"),
        "tests/test_table.py": (b"import pytest\nimport tabulate\nfrom table import render\n\n\n"
                                b"def test_render():\n    assert render([['a', 'b'], [1, 2]]).split() == "
                                b"['a', 'b', '1', '2']\n\n\ndef test_empty():\n"
                                b"    with pytest.raises(ValueError):\n        render([])\n\n\n"
                                b"def test_the_locked_version_is_the_one_installed():\n"
                                b"    assert tabulate.__version__\n"),
    }


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty SANDGATE_HOME: no lock cache, no wheelhouse (the image stays the session's)."""
    home = tmp_path / "home"
    monkeypatch.setenv("SANDGATE_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def derived_images(docker_client) -> set[str]:
    images = docker_client.images.list(filters={"label": [f"{DERIVED_LABEL}=true",
                                                          f"{SANDBOX_TAG_LABEL}={Settings().image}"]})
    return {image.id for image in images}


# --------------------------------------------------------------------------- the real path


def test_a_pure_python_requirement_is_downloaded_built_offline_and_then_cached(fresh_home, docker_client) -> None:
    sub = submission_from_files(table_skill())
    lock = deps.parse_lock(sub.lock or b"")
    assert set(lock.versions) == {"tabulate"}
    tag = derived_tag(Settings().image, lock.hash)
    try:  # our own derived image (named from our sandbox image): force the first build
        docker_client.images.remove(tag, force=True)
    except Exception:  # noqa: BLE001 - absent
        pass
    first = evaluate(sub, policy=policy())
    assert first.verdict is Verdict.passed, first.reasons
    d = first.dependencies
    assert d is not None and d.built and d.lock_hash == lock.hash and d.image == tag
    assert d.download_seconds > 0 and d.build_seconds > 0
    assert first.sandbox is not None and first.sandbox.image == tag and first.sandbox.image_id == d.image_id
    assert d.packages == lock.versions
    # the wheel is in the content-addressed wheelhouse, under one of the lock's hashes
    stored = list((fresh_home / "wheelhouse" / "sha256").glob("*/tabulate-*.whl"))
    assert len(stored) == 1 and stored[0].parent.name in lock.pins["tabulate"].hashes
    labels = docker_client.images.get(tag).labels
    assert labels[LOCK_LABEL] == lock.hash and labels["sandgate.deps.tabulate"] == lock.versions["tabulate"]

    second = evaluate(submission_from_files(table_skill()), policy=policy())
    assert second.verdict is Verdict.passed, second.reasons
    assert second.dependencies is not None and not second.dependencies.built
    assert second.dependencies.lock_hash == lock.hash and second.dependencies.image_id == d.image_id


def test_pandas_skill_runs_in_its_derived_image() -> None:
    report = evaluate_path(EXAMPLES / "csv_report", policy=load_policy("default"))
    assert report.verdict is Verdict.passed, report.reasons
    d = report.dependencies
    assert d is not None and {"pandas", "numpy"} <= set(d.packages)
    assert d.lock_hash.startswith("sha256:") and d.image_id and d.image_id.startswith("sha256:")
    assert report.tests.passed == report.tests.collected >= 5
    assert report.oracle is not None


def test_the_sandbox_image_has_no_third_party_packages(docker_client) -> None:
    """Without requirements a skill runs in the plain image: importing tabulate fails there."""
    files = table_skill()
    files["skill.toml"] = b'name = "table"\nentrypoint = "table:render"\n'
    report = evaluate(submission_from_files(files), policy=policy())
    assert report.verdict is not Verdict.passed and report.dependencies is None
    assert "tabulate" in report.output


def test_stored_files_keep_their_lock_and_hash_without_resolving(monkeypatch: pytest.MonkeyPatch) -> None:
    sub = submission_from_files(table_skill())
    assert deps.LOCK_NAME in sub.files

    def no_resolver(*_args: object) -> tuple[int, str, str]:
        raise AssertionError("a stored version must not be resolved again")

    monkeypatch.setattr(deps, "_compile", no_resolver)
    again = submission_from_files(dict(sub.files))  # re-evaluation, rollback: the stored files
    assert again.content_hash == sub.content_hash and again.lock == sub.lock
    # the same requirements give the same lock (cache key) in a new submission too
    assert submission_from_files(table_skill()).content_hash == sub.content_hash


# --------------------------------------------------------------------------- intake errors


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        ('["requests>=2"]', "requests is not on the package allowlist"),
        ('["pandas<2"]', "pandas 1.5.3 is outside the range the allowlist"),
        ('["pydantic==2.5.0", "pydantic-core==2.20.0"]', "cannot be resolved together (resolver: "),
        ('["tabulate[widechars]"]', "wcwidth (pulled in by tabulate) is not on the package allowlist"),
        ('["tabulate @ https://files.example.invalid/tabulate-0.9.0-py3-none-any.whl"]', "URLs are not allowed"),
        ('["tabulate @ git+https://github.com/astanin/python-tabulate"]', "VCS references are not allowed"),
        ('["./vendor/tabulate"]', "local paths and files are not allowed"),
        ('["--extra-index-url https://evil.example.invalid/simple"]', "index and pip options"),
        ('["-i https://evil.example.invalid/simple", "tabulate"]', "index and pip options"),
    ],
)
def test_intake_errors_are_rejected_with_nothing_built_or_run(
    tmp_path: Path, docker_client, requirements: str, message: str
) -> None:
    skill_dir = tmp_path / "table"
    for rel, data in table_skill(requirements).items():
        (skill_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (skill_dir / rel).write_bytes(data)
    before = derived_images(docker_client)
    report = evaluate_path(skill_dir, policy=policy())
    assert report.verdict is Verdict.rejected
    assert message in report.reasons[0].message, report.reasons[0].message
    if "allowlist" in message:
        assert str(ROOT / "policies" / "packages.toml") in report.reasons[0].message
    assert report.sandbox is None and report.dependencies is None
    assert derived_images(docker_client) == before


def test_a_source_only_package_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "packages.toml").write_text('[packages]\ndocopt = ""  # sdist only on PyPI\n')
    monkeypatch.setenv("SANDGATE_POLICIES_DIR", str(policies))
    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        with pytest.raises(SubmissionError) as info:
            submission_from_files(table_skill('["docopt"]'))
    finally:
        get_settings.cache_clear()
    assert str(info.value) == ("docopt has no wheel for Python 3.11 on x86_64-manylinux_2_28 (only a source "
                               "distribution); the sandbox installs wheels only")


def test_a_hand_written_lock_is_rejected() -> None:
    files = table_skill()
    files[deps.LOCK_NAME] = b"tabulate==0.9.0 --hash=sha256:" + b"0" * 64 + b"\n"
    with pytest.raises(SubmissionError, match="not a lock written by sandgate"):
        submission_from_files(files)
    good = submission_from_files(table_skill())
    other = dict(good.files)
    other["skill.toml"] = other["skill.toml"].replace(b"tabulate>=0.9", b"tabulate>=0.9.1")
    with pytest.raises(SubmissionError, match="was generated for"):
        submission_from_files(other)


# --------------------------------------------------------------------------- consumers


def _store_version(store, files: dict[str, bytes]) -> int:
    sub = submission_from_files(files)
    version, _ = versions.create_version(store, submission=sub, actor="test")
    pointers.promote(store, name=sub.name, number=version.number, actor="test", reason="test", force=True)
    return version.number


def test_a_consumer_without_the_packages_refuses_the_version_and_keeps_the_old(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    plain = table_skill("[]", name="table")
    plain["table.py"] = b"def render(rows):\n    return 'v1'\n"
    plain["tests/test_table.py"] = b"from table import render\n\ndef test_render():\n    assert render([]) == 'v1'\n"
    _store_version(store, plain)
    events: list[RegistryEvent] = []
    with connect(url, cache_dir=tmp_path / "cache", watch=False, on_event=events.append) as registry:
        assert registry.call("table", []) == "v1"
        number = _store_version(store, table_skill(name="table"))
        registry.refresh()
        failed = [e for e in events if e.error is not None]
        assert failed and isinstance(failed[-1].error, LoadFailed)
        locked = deps.parse_lock(versions.get_version_files(store, name="table", number=number)[deps.LOCK_NAME])
        wanted = f"tabulate=={locked.versions['tabulate']} (not installed)"
        assert wanted in str(failed[-1].error) and failed[-1].error.code == "missing_packages"
        assert f"sandgate deps install table@{number}" in str(failed[-1].error)
        assert registry.call("table", []) == "v1"  # the old version keeps serving
    store.close()

    # what the operator runs on that consumer's host: here into a fresh environment
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    deps.install_lock(locked, python=python)
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('tabulate'))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == locked.versions["tabulate"]
    shown = subprocess.run([sys.executable, "-m", "sandgate", "deps", "show", f"table@{number}"],
                           capture_output=True, text=True, env={**os.environ, "SANDGATE_DATABASE_URL": url})
    assert shown.returncode == 0, shown.stderr
    assert locked.hash in shown.stdout and wanted in shown.stdout


def test_prune_removes_the_least_recently_used(docker_client, fresh_home, tmp_path: Path) -> None:
    """Two label-only stand-ins (built here, from our sandbox image) are used long ago and very long
    ago; every other derived image of ours just now. Keeping all but one removes the oldest only."""
    import io
    import time

    from sandgate.sandbox.deps_image import _touch

    settings = Settings()
    made = []
    for digit in "ef":
        tag = derived_tag(settings.image, "sha256:" + digit * 64)
        dockerfile = (f"FROM {settings.image}\nLABEL {DERIVED_LABEL}=true {SANDBOX_TAG_LABEL}={settings.image} "
                      f"{LOCK_LABEL}=sha256:{digit * 64}\n")
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none", rm=True)
        made.append(tag)
    try:
        others = [t for image in docker_client.images.list(filters={"label": [
            f"{DERIVED_LABEL}=true", f"{SANDBOX_TAG_LABEL}={settings.image}"]}) for t in image.tags if t not in made]
        for tag in others:
            _touch(settings, tag)
        now = time.time()
        for tag, age in zip(made, (100, 1000), strict=True):
            _touch(settings, tag)
            record = fresh_home / "deps-images" / (tag.replace("/", "_").replace(":", "__") + ".json")
            os.utime(record, (now - age, now - age))
        removed = prune(docker_client, keep=len(others) + 1)
        assert removed == [made[1]]
        remaining = {t for image in docker_client.images.list(filters={"label": f"{DERIVED_LABEL}=true"})
                     for t in image.tags}
        assert made[0] in remaining and made[1] not in remaining and set(others) <= remaining
    finally:
        for tag in made:
            try:
                docker_client.images.remove(tag)
            except Exception:  # noqa: BLE001 - already pruned
                pass
