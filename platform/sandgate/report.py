"""The evaluation report: a contract other tools rely on (``sandgate evaluate --json``).

Fields are only ever added, never renamed or removed, within ``schema_version`` 1.

Reports of evaluations where nothing ran are built here and nowhere else
(:func:`nothing_ran` and the constructors over it: :func:`rejected`,
:func:`infrastructure_error`, :func:`from_exception`, :func:`gave_up`). Ground
floor: pydantic, :mod:`sandgate.errors` and the oracle section's types
(:mod:`sandgate.oracle_report`) only.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sandgate.errors import SubmissionError
from sandgate.oracle_report import OracleSummary

__all__ = [
    "Verdict",
    "ReasonCode",
    "Reason",
    "TestOutcome",
    "TestCase",
    "TestSummary",
    "FileCoverage",
    "CoverageSummary",
    "Finding",
    "SandboxInfo",
    "EntrypointCheck",
    "Survivor",
    "MutationSummary",
    "MutationOperator",
    "EvaluationReport",
    "OracleSummary",
    "reason_code",
    "nothing_ran",
    "rejected",
    "infrastructure_error",
    "from_exception",
    "gave_up",
]


class Verdict(str, Enum):
    passed = "passed"
    failed = "failed"  # the skill's fault
    rejected = "rejected"  # invalid submission, nothing ran
    error = "error"  # the infrastructure's fault, never counted against the skill


class ReasonCode(str, Enum):
    invalid_submission = "invalid_submission"
    syntax_error = "syntax_error"
    policy_violation = "policy_violation"
    tests_failed = "tests_failed"
    no_tests = "no_tests"
    tests_not_run = "tests_not_run"
    coverage_below_threshold = "coverage_below_threshold"
    branch_coverage_below_threshold = "branch_coverage_below_threshold"
    timeout = "timeout"
    memory_limit = "memory_limit"
    pids_limit = "pids_limit"
    output_limit = "output_limit"
    crashed = "crashed"
    infrastructure = "infrastructure"
    #: a passed test executed no assertion, or swallowed a failed one
    vacuous_tests = "vacuous_tests"
    #: tests were skipped / xfailed / xpassed and the policy does not allow it
    skipped_tests = "skipped_tests"
    #: the manifest's entrypoint does not resolve to a callable in the sandbox
    entrypoint_missing = "entrypoint_missing"
    #: no passing test executed the entrypoint's body
    entrypoint_not_tested = "entrypoint_not_tested"
    #: the tests killed too few of the harness's mutants (``min_mutation_score``)
    mutation_score_below_threshold = "mutation_score_below_threshold"
    #: the tests still pass when the entrypoint's body is ``return None``
    null_entrypoint_survived = "null_entrypoint_survived"
    # the oracle phase (sandgate.evaluation.oracle): evidence judged by the controller
    examples_failed = "examples_failed"
    acceptance_failed = "acceptance_failed"
    contract_violation = "contract_violation"
    nondeterministic = "nondeterministic"
    behaviour_changed = "behaviour_changed"
    too_few_examples = "too_few_examples"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class Reason(_Model):
    code: ReasonCode
    message: str


TestOutcome = Literal["passed", "failed", "error", "skipped", "xfailed", "xpassed"]


class TestCase(_Model):
    __test__ = False  # not a pytest test class

    nodeid: str
    outcome: TestOutcome
    duration_seconds: float = 0.0
    message: str | None = None
    #: assertions that held while the test ran (rewritten asserts, pytest.raises/warns,
    #: unittest assert methods); None: not measured (reports from before the count)
    assertions: int | None = None
    #: rewritten asserts that failed while the test ran (caught inside the test if it passed)
    failed_assertions: int | None = None


class TestSummary(_Model):
    __test__ = False

    collected: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    #: pytest's own exit status inside the sandbox (None: it never finished)
    exit_status: int | None = None
    cases: list[TestCase] = Field(default_factory=list)

    @property
    def executed(self) -> int:
        return self.passed + self.failed + self.errors + self.xpassed


class FileCoverage(_Model):
    path: str
    statements: int
    missed_lines: list[int] = Field(default_factory=list)
    branches: int = 0
    missed_branches: int = 0
    line_percent: float = 100.0
    #: lines with a branch never taken (empty in reports from before the harness named them)
    missed_branch_lines: list[int] = Field(default_factory=list)


class CoverageSummary(_Model):
    line_percent: float = 0.0
    branch_percent: float = 0.0
    statements: int = 0
    covered_lines: int = 0
    branches: int = 0
    covered_branches: int = 0
    files: list[FileCoverage] = Field(default_factory=list)


class Finding(_Model):
    rule_id: str
    severity: Literal["info", "low", "medium", "high", "critical"]
    path: str
    line: int
    message: str


class SandboxInfo(_Model):
    runtime: str
    image: str
    image_id: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    pids_limited: bool = False
    wall_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    output_truncated: bool = False
    container_id: str | None = None


class DependenciesInfo(_Model):
    """The skill's third-party requirements: its lock, and the derived image that holds them."""

    #: ``sha256:<hex>`` of ``requirements.lock`` (one of the version's files)
    lock_hash: str
    #: name → version of every locked package
    packages: dict[str, str] = Field(default_factory=dict)
    #: the derived image (sandbox image + the lock's wheels) the evaluation ran in
    image: str | None = None
    image_id: str | None = None
    #: this evaluation built the image (False: it was cached)
    built: bool = False
    download_seconds: float = 0.0
    build_seconds: float = 0.0


