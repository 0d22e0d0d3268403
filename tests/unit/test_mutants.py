"""Mutant generation (the harness's ``sandgate_harness.mutation``), the report section and the gates."""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandgate.errors import PolicyError
from sandgate.evaluation.parse import _mutation
from sandgate.policy import decide, load_policy, parse_policy
from sandgate.report import (
    CoverageSummary,
    EvaluationReport,
    MutationSummary,
    Reason,
    ReasonCode,
    Survivor,
    TestCase,
    TestSummary,
    Verdict,
)
from sandgate_harness.__main__ import mutation_skip
from sandgate_harness.mutation import (
    covered_lines,
    decision,
    generate,
    mutant_timeout,
    summarise,
)

ROOT = Path(__file__).resolve().parents[2]


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def mutants_of(text: str, *, entrypoint: str | None = "m:f", covered=None, max_mutants: int = 1000):
    mutants, info = generate({"m.py": src(text)}, covered=covered, entrypoint=entrypoint,
                             max_mutants=max_mutants)
    return mutants, info


def diffs(mutants, operator: str) -> set[tuple[int, str, str]]:
    return {(m.line, m.before, m.after) for m in mutants if m.operator == operator}


# -- operators ------------------------------------------------------------------------


def test_comparison_swaps() -> None:
    mutants, _ = mutants_of("""
        def f(a, b):
            return a < b, a >= b, a == b, a is not None, a in b
        """)
    got = {after for _, _, after in diffs(mutants, "comparison")}
    assert got == {
        "return a <= b, a >= b, a == b, a is not None, a in b",
        "return a < b, a > b, a == b, a is not None, a in b",
        "return a < b, a >= b, a != b, a is not None, a in b",
        "return a < b, a >= b, a == b, a is None, a in b",
        "return a < b, a >= b, a == b, a is not None, a not in b",
    }


def test_arithmetic_swaps_including_augmented_assignment() -> None:
    mutants, _ = mutants_of("""
        def f(a, b):
            total = a + b * 2
            total -= a // b
            return total % 3
        """)
    got = {(line, after) for line, _, after in diffs(mutants, "arithmetic")}
    assert got == {
        (2, "total = a - b * 2"),
        (2, "total = a + b / 2"),
        (3, "total -= a / b"),
        (3, "total += a // b"),
        (4, "return total // 3"),
    }


def test_constant_changes() -> None:
    mutants, _ = mutants_of("""
        def f(flag=True):
            if flag:
                return "yes", 0, 5
            return ""
        """)
    got = {after for _, _, after in diffs(mutants, "constant")}
    assert "def f(flag=False):" in got
    assert "return '', 0, 5" in got
    assert 'return "yes", 1, 5' in got
    assert 'return "yes", 0, 6' in got and 'return "yes", 0, 4' in got
    assert not any("-1" in a for a in got)  # 0 - 1 cannot be a constant: not made
    assert not [m for m in mutants if m.operator == "constant" and m.line == 4]  # "" stays


def test_negated_conditions_if_while_ternary() -> None:
    mutants, _ = mutants_of("""
        def f(n):
            while n > 10:
                n -= 1
            if n:
                return n
            return 1 if n == 0 else 2
        """)
    got = {(line, after) for line, _, after in diffs(mutants, "negate")}
    assert got == {
        (2, "while not (n > 10):"),
        (4, "if not (n):"),
        (6, "return 1 if not (n == 0) else 2"),
    }


def test_removed_statements_become_pass_inside_functions_only() -> None:
    mutants, _ = mutants_of("""
        LIMIT = 3
        def f(items):
            \"\"\"Docstrings are never removed.\"\"\"
            items.append(LIMIT)
            return items
        """)
    got = diffs(mutants, "remove")
    assert got == {(4, "items.append(LIMIT)", "pass"), (5, "return items", "pass")}


def test_multiline_edits_keep_line_numbers() -> None:
    text = """
        def f(a, b):
            value = (a
                     + b)
            if (a and
                    b):
                value = call(a,
                             b)
            return value
        """
    mutants, _ = mutants_of(text)
    lines = src(text).count("\n")
    assert mutants and all(m.source.count("\n") == lines for m in mutants)
    assert any(m.operator == "negate" and m.after == "if (not (a and" for m in mutants)
    assert any(m.operator == "remove" and m.line == 6 for m in mutants)


def test_edits_that_are_not_exactly_the_mutation_are_dropped() -> None:
    # a comment between the operands: the text edit cannot be checked, so no mutant
    mutants, _ = mutants_of("""
        def f(a, b):
            return (a  # left
                    + b)
        """)
    assert not [m for m in mutants if m.operator == "arithmetic"]
    for m in mutants:  # every mutant that was made parses
        ast.parse(m.source)


