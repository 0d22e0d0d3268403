"""Skills that steer their own verdict (issue 11), against the real sandbox.

Every attack (``verdict_skills.py``) is evaluated for real under the default gates with
no finding severity blocked: the static rules would stop several of these skills first,
and these tests are about what the *dynamic* side (harness, runner, gates) still stops
when a skill gets past them. Each must end ``failed`` (``crashed`` for forgery) or
``rejected``, never ``passed``; the same shape done honestly passes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from sandgate.evaluation import evaluate, evaluate_path
from sandgate.policy import Policy, load_policy
from sandgate.report import EvaluationReport, Verdict
from sandgate.submission import submission_from_files
from tests.security import verdict_skills as skills

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def gates_only_policy(runtime: str = "runc") -> Policy:
    """The shipped default gates, with findings reported but not deciding."""
    default = load_policy("default", policies_dir=ROOT / "policies")
    return default.model_copy(update={
        "gates": default.gates.model_copy(update={"blocked_severities": []}),
        "limits": default.limits.model_copy(update={"runtime": runtime, "timeout_seconds": 20.0}),
    })


def explain(report: EvaluationReport) -> str:
    cases = [(c.nodeid, c.outcome, c.assertions, c.failed_assertions) for c in report.tests.cases]
    return (f"verdict={report.verdict.value} reasons={[(r.code.value, r.message) for r in report.reasons]}\n"
            f"tests={cases}\ncoverage={report.coverage and report.coverage.line_percent} "
            f"entrypoint={report.entrypoint}\noutput tail={report.output[-800:]!r}")


def codes(report: EvaluationReport) -> set[str]:
    return {r.code.value for r in report.reasons}


def reason(report: EvaluationReport, code: str) -> str:
    return next(r.message for r in report.reasons if r.code.value == code)


@pytest.fixture
def run_skill(sandbox_image, no_leftovers) -> Callable[..., EvaluationReport]:
    def run(files: Mapping[str, str], runtime: str = "runc") -> EvaluationReport:
        encoded = {path: text.encode("utf-8") for path, text in files.items()}
        return evaluate(submission_from_files(encoded), policy=gates_only_policy(runtime))

    return run


def assert_failed(report: EvaluationReport, *expected: str) -> None:
    assert report.verdict is Verdict.failed, explain(report)
    assert "infrastructure" not in codes(report), explain(report)
    assert set(expected) <= codes(report), explain(report)


def test_the_honest_shape_passes(run_skill) -> None:
    report = run_skill(skills.honest())
    assert report.verdict is Verdict.passed, explain(report)
    assert all(c.assertions and c.assertions >= 1 for c in report.tests.cases), explain(report)
    assert report.entrypoint is not None and report.entrypoint.tested_by, explain(report)


# -- class 1: forgery from inside a test -------------------------------------------------


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
@pytest.mark.parametrize("then", ["close", "exit"])
def test_forged_stream_with_a_hunted_key(run_skill, then: str, runtime: str) -> None:
    report = run_skill(skills.forge_with_hunted_key(then), runtime)
    assert_failed(report, "crashed")
    assert report.tests.passed == 0, explain(report)
    message = reason(report, "crashed")
    assert "forged results" in message, explain(report)


def test_a_forged_final_through_the_runners_own_signer(run_skill) -> None:
    report = run_skill(skills.second_final_through_the_signer())
    # the forged final disagrees with what was streamed, and the real runner cannot finish
    assert_failed(report, "crashed")
    assert "tampering" in reason(report, "crashed"), explain(report)
    assert report.tests.passed == 0, explain(report)


def test_outcomes_patched_at_import(run_skill) -> None:
    report = run_skill(skills.outcomes_patched())
    # the swallowed assertion failures are counted by the harness's own wrapper
    assert_failed(report, "vacuous_tests")
    assert "caught a failed assertion" in reason(report, "vacuous_tests"), explain(report)


# -- class 5: coverage steering ------------------------------------------------------------


def test_default_exclusions_do_not_apply(run_skill) -> None:
    report = run_skill(skills.pragma_no_cover())
    assert_failed(report, "coverage_below_threshold")
    missed = {f.path: f.missed_lines for f in report.coverage.files}["norm.py"]
    # the pragma'd function body, the stub and the other pragma'd function all count
    assert {14, 15, 20, 23, 27, 28, 29} <= set(missed), explain(report)


def test_live_coverage_exclude_does_not_help(run_skill) -> None:
    report = run_skill(skills.live_exclude())
    assert_failed(report, "coverage_below_threshold")
    assert report.coverage.statements >= 8, explain(report)


def test_implementation_in_a_test_file_is_rejected(sandbox_image, no_leftovers, tmp_path) -> None:
    for rel, text in skills.implementation_in_test_file().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    report = evaluate_path(tmp_path, policy=gates_only_policy())
    assert report.verdict is Verdict.rejected, explain(report)
    assert "imports the test file tests/test_impl.py" in report.reasons[0].message


def test_a_module_in_a_folder_without_init_counts(run_skill) -> None:
    report = run_skill(skills.module_without_init())
    assert_failed(report, "coverage_below_threshold")
    paths = {f.path: f for f in report.coverage.files}
    assert "helpers/extra.py" in paths and paths["helpers/extra.py"].line_percent == 0.0, explain(report)


def test_code_run_only_at_import_is_not_covered(run_skill) -> None:
    report = run_skill(skills.import_time_only())
    assert_failed(report, "coverage_below_threshold")
    # the 200 module-level padding statements are not statements of the measure at all
    assert report.coverage.statements < 20, explain(report)


# -- class 6: vacuous tests ----------------------------------------------------------------------


def test_tests_without_assertions(run_skill) -> None:
    report = run_skill(skills.no_assertions())
    assert_failed(report, "vacuous_tests")
    assert "executed no assertion" in reason(report, "vacuous_tests")
    assert report.tests.passed == 2, explain(report)


def test_a_caught_assertion_error(run_skill) -> None:
    report = run_skill(skills.swallowed_assertion())
    assert_failed(report, "vacuous_tests")
    assert "caught a failed assertion: tests/test_parity.py::test_is_even" in reason(report, "vacuous_tests")


def test_skips_and_xfails_hiding_failures(run_skill) -> None:
    report = run_skill(skills.skips_hide_failures())
    assert_failed(report, "skipped_tests")
    message = reason(report, "skipped_tests")
    assert "test_eleven" in message and "test_thirteen" in message and "test_fifteen" in message, message
    assert report.tests.skipped >= 3, explain(report)  # the module skip is counted too


def test_tests_hidden_from_collection(run_skill) -> None:
    report = run_skill(skills.tests_hidden_from_collection())
    assert_failed(report, "crashed")
    assert "tests/test_parity.py::test_eleven" in reason(report, "crashed"), explain(report)


# -- the entrypoint ------------------------------------------------------------------------------


def test_a_missing_entrypoint_fails(run_skill) -> None:
    report = run_skill(skills.entrypoint_missing())
    assert_failed(report, "entrypoint_missing")
    assert "parity:nope" in reason(report, "entrypoint_missing") and "no attribute" in reason(
        report, "entrypoint_missing"), explain(report)


def test_an_entrypoint_no_test_calls_fails(run_skill) -> None:
    report = run_skill(skills.entrypoint_never_called())
    assert_failed(report, "entrypoint_not_tested")
    assert report.entrypoint.resolved and report.entrypoint.tested_by == [], explain(report)


# -- the human report ----------------------------------------------------------------------------


def test_the_cli_prints_submitted_text_literally(sandbox_image, no_leftovers, tmp_path) -> None:
    skill = tmp_path / "counter"
    for rel, text in skills.markup_in_ids().items():
        (skill / rel).parent.mkdir(parents=True, exist_ok=True)
        (skill / rel).write_text(text)
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "sandgate"), "evaluate", str(skill)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr, proc.stderr
    assert "FAILED" in out and "tests_failed" in out, out
    assert "test_count_lines[one line\\n-1]" in out, out  # whole, escape shown as typed
    assert "test_count_lines[[bold red]x[/]]" in out, out  # markup printed, not applied
    assert "\x1b[" not in out, out
