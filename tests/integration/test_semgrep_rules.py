"""The platform's semgrep rules (policies/semgrep) against annotated fixtures.

Fixtures live in tests/fixtures/semgrep/ and use semgrep's test annotations:

    # ruleid: rule-a, rule-b     the next code line must produce exactly
                                 these rules (and no other rule)
    # ok: rule-a                 the next code line must NOT produce rule-a

Consecutive annotation lines apply together to the first code line after
them. Every finding in a fixture file must be on a line annotated with its
rule id, so an unannotated line is an implicit "ok: <every rule>".

All fixture files are scanned in ONE scan through the ``semgrep_scan``
fixture, a callable ``semgrep_scan(files: dict[str, bytes], rules_dir: Path)
-> dict`` returning semgrep's raw JSON report. It runs the engine locally
(see semgrep_sandbox.py), which runs it inside the real sandbox image.

The rule files are read with a small line-based reader (the venv has no YAML
library) that relies on the layout every rule file uses; the reader is
cross-checked against the engine: every rule must fire in the fixtures, and
the metadata semgrep reports for it must equal what the reader found.
"""

from __future__ import annotations

import io
import re
import shutil
import tokenize
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.integration.semgrep_sandbox import (
    ScanFailed,
    SemgrepUnavailable,
    scan_files_in_sandbox,
)

ScanFn = Callable[[dict[str, bytes], Path], dict]

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "policies" / "semgrep"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "semgrep"
#: fixture trees handed to semgrep; their relative paths are the scanned names
FIXTURE_TREES = ("cases", "clean_skill")
CLEAN_SKILL = "clean_skill"

OUR_SEVERITIES = {"critical", "high", "medium", "low", "info"}
SEMGREP_SEVERITY_FOR = {
    "critical": "ERROR",
    "high": "ERROR",
    "medium": "WARNING",
    "low": "INFO",
    "info": "INFO",
}
RULE_ID_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
#: pytest's test-file basenames (conftest.py included); see process-control.yml
TEST_FILE_RE = re.compile(r"^(test_.*\.py|.*_test\.py|conftest\.py)$")


# --------------------------------------------------------------------------
# rule inventory (line-based reader for our rule-file layout)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    id: str
    file: str
    semgrep_severity: str | None
    metadata: dict[str, str]
    has_message: bool


def _read_rule_file(path: Path) -> list[Rule]:
    rules: list[Rule] = []
    current: dict | None = None
    in_metadata = False

    def flush() -> None:
        if current is not None:
            rules.append(
                Rule(
                    id=current["id"],
                    file=path.name,
                    semgrep_severity=current.get("severity"),
                    metadata=dict(current["metadata"]),
                    has_message=current.get("message", False),
                )
            )

    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^  - id: (\S+)\s*$", line):
            flush()
            current = {"id": match[1], "metadata": {}}
            in_metadata = False
            continue
        if current is None:
            continue
        if in_metadata:
            if match := re.match(r"^      ([A-Za-z_][\w-]*): (.+?)\s*$", line):
                current["metadata"][match[1]] = match[2].strip("'\"")
                continue
            if line.startswith("       ") or not line.strip():
                continue
            in_metadata = False
        if match := re.match(r"^    severity: (\S+)\s*$", line):
            current["severity"] = match[1]
        elif re.match(r"^    message: ?\S", line):
            current["message"] = True
        elif re.match(r"^    metadata:\s*$", line):
            in_metadata = True
    flush()
    return rules


def _rule_files() -> list[Path]:
    return sorted([*RULES_DIR.glob("*.yml"), *RULES_DIR.glob("*.yaml")])


def _load_inventory() -> dict[str, Rule]:
    inventory: dict[str, Rule] = {}
    for path in _rule_files():
        for rule in _read_rule_file(path):
            # duplicates are reported by test_rule_ids_are_unique
            inventory.setdefault(rule.id, rule)
    return inventory


RULE_FILES = _rule_files()
INVENTORY = _load_inventory()
RULE_IDS = sorted(INVENTORY)


# --------------------------------------------------------------------------
# fixture files and their annotations
# --------------------------------------------------------------------------

ANNOTATION_RE = re.compile(r"^\s*#\s*(ruleid|ok)\s*:\s*(.+?)\s*$")


@dataclass
class Annotations:
    #: (file, line) -> rule ids that must fire, exactly
    expected: dict[tuple[str, int], set[str]]
    #: (file, line) -> rule ids that must not fire
    ok: dict[tuple[str, int], set[str]]
    #: annotation blocks not followed by a code line: (file, annotation line)
    dangling: list[tuple[str, int]]