def test_annotations_docstrings_and_fstrings_are_not_mutated() -> None:
    mutants, _ = mutants_of("""
        def f(a: "int" = 1) -> "str":
            \"\"\"Doc.\"\"\"
            x: "int" = a
            return f"{a}-value"
        """)
    assert all('"int"' in m.after or "int" not in m.before or m.operator != "constant"
               for m in mutants)
    constants = {m.after for m in mutants if m.operator == "constant"}
    assert constants == {'def f(a: "int" = 2) -> "str":', 'def f(a: "int" = 0) -> "str":'}


# -- the null entrypoint ----------------------------------------------------------------


def test_null_and_raising_entrypoint_come_first() -> None:
    text = """
        import math

        def helper(x):
            return x * 2

        def f(x):
            \"\"\"Doc.\"\"\"
            y = helper(x)
            return math.sqrt(y)
        """
    mutants, info = mutants_of(text, max_mutants=5)
    assert [m.operator for m in mutants[:2]] == ["null_entrypoint", "raising_entrypoint"]
    null = mutants[0]
    assert info["null_entrypoint"] == "made"
    assert null.before == "def f(x): <body>" and null.after == "def f(x): return None"
    tree = ast.parse(null.source)
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "f")
    assert ast.dump(func.body[0]) == ast.dump(ast.Return(value=ast.Constant(value=None)))
    assert null.source.count("\n") == src(text).count("\n")
    assert null.lines == (7, 8, 9)  # every line of the body selects tests
    raising = ast.parse(mutants[1].source)
    assert isinstance(next(n for n in raising.body if getattr(n, "name", "") == "f").body[0], ast.Raise)


def test_null_entrypoint_is_made_even_when_no_line_is_covered_and_budget_is_one() -> None:
    mutants, _ = mutants_of("def f(x):\n    return x + 1\n", covered={"m.py": set()}, max_mutants=1)
    assert [m.operator for m in mutants] == ["null_entrypoint"]


def test_entrypoint_in_a_package_and_one_line_def() -> None:
    mutants, info = generate({"pkg/__init__.py": "", "pkg/core.py": "def run(x): return x - 1\n"},
                             covered=None, entrypoint="pkg.core:run", max_mutants=10)
    assert mutants[0].operator == "null_entrypoint" and mutants[0].file == "pkg/core.py"
    assert "def run(x): return None" == mutants[0].source.strip()


@pytest.mark.parametrize(("entrypoint", "why"), [
    ("m:Thing", "is not a function defined at the top level"),
    ("other:f", "not among the mutated files"),
])
def test_no_null_mutant_says_why(entrypoint: str, why: str) -> None:
    mutants, info = mutants_of("class Thing:\n    def __call__(self):\n        return 1\n",
                               entrypoint=entrypoint)
    assert not [m for m in mutants if m.operator == "null_entrypoint"]
    assert why in info["null_entrypoint"]


# -- selection: coverage, determinism, budget ----------------------------------------------


MODULE = """
    def f(a, b):
        if a < b:
            return a + 1
        return b - 1


    def g(x):
        return x * 2 == 4
    """


def test_only_covered_lines_are_mutated() -> None:
    mutants, _ = mutants_of(MODULE, covered={"m.py": {2, 3}})
    assert {m.line for m in mutants if not m.operator.endswith("entrypoint")} == {2, 3}


def test_deterministic_for_the_same_content_whatever_the_dict_order() -> None:
    one = generate({"a.py": src(MODULE), "b.py": "def h(x):\n    return x < 3\n"}, covered=None,
                   entrypoint="a:f", max_mutants=6)[0]
    two = generate({"b.py": "def h(x):\n    return x < 3\n", "a.py": src(MODULE)}, covered=None,
                   entrypoint="a:f", max_mutants=6)[0]
    assert [m.describe() for m in one] == [m.describe() for m in two]
    assert len(one) == 6


def test_generation_leaves_its_trees_intact() -> None:
    first = mutants_of(MODULE)[0]
    again = mutants_of(MODULE)[0]
    assert [m.source for m in first] == [m.source for m in again]
    for m in first:
        assert m.source != src(MODULE)


def test_budget_spreads_over_lines_before_repeating_one() -> None:
    mutants, info = mutants_of(MODULE, max_mutants=6)
    assert len(mutants) == 6 and info["candidates"] > 6
    lines = [m.line for m in mutants[2:]]  # after the two entrypoint mutants
    assert len(set(lines)) == len(lines) == 4  # lines 2, 3, 4, 8: one mutant each first


