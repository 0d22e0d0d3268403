"""sandgate.deps without the network: allowlist, lock format, resolver outcomes (a fake compile),
environment checks, derived image tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandgate import deps
from sandgate.errors import ConfigError
from sandgate.sandbox.deps_image import derived_tag

ROOT = Path(__file__).resolve().parents[2]
H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64


def allowlist(tmp_path: Path, body: str) -> deps.Allowlist:
    path = tmp_path / "packages.toml"
    path.write_text(body)
    return deps.load_allowlist(path)


def uv_output(*pins: tuple[str, str, str]) -> str:
    """What ``uv pip compile --generate-hashes --annotation-style line`` prints."""
    out = []
    for name, version, via in pins:
        out += [f"{name}=={version} \\", f"    --hash=sha256:{H1} \\", f"    --hash=sha256:{H2}",
                f"    # via {via}"]
    return "\n".join(out) + "\n"


class FakeCompile:
    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], list[str] | None]] = []

    def __call__(self, requirements: list[str], constraints: list[str] | None) -> tuple[int, str, str]:
        self.calls.append((requirements, constraints))
        return self.answers.pop(0)


# --------------------------------------------------------------------------- allowlist


def test_the_shipped_allowlist_parses_and_gives_every_entry_a_reason() -> None:
    path = ROOT / "policies" / "packages.toml"
    found = deps.load_allowlist(path)
    assert {"numpy", "pandas", "python-dateutil", "pyyaml", "pydantic", "jsonschema", "regex",
            "tabulate"} <= set(found.ranges)
    entries = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    assert len(entries) == len(found.ranges)
    for line in entries:
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"no reason given: {line!r}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[packages]\nnumpy = 2\n", "the range must be a string"),
        ("[packages]\nnumpy = \"not a range\"\n", "is not a version range"),
        ("[other]\n", "unknown keys ['other']"),
        ("packages = 3\n", "[packages] must be a table"),
        ("[packages\n", "not a readable TOML file"),
    ],
)
def test_a_bad_allowlist_names_the_file_and_the_problem(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        allowlist(tmp_path, body)
    assert str(tmp_path / "packages.toml") in str(info.value) and message in str(info.value)


def test_a_missing_allowlist_permits_nothing(tmp_path: Path) -> None:
    found = deps.load_allowlist(tmp_path / "absent.toml")
    with pytest.raises(deps.DepsError, match="not on the package allowlist"):
        deps.lock_requirements(["numpy"], allowlist=found, cache_dir=tmp_path, compile=FakeCompile())


# --------------------------------------------------------------------------- locking


def test_a_lock_is_sandgates_format_cached_and_independent_of_spelling(tmp_path: Path) -> None:
    allowed = allowlist(tmp_path, '[packages]\nnumpy = ">=2,<3"\npandas = ">=2"\n')
    fake = FakeCompile((0, uv_output(("pandas", "2.2.0", "-r in"), ("numpy", "2.1.0", "pandas")), ""))
    text = deps.lock_requirements(["pandas>=2"], allowlist=allowed, cache_dir=tmp_path / "locks", compile=fake)
    assert fake.calls == [(["pandas>=2"], ["numpy<3,>=2", "pandas>=2"])]
    lock = deps.parse_lock(text)
    assert lock.versions == {"numpy": "2.1.0", "pandas": "2.2.0"}
    assert lock.requires == ("pandas>=2",)
    assert "# via" not in text and text.startswith(deps.LOCK_HEADER)
    # same requirements, other spelling: the cached lock, no resolver run, same hash
    again = deps.lock_requirements(["Pandas >= 2"], allowlist=allowed, cache_dir=tmp_path / "locks",
                                   compile=FakeCompile())
    assert again == text and deps.parse_lock(again).hash == lock.hash
    assert deps.check_lock(text.encode(), ["pandas>=2"], allowed).hash == lock.hash


def test_a_dependency_off_the_allowlist_names_who_pulled_it_in(tmp_path: Path) -> None:
    allowed = allowlist(tmp_path, '[packages]\ntabulate = ""\n')
    fake = FakeCompile((0, uv_output(("tabulate", "0.9.0", "-r in"), ("wcwidth", "0.2.13", "tabulate")), ""))
    with pytest.raises(deps.DepsError) as info:
        deps.lock_requirements(["tabulate[widechars]"], allowlist=allowed, cache_dir=tmp_path, compile=fake)
    assert str(info.value).startswith("wcwidth (pulled in by tabulate) is not on the package allowlist")
    assert str(tmp_path / "packages.toml") in str(info.value)


def test_a_wheel_less_package_is_named(tmp_path: Path) -> None:
    allowed = allowlist(tmp_path, '[packages]\ndocopt = ""\n')
    err = ("error: No solution found when resolving dependencies\n  cause: Because all versions of docopt "
           "have no usable wheels and you require docopt, we can conclude that ...\n")
    with pytest.raises(deps.DepsError) as info:
        deps.lock_requirements(["docopt"], allowlist=allowed, cache_dir=tmp_path, compile=FakeCompile((1, "", err)))
    assert str(info.value) == ("docopt has no wheel for Python 3.11 on x86_64-manylinux_2_28 (only a source "
                               "distribution); the sandbox installs wheels only")


def test_a_version_outside_the_range_is_told_apart_from_a_conflict(tmp_path: Path) -> None:
    allowed = allowlist(tmp_path, '[packages]\npandas = ">=2,<4"\nnumpy = ""\n')
    fake = FakeCompile((1, "", "error: No solution found\n  cause: pandas<2 and pandas>=2 ..."),
                       (0, uv_output(("pandas", "1.5.3", "-r in"), ("numpy", "1.26.0", "pandas")), ""))
    with pytest.raises(deps.DepsError) as info:
        deps.lock_requirements(["pandas<2"], allowlist=allowed, cache_dir=tmp_path, compile=fake)
    assert "pandas 1.5.3 is outside the range" in str(info.value) and "(pandas <4,>=2)" in str(info.value)
    assert fake.calls[1][1] is None  # the second run: without the allowlist's ranges


def test_a_conflict_carries_the_resolvers_message(tmp_path: Path) -> None:
    allowed = allowlist(tmp_path, '[packages]\npydantic = ""\npydantic-core = ""\n')
    message = "error: No solution found\n  cause: Because pydantic==2.5.0 depends on pydantic-core==2.14.1 ..."
    fake = FakeCompile((1, "", message), (1, "", message))
    with pytest.raises(deps.DepsError) as info:
        deps.lock_requirements(["pydantic==2.5.0", "pydantic-core==2.20.0"], allowlist=allowed,
                               cache_dir=tmp_path, compile=fake)
    assert "cannot be resolved together" in str(info.value)
    assert "pydantic==2.5.0 depends on pydantic-core==2.14.1" in str(info.value)


# --------------------------------------------------------------------------- carried locks


def _lock(tmp_path: Path) -> tuple[str, deps.Allowlist]:
    allowed = allowlist(tmp_path, '[packages]\ntabulate = ">=0.9,<1"\n')
    fake = FakeCompile((0, uv_output(("tabulate", "0.9.0", "-r in")), ""))
    return deps.lock_requirements(["tabulate"], allowlist=allowed, cache_dir=tmp_path / "l", compile=fake), allowed


def test_a_carried_lock_must_be_unedited_and_for_these_requirements(tmp_path: Path) -> None:
    text, allowed = _lock(tmp_path)
    with pytest.raises(deps.DepsError, match="not in the form sandgate writes"):
        deps.check_lock((text + "# a comment\n").encode(), ["tabulate"], allowed)
    with pytest.raises(deps.DepsError, match="not in the form sandgate writes"):
        deps.check_lock(text.replace(" \\\n", "  \\\n", 1).encode(), ["tabulate"], allowed)
    with pytest.raises(deps.DepsError, match=r"was generated for \['tabulate'\], skill.toml requires"):
        deps.check_lock(text.encode(), ["tabulate>=0.9.1"], allowed)
    with pytest.raises(deps.DepsError, match="not a lock written by sandgate"):
        deps.check_lock(b"tabulate==0.9.0 --hash=sha256:" + H1.encode() + b"\n", ["tabulate"], allowed)


def test_a_carried_lock_is_held_to_the_current_allowlist(tmp_path: Path) -> None:
    text, _ = _lock(tmp_path)
    narrowed = allowlist(tmp_path / "..", '[packages]\ntabulate = ">=0.10"\n')
    with pytest.raises(deps.DepsError, match="tabulate 0.9.0 is outside the range"):
        deps.check_lock(text.encode(), ["tabulate"], narrowed)
    removed = allowlist(tmp_path / "..", "[packages]\n")
    with pytest.raises(deps.DepsError, match="tabulate is not on the package allowlist"):
        deps.check_lock(text.encode(), ["tabulate"], removed)


def test_pins_need_hashes_and_exact_versions(tmp_path: Path) -> None:
    head = f"{deps.LOCK_HEADER}\n# requires: [\"x\"]\n{deps._TARGET_LINE}\n"
    with pytest.raises(deps.DepsError, match="has no --hash"):
        deps.parse_lock(head + "x==1.0\n")
    with pytest.raises(deps.DepsError, match="is not an exact pin"):
        deps.parse_lock(head + f"x>=1.0 --hash=sha256:{H1}\n")
    with pytest.raises(deps.DepsError, match="is not a --hash=sha256"):
        deps.parse_lock(head + "x==1.0 --hash=md5:abc\n")


# --------------------------------------------------------------------------- environments, images


def test_missing_packages_names_what_is_absent_or_different(tmp_path: Path) -> None:
    allowed = allowlist(tmp_path, '[packages]\na = ""\nb = ""\nc = ""\n')
    fake = FakeCompile((0, uv_output(("a", "1.0", "-r in"), ("b", "2.0", "a"), ("c", "3.0", "a")), ""))
    lock = deps.parse_lock(deps.lock_requirements(["a"], allowlist=allowed, cache_dir=tmp_path, compile=fake))
    have = {"a": "1.0", "b": "2.1"}
    assert deps.missing_packages(lock, distributions=have.get) == [
        "b==2.0 (installed: 2.1)", "c==3.0 (not installed)"]
    assert deps.missing_packages(lock, distributions={"a": "1.0", "b": "2.0", "c": "3.0"}.get) == []


def test_derived_tags_carry_the_sandbox_image_name_and_the_lock_hash() -> None:
    lock_hash = "sha256:" + "0123456789abcdef" * 4
    assert derived_tag("sandgate-python:deps", lock_hash) == "sandgate-python-deps:deps-0123456789abcdef"
    assert derived_tag("registry:5000/sg/python:1.2", lock_hash) == "registry:5000/sg/python-deps:1.2-0123456789abcdef"
    assert derived_tag("sandgate-python", lock_hash) == "sandgate-python-deps:latest-0123456789abcdef"
    assert derived_tag("sandgate-python:a", lock_hash) != derived_tag("sandgate-python:b", lock_hash)


@pytest.mark.parametrize(
    "line",
    [
        "--index-url https://evil.example.invalid/simple",
        "--extra-index-url https://evil.example.invalid/simple",
        "-e git+https://evil.example.invalid/x.git#egg=x",
        "x @ https://evil.example.invalid/x.whl --hash=sha256:" + H1,
        "--find-links /tmp",
        "-r other.txt",
    ],
)
def test_a_carried_lock_cannot_smuggle_pip_options_or_urls(line: str) -> None:
    head = f"{deps.LOCK_HEADER}\n# requires: [\"x\"]\n{deps._TARGET_LINE}\n"
    with pytest.raises(deps.DepsError, match="is not an exact pin|is not a --hash"):
        deps.parse_lock(head + f"x==1.0 --hash=sha256:{H1}\n" + line + "\n")


@pytest.mark.parametrize("text", ["tabulate\n--index-url https://evil.example.invalid",
                                  "tabulate --index-url=https://evil.example.invalid"])
def test_a_requirement_cannot_carry_a_second_line_or_an_option(text: str) -> None:
    from sandgate.errors import SubmissionError
    from sandgate.submission import submission_from_files

    listed = text.replace("\n", "\\n")  # a TOML escape: the value holds a real newline
    files = {"skill.toml": f'name = "t"\nentrypoint = "t:f"\nrequirements = ["{listed}"]\n'.encode(),
             "t.py": b"def f():\n    return 1\n",
             "tests/test_t.py": b"from t import f\n\ndef test_f():\n    assert f()\n"}
    with pytest.raises(SubmissionError, match="requirements: "):
        submission_from_files(files)


def test_a_lock_can_never_replace_the_test_toolchain(tmp_path: Path) -> None:
    """Even an allowlisted pytest or coverage is refused: the harness's own tools are not the skill's."""
    assert {"pytest", "coverage", "pluggy", "packaging"} <= deps.toolchain_names()
    allowed = allowlist(tmp_path, '[packages]\nthing = ""\npytest = ""\n')
    fake = FakeCompile((0, uv_output(("thing", "1.0", "-r in"), ("pytest", "8.0.0", "thing")), ""))
    with pytest.raises(deps.DepsError) as info:
        deps.lock_requirements(["thing"], allowlist=allowed, cache_dir=tmp_path, compile=fake)
    assert str(info.value).startswith("pytest (pulled in by thing) is part of the sandbox's test toolchain")


def test_a_remote_client_leaves_locking_to_the_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandgate.submission import submission_from_files

    def no_resolver(*_args: object) -> tuple[int, str, str]:
        raise AssertionError("lock=False must not resolve")

    monkeypatch.setattr(deps, "_compile", no_resolver)
    files = {"skill.toml": b'name = "t"\nentrypoint = "t:f"\nrequirements = ["tabulate>=0.9"]\n',
             "t.py": b"def f():\n    return 1\n",
             "tests/test_t.py": b"from t import f\n\ndef test_f():\n    assert f()\n"}
    sub = submission_from_files(files, lock=False)
    assert sub.lock is None and deps.LOCK_NAME not in sub.files


def test_the_mutation_server_preloads_the_locked_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a derived image the mutation server imports the lock's packages before it forks."""
    from sandgate_harness.mutation import preload_dependencies

    (tmp_path / "sg_fake_dep").mkdir()
    (tmp_path / "sg_fake_dep" / "__init__.py").write_text("LOADED = True\n")
    (tmp_path / "sg_fake_mod.py").write_text("X = 1\n")
    info = tmp_path / "sg_fake_dep-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sg-fake-dep\nVersion: 1.0\n")
    (info / "RECORD").write_text("sg_fake_dep/__init__.py,,\nsg_fake_mod.py,,\nsg_fake_dep-1.0.dist-info/RECORD,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "sg_fake_dep", raising=False)
    assert preload_dependencies(str(tmp_path)) == ["sg_fake_dep", "sg_fake_mod"]
    assert __import__("sys").modules["sg_fake_dep"].LOADED
    assert preload_dependencies(str(tmp_path / "absent")) == []
