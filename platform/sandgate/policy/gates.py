"""Gates: turn an evaluation report into a verdict. Pure, total, no I/O.

Precedence
    1. an ``infrastructure`` reason in the report → ``error`` (never ``failed``);
    2. an ``invalid_submission`` or ``syntax_error`` reason → ``rejected``;
    3. otherwise every applicable failure reason is collected → ``failed``,
       or none → ``passed`` with no reasons.

Which reasons come from where
    *Facts* carried in the report (``infrastructure``, ``invalid_submission``,
    ``syntax_error``, ``crashed``, ``timeout``, ``memory_limit``, ``pids_limit``,
    ``output_limit``) are kept, de-duplicated by code (the first message wins).
    *Policy-dependent* reasons (``policy_violation``, ``no_tests``,
    ``tests_failed``, ``tests_not_run``, ``coverage_below_threshold``,
    ``branch_coverage_below_threshold``) and the reasons computed from the
    report's test, entrypoint and mutation data (``vacuous_tests``, ``skipped_tests``,
    ``entrypoint_missing``, ``entrypoint_not_tested``, ``null_entrypoint_survived``,
    ``mutation_score_below_threshold``), and the oracle's
    (``too_few_examples``, ``acceptance_failed``, ``examples_failed``,
    ``contract_violation``, ``nondeterministic``, ``behaviour_changed``) found in
    the report are dropped and recomputed, so deciding a stored report again under another policy is
    correct, and deciding twice gives the same answer. The report's incoming
    ``verdict`` is ignored.

Tests that count
    Only ``passed`` tests count as evidence; skipped, xfailed and xpassed
    never do. The number of passed tests must reach ``max(min_tests, 1)`` when
    any test was collected (``min_tests`` when none was). Falling short when
    nothing failed and nothing was cut off (e.g. "no test passed: 3 skipped")
    is reported as ``no_tests``: there is no evidence, rather than failing
    evidence. It is not added on top of ``tests_failed`` / ``tests_not_run``,
    which already explain the shortfall.

Evidence that is not evidence
    ``vacuous_tests``: a passed test that executed no assertion (``assertions == 0``)
    or in which an assertion failed (``failed_assertions > 0``: it was caught).
    Cases whose counts are ``None`` (reports from before the count) are not judged.
    ``skipped_tests``: any skipped, xfailed or xpassed test (including a module
    skipped at collection) unless the policy has ``allow_skips = true``.

Entrypoint
    When the report carries an entrypoint check (``report.entrypoint``; None when
    the dynamic phase did not run): not resolved → ``entrypoint_missing``, whatever
    the tests did; resolved but executed by no passing test → ``entrypoint_not_tested``,
    added only when some test passed (otherwise the test reasons explain it).

Coverage
    No coverage data fails the coverage gate ("no coverage data") when a
    coverage gate is enabled and a test ran; when no test ran the test reason
    already explains it and no coverage reason is added (unless there is no
    test reason at all, e.g. ``min_tests = 0``: then the gate still fails
    closed). The branch gate only applies when ``min_branch_coverage > 0``
    and the code has branches (``coverage.branches > 0``): straight-line code
    has nothing to cover.

Mutation
    ``null_entrypoint_survived`` when ``null_entrypoint_must_be_killed`` and the
    mutant whose entrypoint body is ``return None`` survived (the tests pass
    whatever the entrypoint returns). ``mutation_score_below_threshold`` when
    ``min_mutation_score > 0`` and the score (killed + timed out over run) is
    below it, or when there is no score although there was something to
    mutate (the phase was skipped, did not complete, or ran no mutant within
    its budget) and no other reason explains it: the gate fails closed. A
    skill with nothing to mutate (no mutant could be made) passes the score
    gate, and so does a report without a ``mutation`` section (the phase was
    not part of that evaluation: the policy turned it off, a static-only
    re-scan, a report stored before the phase existed). A phase that stopped
    early (``decided_early``) was decided for the evaluation's own policy;
    re-deciding it under another threshold uses the mutants that ran.
Oracle (evidence judged by the controller, :mod:`sandgate.evaluation.oracle`)
    Computed from the report's ``oracle`` section, like the test reasons
    (all policy-dependent). ``examples_must_pass``: a failed declared example
    → ``examples_failed``, a failed operator acceptance example →
    ``acceptance_failed``; so does an example or acceptance set the phase never
    sent because it did not run (``[oracle] json_values = false`` declares the
    entrypoint unservable: that cannot dodge them). ``min_examples > 0``: fewer declared examples, or
    no oracle phase that ran (skipped, unsupported, absent) →
    ``too_few_examples``. ``contract_checks > 0``: fewer contract checks than
    required (unsupported type hints check none: never passing evidence), or
    any contract failure, or contract checks that all raised a declared
    exception (``contract_values == 0``: no returned value was checked) →
    ``contract_violation``; two answers to one input →
    ``nondeterministic``. ``max_behaviour_changes`` given: more undeclared
    behaviour changes against the active version → ``behaviour_changed``.
    With every oracle gate off (``examples_must_pass = false``, the others 0 /
    omitted) the section is reported and decides nothing.

Order of reasons
    Root causes first: sandbox limits, ``crashed``, ``policy_violation``,
    ``entrypoint_missing``, ``no_tests``, ``tests_failed``, ``tests_not_run``,
    ``skipped_tests``, ``vacuous_tests``, ``entrypoint_not_tested``, coverage,
    branch coverage, null entrypoint, mutation score, then the oracle's: ``too_few_examples``,
    ``acceptance_failed``, ``examples_failed``, ``contract_violation``,
    ``nondeterministic``, ``behaviour_changed``.
"""