def test_max_mutants_zero_makes_nothing() -> None:
    assert mutants_of(MODULE, max_mutants=0)[0] == []


def test_unparsable_files_are_listed_not_fatal() -> None:
    mutants, info = generate({"m.py": "def f(:\n", "n.py": "def g(x):\n    return x + 1\n"},
                             covered=None, entrypoint="n:g", max_mutants=10)
    assert info["unparsable"] == ["m.py"] and mutants


def test_covered_lines_from_line_tests_and_from_coverage() -> None:
    # the runner's line_tests: relative paths, statement lines as strings, passing tests only
    job = {"sources": {"m.py": "a\nb\nc\n"},
           "line_tests": {"m.py": {"2": ["tests/test_m.py::test_a"], "x": ["bad"]}, "n.py": {}}}
    covered, per_line = covered_lines(job)
    assert covered == {"m.py": {2}} and per_line == {"m.py": {2: ["tests/test_m.py::test_a"]}}
    # a file no passing test executed has no covered line
    assert generate({"n.py": "def g(x):\n    return x + 1\n"}, covered=covered, entrypoint=None,
                    max_mutants=10)[0] == []
    job = {"sources": {"m.py": "a\nb\nc\n", "n.py": "x\n"},
           "coverage": {"files": {"m.py": {"missing_lines": [2]}}}}
    covered, per_line = covered_lines(job)
    assert per_line is None and covered["m.py"] == {1, 3, 4} and covered["n.py"] == set()
    assert covered_lines({"sources": {}}) == (None, None)


def test_mutant_timeout_follows_the_baseline() -> None:
    durations = {"t::a": 0.5, "t::b": 20.0}
    assert mutant_timeout({"t::a"}, durations, 1.0) == pytest.approx(2.5)
    assert mutant_timeout({"t::b"}, durations, 1.0) == 30.0
    assert mutant_timeout(None, durations, 0.01) == 1.5


# -- the server's events → the harness's section → the report ---------------------------------


def test_summarise_counts_and_problems() -> None:
    events = [{"plan": {"total": 3, "candidates": 9, "line_tests": False}},
              {"mutant": {"file": "m.py", "line": 2, "operator": "null_entrypoint", "outcome": "killed"}},
              {"control": {"outcome": "survived"}},
              {"mutant": {"file": "m.py", "line": 3, "operator": "comparison", "outcome": "survived",
                          "before": "a < b", "after": "a <= b"}},
              {"done": True, "seconds": 1.0}]
    out = summarise(events, None)
    assert (out["killed"], out["survived"], out["run"], out["problem"]) == (1, 1, 2, None)
    assert out["null_entrypoint"] == "killed"
    assert "stopped before finishing" in summarise(events[:-1], None)["problem"]
    failed_control = [*events[:2], {"control": {"outcome": "killed"}}]
    assert "unmutated skill did not pass" in summarise(failed_control, None)["problem"]
    closing = [*events[:-1], {"closing_control": {"outcome": "survived"}},
               {"closing_control": {"outcome": "killed"}}, events[-1]]
    out = summarise(closing, None)
    assert out["controls"] == 3 and "closing control: killed" in out["problem"]
    assert out["control"] == "killed"  # the first control that did not survive
    assert summarise(events, None)["controls"] == 1


def test_report_section_is_parsed_defensively() -> None:
    data = summarise([
        {"plan": {"total": 2}},
        {"mutant": {"file": "m.py", "line": "7", "operator": "nonsense", "outcome": "survived",
                    "before": "x" * 1000, "after": None}},
        {"mutant": {"file": "m.py", "line": 8, "operator": "constant", "outcome": "timed_out"}},
        {"mutant": "garbage"},
        {"done": True},
    ], None)
    data["mutants"].append("garbage")
    m = _mutation(data)
    assert (m.run, m.survived, m.timed_out, m.score) == (2, 1, 1, 50.0)
    s = m.survivors[0]
    assert (s.line, s.operator, len(s.before), s.after) == (7, "remove", 300, "")
    assert _mutation("nope") is None
    assert _mutation({"ran": False, "skipped_reason": "the dynamic phase did not pass"}).ran is False


# -- gates ---------------------------------------------------------------------------------


def report(mutation: MutationSummary | None, **extra) -> EvaluationReport:
    tests = TestSummary(collected=1, passed=1, cases=[TestCase(nodeid="t::a", outcome="passed", assertions=1)])
    return EvaluationReport(evaluation_id="x", verdict=Verdict.error, tests=tests,
                            coverage=CoverageSummary(line_percent=100.0, statements=3, covered_lines=3),
                            mutation=mutation, **extra)


