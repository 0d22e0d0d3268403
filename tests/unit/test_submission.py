"""Intake (sandgate.submission): every rule, accepted and rejected, and the content hash."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import unicodedata
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sandgate.errors import SubmissionError
from sandgate.submission import (
    DEFAULT_TEST_PATTERNS,
    IntakeLimits,
    Manifest,
    SandboxRequest,
    Submission,
    hash_files,
    load_submission,
    submission_from_files,
)

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "skills"

MANIFEST = (
    b'name = "greet"\ndescription = "Say hello"\nentrypoint = "greet:hello"\nrequirements = []\n'
)
MODULE = b'def hello(name: str) -> str:\n    return f"hello {name}"\n'
TEST = (
    b'from greet import hello\n\n\ndef test_hello() -> None:\n    assert hello("x") == "hello x"\n'
)


def skill(**changes: bytes | None) -> dict[str, bytes]:
    """A valid minimal skill; ``changes`` add, replace (bytes) or remove (None) files."""
    files = {"skill.toml": MANIFEST, "greet.py": MODULE, "tests/test_greet.py": TEST}
    for path, data in changes.items():
        if data is None:
            files.pop(path, None)
        else:
            files[path] = data
    return files


def with_files(
    extra: Mapping[str, bytes], base: Mapping[str, bytes] | None = None
) -> dict[str, bytes]:
    files = dict(skill() if base is None else base)
    files.update(extra)
    return files


def manifest(text: str) -> dict[str, bytes]:
    return skill(**{"skill.toml": text.encode()})


def rejected(files: Mapping[str, bytes], **kwargs: Any) -> SubmissionError:
    with pytest.raises(SubmissionError) as info:
        submission_from_files(files, **kwargs)
    return info.value


def write_tar(path: Path, files: Mapping[str, bytes], *, gz: bool = True, mtime: int = 0,
              prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: Mapping[str, bytes], *, prefix: str = "",
              date: tuple[int, int, int, int, int, int] = (2020, 1, 1, 0, 0, 0)) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(prefix + name, date_time=date), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return path


def write_dir(root: Path, files: Mapping[str, bytes]) -> Path:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


# --------------------------------------------------------------------------- accepted


def test_minimal_skill_is_accepted() -> None:
    sub = submission_from_files(skill())
    assert isinstance(sub, Submission)
    assert sub.name == "greet"
    assert sub.manifest == Manifest(name="greet", description="Say hello", entrypoint="greet:hello")
    assert sub.manifest.module == "greet" and sub.manifest.function == "hello"
    assert sub.manifest.requirements == [] and sub.manifest.tests is None
    assert sub.manifest.sandbox is None
    assert list(sub.files) == ["greet.py", "skill.toml", "tests/test_greet.py"]
    assert sub.files["greet.py"] == MODULE
    assert sub.test_files() == ["tests/test_greet.py"]
    assert sub.module_files() == ["greet.py"]
    assert sub.content_hash.startswith("sha256:") and len(sub.content_hash) == 7 + 64


def test_files_are_read_only_and_sorted() -> None:
    sub = submission_from_files(dict(reversed(list(skill().items()))))
    assert list(sub.files) == sorted(sub.files)
    with pytest.raises(TypeError):
        sub.files["x.py"] = b""  # type: ignore[index]


def test_submission_is_hashable_and_comparable() -> None:
    a, b = submission_from_files(skill()), submission_from_files(skill())
    assert a == b and hash(a) == hash(b)


def test_readme_and_small_data_files_are_allowed() -> None:
    files = with_files({
        "README.md": b"# greet\n", "README": b"x", "tests/README.rst": b"x", "readme.txt": b"x",
        "data/words.json": b"[]", "data/table.csv": b"a,b\n", "notes.txt": b"", "doc.md": b"",
        "conf/extra.toml": b"a = 1\n", "conf/x.yaml": b"a: 1\n", "conf/y.yml": b"a: 1\n",
    })
    assert set(files) <= set(submission_from_files(files).files)


def test_package_entrypoints() -> None:
    files = manifest('name = "greet"\nentrypoint = "pkg.mod:run"\n')
    files.update({"pkg/__init__.py": b"", "pkg/mod.py": b"def run():\n    pass\n"})
    sub = submission_from_files(files)
    assert sub.module_files() == ["greet.py", "pkg/__init__.py", "pkg/mod.py"]
    files = manifest('name = "greet"\nentrypoint = "pkg:run"\n')
    files["pkg/__init__.py"] = b"def run():\n    pass\n"
    assert submission_from_files(files).manifest.entrypoint == "pkg:run"


def test_default_test_pattern_finds_top_level_and_nested_tests() -> None:
    assert DEFAULT_TEST_PATTERNS == ("tests/**/test_*.py", "test_*.py")
    files = with_files({
        "test_top.py": TEST, "tests/unit/test_deep.py": TEST, "tests/helpers.py": b"",
        "tests/__init__.py": b"", "sub/test_not_a_test.py": b"", "tests/test_data.json": b"{}",
    })
    sub = submission_from_files(files)
    assert sub.test_files() == ["test_top.py", "tests/test_greet.py", "tests/unit/test_deep.py"]
    assert sub.module_files() == ["greet.py", "sub/test_not_a_test.py", "tests/__init__.py",
                                  "tests/helpers.py"]


@pytest.mark.parametrize(
    ("tests", "expected"),
    [
        ("checks", ["checks/deep/test_b.py", "checks/test_a.py"]),
        ("checks/", ["checks/deep/test_b.py", "checks/test_a.py"]),
        ("checks/*_spec.py", ["checks/a_spec.py"]),
        ("**/*_spec.py", ["checks/a_spec.py", "top_spec.py"]),
        ("checks/test_a.py", ["checks/test_a.py"]),
    ],
)
def test_manifest_tests_selects_test_files(tests: str, expected: list[str]) -> None:
    files = manifest(f'name = "greet"\nentrypoint = "greet:hello"\ntests = "{tests}"\n')
    files.update({"checks/test_a.py": TEST, "checks/deep/test_b.py": TEST,
                  "checks/a_spec.py": TEST, "top_spec.py": TEST})
    sub = submission_from_files(files)
    assert sub.test_files() == expected
    assert "tests/test_greet.py" in sub.module_files()


def test_single_top_level_directory_is_stripped() -> None:
    nested = {f"greet/{name}": data for name, data in skill().items()}
    assert submission_from_files(nested) == submission_from_files(skill())


def test_a_top_level_directory_without_manifest_is_not_stripped() -> None:
    nested = {f"greet/{name}": data for name, data in skill().items() if name != "skill.toml"}
    assert "skill.toml is missing" in str(rejected(nested))


def test_names_are_normalised_to_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "data/café.txt")
    sub = submission_from_files(with_files({decomposed: b"x"}))
    assert "data/caf\u00e9.txt" in sub.files and decomposed not in sub.files
    assert sub == submission_from_files(with_files({"data/caf\u00e9.txt": b"x"}))


def test_sandbox_request_is_parsed() -> None:
    files = manifest(
        'name = "greet"\nentrypoint = "greet:hello"\n'
        '[sandbox]\nruntime = "runsc"\ntimeout_seconds = 30\nmemory_mb = 256\npids = 64\n'
        'output_kb = 128\ncpus = 0.5\nwork_disk_mb = 16\n'
    )
    request = submission_from_files(files).manifest.sandbox
    assert request == SandboxRequest(runtime="runsc", timeout_seconds=30.0, memory_mb=256, pids=64,
                                     output_kb=128, cpus=0.5, work_disk_mb=16)


def test_sandbox_request_tightens_policy_limits() -> None:
    from sandgate.policy import effective_limits
    from sandgate.policy.model import Limits

    files = manifest('name = "greet"\nentrypoint = "greet:hello"\n[sandbox]\nruntime = "runsc"\n'
                     'memory_mb = 128\n')
    limits = effective_limits(Limits(), submission_from_files(files).manifest.sandbox)
    assert limits.runtime == "runsc" and limits.memory_mb == 128 and limits.pids == Limits().pids


def test_manifest_dumps_to_json() -> None:
    dumped = submission_from_files(skill()).manifest.model_dump(mode="json")
    assert dumped == {"name": "greet", "description": "Say hello", "entrypoint": "greet:hello",
                      "requirements": [], "tests": None, "sandbox": None, "examples": [],
                      "oracle": None}


def test_available_requirements_are_accepted() -> None:
    files = manifest('name = "greet"\nentrypoint = "greet:hello"\n'
                     'requirements = ["Attrs>=23", "more_itertools", "idna[all]==3.*"]\n')
    available = {"attrs": "24.2.0", "More-Itertools": "10.1", "idna": "3.7"}
    sub = submission_from_files(files, available_packages=available)
    assert sub.manifest.requirements == ["Attrs>=23", "more_itertools", "idna[all]==3.*"]


def test_bytearray_contents_are_accepted() -> None:
    files: dict[str, Any] = skill()
    files["greet.py"] = bytearray(MODULE)
    assert submission_from_files(files).files["greet.py"] == MODULE


@pytest.mark.parametrize("name", ["text_stats", "text_stats_v2", "text_stats_bad", "csv_summary",
                                  "unit_convert"])
def test_example_skills_pass_intake(name: str) -> None:
    sub = load_submission(EXAMPLES / name)
    assert sub.name == name.removesuffix("_v2").removesuffix("_bad")
    assert sub.test_files() == [f"tests/test_{sub.name}.py"]
    assert sub.module_files() == [f"{sub.name}.py"]


def test_example_versions_of_text_stats_differ() -> None:
    hashes = {load_submission(EXAMPLES / n).content_hash
              for n in ("text_stats", "text_stats_v2", "text_stats_bad")}
    assert len(hashes) == 3


# --------------------------------------------------------------------------- manifest


def test_manifest_missing() -> None:
    err = rejected(skill(**{"skill.toml": None}))
    assert err.code == "invalid_submission" and err.path == "skill.toml"
    assert "skill.toml is missing" in str(err)


def test_manifest_in_a_subdirectory_is_not_the_manifest() -> None:
    err = rejected(with_files({"conf/skill.toml": MANIFEST}, skill(**{"skill.toml": None})))
    assert "skill.toml is missing: the manifest must be at the top level" in str(err)


def test_manifest_not_toml() -> None:
    err = rejected(manifest('name = "greet"\nentrypoint = \n'))
    assert err.code == "invalid_submission"
    assert str(err).startswith("skill.toml is not valid TOML: ") and "line 2" in str(err)


def test_manifest_not_utf8() -> None:
    err = rejected(skill(**{"skill.toml": b"name = '\xff'"}))
    assert str(err) == "skill.toml is not valid UTF-8"


def test_manifest_problems_are_listed_one_per_line() -> None:
    err = rejected(manifest(
        'name = "Greet"\ndescription = 3\nentrypoint = "greet"\nrequirements = "x"\n'
        'colour = "red"\n[sandbox]\nmemory_mb = "512"\nnetwork = true\n'
    ))
    lines = str(err).splitlines()
    assert lines[0] == "skill.toml is invalid:"
    assert len(lines) == 8, lines
    text = str(err)
    assert "  - name: 'Greet' is not a skill name" in text
    assert "  - description: Input should be a valid string (got 3)" in text
    assert "  - entrypoint: 'greet' is not 'module:function'" in text
    assert "  - requirements: Input should be a valid list (got 'x')" in text
    assert "  - unknown key 'colour'" in text
    assert "  - sandbox.memory_mb: Input should be a valid integer (got '512')" in text
    assert "  - unknown key 'sandbox.network'" in text
    assert err.path == "skill.toml"


def test_manifest_missing_keys() -> None:
    err = rejected(manifest('description = "x"\n'))
    assert "missing required key 'name'" in str(err)
    assert "missing required key 'entrypoint'" in str(err)


@pytest.mark.parametrize(
    "name", ["Greet", "1greet", "_greet", "greet-skill", "greet skill", "", "g" * 64, "grèet"]
)
def test_bad_skill_names(name: str) -> None:
    err = rejected(manifest(f'name = "{name}"\nentrypoint = "greet:hello"\n'))
    assert f"name: {name!r} is not a skill name" in str(err)


def test_longest_skill_name_is_accepted() -> None:
    name = "g" * 63
    files = manifest(f'name = "{name}"\nentrypoint = "greet:hello"\n')
    assert submission_from_files(files).name == name


@pytest.mark.parametrize(
    "entrypoint",
    ["greet", "greet:", ":hello", "greet:hello:x", "greet-x:hello", "1greet:hello",
     "greet:class", "import:hello", "greet:hel-lo", "greet:hello()", "greet..x:hello",
     "greet/x:hello", " greet:hello"],
)
def test_bad_entrypoint_syntax(entrypoint: str) -> None:
    err = rejected(manifest(f'name = "greet"\nentrypoint = "{entrypoint}"\n'))
    assert f"entrypoint: {entrypoint!r} is not 'module:function'" in str(err)


def test_entrypoint_module_file_missing() -> None:
    err = rejected(manifest('name = "greet"\nentrypoint = "greeter:hello"\n'))
    assert err.code == "invalid_submission" and err.path == "skill.toml"
    assert str(err) == ("entrypoint 'greeter:hello': module file greeter.py "
                        "(or greeter/__init__.py) is not in the submission")


def test_entrypoint_nested_module_file_missing() -> None:
    err = rejected(manifest('name = "greet"\nentrypoint = "pkg.mod:run"\n'))
    assert "module file pkg/mod.py (or pkg/mod/__init__.py) is not in the submission" in str(err)


def test_entrypoint_must_not_be_a_test_file() -> None:
    err = rejected(manifest('name = "greet"\nentrypoint = "test_greet:hello"\n')
                   | {"test_greet.py": TEST})
    assert "test_greet.py is a test file, not a module" in str(err)


@pytest.mark.parametrize("tests", ["../x", "/abs", "a//b", "a\\\\b", ""])
def test_bad_tests_value(tests: str) -> None:
    err = rejected(manifest(f'name = "greet"\nentrypoint = "greet:hello"\ntests = "{tests}"\n'))
    assert "tests: " in str(err)


@pytest.mark.parametrize(
    ("sandbox", "message"),
    [
        ('runtime = "kata"', "sandbox.runtime: Input should be 'runc' or 'runsc'"),
        ("memory_mb = -5", "sandbox.memory_mb: Input should be greater than 0"),
        ("timeout_seconds = 0", "sandbox.timeout_seconds: Input should be greater than 0"),
        ("pids = 1.5", "sandbox.pids: Input should be a valid integer"),
        ("output_kb = true", "sandbox.output_kb: Input should be a valid integer"),
        ("timeout_seconds = nan", "sandbox.timeout_seconds: Input should be a finite number"),
        ("network = true", "unknown key 'sandbox.network'"),
    ],
)
def test_bad_sandbox_request(sandbox: str, message: str) -> None:
    err = rejected(manifest(f'name = "greet"\nentrypoint = "greet:hello"\n[sandbox]\n{sandbox}\n'))
    assert message in str(err)


# --------------------------------------------------------------------------- requirements


def _requiring(*requirements: str) -> dict[str, bytes]:
    listed = ", ".join(f'"{r}"' for r in requirements)
    return manifest(f'name = "greet"\nentrypoint = "greet:hello"\nrequirements = [{listed}]\n')


def test_requirement_not_on_the_allowlist_is_rejected_before_any_resolution() -> None:
    err = rejected(_requiring("requests>=2"))
    assert err.code == "invalid_submission"
    assert str(err) == ("requirement 'requests>=2': requests is not on the package allowlist "
                        f"{ROOT / 'policies' / 'packages.toml'}; an operator can add it there")


def test_requirement_not_in_the_image() -> None:
    err = rejected(_requiring("numpy"), available_packages={"requests": "2.32.0"})
    assert str(err) == "requirement 'numpy' is not available in the sandbox image"


def test_requirement_version_not_satisfied() -> None:
    err = rejected(_requiring("requests>=3"), available_packages={"requests": "2.32.0"})
    assert str(err) == ("requirement 'requests>=3' is not satisfied: the sandbox image provides "
                        "requests 2.32.0")


def test_requirement_with_an_unparseable_available_version() -> None:
    err = rejected(_requiring("weird>=1"), available_packages={"weird": "not a version"})
    assert "requirement 'weird>=1' is not satisfied" in str(err)


@pytest.mark.parametrize(
    ("requirement", "message"),
    [
        ("not a requirement!", "is not a valid PEP 508 requirement"),
        ("pkg @ https://example.invalid/pkg.whl", "URLs are not allowed"),
        ("https://example.invalid/pkg-1.0-py3-none-any.whl", "URLs are not allowed"),
        ("pkg @ git+https://example.invalid/pkg.git", "VCS references are not allowed"),
        ("git+https://example.invalid/pkg.git#egg=pkg", "VCS references are not allowed"),
        ("pkg @ file:///tmp/pkg", "URLs are not allowed"),
        ("./vendor/pkg", "local paths and files are not allowed"),
        ("/abs/pkg-1.0.tar.gz", "local paths and files are not allowed"),
        ("pkg-1.0-py3-none-any.whl", "local paths and files are not allowed"),
        ("--index-url https://example.invalid/simple", "index and pip options"),
        ("--extra-index-url=https://example.invalid/simple", "index and pip options"),
        ("-e .", "index and pip options"),
        ("pkg; python_version < '3.8'", "environment markers are not supported"),
    ],
)
def test_bad_requirement_syntax(requirement: str, message: str) -> None:
    err = rejected(_requiring(requirement), available_packages={"pkg": "1.0"})
    assert "requirements: " in str(err) and message in str(err)


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("path", "source", "message"),
    [
        ("greet.py", b"def hello(:\n    pass\n", "greet.py, line 1: invalid syntax"),
        ("tests/test_greet.py", b"x = 1\ndef test():\n  if True\n",
         "tests/test_greet.py, line 3: expected ':'"),
        ("greet.py", b"def hello():\nreturn 1\n", "greet.py, line 2: expected an indented block"),
        ("greet.py", b"x = 1\0\n", "greet.py"),
        ("greet.py", b"x = 1\ny = '\xff'\n", "greet.py, line 2: not valid UTF-8"),
        ("greet.py", b"# coding: bogus-codec\nx = 1\n", "greet.py, line 1: unknown encoding"),
    ],
)
def test_syntax_errors(path: str, source: bytes, message: str) -> None:
    err = rejected(skill(**{path: source}))
    assert err.code == "syntax_error" and err.path == path
    assert message in str(err)


@pytest.mark.parametrize("source", [b"x = " + b"-" * 200_000 + b"1\n", b"x" + b"[0]" * 100_000])
def test_sources_nested_too_deeply(source: bytes) -> None:
    err = rejected(skill(**{"greet.py": source}))
    assert err.code == "syntax_error"
    assert str(err) == "greet.py: cannot be parsed: nested too deeply"


def test_syntax_is_checked_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n".encode()
    submission_from_files(skill(**{"greet.py": MODULE + source}))
    assert not marker.exists()


def test_non_utf8_source_encoding_is_rejected() -> None:
    err = rejected(skill(**{"greet.py": b"# -*- coding: latin-1 -*-\nx = '\xe9'\n"}))
    assert err.code == "invalid_submission"
    assert str(err) == ("greet.py: declares the source encoding 'iso-8859-1'; "
                        "only UTF-8 sources are accepted")


def test_utf8_bom_and_cookie_are_fine() -> None:
    files = skill(**{"greet.py": b"\xef\xbb\xbf# -*- coding: utf-8 -*-\n" + MODULE})
    assert submission_from_files(files).files["greet.py"].startswith(b"\xef\xbb\xbf")


def test_trojan_source_bidi_controls_are_rejected() -> None:
    source = 'def hello(name):\n    return "x" # \u202e } \u2066\n'.encode()
    err = rejected(skill(**{"greet.py": source}))
    assert err.code == "invalid_submission"
    assert "greet.py, line 2: contains the bidirectional control character U+202E" in str(err)


# --------------------------------------------------------------------------- allowlist


@pytest.mark.parametrize(
    "name",
    ["lib.so", "run.sh", "tool.exe", "Makefile", "LICENSE", "greet.PY", "greet.pyi", "data.bin",
     "image.png", "archive.zip", "notes.rst", "x.ini", "x.cfg", "x.js"],
)
def test_file_types_outside_the_allowlist(name: str) -> None:
    err = rejected(with_files({name: b"x"}))
    assert err.code == "invalid_submission" and err.path == name
    assert f"{name!r}: file type not allowed" in str(err)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("conftest.py", "pytest would load it as a plugin"),
        ("tests/conftest.py", "pytest would load it as a plugin"),
        ("tests/CONFTEST.py", "pytest would load it as a plugin"),
        ("pytest.ini", "test-runner configuration is the platform's"),
        ("tox.ini", "test-runner configuration is the platform's"),
        ("setup.cfg", "test-runner configuration is the platform's"),
        ("pyproject.toml", "test-runner configuration is the platform's"),
        ("setup.py", "packaging scripts are not part of a skill"),
        (".coveragerc", "coverage configuration is the platform's"),
        (".semgrepignore", "it would hide code from the static scan"),
        ("sitecustomize.py", "imports it automatically at interpreter start-up"),
        ("pkg/usercustomize.py", "imports it automatically at interpreter start-up"),
        ("__pycache__/greet.cpython-311.pyc", "compiled bytecode is not allowed"),
        ("tests/__pycache__/x.txt", "compiled bytecode is not allowed"),
    ],
)
def test_forbidden_files(name: str, reason: str) -> None:
    err = rejected(with_files({name: b""}))
    assert err.code == "invalid_submission" and err.path == name
    assert str(err).startswith(f"{name!r}: ") and "is not allowed" in str(err)
    assert reason in str(err)


@pytest.mark.parametrize("name", ["greet.pyc", "lib/x.pyo"])
def test_bytecode_files(name: str) -> None:
    assert "compiled bytecode is not allowed" in str(rejected(with_files({name: b""})))


@pytest.mark.parametrize("name", ["evil.pth", "lib/site.PTH"])
def test_pth_files(name: str) -> None:
    assert ".pth files are not allowed" in str(rejected(with_files({name: b""})))


@pytest.mark.parametrize(
    ("name", "what"),
    [(".env", "files"), (".hidden.py", "files"), ("tests/.x.txt", "files"),
     (".git/config.txt", "directories"), ("a/.cache/x.json", "directories")],
)
def test_hidden_files_and_directories(name: str, what: str) -> None:
    err = rejected(with_files({name: b""}))
    assert f"hidden {what} are not allowed" in str(err)


# --------------------------------------------------------------------------- shadowing


@pytest.mark.parametrize(
    ("name", "module", "kind"),
    [
        ("pytest.py", "pytest", "the test toolchain"),
        ("_pytest/python.py", "_pytest", "the test toolchain"),
        ("py.py", "py", "the test toolchain"),
        ("pluggy.py", "pluggy", "the test toolchain"),
        ("coverage/__init__.py", "coverage", "the test toolchain"),
        ("semgrep.py", "semgrep", "the test toolchain"),
        ("sandgate/x.py", "sandgate", "the test toolchain"),
        ("sandgate_harness.py", "sandgate_harness", "the test toolchain"),
        ("iniconfig.py", "iniconfig", "the test toolchain"),
        ("packaging/version.py", "packaging", "the test toolchain"),
        ("json.py", "json", "standard-library"),
        ("os/__init__.py", "os", "standard-library"),
        ("site.py", "site", "standard-library"),
        ("unittest/mock.py", "unittest", "standard-library"),
        ("csv.py", "csv", "standard-library"),
    ],
)
def test_module_shadowing(name: str, module: str, kind: str) -> None:
    err = rejected(with_files({name: b""}))
    assert err.code == "invalid_submission" and err.path == name
    assert f"{name!r} would shadow" in str(err) and f"module {module!r}" in str(err)
    assert kind in str(err)


def test_data_directories_and_tests_package_do_not_shadow() -> None:
    files = with_files({"json/data.json": b"{}", "tests/__init__.py": b"", "email/x.txt": b""})
    assert "json/data.json" in submission_from_files(files).files


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/etc/greet.py", "is an absolute path"),
        ("C:/greet.py", "is an absolute path"),
        ("../evil.py", "has a '..' component (path traversal)"),
        ("tests/../../evil.py", "has a '..' component (path traversal)"),
        ("./greet2.py", "has a '.' component"),
        ("a//b.py", "has an empty path component"),
        ("tests/", "ends with '/'"),
        ("tests\\test_x.py", "contains a backslash"),
        ("evil\0.py", "contains a NUL character"),
        ("bell\x07.py", "contains the control character U+0007"),
        ("new\nline.py", "contains the control character U+000A"),
        ("del\x7f.py", "contains the control character U+007F"),
        ("zero\u200bwidth.py", "contains the invisible formatting character U+200B"),
        ("line\u2028sep.py", "contains the invisible formatting character U+2028"),
        ("bad\udcff.py", "is not valid UTF-8"),
        ("x" * 256 + ".py", "has a component longer than 255 bytes"),
        ("", "is empty"),
    ],
)
def test_unsafe_paths(name: str, problem: str) -> None:
    err = rejected(with_files({name: b""}))
    assert err.code == "invalid_submission"
    assert str(err).startswith(f"file name {name!r} {problem}")


@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066",
                                  "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c"])
def test_bidi_controls_in_names(char: str) -> None:
    name = f"gre{char}et.py"
    err = rejected(with_files({name: b""}))
    assert f"contains the bidirectional control character U+{ord(char):04X}" in str(err)
    assert "\\u" in str(err)  # the message shows the character escaped, never raw
    assert char not in str(err)


def test_case_collision() -> None:
    err = rejected(with_files({"Greet.py": b""}))
    assert "file names 'greet.py' and 'Greet.py' collide after case-folding" in str(err) or \
        "file names 'Greet.py' and 'greet.py' collide after case-folding" in str(err)


def test_case_collision_of_directories() -> None:
    err = rejected(with_files({"Tests/test_other.py": TEST}))
    assert "collide after case-folding" in str(err) and "'Tests'" in str(err)


def test_case_folding_beyond_ascii() -> None:
    err = rejected(with_files({"data/straße.txt": b"", "data/STRASSE.txt": b""}))
    assert "collide after case-folding" in str(err)


def test_nfc_collision() -> None:
    composed, decomposed = "data/caf\u00e9.txt", "data/cafe\u0301.txt"
    err = rejected(with_files({composed: b"1", decomposed: b"2"}))
    assert "collide after Unicode NFC normalisation" in str(err)


def test_file_and_directory_with_the_same_name() -> None:
    err = rejected(with_files({"data.txt": b"", "data.txt/x.py": b""}))
    assert "'data.txt' is both a file and a directory" in str(err)


def test_depth_limit() -> None:
    deep = "/".join(["d"] * 7) + "/x.py"  # 8 components: allowed
    assert deep in submission_from_files(with_files({deep: b""})).files
    deeper = "/".join(["d"] * 8) + "/x.py"
    err = rejected(with_files({deeper: b""}))
    assert f"{deeper!r} is nested 9 levels deep; the limit is 8" in str(err)


def test_depth_is_counted_after_stripping_the_top_directory() -> None:
    deep = "/".join(["d"] * 7) + "/x.py"
    nested = {f"greet/{name}": data for name, data in with_files({deep: b""}).items()}
    assert deep in submission_from_files(nested).files
    deeper = {f"greet/{name}": data for name, data in with_files({"e/" + deep: b""}).items()}
    assert "levels deep; the limit is 8" in str(rejected(deeper))


# --------------------------------------------------------------------------- sizes and counts


def test_python_file_size_limit() -> None:
    big = b"#" * (1024 * 1024) + b"\n"
    err = rejected(with_files({"big.py": big}))
    assert str(err) == "'big.py' has more than 1 MiB, the limit for Python files"
    just_fits = big[: 1024 * 1024 - 1] + b"\n"
    assert "big.py" in submission_from_files(with_files({"big.py": just_fits})).files


def test_data_file_size_limit() -> None:
    err = rejected(with_files({"data/big.json": b" " * (256 * 1024 + 1)}))
    assert str(err) == "'data/big.json' has more than 256 KiB, the limit for data files"


def test_manifest_is_a_data_file() -> None:
    big = MANIFEST + b"#" * (256 * 1024)
    assert "'skill.toml' has more than 256 KiB" in str(rejected(skill(**{"skill.toml": big})))


def test_total_size_limit() -> None:
    files = with_files({f"data/f{i}.txt": b"x" * 200_000 for i in range(30)})
    err = rejected(files)
    assert "the submission is larger than 5 MiB unpacked" in str(err)


def test_file_count_limit() -> None:
    files = with_files({f"data/f{i}.txt": b"" for i in range(198)})  # 3 + 198 = 201
    assert "the submission has more than 200 files" in str(rejected(files))
    files.pop("data/f0.txt")
    assert len(submission_from_files(files).files) == 200


def test_limits_can_be_tightened() -> None:
    limits = IntakeLimits(max_files=4, max_py_bytes=100, max_depth=2)
    assert len(submission_from_files(skill(), limits=limits).files) == 3
    too_many = with_files({"a.txt": b"", "b.txt": b""})
    assert "more than 4 files" in str(rejected(too_many, limits=limits))
    too_big = skill(**{"greet.py": MODULE * 3})
    assert "the limit for Python files" in str(rejected(too_big, limits=limits))
    assert "the limit is 2" in str(rejected(with_files({"a/b/c.txt": b""}), limits=limits))


@pytest.mark.parametrize("field", ["max_files", "max_py_bytes", "max_ratio"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"IntakeLimits.{field} must be positive"):
        IntakeLimits(**{field: 0})


# --------------------------------------------------------------------------- tests present


def test_no_test_files() -> None:
    err = rejected(skill(**{"tests/test_greet.py": None}))
    assert err.code == "invalid_submission"
    assert str(err) == "no test files (tests/test_*.py or test_*.py)"


def test_test_like_names_that_do_not_match() -> None:
    files = with_files(
        {"tests/greet_test.py": TEST, "check/test_x.py": TEST, "tests/test_x.txt": b""},
        skill(**{"tests/test_greet.py": None}),
    )
    assert str(rejected(files)) == "no test files (tests/test_*.py or test_*.py)"


def test_manifest_tests_matching_nothing() -> None:
    files = manifest('name = "greet"\nentrypoint = "greet:hello"\ntests = "spec"\n')
    assert str(rejected(files)) == "no test files (tests = 'spec')"


def test_empty_submission() -> None:
    assert str(rejected({})) == "the submission is empty"


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError, match="file names must be str"):
        submission_from_files({b"greet.py": MODULE})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="file contents must be bytes"):
        submission_from_files({"greet.py": "text"})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- content hash


def _reference_hash(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        digest.update(path.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return "sha256:" + digest.hexdigest()


def test_hash_formula() -> None:
    sub = submission_from_files(skill())
    assert sub.content_hash == _reference_hash(skill()) == hash_files(sub.files)
    assert hash_files({}) == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_hash_separates_names_from_contents() -> None:
    assert hash_files({"ab": b"c"}) != hash_files({"a": b"bc"})
    assert hash_files({"a": b"", "b": b"x"}) != hash_files({"a": b"x", "b": b""})


def test_hash_is_independent_of_order() -> None:
    forward = submission_from_files(skill())
    backward = submission_from_files(dict(reversed(list(skill().items()))))
    assert forward.content_hash == backward.content_hash


def test_one_changed_byte_changes_the_hash() -> None:
    base = submission_from_files(skill()).content_hash
    changed = submission_from_files(skill(**{"greet.py": MODULE.replace(b"hello ", b"hellO ")}))
    renamed = submission_from_files(with_files({"data/a.txt": b"x"}))
    renamed2 = submission_from_files(with_files({"data/b.txt": b"x"}))
    assert len({base, changed.content_hash, renamed.content_hash, renamed2.content_hash}) == 4


def test_same_hash_from_directory_tar_gz_tar_and_zip(tmp_path: Path) -> None:
    files = with_files({"README.md": b"# greet\n", "data/w\u00f6rds.json": b"[1, 2]\n"})
    expected = _reference_hash(files)
    sources = [
        write_dir(tmp_path / "dir", files),
        write_tar(tmp_path / "s.tar.gz", files),
        write_tar(tmp_path / "s.tgz", dict(reversed(list(files.items()))), mtime=1_700_000_000),
        write_tar(tmp_path / "s.tar", files, gz=False, prefix="greet/"),
        write_tar(tmp_path / "dot.tar.gz", files, prefix="./"),
        write_zip(tmp_path / "s.zip", files),
        write_zip(tmp_path / "later.zip", dict(reversed(list(files.items()))),
                  date=(2024, 6, 1, 12, 30, 0), prefix="greet/"),
    ]
    for source in sources:
        sub = load_submission(source)
        assert sub.content_hash == expected, source
        assert dict(sub.files) == dict(sorted(files.items())), source


def test_directory_mtime_does_not_change_the_hash(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    before = load_submission(root).content_hash
    os.utime(root / "greet.py", (1, 1))
    assert load_submission(root).content_hash == before


def test_archive_with_a_single_top_directory_and_directory_entries(tmp_path: Path) -> None:
    path = tmp_path / "s.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for directory in ("greet", "greet/tests"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in skill().items():
            info = tarfile.TarInfo(f"greet/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert load_submission(path) == submission_from_files(skill())


# --------------------------------------------------------------------------- load_submission


def test_load_submission_accepts_str_paths(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    assert load_submission(str(root)).name == "greet"


def test_directory_skips_pycache(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    write_dir(root, {"__pycache__/greet.cpython-311.pyc": b"\0" * 16,
                     "tests/__pycache__/x.pyc": b""})
    assert set(load_submission(root).files) == set(skill())


def test_directory_rules_are_the_same(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", with_files({"tests/conftest.py": b""}))
    with pytest.raises(SubmissionError, match="pytest would load it as a plugin"):
        load_submission(root)


def test_directory_rejects_symlinks(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    (root / "link.py").symlink_to(root / "greet.py")
    with pytest.raises(SubmissionError, match="'link.py' is a symbolic link; links are not"):
        load_submission(root)


def test_directory_rejects_symlinked_directories(tmp_path: Path) -> None:
    outside = write_dir(tmp_path / "outside", {"secret.txt": b"x"})
    root = write_dir(tmp_path / "s", skill())
    (root / "data").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SubmissionError, match="'data' is a symbolic link"):
        load_submission(root)


def test_directory_nested_too_deeply(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    (root / "/".join("d" * 12)).mkdir(parents=True)
    err = _load_error(root)
    assert "directory 'd/d/d/d/d/d/d/d/d' is nested deeper than 8 levels" in str(err)


def test_directory_with_too_many_entries(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    for i in range(20):
        (root / f"empty{i}").mkdir()
    err = _load_error(root, limits=IntakeLimits(max_members=10))
    assert str(err) == "the directory has more than 10 entries"


def test_fifo_is_not_a_submission(tmp_path: Path) -> None:
    fifo = tmp_path / "skill.tgz"
    os.mkfifo(fifo)
    assert "not a directory or an archive file" in str(_load_error(fifo))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match="no such file or directory"):
        load_submission(tmp_path / "nope")


def test_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "skill.rar"
    path.write_bytes(b"Rar!\x1a\x07\x00" + b"\0" * 600)
    with pytest.raises(SubmissionError, match="not a supported submission .*skill directory"):
        load_submission(path)


def test_single_file_is_not_a_submission(tmp_path: Path) -> None:
    path = tmp_path / "greet.py"
    path.write_bytes(MODULE)
    with pytest.raises(SubmissionError, match="greet.py: not a supported submission"):
        load_submission(path)


def _load_error(path: Path, **kwargs: Any) -> SubmissionError:
    with pytest.raises(SubmissionError) as info:
        load_submission(path, **kwargs)
    return info.value


def test_archive_rules_are_the_same(tmp_path: Path) -> None:
    err = _load_error(write_zip(tmp_path / "s.zip", skill(**{"greet.py": b"def (:\n"})))
    assert err.code == "syntax_error" and "greet.py, line 1" in str(err)
    err = _load_error(write_tar(tmp_path / "s.tgz", skill(**{"tests/test_greet.py": None})))
    assert str(err) == "no test files (tests/test_*.py or test_*.py)"


def test_available_packages_reach_load_submission(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", _requiring("attrs"))
    assert "is not available in the sandbox image" in str(_load_error(root, available_packages={"x": "1"}))
    sub = load_submission(root, available_packages={"attrs": "24.1"})
    assert sub.manifest.requirements == ["attrs"]


def test_limits_reach_load_submission(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "s", skill())
    assert "more than 2 files" in str(_load_error(root, limits=IntakeLimits(max_files=2)))


# --------------------------------------------------------------------------- what CPython reads


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"import os\rx = 1\n", "greet.py, line 1: a carriage return (CR) that is not part of a CRLF"),
        (b"x = 1\n# hidden\ros.system('id')\n", "greet.py, line 2: a carriage return (CR)"),
        (b"x = 1\r\ny = 2\n", "greet.py, line 2: mixes LF and CRLF line endings"),
        (b"x = 1\n\x0cimport os\n", "greet.py, line 2: contains the character U+000C"),
        (b"x = 1\x0b\n", "greet.py, line 1: contains the character U+000B"),
        (b"x = '\x1b[0m'\n", "greet.py, line 1: contains the character U+001B"),
        ("x = 1\u2028y = 2\n".encode(), "greet.py, line 1: contains the character U+2028 (LINE SEPARATOR)"),
        ("x = 1\u0085\n".encode(), "greet.py, line 1: contains the character U+0085"),
        ("x = 1\n\ufeffy = 2\n".encode(), "greet.py, line 2: contains the character U+FEFF"),
        ("import \uff53ubprocess\n".encode(),
         "greet.py, line 1: the identifier 'ｓubprocess' is read by Python as 'subprocess'"),
        ("\ufb01le = 1\n".encode(), "the identifier 'ﬁle' is read by Python as 'file'"),
    ],
    ids=["cr-only", "cr-hides-a-line", "mixed", "form-feed", "vertical-tab", "escape", "u2028",
         "nel", "inner-bom", "nfkc-import", "nfkc-ligature"],
)
def test_text_cpython_reads_differently_is_rejected(source: bytes, message: str) -> None:
    err = rejected(skill(**{"greet.py": source}))
    assert err.code == "invalid_submission", err
    assert message in str(err)


def test_every_refused_character_is_refused_wherever_it_stands() -> None:
    """The whole-text scan that decides whether the per-line look runs misses none of the
    characters that look refuses, at a file's start, in its middle or as its last character."""
    from sandgate import submission as intake

    refused = sorted(intake._ODD_CHARACTERS | intake._BIDI_CONTROLS)
    assert len(refused) > 60
    for ch in refused:
        for source, line in ((f"{ch}x = 1\n", 1), (f"x = 1\ny = '{ch}'\n", 2), (f"x = 1\n#{ch}", 2)):
            err = rejected(skill(**{"greet.py": source.encode()}))
            assert f"greet.py, line {line}: contains the " in str(err), (hex(ord(ch)), str(err))
            assert f"U+{ord(ch):04X}" in str(err)
    # a BOM is allowed as the first character only: a second one (the decoder keeps it) is
    # left to the parser, which refuses it, and one further on is refused by the look
    err = rejected(skill(**{"greet.py": b"\xef\xbb\xbf\xef\xbb\xbf" + MODULE}))
    assert (err.code, str(err)) == ("syntax_error", "greet.py, line 1: invalid non-printable character U+FEFF")
    err = rejected(skill(**{"greet.py": MODULE + "x = 1  # \ufeff\n".encode()}))
    assert "contains the character U+FEFF" in str(err)


def test_a_module_importing_a_test_file_is_refused_with_the_trees_the_source_check_built() -> None:
    err = rejected(skill(**{"greet.py": MODULE + b"from tests import test_greet\n"}))
    assert "imports the test file tests/test_greet.py" in str(err)
    # a syntax error anywhere is reported before an import of a test file
    err = rejected(skill(**{"greet.py": MODULE + b"import tests.test_greet\n", "zz.py": b"def (:\n"}))
    assert err.code == "syntax_error" and "zz.py, line 1" in str(err)


@pytest.mark.parametrize(
    "source",
    [MODULE.replace(b"\n", b"\r\n"), MODULE + "caf\u00e9 = 'd\u00e9j\u00e0 \u00fc'\n".encode(),
     MODULE + b"x = '\\x0c\\r'  # escapes are fine\n", b"\xef\xbb\xbf" + MODULE],
    ids=["crlf", "nfc-identifier", "escapes", "leading-bom"],
)
def test_sources_cpython_reads_as_written_are_accepted(source: bytes) -> None:
    assert submission_from_files(skill(**{"greet.py": source})).files["greet.py"] == source
