"""Unit tests of sandgate.policy: pure gate logic, limits, loading policy files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandgate.errors import PolicyError, SubmissionError
from sandgate.oracle_report import OracleSummary
from sandgate.policy import (
    Gates,
    Limits,
    Mutation,
    Policy,
    Promotion,
    decide,
    effective_limits,
    load_policy,
    parse_policy,
)
from sandgate.report import (
    CoverageSummary,
    EntrypointCheck,
    EvaluationReport,
    Finding,
    Reason,
    ReasonCode,
    SandboxInfo,
    TestCase,
    TestSummary,
    Verdict,
)

POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"
RC = ReasonCode


# -- builders -----------------------------------------------------------------


def passing_tests(n: int = 3, **kw: Any) -> TestSummary:
    data: dict[str, Any] = {"collected": n, "passed": n, "exit_status": 0}
    data.update(kw)
    return TestSummary(**data)


def report(**kw: Any) -> EvaluationReport:
    """A report that passes the default policy unless ``kw`` says otherwise."""
    data: dict[str, Any] = {
        "evaluation_id": "ev-1",
        "verdict": Verdict.passed,
        "tests": passing_tests(),
        "coverage": CoverageSummary(line_percent=95.0, branch_percent=90.0, branches=10),
        "sandbox": SandboxInfo(runtime="runc", image="sandgate-python:latest", exit_code=0),
    }
    data.update(kw)
    return EvaluationReport(**data)


def policy(**gates: Any) -> Policy:
    return Policy(name="t", gates=Gates(**gates))


def codes(reasons: list[Reason]) -> list[ReasonCode]:
    return [r.code for r in reasons]


def finding(rule: str, severity: str, line: int = 1, path: str = "mod.py") -> Finding:
    return Finding(rule_id=rule, severity=severity, path=path, line=line, message="m")


# -- passing ------------------------------------------------------------------


def test_clean_report_passes_with_no_reasons() -> None:
    assert decide(report(), policy()) == (Verdict.passed, [])


def test_incoming_verdict_is_ignored() -> None:
    assert decide(report(verdict=Verdict.failed), policy())[0] is Verdict.passed


def test_decide_is_pure_and_idempotent() -> None:
    r = report(tests=passing_tests(2, passed=1, failed=1), coverage=None)
    before = r.model_dump()
    first = decide(r, policy())
    assert r.model_dump() == before
    again = decide(r.model_copy(update={"verdict": first[0], "reasons": first[1]}), policy())
    assert again == first


# -- coverage -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fails"), [(80.0, False), (100.0, False), (79.99, True), (79.9999, True), (0.0, True)]
)
def test_line_coverage_boundary(line: float, fails: bool) -> None:
    verdict, reasons = decide(report(coverage=CoverageSummary(line_percent=line)), policy())
    if fails:
        assert verdict is Verdict.failed
        assert codes(reasons) == [RC.coverage_below_threshold]
        # both numbers, and distinguishable even when very close
        assert reasons[0].message.startswith("line coverage ")
        assert "80%" in reasons[0].message
        assert "80%" not in reasons[0].message.split(" is below")[0]
    else:
        assert (verdict, reasons) == (Verdict.passed, [])


def test_line_coverage_message_has_numbers() -> None:
    _, reasons = decide(report(coverage=CoverageSummary(line_percent=79.99)), policy())
    assert reasons[0].message == "line coverage 79.99% is below the minimum 80%"


def test_min_line_coverage_zero_disables_gate() -> None:
    r = report(coverage=CoverageSummary(line_percent=0.0))
    assert decide(r, policy(min_line_coverage=0.0)) == (Verdict.passed, [])


@pytest.mark.parametrize(("branch", "fails"), [(80.0, False), (79.99, True)])
def test_branch_coverage_boundary(branch: float, fails: bool) -> None:
    cov = CoverageSummary(line_percent=95.0, branch_percent=branch, branches=100)
    verdict, reasons = decide(report(coverage=cov), policy(min_branch_coverage=80.0))
    if fails:
        assert codes(reasons) == [RC.branch_coverage_below_threshold]
        assert "79.99%" in reasons[0].message and "80%" in reasons[0].message
    else:
        assert verdict is Verdict.passed


def test_branch_gate_disabled_at_zero() -> None:
    cov = CoverageSummary(line_percent=95.0, branch_percent=0.0, branches=10)
    assert decide(report(coverage=cov), policy(min_branch_coverage=0.0))[0] is Verdict.passed


def test_branch_gate_ignores_code_without_branches() -> None:
    cov = CoverageSummary(line_percent=95.0, branch_percent=0.0, branches=0)
    assert decide(report(coverage=cov), policy(min_branch_coverage=80.0))[0] is Verdict.passed


def test_no_coverage_data_while_tests_ran() -> None:
    verdict, reasons = decide(report(coverage=None), policy())
    assert verdict is Verdict.failed
    assert codes(reasons) == [RC.coverage_below_threshold]
    assert reasons[0].message == "no coverage data"


def test_no_coverage_data_is_fine_when_coverage_gates_are_off() -> None:
    p = policy(min_line_coverage=0.0, min_branch_coverage=0.0)
    assert decide(report(coverage=None), p) == (Verdict.passed, [])


def test_no_coverage_data_not_repeated_when_no_test_ran() -> None:
    r = report(tests=TestSummary(collected=0), coverage=None)
    assert codes(decide(r, policy())[1]) == [RC.no_tests]


def test_no_coverage_data_fails_closed_when_tests_are_optional() -> None:
    r = report(tests=TestSummary(collected=0), coverage=None)
    verdict, reasons = decide(r, policy(min_tests=0))
    assert verdict is Verdict.failed
    assert codes(reasons) == [RC.coverage_below_threshold]


# -- findings -----------------------------------------------------------------


def test_blocked_findings_one_reason_listing_all() -> None:
    r = report(
        findings=[
            finding("no-subprocess", "high", 3),
            finding("style", "low", 5),
            finding("no-eval", "critical", 9),
        ]
    )
    verdict, reasons = decide(r, policy())
    assert verdict is Verdict.failed
    assert codes(reasons) == [RC.policy_violation]
    assert reasons[0].message == (
        "2 blocked findings: no-eval (critical) at mod.py:9, no-subprocess (high) at mod.py:3"
    )


@pytest.mark.parametrize(
    ("severity", "blocked"),
    [("critical", True), ("high", True), ("medium", False), ("low", False), ("info", False)],
)
def test_blocked_severity_boundary_default(severity: str, blocked: bool) -> None:
    verdict, reasons = decide(report(findings=[finding("r", severity)]), policy())
    assert (codes(reasons) == [RC.policy_violation]) is blocked
    assert (verdict is Verdict.failed) is blocked


def test_strict_blocks_medium() -> None:
    strict = load_policy("strict", policies_dir=POLICIES_DIR)
    cov = CoverageSummary(line_percent=95.0, branch_percent=95.0, branches=4)
    evidence = OracleSummary(status="ran", examples=3, contract_checks=20,
                             calls={"example": 3, "contract": 40})
    _, reasons = decide(report(coverage=cov, findings=[finding("r", "medium")], oracle=evidence),
                        strict)
    assert codes(reasons) == [RC.policy_violation]


def test_many_blocked_findings_are_capped_in_message() -> None:
    r = report(findings=[finding("r", "high", line=i) for i in range(1, 31)])
    msg = decide(r, policy())[1][0].message
    assert msg.startswith("30 blocked findings: ")
    assert msg.endswith(", and 20 more")


# -- tests --------------------------------------------------------------------


def test_zero_collected_is_no_tests() -> None:
    r = report(tests=TestSummary(collected=0, exit_status=5), coverage=None)
    verdict, reasons = decide(r, policy())
    assert verdict is Verdict.failed
    assert reasons == [Reason(code=RC.no_tests, message="no tests were collected")]


@pytest.mark.parametrize(("collected", "fails"), [(2, True), (3, False)])
def test_min_tests_boundary(collected: int, fails: bool) -> None:
    verdict, reasons = decide(report(tests=passing_tests(collected)), policy(min_tests=3))
    if fails:
        assert codes(reasons) == [RC.no_tests]
        assert "2 tests" in reasons[0].message and "3" in reasons[0].message
    else:
        assert verdict is Verdict.passed


def test_failed_and_error_tests_fail_with_counts_and_nodeids() -> None:
    cases = [TestCase(nodeid=f"test_m.py::test_{i}", outcome="failed") for i in range(6)]
    cases.append(TestCase(nodeid="test_m.py::test_err", outcome="error"))
    cases.append(TestCase(nodeid="test_m.py::test_ok", outcome="passed"))
    t = TestSummary(collected=8, passed=1, failed=6, errors=1, cases=cases)
    verdict, reasons = decide(report(tests=t), policy())
    assert verdict is Verdict.failed
    assert codes(reasons) == [RC.tests_failed]
    msg = reasons[0].message
    assert msg.startswith("6 failed and 1 errored of 8 collected: test_m.py::test_0, ")
    assert "test_m.py::test_4" in msg and "test_m.py::test_5" not in msg
    assert msg.endswith(", and 2 more")
    assert "test_ok" not in msg


@pytest.mark.parametrize(("failed", "errors"), [(1, 0), (0, 1)])
def test_one_failure_or_error_is_enough(failed: int, errors: int) -> None:
    t = TestSummary(collected=3, passed=3 - failed - errors, failed=failed, errors=errors)
    assert codes(decide(report(tests=t), policy())[1]) == [RC.tests_failed]


def test_tests_must_pass_false_tolerates_failures() -> None:
    t = TestSummary(collected=3, passed=2, failed=1)
    assert decide(report(tests=t), policy(tests_must_pass=False)) == (Verdict.passed, [])


def test_tests_must_pass_false_still_needs_one_pass() -> None:
    t = TestSummary(collected=3, failed=3)
    _, reasons = decide(report(tests=t), policy(tests_must_pass=False))
    assert codes(reasons) == [RC.no_tests]
    assert reasons[0].message == "no test passed: 3 failed"


def test_skipped_only_never_passes() -> None:
    t = TestSummary(collected=3, skipped=3)
    verdict, reasons = decide(report(tests=t), policy(allow_skips=True))
    assert verdict is Verdict.failed
    assert reasons == [Reason(code=RC.no_tests, message="no test passed: 3 skipped")]


def test_xfailed_and_xpassed_never_pass() -> None:
    t = TestSummary(collected=3, skipped=1, xfailed=1, xpassed=1)
    _, reasons = decide(report(tests=t), policy(allow_skips=True))
    assert reasons == [
        Reason(code=RC.no_tests, message="no test passed: 1 skipped, 1 xfailed, 1 xpassed")
    ]


def test_skipped_only_fails_even_when_min_tests_is_zero() -> None:
    t = TestSummary(collected=2, skipped=2)
    assert codes(decide(report(tests=t), policy(min_tests=0, allow_skips=True))[1]) == [RC.no_tests]


def test_zero_tests_allowed_when_min_tests_zero() -> None:
    t = TestSummary(collected=0)
    cov = CoverageSummary(line_percent=100.0)
    assert decide(report(tests=t, coverage=cov), policy(min_tests=0)) == (Verdict.passed, [])


def test_skips_cannot_pad_min_tests() -> None:
    t = TestSummary(collected=10, passed=1, skipped=9)
    verdict, reasons = decide(report(tests=t), policy(min_tests=3, allow_skips=True))
    assert verdict is Verdict.failed
    assert codes(reasons) == [RC.no_tests]
    assert "only 1 test passed" in reasons[0].message and "9 skipped" in reasons[0].message


def test_some_skipped_with_passes_is_fine_when_the_policy_allows_skips() -> None:
    t = TestSummary(collected=4, passed=3, skipped=1)
    assert decide(report(tests=t), policy(allow_skips=True)) == (Verdict.passed, [])


@pytest.mark.parametrize("outcome", ["skipped", "xfailed", "xpassed"])
def test_a_skip_fails_the_default_policy(outcome: str) -> None:
    field = {"skipped": "skipped", "xfailed": "xfailed", "xpassed": "xpassed"}[outcome]
    cases = [TestCase(nodeid="t.py::test_a", outcome="passed", assertions=1, failed_assertions=0),
             TestCase(nodeid="t.py::test_hidden[x]", outcome=outcome)]
    t = TestSummary(collected=2, passed=1, cases=cases, **{field: 1})
    verdict, reasons = decide(report(tests=t), policy())
    assert verdict is Verdict.failed and codes(reasons) == [RC.skipped_tests]
    assert "t.py::test_hidden[x]" in reasons[0].message and "allow skips" in reasons[0].message
    assert load_policy("default", policies_dir=POLICIES_DIR).gates.allow_skips is False
    assert load_policy("strict", policies_dir=POLICIES_DIR).gates.allow_skips is False


def test_allow_skips_is_validated_strictly() -> None:
    with pytest.raises(PolicyError, match="allow_skips"):
        parse_policy({"gates": {"allow_skips": "no"}}, name="t")


def _case(name: str, assertions: int | None, failed: int | None = 0, outcome: str = "passed") -> TestCase:
    return TestCase(nodeid=f"t.py::{name}", outcome=outcome, assertions=assertions,
                    failed_assertions=failed)


def test_a_passed_test_without_an_assertion_is_vacuous() -> None:
    t = TestSummary(collected=2, passed=2, cases=[_case("test_real", 3), _case("test_empty", 0)])
    verdict, reasons = decide(report(tests=t), policy())
    assert verdict is Verdict.failed and codes(reasons) == [RC.vacuous_tests]
    assert "executed no assertion: t.py::test_empty" in reasons[0].message


def test_a_passed_test_that_caught_a_failed_assertion_is_vacuous() -> None:
    t = TestSummary(collected=1, passed=1, cases=[_case("test_swallow", 2, failed=1)])
    verdict, reasons = decide(report(tests=t), policy())
    assert verdict is Verdict.failed and codes(reasons) == [RC.vacuous_tests]
    assert "caught a failed assertion: t.py::test_swallow" in reasons[0].message


def test_unmeasured_assertion_counts_are_not_judged() -> None:
    # reports from before the counts existed decide as they did
    t = TestSummary(collected=1, passed=1, cases=[_case("test_old", None, None)])
    assert decide(report(tests=t), policy()) == (Verdict.passed, [])


def test_a_failed_test_with_no_assertion_is_only_a_failure() -> None:
    t = TestSummary(collected=2, passed=1, failed=1,
                    cases=[_case("test_ok", 1), _case("test_bad", 0, outcome="failed")])
    assert codes(decide(report(tests=t), policy())[1]) == [RC.tests_failed]


def test_missing_entrypoint_fails_whatever_the_tests_did() -> None:
    e = EntrypointCheck(name="unit_convert:nope", resolved=False,
                        problem="'unit_convert' has no attribute 'nope'")
    verdict, reasons = decide(report(entrypoint=e), policy())
    assert verdict is Verdict.failed and codes(reasons) == [RC.entrypoint_missing]
    assert "unit_convert:nope" in reasons[0].message and "no attribute" in reasons[0].message
    verdict, reasons = decide(report(entrypoint=e, tests=TestSummary()), policy(min_tests=0))
    assert RC.entrypoint_missing in codes(reasons)


def test_an_entrypoint_no_passing_test_executed_fails() -> None:
    e = EntrypointCheck(name="m:f", resolved=True, tested_by=[])
    verdict, reasons = decide(report(entrypoint=e), policy())
    assert verdict is Verdict.failed and codes(reasons) == [RC.entrypoint_not_tested]
    tested = e.model_copy(update={"tested_by": ["t.py::test_f"]})
    assert decide(report(entrypoint=tested), policy()) == (Verdict.passed, [])
    # no passing test at all: the test reasons explain it, no extra entrypoint reason
    t = TestSummary(collected=1, failed=1)
    assert codes(decide(report(entrypoint=e, tests=t), policy())[1]) == [RC.tests_failed]


def test_no_entrypoint_check_is_not_judged() -> None:
    assert decide(report(entrypoint=None), policy()) == (Verdict.passed, [])


def test_new_reasons_are_recomputed_not_carried() -> None:
    stale = [Reason(code=code, message="stale") for code in
             (RC.vacuous_tests, RC.skipped_tests, RC.entrypoint_missing, RC.entrypoint_not_tested)]
    assert decide(report(reasons=stale), policy()) == (Verdict.passed, [])


def test_tests_not_run() -> None:
    t = TestSummary(collected=5, passed=2, skipped=1, exit_status=None)
    verdict, reasons = decide(report(tests=t), policy(allow_skips=True))
    assert verdict is Verdict.failed
    assert codes(reasons) == [RC.tests_not_run]
    assert reasons[0].message.startswith("2 of 5 collected tests never ran")


def test_all_tests_accounted_for_is_not_tests_not_run() -> None:
    t = TestSummary(collected=6, passed=2, failed=1, errors=1, skipped=1, xfailed=1)
    assert RC.tests_not_run not in codes(decide(report(tests=t), policy(tests_must_pass=False))[1])


def test_no_pass_not_repeated_when_failures_explain_it() -> None:
    t = TestSummary(collected=2, failed=1, skipped=1)
    assert codes(decide(report(tests=t), policy(allow_skips=True))[1]) == [RC.tests_failed]


# -- sandbox ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "code", "number"),
    [
        ("timed_out", RC.timeout, "60s"),
        ("oom_killed", RC.memory_limit, "512 MiB"),
        ("pids_limited", RC.pids_limit, "128"),
        ("output_truncated", RC.output_limit, "256 KiB"),
    ],
)
def test_sandbox_limits(flag: str, code: ReasonCode, number: str) -> None:
    sandbox = SandboxInfo(runtime="runc", image="i", wall_seconds=61.0, **{flag: True})
    verdict, reasons = decide(report(sandbox=sandbox), policy())
    assert verdict is Verdict.failed
    assert codes(reasons) == [code]
    assert number in reasons[0].message


def test_crashed_reason_is_kept() -> None:
    r = report(reasons=[Reason(code=RC.crashed, message="exit 139")])
    assert decide(r, policy()) == (Verdict.failed, [Reason(code=RC.crashed, message="exit 139")])


def test_carried_reasons_deduplicated_first_message_wins() -> None:
    sandbox = SandboxInfo(runtime="runc", image="i", timed_out=True)
    r = report(
        sandbox=sandbox,
        reasons=[
            Reason(code=RC.timeout, message="killed from outside"),
            Reason(code=RC.crashed, message="a"),
            Reason(code=RC.crashed, message="b"),
        ],
    )
    _, reasons = decide(r, policy())
    assert reasons == [
        Reason(code=RC.timeout, message="killed from outside"),
        Reason(code=RC.crashed, message="a"),
    ]


def test_stale_gate_reasons_are_recomputed() -> None:
    stale = Reason(code=RC.coverage_below_threshold, message="line coverage 85% below 90%")
    r = report(verdict=Verdict.failed, reasons=[stale])
    assert decide(r, policy(min_line_coverage=80.0)) == (Verdict.passed, [])


# -- many reasons, precedence -------------------------------------------------


def test_all_reasons_collected_in_order() -> None:
    t = TestSummary(collected=5, passed=1, failed=1, exit_status=None)
    r = report(
        tests=t,
        coverage=CoverageSummary(line_percent=50.0, branch_percent=10.0, branches=8),
        findings=[finding("no-eval", "critical")],
        sandbox=SandboxInfo(runtime="runc", image="i", timed_out=True, output_truncated=True),
        reasons=[Reason(code=RC.crashed, message="exit 137")],
    )
    verdict, reasons = decide(r, policy(min_branch_coverage=50.0))
    assert verdict is Verdict.failed
    assert codes(reasons) == [
        RC.timeout,
        RC.output_limit,
        RC.crashed,
        RC.policy_violation,
        RC.tests_failed,
        RC.tests_not_run,
        RC.coverage_below_threshold,
        RC.branch_coverage_below_threshold,
    ]


def test_infrastructure_beats_everything() -> None:
    infra = Reason(code=RC.infrastructure, message="engine went away")
    r = report(
        tests=TestSummary(collected=0),
        coverage=None,
        findings=[finding("no-eval", "critical")],
        sandbox=SandboxInfo(runtime="runc", image="i", timed_out=True),
        reasons=[
            Reason(code=RC.syntax_error, message="bad"),
            Reason(code=RC.crashed, message="x"),
            infra,
        ],
    )
    verdict, reasons = decide(r, policy())
    assert verdict is Verdict.error
    assert reasons[0] == infra
    assert not set(codes(reasons)) & {RC.no_tests, RC.policy_violation, RC.timeout}


@pytest.mark.parametrize("code", [RC.invalid_submission, RC.syntax_error])
def test_rejected_beats_failed(code: ReasonCode) -> None:
    r = report(
        tests=TestSummary(collected=0),
        coverage=None,
        findings=[finding("no-eval", "critical")],
        reasons=[Reason(code=code, message="mod.py:3: invalid syntax")],
    )
    assert decide(r, policy()) == (
        Verdict.rejected,
        [Reason(code=code, message="mod.py:3: invalid syntax")],
    )


def test_decide_is_total_on_odd_reports() -> None:
    odd = report(
        tests=TestSummary(collected=-1, passed=5, skipped=-2),
        coverage=CoverageSummary(line_percent=-5.0),
        sandbox=None,
    )
    verdict, reasons = decide(odd, policy())
    assert verdict is Verdict.failed and reasons
    assert decide(report(sandbox=None), policy()) == (Verdict.passed, [])


# -- effective_limits ---------------------------------------------------------


@dataclass
class Request:
    runtime: str | None = None
    timeout_seconds: float | None = None
    memory_mb: int | None = None
    pids: int | None = None
    output_kb: int | None = None


def test_no_request_keeps_policy_limits() -> None:
    limits = Limits()
    assert effective_limits(limits, None) == limits
    assert effective_limits(limits, {}) == limits
    assert effective_limits(limits, Request()) == limits


def test_request_can_only_tighten() -> None:
    limits = Limits(memory_mb=512, timeout_seconds=60, pids=128, output_kb=256)
    eff = effective_limits(
        limits,
        Request(runtime="runsc", timeout_seconds=10, memory_mb=2048, pids=64, output_kb=1024),
    )
    assert eff.runtime == "runsc"
    assert eff.timeout_seconds == 10
    assert eff.memory_mb == 512  # asked for more: ignored
    assert eff.pids == 64
    assert eff.output_kb == 256  # asked for more: ignored
    assert eff.cpus == limits.cpus and eff.work_disk_mb == limits.work_disk_mb


def test_request_for_more_is_ignored() -> None:
    limits = Limits(runtime="runsc", timeout_seconds=30, memory_mb=256)
    asked = {"runtime": "runc", "timeout_seconds": 600, "memory_mb": 4096, "pids": 10_000}
    assert effective_limits(limits, asked) == limits


def test_request_as_dict_with_none_fields() -> None:
    eff = effective_limits(Limits(), {"memory_mb": 128, "pids": None, "runtime": None})
    assert eff.memory_mb == 128 and eff.pids == 128 and eff.runtime == "runc"


def test_request_object_with_extra_attributes_reads_known_fields() -> None:
    class Other:
        memory_mb = 64
        network = "bridge"  # not a limit; cannot loosen anything

    assert effective_limits(Limits(), Other()).memory_mb == 64


@pytest.mark.parametrize(
    "asked",
    [
        {"memory_mb": 0},
        {"memory_mb": -5},
        {"timeout_seconds": float("inf")},
        {"pids": 1.5},
        {"pids": True},
        {"memory_mb": "128"},
        {"runtime": "kata"},
        {"memory": 128},
    ],
)
def test_invalid_request_is_invalid_submission(asked: dict[str, Any]) -> None:
    with pytest.raises(SubmissionError):
        effective_limits(Limits(), asked)


# -- loading ------------------------------------------------------------------


def test_load_default() -> None:
    p = load_policy("default", policies_dir=POLICIES_DIR)
    assert p.name == "default"
    assert p.description == "Default gates for generated skills"
    assert p.gates == Gates(
        tests_must_pass=True,
        min_tests=1,
        min_line_coverage=80.0,
        min_branch_coverage=0.0,
        min_mutation_score=60.0,
        null_entrypoint_must_be_killed=True,
        blocked_severities=["critical", "high"],
    )
    assert p.mutation == Mutation(max_mutants=20, seconds=20.0, stop_when_decided=True)
    assert p.gates == Gates() and p.mutation == Mutation()  # built-in defaults = default.toml
    assert p.limits == Limits(
        runtime="runc",
        timeout_seconds=60,
        memory_mb=512,
        pids=128,
        cpus=1.0,
        output_kb=256,
        work_disk_mb=64,
    )
    assert p.promotion == Promotion(mode="auto", skills={})
    assert p.hash.startswith("sha256:") and len(p.hash) == 7 + 64


def test_load_strict() -> None:
    p = load_policy("strict", policies_dir=POLICIES_DIR)
    assert p.name == "strict"
    assert p.limits.runtime == "runsc"
    assert p.gates.min_line_coverage == 90.0
    assert p.gates.min_branch_coverage == 80.0
    assert p.gates.min_mutation_score == 65.0 and p.mutation.seconds == 30.0
    assert set(p.gates.blocked_severities) == {"critical", "high", "medium"}
    assert p.promotion.mode_for("anything") == "manual"
    assert p.hash != load_policy("default", policies_dir=POLICIES_DIR).hash


def test_load_by_path_and_default_dir() -> None:
    by_path = load_policy(POLICIES_DIR / "strict.toml")
    assert by_path.name == "strict"
    assert load_policy(str(POLICIES_DIR / "strict.toml")) == by_path
    # default policies_dir comes from the settings: the checkout's policies/
    assert load_policy("strict") == by_path


def test_missing_policy_names_the_file_and_lists_available() -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy("nosuch", policies_dir=POLICIES_DIR)
    assert "nosuch.toml" in str(exc.value)
    assert "default" in str(exc.value) and "strict" in str(exc.value)


def test_bad_policy_name() -> None:
    with pytest.raises(PolicyError, match="invalid policy name"):
        load_policy("..", policies_dir=POLICIES_DIR)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[gates]\nmin_coverage = 80.0\n", "gates.min_coverage"),
        ("colour = 'red'\n", "colour"),
        ("name = 'x'\n", "name"),
        ("[gates]\nmin_tests = '1'\n", "gates.min_tests"),
        ("[gates]\ntests_must_pass = 1\n", "gates.tests_must_pass"),
        ("[gates]\nmin_line_coverage = 101.0\n", "gates.min_line_coverage"),
        ("[gates]\nmin_tests = -1\n", "gates.min_tests"),
        ("[gates]\nblocked_severities = ['severe']\n", "gates.blocked_severities"),
        ("[gates]\nblocked_severities = 'high'\n", "gates.blocked_severities"),
        ("[promotion]\nmode = 'sometimes'\n", "promotion.mode"),
        ("[promotion.skills]\nmy_skill = 'never'\n", "promotion.skills.my_skill"),
        ("[promotion.skills]\nBad-Name = 'manual'\n", "promotion.skills"),
        ("[limits]\nruntime = 'kata'\n", "limits.runtime"),
        ("[limits]\nmemory_mb = -512\n", "limits.memory_mb"),
        ("[limits]\ntimeout_seconds = 0\n", "limits.timeout_seconds"),
        ("[limits]\npids = -1\n", "limits.pids"),
        ("[limits]\ncpus = nan\n", "limits.cpus"),
        ("[limits]\nmemory_mb = 1.5\n", "limits.memory_mb"),
    ],
)
def test_invalid_policy_file_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert str(path) in str(exc.value)
    assert f" {key}" in str(exc.value)


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[gates\nmin_tests = 1\n")
    with pytest.raises(PolicyError, match="not valid TOML") as exc:
        load_policy(path)
    assert str(path) in str(exc.value)


def test_policy_error_is_a_config_error() -> None:
    from sandgate.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_policy("x = 1", name="x")


def test_empty_file_is_the_built_in_defaults() -> None:
    p = parse_policy("", name="empty")
    assert p.gates == load_policy("default", policies_dir=POLICIES_DIR).gates
    assert p.limits == load_policy("default", policies_dir=POLICIES_DIR).limits


# -- hash ---------------------------------------------------------------------


def test_hash_stable_under_reformatting(tmp_path: Path) -> None:
    original = load_policy("default", policies_dir=POLICIES_DIR)
    reformatted = tmp_path / "other_name.toml"
    reformatted.write_text(
        """
