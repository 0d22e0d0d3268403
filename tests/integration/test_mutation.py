"""The mutation phase in the real sandbox: weak tests fail the gate, good ones pass it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandgate.evaluation import evaluate, evaluate_path
from sandgate.policy import load_policy, parse_policy
from sandgate.report import EvaluationReport, ReasonCode, Verdict
from sandgate.submission import submission_from_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "skills"
pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftovers")

MANIFEST = b'name = "clamp"\ndescription = "clamps"\nentrypoint = "clamp:clamp"\n'
MODULE = b'''def clamp(value, low, high):
    if low > high:
        raise ValueError("low must not exceed high")
    if value < low:
        return low
    if value > high:
        return high
    return value
'''
GOOD_TESTS = b'''import pytest

from clamp import clamp


@pytest.mark.parametrize(("value", "expected"), [(-1, 0), (0, 0), (5, 5), (10, 10), (11, 10)])
def test_clamp(value, expected):
    assert clamp(value, 0, 10) == expected


def test_bounds_checked():
    with pytest.raises(ValueError, match="must not exceed"):
        clamp(1, 2, 1)
    assert clamp(3, 3, 3) == 3
'''


def skill(tests: bytes, module: bytes = MODULE, manifest: bytes = MANIFEST):
    return submission_from_files({"skill.toml": manifest, "clamp.py": module,
                                  "tests/test_clamp.py": tests})


def policy(**changes) -> object:
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"]["timeout_seconds"] = 30
    for key, value in changes.items():
        table, _, field = key.partition("__")
        data[table][field] = value
    return parse_policy(data, name="test-mutation")


def codes(report: EvaluationReport) -> set[str]:
    return {r.code.value for r in report.reasons}


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_well_tested_skill_passes_with_every_mutant_run(runtime: str) -> None:
    report = evaluate(skill(GOOD_TESTS), policy=policy(limits__runtime=runtime, mutation__seconds=40.0,
                                                       mutation__stop_when_decided=False,
                                                       limits__timeout_seconds=60))
    assert report.verdict is Verdict.passed, report.reasons
    m = report.mutation
    assert m.ran and m.problem is None and not m.budget_exhausted and m.decided_early is None
    assert m.null_entrypoint == "killed" and m.line_tests
    assert m.run == m.total >= 10 and m.score >= 80.0, m.survivors
    # what survives is equivalent: clamping `value == low` to `low` returns the same value
    assert {(s.line, s.after) for s in m.survivors} <= {(4, "if value <= low:"), (6, "if value >= high:")}
    assert report.timings["mutation"] > 0


def test_tests_that_only_check_not_none_get_a_low_score_and_fail() -> None:
    weak = b"from clamp import clamp\n\ndef test_clamp():\n    assert clamp(5, 0, 10) is not None\n" \
           b"    assert clamp(-5, 0, 10) is not None\n    assert clamp(50, 0, 10) is not None\n"
    report = evaluate(skill(weak), policy=policy(mutation__stop_when_decided=False))
    assert report.verdict is Verdict.failed
    assert ReasonCode.mutation_score_below_threshold.value in codes(report), report.reasons
    assert report.coverage.line_percent >= 80  # coverage alone would have passed it
    m = report.mutation
    assert m.null_entrypoint == "killed"  # `is not None` notices return None, nothing else
    assert m.score < 50.0 and m.survived >= 5


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_tests_that_only_run_the_code_fail_on_the_null_entrypoint(runtime: str) -> None:
    runs_only = b"from clamp import clamp\n\ndef test_clamp():\n    clamp(5, 0, 10)\n" \
                b"    clamp(-5, 0, 10)\n    clamp(50, 0, 10)\n    assert True\n"
    report = evaluate(skill(runs_only), policy=policy(limits__runtime=runtime))
    assert report.sandbox.runtime == runtime
    assert report.verdict is Verdict.failed
    assert ReasonCode.null_entrypoint_survived.value in codes(report)
    null = next(r for r in report.reasons if r.code is ReasonCode.null_entrypoint_survived)
    assert "return None" in null.message and "clamp.py:1" in null.message
    assert report.mutation.null_entrypoint == "survived"


def test_survivor_is_reported_with_file_line_operator_and_diff() -> None:
    # nobody tests a score of exactly 50: `>=` → `>` goes unnoticed
    module = b'def grade(score):\n    if score >= 50:\n        return "pass"\n    return "fail"\n'
    manifest = b'name = "grade"\ndescription = "grades"\nentrypoint = "grade:grade"\n'
    tests = b'from grade import grade\n\ndef test_grade():\n    assert grade(80) == "pass"\n' \
            b'    assert grade(20) == "fail"\n'
    sub = submission_from_files({"skill.toml": manifest, "grade.py": module, "tests/test_grade.py": tests})
    report = evaluate(sub, policy=policy(mutation__max_mutants=100, mutation__stop_when_decided=False))
    m = report.mutation
    survivors = {(s.file, s.line, s.operator, s.before, s.after) for s in m.survivors}
    assert ("grade.py", 2, "comparison", "if score >= 50:", "if score > 50:") in survivors
    assert ("grade.py", 2, "constant", "if score >= 50:", "if score >= 51:") in survivors
    assert m.run == m.total and m.null_entrypoint == "killed"
    assert ("grade.py", 3, "constant", 'return "pass"', "return ''") not in survivors  # killed


def test_a_mutant_that_loops_forever_times_out_without_hanging_the_evaluation() -> None:
    module = b'''def total(n):
    """Sum of 0..n-1, counted one by one."""
    i = 0
    acc = 0
    while i < n:
        acc += i
        i += 1
    return acc
'''
    manifest = b'name = "total"\ndescription = "sums"\nentrypoint = "total:total"\n'
    tests = b"from total import total\n\ndef test_total():\n    assert total(4) == 6\n    assert total(0) == 0\n"
    sub = submission_from_files({"skill.toml": manifest, "total.py": module, "tests/test_total.py": tests})
    report = evaluate(sub, policy=policy(mutation__max_mutants=100, mutation__seconds=25,
                                         mutation__stop_when_decided=False))
    m = report.mutation
    assert m.timed_out >= 1, m  # `i += 1` → `i -= 1` or removed: the loop never ends
    assert m.problem is None and not report.sandbox.timed_out
    assert ReasonCode.timeout.value not in codes(report)
    assert report.verdict is Verdict.passed, report.reasons


def test_mutants_that_exhaust_memory_do_not_count_against_the_skill() -> None:
    module = b'''def repeat(item, times):
    out = []
    count = 0
    while count != times:
        out.append(item * 1000000)
        count += 1
    return out
'''
    manifest = b'name = "rep"\ndescription = "repeats"\nentrypoint = "rep:repeat"\n'
    tests = b"from rep import repeat\n\ndef test_repeat():\n    assert repeat('a', 2) == ['a' * 1000000] * 2\n" \
            b"    assert repeat('a', 0) == []\n"
    sub = submission_from_files({"skill.toml": manifest, "rep.py": module, "tests/test_rep.py": tests})
    report = evaluate(sub, policy=policy(mutation__max_mutants=100, limits__memory_mb=256,
                                         mutation__stop_when_decided=False))
    assert not report.sandbox.oom_killed
    assert ReasonCode.memory_limit.value not in codes(report)
    assert report.mutation.ran and report.mutation.problem is None
    assert report.verdict is Verdict.passed, report.reasons


def test_budget_in_mutants_is_respected_and_null_entrypoint_included() -> None:
    report = evaluate(skill(GOOD_TESTS), policy=policy(mutation__max_mutants=3, mutation__stop_when_decided=False))
    m = report.mutation
    assert m.total == m.run == 3 and m.null_entrypoint == "killed"


def test_the_phase_stops_once_the_verdict_is_decided_with_the_same_verdict() -> None:
    full = evaluate(skill(GOOD_TESTS), policy=policy(mutation__stop_when_decided=False))
    early = evaluate(skill(GOOD_TESTS), policy=policy())
    assert full.verdict is early.verdict is Verdict.passed, (full.reasons, early.reasons)
    e, f = early.mutation, full.mutation
    assert f.decided_early is None and f.run == f.total == e.total
    assert e.decided_early == "pass" and e.run < f.run
    assert 100.0 * (e.killed + e.timed_out) / e.total >= 60.0  # survivors could not pull it below
    # Fewer mutants run is the saving; wall time is left to bench/ (a timed assertion flaked under CI load).
    weak = b"from clamp import clamp\n\ndef test_clamp():\n    assert clamp(5, 0, 10) is not None\n" \
           b"    assert clamp(-5, 0, 10) is not None\n    assert clamp(50, 0, 10) is not None\n"
    failing = evaluate(skill(weak), policy=policy())
    assert failing.verdict is Verdict.failed and failing.mutation.decided_early == "fail"
    assert ReasonCode.mutation_score_below_threshold.value in codes(failing)


def test_tests_are_selected_per_line() -> None:
    # two test files: a mutant of `double` runs only the file whose tests cover it
    module = b"def double(x):\n    return x * 2\n\n\ndef half(x):\n    return x // 2\n"
    manifest = b'name = "arith"\ndescription = "arith"\nentrypoint = "arith:double"\n'
    sub = submission_from_files({
        "skill.toml": manifest, "arith.py": module,
        "tests/test_double.py": b"from arith import double\n\ndef test_double():\n    assert double(3) == 6\n",
        "tests/test_half.py": b"from arith import half\n\ndef test_half():\n    assert half(7) == 3\n",
    })
    report = evaluate(sub, policy=policy(mutation__stop_when_decided=False))
    m = report.mutation
    assert report.verdict is Verdict.passed, report.reasons
    assert m.line_tests and m.problem is None and m.run == m.total >= 4
    assert m.score == 100.0


def test_the_phase_does_not_run_when_tests_fail() -> None:
    failing = b"from clamp import clamp\n\ndef test_clamp():\n    assert clamp(5, 0, 10) == 6\n"
    report = evaluate(skill(failing), policy=policy())
    assert report.mutation is not None and report.mutation.ran is False
    assert report.mutation.skipped_reason == "the dynamic phase did not pass"
    assert "mutation" not in report.timings
    assert ReasonCode.tests_failed.value in codes(report)
    assert not codes(report) & {ReasonCode.mutation_score_below_threshold.value,
                                ReasonCode.null_entrypoint_survived.value}


def test_policy_can_turn_the_phase_off() -> None:
    report = evaluate(skill(GOOD_TESTS), policy=policy(mutation__max_mutants=0, gates__min_mutation_score=0.0))
    assert report.mutation is None and "mutation" not in report.timings
    assert report.verdict is Verdict.passed


@pytest.mark.parametrize("name", ["text_stats", "csv_summary", "unit_convert"])
def test_example_skills_pass_the_strict_mutation_gate(name: str) -> None:
    # the default policy's gates, mutation included: test_evaluate.test_example_skills_pass
    for policy_name in ("strict",):
        gates = load_policy(policy_name)
        data = load_policy("default").model_dump(mode="json", exclude={"name"})
        data["gates"]["min_mutation_score"] = gates.gates.min_mutation_score
        data["mutation"] = gates.mutation.model_dump()
        report = evaluate_path(EXAMPLES / name, policy=parse_policy(data, name=f"{policy_name}-runc"))
        assert report.verdict is Verdict.passed, (policy_name, report.reasons)
        assert report.mutation.score >= gates.gates.min_mutation_score