class EntrypointCheck(_Model):
    """The manifest's entrypoint, checked in the sandbox after the tests ran."""

    #: ``module:attribute`` as in the manifest
    name: str = ""
    #: it imported and resolved to a callable
    resolved: bool = False
    #: why it did not resolve, or why the harness cannot tell whether it ran
    problem: str | None = None
    #: node ids of the passing tests that executed its body
    tested_by: list[str] = Field(default_factory=list)


MutationOperator = Literal["null_entrypoint", "raising_entrypoint", "comparison", "arithmetic",
                           "boolean", "negate", "constant", "remove"]


class Survivor(_Model):
    """A mutant no selected test noticed: the tests pass with this line changed."""

    file: str
    line: int
    operator: MutationOperator
    #: the source line before and after the mutation (stripped, capped)
    before: str
    after: str


class MutationSummary(_Model):
    """The mutation phase. Outcomes are claims of the mutant's process (submitted code)."""

    #: False: the phase did not run (``skipped_reason`` says why)
    ran: bool = False
    skipped_reason: str | None = None
    #: the phase did not finish (the server died or was stopped); None when it did
    problem: str | None = None
    #: percent of the mutants run that were killed or timed out; None when none ran
    score: float | None = None
    killed: int = 0
    survived: int = 0
    timed_out: int = 0
    #: mutants selected within ``max_mutants`` / mutants actually run
    total: int = 0
    run: int = 0
    #: candidate edits found on covered lines (before the budget)
    generated: int = 0
    #: the seconds budget (or the deadline) stopped the phase before every selected mutant ran
    budget_exhausted: bool = False
    #: "pass" / "fail": the phase stopped once the mutants left could not change the gates'
    #: outcome under the evaluation's policy (``mutation.stop_when_decided``); None: it did not
    decided_early: Literal["pass", "fail"] | None = None
    #: the tests were selected per line from coverage contexts (False: every test per mutant)
    line_tests: bool = False
    #: control runs of the unmutated skill (each must pass, or no kill counts)
    controls: int = 0
    #: "killed", "survived", "timed_out", or why there is no null entrypoint mutant
    null_entrypoint: str = "not run"
    survivors: list[Survivor] = Field(default_factory=list)
    seconds: float = 0.0