from __future__ import annotations

from sandgate.oracle_report import OracleCall, OracleSummary
from sandgate.policy.model import SEVERITIES, Gates, Limits, Policy
from sandgate.report import (
    CoverageSummary,
    EntrypointCheck,
    EvaluationReport,
    Finding,
    MutationSummary,
    Reason,
    ReasonCode,
    SandboxInfo,
    TestSummary,
    Verdict,
)

__all__ = ["decide", "POLICY_DEPENDENT_CODES", "REASON_ORDER"]

RC = ReasonCode

#: reasons ``decide`` computes from the data and the policy (dropped from the input)
POLICY_DEPENDENT_CODES: frozenset[ReasonCode] = frozenset(
    {
        RC.policy_violation,
        RC.no_tests,
        RC.tests_failed,
        RC.tests_not_run,
        RC.coverage_below_threshold,
        RC.branch_coverage_below_threshold,
        RC.vacuous_tests,
        RC.skipped_tests,
        RC.entrypoint_missing,
        RC.entrypoint_not_tested,
        RC.null_entrypoint_survived,
        RC.mutation_score_below_threshold,
        RC.too_few_examples,
        RC.acceptance_failed,
        RC.examples_failed,
        RC.contract_violation,
        RC.nondeterministic,
        RC.behaviour_changed,
    }
)

#: the order reasons are returned in: the most fundamental cause first
REASON_ORDER: tuple[ReasonCode, ...] = (
    RC.infrastructure,
    RC.invalid_submission,
    RC.syntax_error,
    RC.timeout,
    RC.memory_limit,
    RC.pids_limit,
    RC.output_limit,
    RC.crashed,
    RC.policy_violation,
    RC.entrypoint_missing,
    RC.no_tests,
    RC.tests_failed,
    RC.tests_not_run,
    RC.skipped_tests,
    RC.vacuous_tests,
    RC.entrypoint_not_tested,
    RC.coverage_below_threshold,
    RC.branch_coverage_below_threshold,
    RC.null_entrypoint_survived,
    RC.mutation_score_below_threshold,
    RC.too_few_examples,
    RC.acceptance_failed,
    RC.examples_failed,
    RC.contract_violation,
    RC.nondeterministic,
    RC.behaviour_changed,
)
_RANK = {code: i for i, code in enumerate(REASON_ORDER)}

_MAX_LISTED_FINDINGS = 10
_MAX_LISTED_TESTS = 5


