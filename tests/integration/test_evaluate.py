"""Evaluation end to end against the real Docker engine: intake → sandbox → report → gates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandgate.config import Settings
from sandgate.evaluation import evaluate, evaluate_path
from sandgate.policy import load_policy, parse_policy
from sandgate.report import EvaluationReport, ReasonCode, Verdict
from sandgate.submission import submission_from_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "skills"
pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftovers")

MANIFEST = b'name = "adder"\ndescription = "adds"\nentrypoint = "adder:add"\n'
MODULE = b"def add(a, b):\n    if a < 0:\n        return 0\n    return a + b\n"
GOOD_TESTS = (b"from adder import add\n\ndef test_add():\n    assert add(1, 2) == 3\n\n"
              b"def test_negative():\n    assert add(-1, 2) == 0\n")


def skill(tests: bytes = GOOD_TESTS, module: bytes = MODULE, **extra: bytes):
    return submission_from_files({"skill.toml": MANIFEST, "adder.py": module, "tests/test_adder.py": tests, **extra})


def policy(runtime: str = "runc", **gates):
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"]["runtime"] = runtime
    data["limits"]["timeout_seconds"] = 20
    data["gates"].update(gates)
    return parse_policy(data, name=f"test-{runtime}")


def codes(report: EvaluationReport) -> set[str]:
    return {r.code.value for r in report.reasons}


@pytest.mark.parametrize("name", ["text_stats", "csv_summary", "unit_convert"])
def test_example_skills_pass(name: str) -> None:
    report = evaluate_path(EXAMPLES / name, policy=load_policy("default"))
    assert report.verdict is Verdict.passed, report.reasons
    assert report.tests.collected >= 3 and report.tests.failed == 0
    assert report.coverage.line_percent >= 80
    assert report.findings == []
    assert report.sandbox.exit_code == 0 and not report.sandbox.timed_out


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_passing_skill_report_is_complete(runtime: str) -> None:
    report = evaluate(skill(), policy=policy(runtime))
    assert report.verdict is Verdict.passed, report.reasons
    assert report.reasons == []
    assert report.tests.collected == 2 and report.tests.passed == 2
    assert {c.nodeid for c in report.tests.cases} == {
        "tests/test_adder.py::test_add",
        "tests/test_adder.py::test_negative",
    }
    assert all(c.outcome == "passed" and c.duration_seconds >= 0 for c in report.tests.cases)
    assert report.coverage.line_percent == 100.0 and report.coverage.branch_percent == 100.0
    assert report.sandbox.runtime == runtime
    assert report.sandbox.image_id.startswith("sha256:")
    assert {"static", "dynamic", "total"} <= set(report.timings)
    assert report.content_hash.startswith("sha256:")
    assert report.limits, "every report states what the verdict does not guarantee"


def test_failing_test_fails_with_the_test_named() -> None:
    report = evaluate(skill(tests=GOOD_TESTS + b"\ndef test_wrong():\n    assert add(2, 2) == 5\n"), policy=policy())
    assert report.verdict is Verdict.failed
    assert ReasonCode.tests_failed.value in codes(report)
    failed = [c for c in report.tests.cases if c.outcome == "failed"]
    assert [c.nodeid for c in failed] == ["tests/test_adder.py::test_wrong"]
    assert "assert 4 == 5" in failed[0].message


def test_low_coverage_fails_with_missed_lines() -> None:
    tests = b"from adder import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    report = evaluate(skill(tests=tests), policy=policy(min_line_coverage=90.0))
    assert report.verdict is Verdict.failed
    assert codes(report) == {ReasonCode.coverage_below_threshold.value}
    assert report.coverage.files[0].missed_lines == [3]
    # the branch of line 2 that returns 0 was never taken: the harness names the line
    assert report.coverage.files[0].missed_branches == 1 and report.coverage.files[0].missed_branch_lines == [2]


def test_skipped_and_xfail_never_count_as_passed() -> None:
    tests = (
        b"import pytest\nfrom adder import add\n\n@pytest.mark.skip\ndef test_a():\n    assert add(1, 2) == 3\n\n"
        b"@pytest.mark.xfail\ndef test_b():\n    assert add(1, 2) == 4\n"
    )
    report = evaluate(skill(tests=tests), policy=policy(min_line_coverage=0.0))
    assert report.verdict is Verdict.failed
    assert report.tests.passed == 0 and report.tests.skipped == 1 and report.tests.xfailed == 1


def test_no_tests_collected_fails() -> None:
    report = evaluate(skill(tests=b"from adder import add\n\nX = 1\n"), policy=policy())
    assert report.verdict is Verdict.failed
    assert ReasonCode.no_tests.value in codes(report)
    assert report.tests.collected == 0


def test_blocked_finding_fails_with_policy_violation_and_nosemgrep_is_ignored() -> None:
    module = (
        MODULE
        + b"\nimport subprocess  # nosemgrep\n\n"
        + b"def shell(cmd):\n    return subprocess.run(cmd, shell=True)  # nosemgrep\n"
    )
    report = evaluate(skill(module=module), policy=policy(min_line_coverage=0.0))
    assert report.verdict is Verdict.failed
    assert ReasonCode.policy_violation.value in codes(report)
    assert any(f.path == "adder.py" and f.severity in ("critical", "high") for f in report.findings)


def test_findings_in_test_files_are_reported() -> None:
    tests = GOOD_TESTS + b"\ndef test_env():\n    import os\n    os.system('true')\n"
    report = evaluate(skill(tests=tests), policy=policy())
    assert any(f.path == "tests/test_adder.py" for f in report.findings), report.findings


def test_missing_image_is_an_error_not_a_failure() -> None:
    report = evaluate(skill(), policy=policy(), settings=Settings(image="sandgate-python:no-such-tag"))
    assert report.verdict is Verdict.error
    assert codes(report) == {ReasonCode.infrastructure.value}
    assert "sandgate image build" in report.reasons[0].message


def test_unreachable_engine_is_an_error_not_a_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    report = evaluate(skill(), policy=policy())
    assert report.verdict is Verdict.error
    assert "no Docker engine answers" in report.reasons[0].message


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandgate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_cli_json_contract_and_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("evaluate", str(EXAMPLES / "text_stats"), "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    for key in ("verdict", "reasons", "skill", "content_hash", "tests", "coverage", "findings", "sandbox", "timings"):
        assert key in report
    for key in (
        "runtime",
        "image",
        "exit_code",
        "timed_out",
        "oom_killed",
        "wall_seconds",
        "peak_memory_bytes",
        "output_truncated",
    ):
        assert key in report["sandbox"]
    assert report["verdict"] == "passed"

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "skill.toml").write_text('name = "Bad-Name"\nentrypoint = "m:f"\n')
    (bad / "m.py").write_text("def f():\n    return 1\n")
    (bad / "test_m.py").write_text("def test_f():\n    pass\n")
    rejected = run_cli("evaluate", str(bad), "--json")
    assert rejected.returncode == 1
    assert json.loads(rejected.stdout)["verdict"] == "rejected"

    error = run_cli("evaluate", str(EXAMPLES / "text_stats"), "--json", SANDGATE_IMAGE="sandgate-python:no-such-tag")
    assert error.returncode == 2
    assert json.loads(error.stdout)["verdict"] == "error"


def test_cli_readable_report(tmp_path: Path) -> None:
    proc = run_cli("evaluate", str(EXAMPLES / "text_stats"))
    assert proc.returncode == 0, proc.stderr
    assert "PASSED" in proc.stdout and "coverage:" in proc.stdout and "tests:" in proc.stdout


def test_the_engine_prestarted_with_the_images_rules_scans_and_other_rules_are_scanned_cold(tmp_path: Path) -> None:
    """The harness starts semgrep before the payload with the rules baked into the image; a payload
    with the same rules is scanned by it (timing static_prestarted 1), one with other rules (here one
    rule more) is scanned cold from its own rules, and that rule's finding is there."""
    import shutil

    from sandgate.config import project_root

    module = MODULE + b"\n\ndef shell(cmd):\n    import os\n    return os.system(cmd)  # nosemgrep\n"
    report = evaluate(skill(module=module), policy=policy(min_line_coverage=0.0))
    assert report.timings["static_prestarted"] == 1.0, report.timings
    assert any(f.rule_id == "os-command-execution" and f.path == "adder.py" for f in report.findings)

    policies = tmp_path / "policies"
    shutil.copytree(project_root() / "policies", policies)
    (policies / "semgrep" / "extra.yml").write_text(
        "rules:\n  - id: no-add-calls\n    languages: [python]\n    severity: ERROR\n"
        "    message: add is called\n    metadata:\n      severity: high\n    pattern: add(...)\n")
    settings = Settings(policies_dir=policies, home=tmp_path / "home")
    other = evaluate(skill(module=module), policy=policy(min_line_coverage=0.0), settings=settings)
    assert other.timings["static_prestarted"] == 0.0, other.timings
    assert any(f.rule_id == "no-add-calls" and f.path == "tests/test_adder.py" for f in other.findings)
    assert {(f.rule_id, f.path, f.line) for f in report.findings} <= {
        (f.rule_id, f.path, f.line) for f in other.findings}