# comments, key order, spacing, int-vs-float and severity order are cosmetic
description    =   "Default gates for generated skills"
[promotion]
mode="auto"

[limits]
work_disk_mb=64
output_kb=256
cpus=1
pids=128
memory_mb=512
timeout_seconds=60.0
runtime="runc"

[mutation]
stop_when_decided=true
seconds=20.0
max_mutants=20

[gates]
null_entrypoint_must_be_killed=true
min_mutation_score=60
blocked_severities=["high","critical","high"]
min_branch_coverage=0
min_line_coverage=80
min_tests=1
tests_must_pass=true
"""
    )
    copy = load_policy(reformatted)
    assert copy.name == "other_name"
    assert copy.hash == original.hash


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("min_line_coverage = 80.0", "min_line_coverage = 80.5"),
        ('runtime = "runc"', 'runtime = "runsc"'),
        ('mode = "auto"', 'mode = "manual"'),
        ("# some_skill = \"manual\"", 'some_skill = "manual"'),
        ('["critical", "high"]', '["critical", "high", "medium"]'),
        ("memory_mb = 512", "memory_mb = 511"),
    ],
)
def test_hash_changes_with_any_value(tmp_path: Path, old: str, new: str) -> None:
    text = (POLICIES_DIR / "default.toml").read_text()
    assert old in text
    path = tmp_path / "default.toml"
    path.write_text(text.replace(old, new, 1))
    assert load_policy(path).hash != load_policy("default", policies_dir=POLICIES_DIR).hash


# -- promotion ----------------------------------------------------------------


def test_per_skill_promotion_override(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[promotion]\nmode = "auto"\n[promotion.skills]\n'
        'payments = "manual"\n'
    )
    promo = load_policy(path).promotion
    assert promo.mode_for("payments") == "manual"
    assert promo.mode_for("weather") == "auto"
    strict_like = Promotion(mode="manual", skills={"toy": "auto"})
    assert strict_like.mode_for("toy") == "auto"
    assert strict_like.mode_for("other") == "manual"