# -- formatting helpers -------------------------------------------------------


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _num(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _pct_pair(value: float, minimum: float) -> tuple[str, str]:
    """Both percentages, with enough decimals that a shortfall is visible (79.999 vs 80)."""
    for decimals in range(2, 8):
        a, b = _num(value, decimals), _num(minimum, decimals)
        if a != b:
            return a, b
    return repr(value), repr(minimum)


def _breakdown(tests: TestSummary) -> str:
    parts = []
    for count, label in (
        (tests.failed, "failed"),
        (tests.errors, "errored"),
        (tests.skipped, "skipped"),
        (tests.xfailed, "xfailed"),
        (tests.xpassed, "xpassed"),
    ):
        if count > 0:
            parts.append(f"{count} {label}")
    never_ran = _never_ran(tests)
    if never_ran > 0:
        parts.append(f"{never_ran} never ran")
    return ", ".join(parts)


def _never_ran(tests: TestSummary) -> int:
    return tests.collected - tests.skipped - tests.xfailed - tests.executed


def _more(listed: int, total: int) -> str:
    return f", and {total - listed} more" if total > listed else ""


# -- the gates ----------------------------------------------------------------


def _sandbox_reasons(sandbox: SandboxInfo | None, limits: Limits) -> list[Reason]:
    if sandbox is None:
        return []
    reasons = []
    if sandbox.timed_out:
        reasons.append(
            Reason(
                code=RC.timeout,
                message=(
                    f"the run exceeded its wall-clock limit and was stopped after "
                    f"{sandbox.wall_seconds:.1f}s (the policy allows at most "
                    f"{_num(limits.timeout_seconds, 1)}s)"
                ),
            )
        )
    if sandbox.oom_killed:
        peak = ""
        if sandbox.peak_memory_bytes:
            peak = f", peak {sandbox.peak_memory_bytes / (1024 * 1024):.0f} MiB"
        reasons.append(
            Reason(
                code=RC.memory_limit,
                message=(
                    f"the sandbox was killed for exceeding its memory limit{peak} "
                    f"(the policy allows at most {limits.memory_mb} MiB)"
                ),
            )
        )
    if sandbox.pids_limited:
        reasons.append(
            Reason(
                code=RC.pids_limit,
                message=(
                    f"the sandbox hit its process limit (the policy allows at most "
                    f"{limits.pids} processes and threads)"
                ),
            )
        )
    if sandbox.output_truncated:
        reasons.append(
            Reason(
                code=RC.output_limit,
                message=(
                    f"the output exceeded its limit and was truncated (the policy allows "
                    f"at most {limits.output_kb} KiB)"
                ),
            )
        )
    return reasons


def _finding_reasons(findings: list[Finding], gates: Gates) -> list[Reason]:
    blocked_set = set(gates.blocked_severities)
    blocked = [f for f in findings if f.severity in blocked_set]
    if not blocked:
        return []
    blocked.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.path, f.line, f.rule_id))
    listed = blocked[:_MAX_LISTED_FINDINGS]
    items = ", ".join(f"{f.rule_id} ({f.severity}) at {f.path}:{f.line}" for f in listed)
    message = (
        f"{_plural(len(blocked), 'blocked finding')}: {items}{_more(len(listed), len(blocked))}"
    )
    return [Reason(code=RC.policy_violation, message=message)]


def _test_reasons(tests: TestSummary, gates: Gates) -> list[Reason]:
    reasons: list[Reason] = []
    codes: set[ReasonCode] = set()

    def add(code: ReasonCode, message: str) -> None:
        reasons.append(Reason(code=code, message=message))
        codes.add(code)

    if tests.collected < gates.min_tests:
        if tests.collected <= 0:
            add(RC.no_tests, "no tests were collected")
        else:
            add(
                RC.no_tests,
                f"only {_plural(tests.collected, 'test')} collected; "
                f"the policy requires at least {gates.min_tests}",
            )

    if gates.tests_must_pass and (tests.failed > 0 or tests.errors > 0):
        counts = []
        if tests.failed > 0:
            counts.append(f"{tests.failed} failed")
        if tests.errors > 0:
            counts.append(f"{tests.errors} errored")
        bad = [c.nodeid for c in tests.cases if c.outcome in ("failed", "error")]
        listed = bad[:_MAX_LISTED_TESTS]
        detail = f": {', '.join(listed)}{_more(len(listed), len(bad))}" if listed else ""
        add(RC.tests_failed, f"{' and '.join(counts)} of {tests.collected} collected{detail}")

    never_ran = _never_ran(tests)
    if never_ran > 0:
        add(
            RC.tests_not_run,
            f"{never_ran} of {tests.collected} collected tests never ran "
            f"(the run ended before they did)",
        )

    required = max(gates.min_tests, 1) if tests.collected > 0 else gates.min_tests
    shortfall_explained = codes & {RC.no_tests, RC.tests_failed, RC.tests_not_run}
    if tests.passed < required and not shortfall_explained:
        breakdown = _breakdown(tests) or "nothing else ran"
        if tests.passed <= 0:
            add(RC.no_tests, f"no test passed: {breakdown}")
        else:
            add(
                RC.no_tests,
                f"only {_plural(tests.passed, 'test')} passed; the policy requires at least "
                f"{required} ({breakdown}; skipped and xfailed tests never count)",
            )
    return reasons