def _fixture_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for tree in FIXTURE_TREES:
        for path in sorted((FIXTURES_DIR / tree).rglob("*.py")):
            files[path.relative_to(FIXTURES_DIR).as_posix()] = path.read_bytes()
    return files


def _parse_annotations(files: dict[str, bytes]) -> Annotations:
    expected: dict[tuple[str, int], set[str]] = defaultdict(set)
    ok: dict[tuple[str, int], set[str]] = defaultdict(set)
    dangling: list[tuple[str, int]] = []
    for name, content in files.items():
        pending: list[tuple[int, str, list[str]]] = []
        for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
            if match := ANNOTATION_RE.match(line):
                ids = [part.strip() for part in match[2].split(",") if part.strip()]
                pending.append((number, match[1], ids))
                continue
            if not pending:
                continue
            if line.lstrip().startswith("#"):
                continue  # other comments (e.g. "# nosemgrep") between annotation and code
            if not line.strip():
                dangling.append((name, pending[0][0]))
            else:
                for _, kind, ids in pending:
                    (expected if kind == "ruleid" else ok)[(name, number)].update(ids)
            pending = []
        if pending:
            dangling.append((name, pending[0][0]))
    return Annotations(dict(expected), dict(ok), dangling)


FIXTURE_FILES = _fixture_files()
ANNOTATIONS = _parse_annotations(FIXTURE_FILES)


def _rule_id(check_id: str) -> str:
    """check_id is prefixed with the config dir path joined by dots."""
    return check_id.rsplit(".", 1)[-1]


def _source_line(name: str, line: int) -> str:
    lines = FIXTURE_FILES[name].decode("utf-8").splitlines()
    return lines[line - 1].strip() if 0 < line <= len(lines) else "<no such line>"


# --------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def semgrep_scan() -> ScanFn:
    """Scan ``files`` (relative name -> bytes) with the rules in ``rules_dir``.

    Returns semgrep's raw JSON report, from the real sandbox image's engine.
    """
    return scan_files_in_sandbox