class EvaluationReport(_Model):
    schema_version: Literal[1] = 1
    evaluation_id: str
    verdict: Verdict
    reasons: list[Reason] = Field(default_factory=list)
    skill: str | None = None
    content_hash: str | None = None
    policy: str | None = None
    policy_hash: str | None = None
    tests: TestSummary = Field(default_factory=TestSummary)
    coverage: CoverageSummary | None = None
    findings: list[Finding] = Field(default_factory=list)
    #: the entrypoint check (None: the dynamic phase did not run, or an older report)
    entrypoint: EntrypointCheck | None = None
    sandbox: SandboxInfo | None = None
    #: third-party requirements (None: the skill has none)
    dependencies: DependenciesInfo | None = None
    #: the mutation phase (None: not part of this evaluation)
    mutation: MutationSummary | None = None
    #: the oracle phase: the entrypoint served in its own sandbox, judged by the controller
    oracle: OracleSummary | None = None
    #: seconds per phase: intake, static, dynamic, total (and container start/stop)
    timings: dict[str, float] = Field(default_factory=dict)
    #: the skill's captured output (capped), for people reading a failure
    output: str = ""
    #: plain statements of what this verdict does not guarantee
    limits: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# --------------------------------------------------------------------------- nothing ran


def reason_code(code: object, default: ReasonCode = ReasonCode.invalid_submission) -> ReasonCode:
    """``code`` as a :class:`ReasonCode` when it is one, else ``default``."""
    return ReasonCode(code) if isinstance(code, str) and code in ReasonCode.__members__ else default


def nothing_ran(
    verdict: Verdict,
    code: ReasonCode,
    message: str,
    *,
    evaluation_id: str,
    skill: str | None = None,
    content_hash: str | None = None,
    policy: str | None = None,
    policy_hash: str | None = None,
) -> EvaluationReport:
    """The report of an evaluation that ran nothing: one reason, no tests, no sandbox."""
    return EvaluationReport(
        evaluation_id=evaluation_id,
        verdict=verdict,
        reasons=[Reason(code=code, message=message)],
        skill=skill,
        content_hash=content_hash,
        policy=policy,
        policy_hash=policy_hash,
    )


def rejected(exc: BaseException, *, evaluation_id: str, **ids: str | None) -> EvaluationReport:
    """Intake refused the submission (verdict ``rejected``; the error's code when it is a reason)."""
    return nothing_ran(
        Verdict.rejected, reason_code(getattr(exc, "code", None)), str(exc),
        evaluation_id=evaluation_id, **ids,
    )  # fmt: skip


def infrastructure_error(message: str, *, evaluation_id: str, **ids: str | None) -> EvaluationReport:
    """The infrastructure failed before anything ran (verdict ``error``, never the skill's fault)."""
    return nothing_ran(
        Verdict.error, ReasonCode.infrastructure, message, evaluation_id=evaluation_id, **ids
    )


def from_exception(exc: BaseException, *, evaluation_id: str, **ids: str | None) -> EvaluationReport:
    """An evaluator raised: a :class:`SubmissionError` is ``rejected``, anything else ``error``."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SubmissionError):
        code = reason_code(exc.code)
        return nothing_ran(Verdict.rejected, code, message, evaluation_id=evaluation_id, **ids)
    return infrastructure_error(message, evaluation_id=evaluation_id, **ids)


def gave_up(
    *,
    evaluation_id: str,
    skill: str,
    content_hash: str,
    policy: str,
    policy_hash: str,
    attempts: int,
    why: str,
) -> EvaluationReport:
    """Workers could not finish it in ``attempts`` claims: verdict ``error`` (never ``failed``)."""
    message = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {why}"
    return infrastructure_error(
        message,
        evaluation_id=evaluation_id,
        skill=skill,
        content_hash=content_hash,
        policy=policy,
        policy_hash=policy_hash,
    )