def _evidence_reasons(tests: TestSummary, gates: Gates) -> list[Reason]:
    reasons = []
    count = tests.skipped + tests.xfailed + tests.xpassed
    if not gates.allow_skips and count > 0:
        skipped = [c.nodeid for c in tests.cases if c.outcome in ("skipped", "xfailed", "xpassed")]
        listed = skipped[:_MAX_LISTED_TESTS]
        detail = f": {', '.join(listed)}{_more(len(listed), count)}" if listed else ""
        reasons.append(Reason(code=RC.skipped_tests, message=(
            f"{_plural(count, 'test')} skipped, xfailed or xpassed (the policy does not "
            f"allow skips){detail}")))
    empty = [c.nodeid for c in tests.cases if c.outcome == "passed" and c.assertions == 0]
    swallowed = [c.nodeid for c in tests.cases
                 if c.outcome == "passed" and (c.failed_assertions or 0) > 0]
    parts = []
    if empty:
        listed = empty[:_MAX_LISTED_TESTS]
        parts.append(f"{_plural(len(empty), 'passed test')} executed no assertion: "
                     f"{', '.join(listed)}{_more(len(listed), len(empty))}")
    if swallowed:
        listed = swallowed[:_MAX_LISTED_TESTS]
        parts.append(f"{_plural(len(swallowed), 'passed test')} caught a failed assertion: "
                     f"{', '.join(listed)}{_more(len(listed), len(swallowed))}")
    if parts:
        reasons.append(Reason(code=RC.vacuous_tests, message="; ".join(parts)))
    return reasons


def _entrypoint_reasons(entrypoint: EntrypointCheck | None, tests: TestSummary) -> list[Reason]:
    if entrypoint is None:
        return []
    name = entrypoint.name or "the entrypoint"
    if not entrypoint.resolved:
        return [Reason(code=RC.entrypoint_missing, message=(
            f"entrypoint {name} does not resolve to a callable in the sandbox: "
            f"{entrypoint.problem or 'unknown'}"))]
    if not entrypoint.tested_by and tests.passed > 0:
        why = f" ({entrypoint.problem})" if entrypoint.problem else ""
        return [Reason(code=RC.entrypoint_not_tested, message=(
            f"no passing test executed the body of entrypoint {name}{why}"))]
    return []


def _coverage_reasons(
    coverage: CoverageSummary | None,
    tests: TestSummary,
    gates: Gates,
    test_reason_given: bool,
) -> list[Reason]:
    line_gate = gates.min_line_coverage > 0
    branch_gate = gates.min_branch_coverage > 0
    if coverage is None:
        if not (line_gate or branch_gate):
            return []
        if tests.executed > 0:
            return [Reason(code=RC.coverage_below_threshold, message="no coverage data")]
        if not test_reason_given:
            return [
                Reason(
                    code=RC.coverage_below_threshold,
                    message="no coverage data (no test ran)",
                )
            ]
        return []

    reasons = []
    if coverage.line_percent < gates.min_line_coverage:
        got, need = _pct_pair(coverage.line_percent, gates.min_line_coverage)
        reasons.append(
            Reason(
                code=RC.coverage_below_threshold,
                message=f"line coverage {got}% is below the minimum {need}%",
            )
        )
    if (
        branch_gate
        and coverage.branches > 0
        and coverage.branch_percent < gates.min_branch_coverage
    ):
        got, need = _pct_pair(coverage.branch_percent, gates.min_branch_coverage)
        reasons.append(
            Reason(
                code=RC.branch_coverage_below_threshold,
                message=(
                    f"branch coverage {got}% is below the minimum {need}% "
                    f"({coverage.covered_branches} of {coverage.branches} branches)"
                ),
            )
        )
    return reasons