def _scan_or_fail(scan: ScanFn, files: dict[str, bytes], rules_dir: Path) -> dict:
    try:
        return scan(files, rules_dir)
    except SemgrepUnavailable as exc:
        pytest.fail(f"semgrep engine unavailable: {exc}", pytrace=False)
    except ScanFailed as exc:
        pytest.fail(f"semgrep scan failed: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def fixture_report(semgrep_scan: ScanFn) -> dict:
    """ONE scan of every fixture file with the whole rule set."""
    return _scan_or_fail(semgrep_scan, FIXTURE_FILES, RULES_DIR)


@pytest.fixture(scope="module")
def fired(fixture_report: dict) -> dict[tuple[str, int], set[str]]:
    """(file, start line) -> rule ids that fired there."""
    by_line: dict[tuple[str, int], set[str]] = defaultdict(set)
    for result in fixture_report["results"]:
        by_line[(result["path"], result["start"]["line"])].add(_rule_id(result["check_id"]))
    return dict(by_line)


@pytest.fixture(scope="module")
def reported_rules(fixture_report: dict) -> dict[str, list[dict]]:
    """rule id -> the results semgrep reported for it."""
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for result in fixture_report["results"]:
        by_rule[_rule_id(result["check_id"])].append(result)
    return dict(by_rule)


# --------------------------------------------------------------------------
# the engine and the rule files
# --------------------------------------------------------------------------


def test_semgrep_engine_runs(semgrep_scan: ScanFn) -> None:
    report = _scan_or_fail(semgrep_scan, {"probe.py": b"x = 1\n"}, RULES_DIR)
    assert report["errors"] == []
    assert report["results"] == []


def test_rule_directory_is_not_empty() -> None:
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    assert RULE_IDS, "no rules found in the rule files"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_rule_file_loads_without_errors(
    semgrep_scan: ScanFn, rule_file: Path, tmp_path: Path
) -> None:
    """Each file on its own parses, and its rules stay quiet on the clean skill."""
    rules_dir = tmp_path / "semgrep"
    rules_dir.mkdir()
    shutil.copy(rule_file, rules_dir / rule_file.name)
    clean = {name: data for name, data in FIXTURE_FILES.items() if name.startswith(CLEAN_SKILL + "/")}
    report = _scan_or_fail(semgrep_scan, clean, rules_dir)
    assert report["errors"] == [], f"{rule_file.name}: semgrep errors {report['errors']}"
    assert report["results"] == []


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_rule_file_layout_is_readable(rule_file: Path) -> None:
    """Guard for the line-based reader: every `id:` in the file was read."""
    loose = re.findall(r"(?m)^\s*-?\s*id\s*:", rule_file.read_text(encoding="utf-8"))
    read = _read_rule_file(rule_file)
    assert read, f"{rule_file.name} defines no rules"
    assert len(loose) == len(read), (
        f"{rule_file.name}: {len(loose)} `id:` keys but {len(read)} rules in the expected "
        "layout ('  - id: X' under 'rules:', 4-space rule keys, 6-space metadata keys)"
    )


def test_rule_ids_are_unique() -> None:
    seen: dict[str, str] = {}
    duplicates = []
    for path in RULE_FILES:
        for rule in _read_rule_file(path):
            if rule.id in seen:
                duplicates.append(f"{rule.id} in {seen[rule.id]} and {path.name}")
            seen[rule.id] = path.name
    assert not duplicates, duplicates


def test_full_fixture_scan_has_no_errors(fixture_report: dict) -> None:
    assert fixture_report["errors"] == []
    scanned = set(fixture_report["paths"]["scanned"])
    assert scanned == set(FIXTURE_FILES), sorted(set(FIXTURE_FILES) - scanned)


def test_findings_only_come_from_known_rules(fixture_report: dict) -> None:
    unknown = {r["check_id"] for r in fixture_report["results"]} - {
        c for c in (r["check_id"] for r in fixture_report["results"]) if _rule_id(c) in INVENTORY
    }
    assert not unknown, f"findings from rules the inventory does not know: {sorted(unknown)}"


# --------------------------------------------------------------------------
# per rule
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_id_format(rule_id: str) -> None:
    assert RULE_ID_RE.match(rule_id), f"{rule_id!r}: rule ids must be kebab-case, no dots"


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_metadata(rule_id: str, reported_rules: dict[str, list[dict]]) -> None:
    rule = INVENTORY[rule_id]
    severity = rule.metadata.get("severity")
    assert severity in OUR_SEVERITIES, f"{rule_id}: metadata.severity={severity!r}"
    assert rule.metadata.get("category"), f"{rule_id}: metadata.category missing"
    assert rule.semgrep_severity == SEMGREP_SEVERITY_FOR[severity], (
        f"{rule_id}: semgrep severity {rule.semgrep_severity!r} does not match "
        f"metadata.severity {severity!r} (want {SEMGREP_SEVERITY_FOR[severity]})"
    )
    assert rule.has_message, f"{rule_id}: message missing"
    # what semgrep itself parsed must agree with the reader
    results = reported_rules.get(rule_id, [])
    assert results, f"{rule_id}: never fired in the fixtures, cannot cross-check metadata"
    for result in results:
        extra = result["extra"]
        assert extra["metadata"] == rule.metadata
        assert extra["severity"] == rule.semgrep_severity
        assert len(extra["message"].split()) >= 12, f"{rule_id}: message too terse to guide a fix"


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_has_positive_and_negative_fixtures(rule_id: str) -> None:
    positives = [key for key, ids in ANNOTATIONS.expected.items() if rule_id in ids]
    negatives = [key for key, ids in ANNOTATIONS.ok.items() if rule_id in ids]
    assert positives, f"{rule_id}: no '# ruleid: {rule_id}' fixture line"
    assert negatives, f"{rule_id}: no '# ok: {rule_id}' fixture line"


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_fires_exactly_where_annotated(
    rule_id: str, fired: dict[tuple[str, int], set[str]]
) -> None:
    problems = []
    for key, expected in sorted(ANNOTATIONS.expected.items()):
        if rule_id not in expected:
            continue
        got = fired.get(key, set())
        if got != expected:
            problems.append(
                f"{key[0]}:{key[1]} expected {sorted(expected)} got {sorted(got)}"
                f"  | {_source_line(*key)}"
            )
    for key, got in sorted(fired.items()):
        if rule_id in got and rule_id not in ANNOTATIONS.expected.get(key, set()):
            problems.append(f"{key[0]}:{key[1]} unexpected finding  | {_source_line(*key)}")
    assert not problems, f"{rule_id}:\n" + "\n".join(problems)


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_stays_quiet_on_ok_lines(
    rule_id: str, fired: dict[tuple[str, int], set[str]]
) -> None:
    noisy = [
        f"{key[0]}:{key[1]}  | {_source_line(*key)}"
        for key, ids in sorted(ANNOTATIONS.ok.items())
        if rule_id in ids and rule_id in fired.get(key, set())
    ]
    assert not noisy, f"{rule_id} fired on lines marked ok:\n" + "\n".join(noisy)


# --------------------------------------------------------------------------
# whole-fixture properties
# --------------------------------------------------------------------------


def test_annotations_are_well_formed() -> None:
    assert not ANNOTATIONS.dangling, f"annotations not followed by code: {ANNOTATIONS.dangling}"
    unknown = sorted(
        {i for ids in [*ANNOTATIONS.expected.values(), *ANNOTATIONS.ok.values()] for i in ids}
        - set(INVENTORY)
    )
    assert not unknown, f"annotations name unknown rules: {unknown}"
    contradictory = [
        key for key, ids in ANNOTATIONS.expected.items() if ids & ANNOTATIONS.ok.get(key, set())
    ]
    assert not contradictory, f"lines both ruleid and ok for one rule: {contradictory}"


def test_every_finding_is_annotated(fired: dict[tuple[str, int], set[str]]) -> None:
    stray = [
        f"{key[0]}:{key[1]} {sorted(ids - ANNOTATIONS.expected.get(key, set()))}"
        f"  | {_source_line(*key)}"
        for key, ids in sorted(fired.items())
        if ids - ANNOTATIONS.expected.get(key, set())
    ]
    assert not stray, "findings on lines without a matching '# ruleid:':\n" + "\n".join(stray)


def test_clean_skill_has_no_findings(semgrep_scan: ScanFn) -> None:
    """A realistic module + its tests: the scan the sandbox runs most often."""
    clean = {
        name[len(CLEAN_SKILL) + 1 :]: data
        for name, data in FIXTURE_FILES.items()
        if name.startswith(CLEAN_SKILL + "/")
    }
    assert set(clean) == {"word_stats.py", "tests/test_word_stats.py"}
    for name, data in clean.items():
        assert not ANNOTATION_RE.search(data.decode("utf-8")), f"{name} must carry no annotations"
    report = _scan_or_fail(semgrep_scan, clean, RULES_DIR)
    assert report["errors"] == []
    findings = [
        f"{r['path']}:{r['start']['line']} {_rule_id(r['check_id'])}" for r in report["results"]
    ]
    assert findings == []
    assert set(report["paths"]["scanned"]) == set(clean)


def _nosemgrep_targets(content: bytes) -> set[int]:
    """Lines a `# nosemgrep` / `# nosem` comment would silence if it were honoured:
    its own line for a trailing comment, else the next code line."""
    code_lines: set[int] = set()
    markers: list[int] = []
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    for token in tokenize.tokenize(io.BytesIO(content).readline):
        if token.type == tokenize.COMMENT and re.match(r"#\s*nosem(grep)?\b", token.string):
            markers.append(token.start[0])
        elif token.type not in skip:
            code_lines.add(token.start[0])
    targets = set()
    for line in markers:
        following = [n for n in code_lines if n >= line]
        if following:
            targets.add(min(following))
    return targets


def test_nosemgrep_does_not_suppress_findings(fired: dict[tuple[str, int], set[str]]) -> None:
    """The sandbox passes --disable-nosem: a submitter cannot silence a rule."""
    marked = [
        (name, line) for name, data in FIXTURE_FILES.items() for line in _nosemgrep_targets(data)
    ]
    assert len(marked) >= 3, "expected several '# nosemgrep' markers in the fixtures"
    silenced = [f"{n}:{i}  | {_source_line(n, i)}" for n, i in sorted(marked) if not fired.get((n, i))]
    assert not silenced, "'# nosemgrep' suppressed findings:\n" + "\n".join(silenced)
    unannotated = [f"{n}:{i}" for n, i in marked if not ANNOTATIONS.expected.get((n, i))]
    assert not unannotated, f"nosemgrep fixture lines need a '# ruleid:' too: {unannotated}"


def test_test_files_are_scanned_and_classified(fixture_report: dict) -> None:
    by_file: dict[str, set[str]] = defaultdict(set)
    for result in fixture_report["results"]:
        by_file[result["path"]].add(_rule_id(result["check_id"]))
    test_files = [n for n in FIXTURE_FILES if TEST_FILE_RE.match(PurePosixPath(n).name)]
    assert {"cases/tests/conftest.py", "cases/cli_test.py"} <= set(test_files)
    assert any(n.startswith("cases/tests/test_") for n in test_files)
    for name in test_files:
        if name.startswith("cases/"):
            assert by_file.get(name), f"{name}: test file produced no findings (not scanned?)"
    for name, rules in by_file.items():
        is_test_file = bool(TEST_FILE_RE.match(PurePosixPath(name).name))
        if is_test_file:
            assert "sys-exit-at-import" not in rules, name
        else:
            assert "sys-exit-in-test" not in rules, name