def gated(min_score: float = 60.0, null: bool = True):
    data = load_policy("default", policies_dir=ROOT / "policies").model_dump(mode="json", exclude={"name"})
    data["gates"]["min_mutation_score"] = min_score
    data["gates"]["null_entrypoint_must_be_killed"] = null
    return parse_policy(data, name="t")


def summary(**fields) -> MutationSummary:
    base = dict(ran=True, score=80.0, killed=8, survived=2, run=10, total=10, null_entrypoint="killed")
    return MutationSummary(**{**base, **fields})


def test_gate_passes_at_or_above_the_threshold() -> None:
    assert decide(report(summary(score=60.0)), gated(60.0)) == (Verdict.passed, [])


def test_gate_fails_below_the_threshold_listing_survivors() -> None:
    survivors = [Survivor(file="m.py", line=12, operator="comparison", before="a < b", after="a <= b")]
    verdict, reasons = decide(report(summary(score=40.0, killed=4, survived=6, survivors=survivors)),
                              gated(60.0))
    assert verdict is Verdict.failed
    assert [r.code for r in reasons] == [ReasonCode.mutation_score_below_threshold]
    assert "40% is below the minimum 60%" in reasons[0].message
    assert "m.py:12 comparison `a < b` → `a <= b`" in reasons[0].message


def test_surviving_null_entrypoint_fails_with_its_own_reason() -> None:
    verdict, reasons = decide(report(summary(null_entrypoint="survived")), gated(0.0))
    assert verdict is Verdict.failed
    assert [r.code for r in reasons] == [ReasonCode.null_entrypoint_survived]
    assert "return None" in reasons[0].message
    assert decide(report(summary(null_entrypoint="survived")), gated(0.0, null=False))[0] is Verdict.passed


def test_gate_fails_closed_without_mutation_results() -> None:
    # no section: the phase was not part of that evaluation (off, static-only, older report)
    assert decide(report(None), gated(60.0)) == (Verdict.passed, [])
    skipped = MutationSummary(ran=False, skipped_reason="no time left before the deadline")
    assert "no time left" in decide(report(skipped), gated(60.0))[1][0].message
    incomplete = summary(problem="the mutation server stopped before finishing")
    assert decide(report(incomplete), gated(60.0))[1][0].code is ReasonCode.mutation_score_below_threshold
    nothing_ran = summary(score=None, run=0, killed=0, survived=0, total=5, budget_exhausted=True)
    assert "none of 5 mutants ran" in decide(report(nothing_ran), gated(60.0))[1][0].message


def test_no_mutation_reason_on_top_of_an_explained_failure_or_with_nothing_to_mutate() -> None:
    failing = report(MutationSummary(ran=False, skipped_reason="the dynamic phase did not pass"),
                     reasons=[Reason(code=ReasonCode.crashed, message="boom")])
    assert [r.code for r in decide(failing, gated(60.0))[1]] == [ReasonCode.crashed]
    empty = summary(score=None, run=0, killed=0, survived=0, total=0, null_entrypoint="absent: x")
    assert decide(report(empty), gated(60.0)) == (Verdict.passed, [])


def test_mutation_reasons_are_recomputed_under_another_policy() -> None:
    weak = report(summary(score=40.0))
    verdict, reasons = decide(weak, gated(60.0))
    stored = weak.model_copy(update={"verdict": verdict, "reasons": reasons})
    assert decide(stored, gated(30.0)) == (Verdict.passed, [])


def test_policy_mutation_table_is_validated() -> None:
    base = load_policy("default", policies_dir=ROOT / "policies").model_dump(mode="json", exclude={"name"})
    for bad, key in (({"max_mutants": -1}, "mutation.max_mutants"), ({"seconds": 0}, "mutation.seconds"),
                     ({"max_mutant": 3}, "mutation.max_mutant: unknown key"),
                     ({"max_mutants": "20"}, "mutation.max_mutants")):
        with pytest.raises(PolicyError, match=key.replace(".", r"\.")):
            parse_policy({**base, "mutation": {**base["mutation"], **bad}}, name="t")
    with pytest.raises(PolicyError, match="gates.min_mutation_score"):
        parse_policy({**base, "gates": {**base["gates"], "min_mutation_score": 101.0}}, name="t")


def test_shipped_policies_enable_the_gate() -> None:
    for name in ("default", "strict"):
        policy = load_policy(name, policies_dir=ROOT / "policies")
        assert policy.gates.min_mutation_score > 0 and policy.gates.null_entrypoint_must_be_killed
        assert policy.mutation.max_mutants >= 20


# -- where survivors are shown ---------------------------------------------------------------