_MAX_LISTED_SURVIVORS = 3


def _mutation_reasons(mutation: MutationSummary | None, gates: Gates, explained: bool) -> list[Reason]:
    reasons: list[Reason] = []
    if mutation is None:
        return []
    ran = mutation.ran
    if gates.null_entrypoint_must_be_killed and ran and mutation.null_entrypoint == "survived":
        where = next((f" ({s.file}:{s.line})" for s in mutation.survivors
                      if s.operator == "null_entrypoint"), "")
        reasons.append(Reason(code=RC.null_entrypoint_survived, message=(
            f"the tests still pass when the entrypoint's body is replaced by `return None`{where}: "
            f"they do not check what the entrypoint returns")))
    if gates.min_mutation_score <= 0:
        return reasons
    if not ran:
        if not explained:
            why = mutation.skipped_reason or "the mutation phase did not run"
            reasons.append(Reason(code=RC.mutation_score_below_threshold,
                                  message=f"no mutation score ({why})"))
        return reasons
    if mutation.problem:
        reasons.append(Reason(code=RC.mutation_score_below_threshold,
                              message=f"the mutation phase did not complete: {mutation.problem}"))
        return reasons
    if mutation.score is None:
        if mutation.total > 0:
            reasons.append(Reason(code=RC.mutation_score_below_threshold, message=(
                f"no mutation score: none of {_plural(mutation.total, 'mutant')} ran within the budget")))
        return reasons
    if mutation.score < gates.min_mutation_score:
        got, need = _pct_pair(mutation.score, gates.min_mutation_score)
        listed = mutation.survivors[:_MAX_LISTED_SURVIVORS]
        items = "; ".join(f"{s.file}:{s.line} {s.operator} `{s.before}` → `{s.after}`" for s in listed)
        detail = f"; surviving: {items}{_more(len(listed), mutation.survived)}" if listed else ""
        reasons.append(Reason(code=RC.mutation_score_below_threshold, message=(
            f"mutation score {got}% is below the minimum {need}% "
            f"({mutation.killed + mutation.timed_out} of {mutation.run} mutants killed){detail}")))
    return reasons


# -- the decision -------------------------------------------------------------


def _calls_text(calls: list[OracleCall]) -> str:
    listed = calls[:_MAX_LISTED_TESTS]
    items = "; ".join(f"{c.name}: expected {c.expected}, got {c.got}" for c in listed)
    return f"{items}{_more(len(listed), len(calls))}"


