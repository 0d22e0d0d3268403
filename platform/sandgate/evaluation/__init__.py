"""Evaluation: one run of a version under a policy, in one sandbox.

static phase (semgrep on the stored bytes, before any submitted code runs)
→ dynamic phase (pytest + coverage) → mutation phase (when the tests passed)
→ oracle phase (the entrypoint served in a second sandbox, its answers judged
here: :mod:`sandgate.evaluation.oracle`)
→ report → gates → verdict.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sandgate import report as reports
from sandgate import tracing
from sandgate.config import get_settings, rules_files
from sandgate.errors import InfrastructureError, SubmissionError
from sandgate.evaluation import oracle
from sandgate.evaluation.oracle import Baseline
from sandgate.policy import decide, effective_limits
from sandgate.report import DependenciesInfo, EvaluationReport, Reason, ReasonCode, Verdict
from sandgate.submission import load_submission

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.config import Settings
    from sandgate.policy import Policy
    from sandgate.submission import Submission

__all__ = ["evaluate", "evaluate_path", "rejected_report", "rules_files", "LIMITS_STATEMENTS"]

#: what a verdict does not guarantee; carried in every report
LIMITS_STATEMENTS = [
    "Test results and coverage are produced inside the process that runs the submitted code; "
    "they travel on an authenticated channel whose key the static rules make hard, not "
    "impossible, to steal. A passed verdict means the gates held, not that the code is safe.",
    "The static phase is pattern matching (semgrep): obfuscated or novel behaviour can evade it; "
    "the sandbox (no network, no capabilities, limits) is what contains it.",
    "Coverage measures lines and branches executed by the submitted tests, not the quality "
    "of their assertions.",
    "Mutation outcomes are reported by the process that runs the mutated submitted code: a "
    "skill can make mutants look killed; it cannot make tests that check nothing kill them.",
    "The oracle section is evidence the skill cannot forge: the controller judged each answer "
    "of the served entrypoint itself. It covers only the inputs it lists (examples, acceptance "
    "set, generated contract inputs, replayed inputs), not every input, and a skill can tell "
    "it is being served; examples the submitter wrote show only that the skill answers them.",
]


def evaluate(
    submission: Submission,
    *,
    policy: Policy,
    evaluation_id: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[str], None] = lambda _phase: None,
    phases: tuple[str, ...] = ("static", "dynamic", "oracle"),
    baseline: Baseline | None = None,
) -> EvaluationReport:
    """Evaluate ``submission`` under ``policy`` in a fresh sandbox and return the report.

    Never raises for the skill's faults (they are in the verdict) nor for the
    infrastructure's (verdict ``error`` with reason ``infrastructure``).
    ``phases=("static",)`` runs the semgrep scan only (the scheduler's re-scan):
    no submitted code runs, and the verdict is meaningless — read the findings.
    ``"oracle"`` runs only with ``"dynamic"``; ``baseline`` (the store's active
    version and earlier examples, :func:`sandgate.lifecycle.load_baseline`)
    enables the differential replay.

    With traces on (:mod:`sandgate.tracing`) it is the span ``sandgate.evaluate``, with one
    child span per phase made here from the timings the harness reports (``sandgate.phase.static``,
    ``.dynamic``, ``.mutation``; the sandbox itself exports nothing), ``sandgate.phase.oracle``
    and ``sandgate.gates``.
    """
    evaluation_id = evaluation_id or uuid.uuid4().hex
    marks: dict[str, int] = {}
    with tracing.span("sandgate.evaluate", {"sandgate.evaluation_id": evaluation_id,
                                            "sandgate.skill": submission.name,
                                            "sandgate.content_hash": submission.content_hash,
                                            "sandgate.policy": policy.name}) as span:
        report = _evaluate(submission, policy=policy, evaluation_id=evaluation_id, settings=settings,
                           progress=progress, phases=phases, baseline=baseline, marks=marks)
        if span is not None:
            _phase_spans(report, marks)
        with tracing.span("sandgate.gates", {"sandgate.policy": policy.name}) as gates:
            verdict, reasons = decide(report, policy)
            if gates is not None:
                gates.set_attribute("sandgate.verdict", verdict.value)
                gates.set_attribute("sandgate.reasons", [str(r.code.value) for r in reasons])
        if span is not None:
            span.set_attribute("sandgate.verdict", verdict.value)
    return report.model_copy(update={"verdict": verdict, "reasons": reasons})


#: the harness's phases, in the order it runs them inside the sandbox
_SANDBOX_PHASES = ("static", "dynamic", "mutation")


def _phase_spans(report: EvaluationReport, marks: dict[str, int]) -> None:
    """Spans of the sandbox's phases from the durations the harness reported, laid end to end
    from the moment its payload arrived (sandbox create + start after the run began), clamped
    to the run's end; the oracle's from its sandbox's start to its conclusion."""
    timings = report.timings
    if "run" in marks:
        end = marks.get("run_end", marks["run"])
        cursor = marks["run"] + int(1e9 * (timings.get("sandbox_create", 0.0) + timings.get("sandbox_start", 0.0)
                                           + timings.get("payload", 0.0)))
        for phase in _SANDBOX_PHASES:
            seconds = timings.get(phase)
            if seconds is None:
                continue
            start = min(cursor, end)
            stop = min(start + int(seconds * 1e9), end)
            attributes: dict[str, object] = {"sandgate.phase": phase, "sandgate.seconds": seconds}
            if phase == "mutation" and report.mutation is not None:
                attributes.update({"sandgate.mutation.run": report.mutation.run,
                                   "sandgate.mutation.killed": report.mutation.killed,
                                   "sandgate.mutation.score": report.mutation.score})
            tracing.record_span(f"sandgate.phase.{phase}", start, stop, attributes)
            cursor = stop
    if "oracle_end" in marks:
        start = marks.get("oracle", marks.get("conclude", marks["oracle_end"]))
        oracle_summary = report.oracle
        tracing.record_span("sandgate.phase.oracle", start, marks["oracle_end"], {
            "sandgate.phase": "oracle", "sandgate.seconds": timings.get("oracle"),
            "sandgate.oracle.status": getattr(oracle_summary, "status", None),
            "sandgate.oracle.calls": sum((getattr(oracle_summary, "calls", None) or {}).values())})


def _evaluate(
    submission: Submission,
    *,
    policy: Policy,
    evaluation_id: str,
    settings: Settings | None,
    progress: Callable[[str], None],
    phases: tuple[str, ...],
    baseline: Baseline | None,
    marks: dict[str, int],
) -> EvaluationReport:
    """:func:`evaluate` up to the report, before the gates (``marks``: when the sandbox run
    began and ended, and the oracle's phase, in epoch nanoseconds, for the phase spans)."""
    unknown = set(phases) - {"static", "dynamic", "oracle"}
    if unknown or not phases or phases == ("oracle",):
        raise ValueError("phases must be a non-empty subset of ('static', 'dynamic', 'oracle'), "
                         f"got {phases!r}")
    # the sandbox (and the report parser over its runs) import docker: loaded on first use
    from sandgate.evaluation.parse import build_report
    from sandgate.sandbox import harness_args, make_payload, require_image, run_sandbox
    from sandgate.sandbox import pool as warm_pools
    from sandgate.sandbox.engine import shared_client

    settings = settings or get_settings()
    started = time.monotonic()
    limits = effective_limits(policy.limits, getattr(submission.manifest, "sandbox", None))
    base = EvaluationReport(
        evaluation_id=evaluation_id,
        verdict=Verdict.error,
        skill=submission.name,
        content_hash=submission.content_hash,
        policy=policy.name,
        policy_hash=policy.hash,
        limits=list(LIMITS_STATEMENTS),
    )
    oracle_phase: oracle.OraclePhase | None = None
    try:
        progress("sandbox")
        client = shared_client(settings)
        image = require_image(client, settings.image)
        run_image = settings.image
        lock = getattr(submission, "lock", None)
        if lock is not None:
            from sandgate import deps
            from sandgate.sandbox.deps_image import ensure_deps_image

            progress("dependencies")
            derived = ensure_deps_image(client, lock, settings=settings)
            image, run_image = derived.info, derived.info.tag
            base = base.model_copy(update={"dependencies": DependenciesInfo(
                lock_hash=derived.lock_hash, packages=deps.parse_lock(lock).versions,
                image=derived.info.tag, image_id=derived.info.id, built=derived.built,
                download_seconds=round(derived.download_seconds, 4),
                build_seconds=round(derived.build_seconds, 4))})
        files = {f"skill/{path}": data for path, data in submission.files.items()}
        files.update({f"rules/{name}": data
                      for name, data in rules_files(settings.policies_dir / "semgrep").items()})
        if "oracle" in phases and "dynamic" in phases:
            oracle_phase = oracle.begin(
                submission, policy=policy, client=client, image=run_image,
                limits=limits, evaluation_id=evaluation_id,
                policies_dir=settings.policies_dir, baseline=baseline)
        channel_key = secrets.token_bytes(32)
        files["config.json"] = json.dumps({
            "channel_key": channel_key.hex(),
            "timeout_seconds": limits.timeout_seconds,
            "output_bytes": limits.output_kb * 1024,
            "tests": submission.test_files(),
            "sources": submission.module_files(),
            "entrypoint": submission.manifest.entrypoint,
            "blocked_severities": list(policy.gates.blocked_severities),
            "fail_fast": False,
            "static": "static" in phases,
            "dynamic": "dynamic" in phases,
            "mutation": {
                "max_mutants": policy.mutation.max_mutants if "dynamic" in phases else 0,
                "seconds": float(policy.mutation.seconds),
                "stop_when_decided": policy.mutation.stop_when_decided,
                "min_score": float(policy.gates.min_mutation_score),
                "null_must_be_killed": policy.gates.null_entrypoint_must_be_killed,
                "min_line_coverage": float(policy.gates.min_line_coverage),
                "allow_skips": policy.gates.allow_skips,
                "memory_bytes": limits.memory_bytes,
            },
        }).encode()
        # a warm sandbox when this process runs a pool (workers do): same image, same limits;
        # a skill with requirements runs cold in its derived image
        # a pool's sandbox has prepared a mutation server when the policy has a mutation phase
        # (its pool is keyed by these arguments); a sandbox made now does not prepare one ahead
        mutation = "dynamic" in phases and policy.mutation.max_mutants > 0
        pools = warm_pools.current()
        warm = (pools.take(client, image=settings.image, image_id=image.id, limits=limits,
                            harness_argv=harness_args(mutation=mutation))
                if pools and run_image == settings.image else None)
        harness_argv = harness_args(mutation=mutation, pooled=warm is not None)
        on_started = None
        if oracle_phase is not None:
            oracle_start = oracle_phase.start

            def on_started() -> None:
                marks["oracle"] = time.time_ns()
                oracle_start()
        marks["run"] = time.time_ns()
        try:
            run = run_sandbox(
                client,
                image=run_image,
                payload=make_payload(files),
                container=warm,
                harness_argv=harness_argv,
                limits=limits,
                evaluation_id=evaluation_id,
                kill_grace=settings.sandbox_kill_grace,
                channel_key=channel_key,
                on_started=on_started,
            )
        finally:
            marks["run_end"] = time.time_ns()
            if pools is not None:
                pools.done(warm)  # its replacement starts now, not while this evaluation runs
        progress("report")
        report = build_report(base, run, image_id=image.id)
        if oracle_phase is not None:
            phase, oracle_phase = oracle_phase, None
            progress("oracle")
            marks["conclude"] = time.time_ns()
            report = oracle.conclude(phase, report, policy)
            marks["oracle_end"] = time.time_ns()
    except InfrastructureError as exc:
        report = base.model_copy(update={
            "reasons": [Reason(code=ReasonCode.infrastructure, message=str(exc))],
        })
    finally:
        if oracle_phase is not None:  # the dynamic phase failed before the oracle's turn
            try:
                oracle_phase.close()
            except InfrastructureError:
                pass
    report.timings["total"] = round(time.monotonic() - started, 4)
    return report


def rejected_report(exc: Exception, *, policy: Policy | None = None, skill: str | None = None,
                    evaluation_id: str | None = None) -> EvaluationReport:
    """The report of a submission that intake refused: verdict ``rejected``, nothing ran."""
    return reports.rejected(
        exc,
        evaluation_id=evaluation_id or uuid.uuid4().hex,
        skill=skill,
        policy=policy.name if policy else None,
        policy_hash=policy.hash if policy else None,
    )


def evaluate_path(
    path: str | Path,
    *,
    policy: Policy,
    settings: Settings | None = None,
    progress: Callable[[str], None] = lambda _phase: None,
) -> EvaluationReport:
    """Intake + evaluation of a skill directory or archive; intake refusals become ``rejected``."""
    started = time.monotonic()
    progress("intake")
    try:
        submission = load_submission(path)
    except SubmissionError as exc:
        report = rejected_report(exc, policy=policy)
        report.timings["intake"] = round(time.monotonic() - started, 4)
        return report
    intake = time.monotonic() - started
    report = evaluate(submission, policy=policy, settings=settings, progress=progress)
    report.timings["intake"] = round(intake, 4)
    return report