def weak_report() -> EvaluationReport:
    survivors = [
        Survivor(file="m.py", line=12, operator="comparison", before="if a < b:", after="if a <= b:"),
        Survivor(file="m.py", line=14, operator="remove", before="total += x", after="pass"),
        Survivor(file="m.py", line=3, operator="null_entrypoint", before="def f(a): <body>",
                 after="def f(a): return None"),
        Survivor(file="m.py", line=20, operator="constant", before='s = "[/]"', after="s = '[bold red]x[/]'"),
    ]
    return report(summary(score=40.0, killed=4, survived=4, survivors=survivors,
                          null_entrypoint="survived")).model_copy(update={"verdict": Verdict.failed})


def test_repair_prompt_names_each_surviving_change() -> None:
    from sandgate.generation.prompt import repair_prompt, system_prompt

    text = repair_prompt(weak_report(), gated(60.0), attempt=1)
    assert "Your tests do not notice when:" in text
    assert "- m.py line 12 `if a < b:` becomes `if a <= b:`" in text
    assert "- m.py line 14 `total += x` is removed" in text
    assert "the entrypoint's whole body becomes `return None`" in text
    assert "at least 60% of them" in system_prompt(gated(60.0))


def test_human_report_prints_survivors_literally() -> None:
    import io

    from rich.console import Console

    from sandgate.cli.evaluate import render_report

    buffer = io.StringIO()
    render_report(weak_report(), Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "mutation: score 40.0% (4 killed, 0 timed out, 4 survived of 10 run" in text
    assert "null entrypoint survived" in text
    assert "[bold red]x[/]" in text and '"[/]"' in text  # markup shown, not interpreted
    assert "if a <= b:" in text and "m.py:12" in text


def test_tests_are_selected_per_line_when_the_runner_sends_line_tests() -> None:
    from sandgate_harness.mutation import _selection

    mutants, _ = mutants_of(MODULE)
    per_line = {"m.py": {3: ["tests/test_a.py::test_one"], 4: ["tests/test_b.py::test_two[x-1]"]}}
    all_tests = ["tests/test_a.py", "tests/test_b.py"]
    on_line_3 = next(m for m in mutants if m.line == 3 and not m.operator.endswith("entrypoint"))
    assert _selection(on_line_3, per_line, all_tests) == ({"tests/test_a.py::test_one"}, ["tests/test_a.py"])
    null = mutants[0]  # the body's lines: every test that covers any of them
    ids, files = _selection(null, per_line, all_tests)
    assert ids == {"tests/test_a.py::test_one", "tests/test_b.py::test_two[x-1]"} and files == all_tests
    on_line_8 = next(m for m in mutants if m.line == 8)
    assert _selection(on_line_8, per_line, all_tests) == (None, all_tests)  # unknown: every test
    assert _selection(on_line_3, None, all_tests) == (None, all_tests)  # no map: every test


# -- stopping once the gates' outcome is decided ----------------------------------------------


def test_decision_pass_once_survivors_can_no_longer_pull_the_score_below() -> None:
    # 20 selected, 60 %: 12 kills decide it whatever the other 8 do
    assert decision(["killed"] * 11, 20, 60.0, True, "killed") is None
    assert decision(["killed"] * 12, 20, 60.0, True, "killed") == "pass"
    assert decision(["killed"] * 12 + ["survived"] * 3, 20, 60.0, True, "killed") == "pass"
    assert decision(["timed_out"] * 12, 20, 60.0, True, "killed") == "pass"


def test_decision_fail_once_kills_can_no_longer_lift_the_score() -> None:
    assert decision(["killed"] + ["survived"] * 8, 20, 60.0, True, "killed") is None
    assert decision(["killed"] + ["survived"] * 9, 20, 60.0, True, "killed") == "fail"


def test_decision_null_entrypoint_and_disabled_gate() -> None:
    assert decision(["survived"], 20, 60.0, True, "survived") == "fail"
    assert decision(["survived"], 20, 60.0, False, "survived") is None
    assert decision(["killed"], 20, 0.0, True, "killed") == "pass"
    assert decision([], 20, 60.0, True, None) is None


@pytest.mark.parametrize("seed", range(40))
def test_stopping_early_never_changes_the_verdict(seed: int) -> None:
    import random

    rng = random.Random(seed)
    total, threshold = rng.randint(1, 25), rng.choice([10.0, 50.0, 60.0, 65.0, 90.0])
    outcomes = [rng.choice(["killed", "survived", "timed_out"]) for _ in range(total)]
    full = 100.0 * sum(o != "survived" for o in outcomes) / total >= threshold
    for run in range(1, total):
        decided = decision(outcomes[:run], total, threshold, False, None)
        if decided is not None:
            score = 100.0 * sum(o != "survived" for o in outcomes[:run]) / run
            assert (decided == "pass") == full == (score >= threshold)
            break


# -- when the harness does not start the phase (the verdict is already failed) --------------


def dynamic_phase(**result) -> dict:
    base = {"exit_status": 0, "collect_errors": [], "collect_skipped": [],
            "cases": [{"nodeid": "t::a", "outcome": "passed", "assertions": 2, "failed_assertions": 0}],
            "entrypoint": {"resolved": True, "tested_by": ["t::a"]},
            "coverage": {"totals": {"num_statements": 10, "covered_lines": 9}}}
    return {"ran": True, "result": {**base, **result}, "problem": None, "returncode": 0,
            "timed_out": False, "output_truncated": False}


def job(**settings) -> dict:
    return {"entrypoint": "m:f", "mutation": {"min_line_coverage": 80.0, "allow_skips": False, **settings}}


def test_mutation_runs_on_a_clean_passing_dynamic_phase() -> None:
    assert mutation_skip(job(), dynamic_phase()) is None


@pytest.mark.parametrize(("change", "why"), [
    ({"exit_status": 1}, "did not pass"),
    ({"cases": [{"nodeid": "t::a", "outcome": "failed"}]}, "did not pass"),
    ({"cases": [{"nodeid": "t::a", "outcome": "passed", "assertions": 0}]}, "vacuous"),
    ({"cases": [{"nodeid": "t::a", "outcome": "passed", "assertions": 3, "failed_assertions": 1}]}, "vacuous"),
    ({"cases": [{"nodeid": "t::a", "outcome": "passed", "assertions": 1},
                {"nodeid": "t::b", "outcome": "skipped"}]}, "skipped"),
    ({"entrypoint": {"resolved": False, "tested_by": []}}, "entrypoint"),
    ({"entrypoint": {"resolved": True, "tested_by": []}}, "entrypoint"),
    ({"coverage": {"totals": {"num_statements": 10, "covered_lines": 7}}}, "coverage"),
])
def test_mutation_is_skipped_when_the_verdict_is_already_failed(change: dict, why: str) -> None:
    assert why in mutation_skip(job(), dynamic_phase(**change))


def test_skips_allowed_by_the_policy_do_not_stop_the_phase() -> None:
    cases = [{"nodeid": "t::a", "outcome": "passed", "assertions": 1}, {"nodeid": "t::b", "outcome": "skipped"}]
    assert mutation_skip(job(allow_skips=True), dynamic_phase(cases=cases)) is None
    tampered = {**dynamic_phase(), "problem": "a result frame failed authentication (forged results)"}
    assert mutation_skip(job(), tampered) == "the dynamic phase did not pass"


# -- schemata ------------------------------------------------------------------------


SCHEMATA_MODULE = src('''
    LIMIT = 10
    seen = []


    def clamp(x, low=0):
        """Clamp to [low, LIMIT]."""
        if x < low:
            return low
        result = min(x, LIMIT)
        seen.append(result)
        return result


    def count(n):
        i = 0
        while i < n:
            yield i
            i += 1


    class Box:
        def __init__(self, v):
            self.v = v

        def double(self):
            return self.v * 2 + 0
    ''')


def _run_variant(code: object, active: list, token: str | None) -> list:
    ns: dict = {"_sandgate_active__": active, "__name__": "m"}
    active[0] = token
    exec(code, ns)  # noqa: S102 - the harness's own schemata of a test module
    out = []
    for x in (-3, 0, 4, 99):
        try:
            out.append(("clamp", x, ns["clamp"](x)))
        except Exception as exc:  # noqa: BLE001
            # UnboundLocalError is a NameError: the schemata keep a read of a name bound
            # nowhere else a NameError (see _compatible)
            out.append(("clamp", x, "NameError" if isinstance(exc, NameError) else type(exc).__name__))
    try:
        out.append(("count", list(itertools.islice(ns["count"](4), 10))))  # some mutants never end
    except Exception as exc:  # noqa: BLE001
        out.append(("count", type(exc).__name__))
    try:
        out.append(("double", ns["Box"](5).double()))
    except Exception as exc:  # noqa: BLE001
        out.append(("double", type(exc).__name__))
    out.append(("seen", list(ns["seen"])))
    return out


def _run_source(text: str) -> list:
    return _run_variant(compile(text, "m.py", "exec"), [None], None)


def test_schemata_each_token_behaves_exactly_like_its_mutant_and_the_identity_like_the_original() -> None:
    from sandgate_harness.mutation import build_schemata

    sources = {"m.py": SCHEMATA_MODULE}
    mutants, _ = generate(sources, covered=None, entrypoint="m:clamp", max_mutants=200)
    schemata = build_schemata(sources, mutants)
    assert len(schemata.tokens) >= len(mutants) - 4  # LIMIT, low=0 and the like are not in it
    kinds = {mutants[i].operator for i in schemata.tokens}
    assert {"null_entrypoint", "comparison", "remove", "constant", "arithmetic"} <= kinds
    code = compile(schemata.trees["m.py"], "m.py", "exec")
    active: list = [None]
    for index, token in schemata.tokens.items():
        assert _run_variant(code, active, token) == _run_source(mutants[index].source), mutants[index]
        assert _run_variant(code, active, schemata.identity[index]) == _run_source(SCHEMATA_MODULE)
    assert _run_variant(code, active, "not-a-token") == _run_source(SCHEMATA_MODULE)
    # module-level code, defaults: never in the schemata (they run once, at import)
    for index, mutant in enumerate(mutants):
        if mutant.line in (1, 5) and mutant.operator == "constant":
            assert index not in schemata.tokens


def test_schemata_leaves_out_what_would_mean_something_else_in_the_merged_function() -> None:
    from sandgate_harness.mutation import build_schemata

    module = src('''
        total = 5


        def f(n):
            total = n
            return total + 1


        def g():
            yield 1
        ''')
    sources = {"m.py": module}
    mutants, _ = generate(sources, covered=None, entrypoint="m:g", max_mutants=200)
    schemata = build_schemata(sources, mutants)
    for index, mutant in enumerate(mutants):
        if mutant.operator == "remove" and mutant.before == "total = n":
            # on its own, `return total + 1` reads the global (6); merged, an unbound local
            assert index not in schemata.tokens
        if mutant.operator == "null_entrypoint":  # a generator's body → `return None`: not a generator
            assert index not in schemata.tokens
    assert any(m.operator == "arithmetic" for i, m in enumerate(mutants) if i in schemata.tokens)
    # a skill that uses the dispatch cell's name is never compiled into schemata
    assert not build_schemata({"m.py": module + "_sandgate_active__ = 1\n"}, mutants).tokens


# -- the verification's fast path: one statement parsed, never a different tree -----------------

_TRICKY = src('''
    import os; import sys
    x = 1; y = x + 2


    @staticmethod
    @property
    def decorated(a, b=3):
        """doc"""
        if a < b and b >= -0.0:
            return a * b - 1
        return [v ** 2 for v in range(a) if v % 2 == 0]


    class Thing:
        limit = 10

        def method(self, value):
            total = 0
            for i in range(value):
                total += i if i > 2 else -i
            while total > self.limit:
                total //= 2
            return not total or value is None


    def tail(text): return text.upper() + "!"  # on one line
    z = tail("a") if x else None
    ''')


def _full_parse_tree(source: str, cand) -> ast.Module | None:
    data = source.encode()
    text = (data[:cand.start] + cand.replacement + data[cand.end:]).decode()
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


@pytest.mark.parametrize("name", ["tricky", "text_stats", "csv_summary", "unit_convert"])
def test_the_statement_parse_gives_the_tree_the_whole_file_parse_gives(name: str) -> None:
    from sandgate_harness import mutation as m

    if name == "tricky":
        source, entry = _TRICKY, "tricky:decorated"
        path = "tricky.py"
    else:
        path = f"{name}.py"
        source = (ROOT / "examples" / "skills" / name / path).read_text()
        entry = None
    tree = ast.parse(source)
    finder = m._Finder(path, source, tree, entry.partition(":")[2] if entry else None)
    finder.run()
    m._augassign_candidates(finder)
    fast = 0
    for cand in finder.out:
        whole = _full_parse_tree(source, cand)
        alone = m._parse_statement(finder.src, tree, cand)
        if alone is not None:
            fast += 1
            assert whole is not None
            # the same statements, with the same positions, as the whole file's parse
            assert ast.dump(alone, include_attributes=True) == ast.dump(whole, include_attributes=True)
        checked = m._verify(finder.src, tree, cand)
        if whole is None:
            assert checked is None
        elif checked is not None:
            assert ast.dump(checked[3], include_attributes=True) == ast.dump(whole, include_attributes=True)
            assert checked[0] == (source.encode()[:cand.start] + cand.replacement
                                  + source.encode()[cand.end:]).decode()
    assert fast >= len(finder.out) // 2, (fast, len(finder.out))


@pytest.mark.parametrize("pair", [("x = 1", "x = 1"), ("x = 1", "x = True"), ("x = 0.0", "x = -0.0"),
                                  ("x = float('nan')", "x = float('nan')"), ("a < b", "a <= b"),
                                  ("f(a, *b)", "f(a, b)"), ("x = b'1'", "x = '1'"), ("x = 1j", "x = 1j"),
                                  ("def f(a): pass", "def f(a): return"), ("[a, b]", "[a, b, c]")])
def test_the_tree_comparison_agrees_with_ast_dump(pair: tuple[str, str]) -> None:
    from sandgate_harness.mutation import _same

    a, b = (ast.parse(p) for p in pair)
    assert _same(a, b) == (ast.dump(a) == ast.dump(b))
    for x, y in zip(ast.walk(a), ast.walk(b), strict=False):  # up to the first difference
        assert _same(x, y) == (ast.dump(x) == ast.dump(y))


def _as_sandbox_user(fn, *args) -> None:
    """Run ``fn(*args)`` in a child as an ordinary user (the sandbox's processes are not root:
    root ignores the permissions a test could hide state behind); re-raises its failure."""
    import os
    import pickle
    import traceback

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        result: object = None
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - sent to the parent
            result = (type(exc).__name__, str(exc), traceback.format_exc())
        os.write(write, pickle.dumps(result))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    result = pickle.loads(data)
    if result is not None:
        raise AssertionError(f"in the child: {result[0]}: {result[1]}\n{result[2]}")


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A directory the sandbox's user can reach (pytest's tmp_path is under root's 0700 one)."""
    import shutil
    import tempfile

    made = Path(tempfile.mkdtemp(prefix="sandgate-reset-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        for d in made.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o700)
        shutil.rmtree(made)


def _scratch(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    import os

    from sandgate_harness import mutation

    work, tmp = root / "work", root / "tmp"
    skill = work / "skill"
    for d in (work, tmp, skill):
        d.mkdir()
    if os.getuid() == 0:
        for d in (work, tmp, skill):
            os.chown(d, 65534, 65534)
    monkeypatch.setattr(mutation, "SKILL_DIR", str(skill))
    monkeypatch.setattr(mutation, "SCRATCH_DIRS", (str(work), str(tmp)))
    return work, tmp, skill


def test_a_reset_removes_what_a_test_hid_behind_permissions(
        scratch_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only directory (its files still writable: a counter), an unreadable one, a read-only
    scratch directory, the skill's directory swapped for a symlink: all gone, the tree pristine."""
    import os

    from sandgate_harness import mutation

    work, tmp, skill = _scratch(scratch_root, monkeypatch)
    files = {"m.py": b"X = 1\n", "tests/test_m.py": b"def test_x():\n    pass\n"}
    monkeypatch.setattr(mutation, "HOME_DIR", str(tmp / "home"))  # made again after each emptying

    def hide_and_reset() -> None:
        mutation._reset_tree(files, None)
        (tmp / "keep").mkdir()
        (tmp / "keep" / "n").write_text("3")
        (tmp / "keep").chmod(0o555)
        (tmp / "deep" / "er").mkdir(parents=True)
        (tmp / "deep" / "er" / "x").write_text("x")
        (tmp / "deep").chmod(0o000)
        (work / "left").write_text("y")
        work.chmod(0o555)
        (skill / "tests").chmod(0o555)
        mutation._reset_tree(files, ("m.py", "X = 2\n"))
        assert sorted(os.listdir(tmp)) == ["home"] and sorted(os.listdir(work)) == ["skill"]
        assert (skill / "m.py").read_bytes() == b"X = 2\n"
        # the skill's directory moved away and a symlink put in its place
        os.rename(skill, work / "moved")
        os.symlink(tmp, skill)
        mutation._reset_tree(files, None)
        assert not skill.is_symlink() and (skill / "m.py").read_bytes() == b"X = 1\n"
        assert sorted(os.listdir(work)) == ["skill"]

    _as_sandbox_user(hide_and_reset)


def test_a_reset_that_cannot_remove_something_raises(scratch_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Something this user cannot remove (here: in a directory of another user) stops the run."""
    import os

    from sandgate_harness import mutation

    if os.getuid() != 0:
        pytest.fail("this test makes a directory of another user: it needs root (CI runs as root)")
    work, tmp, skill = _scratch(scratch_root, monkeypatch)
    theirs = tmp / "theirs"
    theirs.mkdir()
    (theirs / "f").write_text("z")  # root's, in root's directory, inside the scratch directory
    monkeypatch.setattr(mutation, "HOME_DIR", str(tmp / "home"))

    def reset() -> None:
        with pytest.raises(mutation.ResetError, match="could not remove what a run left"):
            mutation._reset_tree({"m.py": b"X = 1\n"}, None)

    _as_sandbox_user(reset)