def _oracle_reasons(oracle: OracleSummary | None, gates: Gates) -> list[Reason]:
    reasons: list[Reason] = []
    why_not = ("no oracle phase ran" if oracle is None else
               f"the oracle phase did not run ({oracle.status}: {oracle.note or 'no reason given'})")
    if gates.min_examples > 0:
        if oracle is None or oracle.status != "ran":
            reasons.append(Reason(code=RC.too_few_examples, message=(
                f"the policy requires {_plural(gates.min_examples, 'declared example')} "
                f"answered by the oracle; {why_not}")))
        elif oracle.examples < gates.min_examples:
            reasons.append(Reason(code=RC.too_few_examples, message=(
                f"{_plural(oracle.examples, 'example')} declared; the policy requires at least "
                f"{gates.min_examples} ([[examples]] in skill.toml or examples.jsonl)")))
    if oracle is None:
        if gates.contract_checks > 0:
            reasons.append(Reason(code=RC.contract_violation, message=(
                f"the policy requires {gates.contract_checks} contract checks; {why_not}")))
        return reasons
    ran = oracle.status == "ran"
    if gates.examples_must_pass and not ran:
        # an entrypoint declared unservable cannot dodge its examples or the operator's set
        for count, code, what in ((oracle.acceptance, RC.acceptance_failed, "operator acceptance example"),
                                  (oracle.examples, RC.examples_failed, "declared example")):
            if count:
                reasons.append(Reason(code=code, message=(
                    f"{_plural(count, what)} never answered: the oracle phase did not run "
                    f"({oracle.status}: {oracle.note or 'no reason given'})")))
    if gates.examples_must_pass:
        for source, code, what in (("acceptance", RC.acceptance_failed, "operator acceptance example"),
                                   ("example", RC.examples_failed, "declared example")):
            bad = oracle.failed(source)
            total = oracle.calls.get(source, 0)
            if bad:
                reasons.append(Reason(code=code, message=(
                    f"{len(bad)} of {_plural(total, what)} answered wrong: {_calls_text(bad)}")))
    if gates.contract_checks > 0:
        bad = oracle.failed("contract")
        if bad:
            reasons.append(Reason(code=RC.contract_violation, message=(
                f"{len(bad)} of {oracle.contract_checks} contract checks failed: {_calls_text(bad)}")))
        elif oracle.contract_values == 0 and oracle.contract_checks:
            reasons.append(Reason(code=RC.contract_violation, message=(
                f"every one of the {oracle.contract_checks} contract inputs raised a declared exception: "
                "no returned value was checked against the declared type (narrow the inputs with a "
                "schema in [oracle] so that some are valid)")))
        elif oracle.contract_checks < gates.contract_checks:
            detail = (f"the entrypoint's contract is unsupported: {oracle.contract_unsupported}"
                      if oracle.contract_unsupported else why_not if not ran else
                      f"only {oracle.contract_checks} ran")
            reasons.append(Reason(code=RC.contract_violation, message=(
                f"the policy requires {gates.contract_checks} contract checks; {detail} "
                "(unsupported checks are never passing evidence)")))
        if oracle.nondeterministic:
            reasons.append(Reason(code=RC.nondeterministic, message=(
                f"{len(oracle.nondeterministic)} input(s) got two different answers: "
                f"{_calls_text(oracle.nondeterministic)}")))
    if gates.max_behaviour_changes is not None and oracle.undeclared_changes > gates.max_behaviour_changes:
        undeclared = [c for c in oracle.behaviour_changes if not c.declared]
        listed = undeclared[:_MAX_LISTED_TESTS]
        items = "; ".join(f"{c.args!r}: {c.active} -> {c.candidate}" for c in listed)
        reasons.append(Reason(code=RC.behaviour_changed, message=(
            f"{_plural(oracle.undeclared_changes, 'undeclared behaviour change')} against "
            f"version {oracle.active_version} (the policy allows {gates.max_behaviour_changes}): "
            f"{items}{_more(len(listed), len(undeclared))}")))
    return reasons


def _dedupe(reasons: list[Reason]) -> list[Reason]:
    seen: set[ReasonCode] = set()
    out = []
    for reason in reasons:
        if reason.code not in seen:
            seen.add(reason.code)
            out.append(reason.model_copy())
    return out


def _ordered(reasons: list[Reason]) -> list[Reason]:
    return sorted(reasons, key=lambda r: _RANK.get(r.code, len(_RANK)))


def decide(report: EvaluationReport, policy: Policy) -> tuple[Verdict, list[Reason]]:
    """The verdict and its reasons for ``report`` under ``policy``. Pure and total."""
    carried = _dedupe([r for r in report.reasons if r.code not in POLICY_DEPENDENT_CODES])
    carried_codes = {r.code for r in carried}

    if RC.infrastructure in carried_codes:
        return Verdict.error, _ordered(carried)
    if carried_codes & {RC.invalid_submission, RC.syntax_error}:
        return Verdict.rejected, _ordered(carried)

    gates = policy.gates
    test_reasons = _test_reasons(report.tests, gates)
    computed = [
        *_sandbox_reasons(report.sandbox, policy.limits),
        *_finding_reasons(report.findings, gates),
        *test_reasons,
        *_evidence_reasons(report.tests, gates),
        *_entrypoint_reasons(report.entrypoint, report.tests),
        *_coverage_reasons(report.coverage, report.tests, gates, bool(test_reasons)),
        *_oracle_reasons(report.oracle, gates),
    ]
    explained = bool(computed) or bool(carried)
    computed += _mutation_reasons(report.mutation, gates, explained)
    reasons = _ordered(_dedupe([*carried, *computed]))
    return (Verdict.failed if reasons else Verdict.passed), reasons
