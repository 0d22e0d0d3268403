"""Turn the harness's result into report fields. Defensive: every field is checked.

The harness line is trusted (no submitted code holds its stdout), but the test
results inside it were produced in the process that ran submitted code, so
their shape is validated here, never assumed.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sandgate.report import (
    CoverageSummary,
    EntrypointCheck,
    EvaluationReport,
    FileCoverage,
    Finding,
    MutationSummary,
    Reason,
    ReasonCode,
    SandboxInfo,
    Survivor,
    TestCase,
    TestSummary,
)
from sandgate.sandbox import SandboxRun

__all__ = ["build_report"]

_OUTCOME_FIELD = {"passed": "passed", "failed": "failed", "error": "errors", "skipped": "skipped",
                  "xfailed": "xfailed", "xpassed": "xpassed"}


def _pct(covered: int, total: int) -> float:
    return round(100.0 * covered / total, 2) if total else 100.0


def _coverage(data: Any) -> CoverageSummary | None:
    if not isinstance(data, dict) or "totals" not in data:
        return None
    totals = data["totals"]
    files = []
    for path, item in sorted((data.get("files") or {}).items()):
        summary = item.get("summary", {})
        files.append(FileCoverage(
            path=str(path),
            statements=int(summary.get("num_statements", 0)),
            missed_lines=[int(x) for x in item.get("missing_lines", [])][:1000],
            branches=int(summary.get("num_branches", 0)),
            missed_branches=int(summary.get("missing_branches", 0)),
            line_percent=_pct(int(summary.get("covered_lines", 0)), int(summary.get("num_statements", 0))),
            missed_branch_lines=[int(x) for x in item.get("missing_branch_lines", [])][:1000],
        ))
    statements, covered = int(totals.get("num_statements", 0)), int(totals.get("covered_lines", 0))
    branches, covered_b = int(totals.get("num_branches", 0)), int(totals.get("covered_branches", 0))
    return CoverageSummary(
        line_percent=_pct(covered, statements),
        branch_percent=_pct(covered_b, branches),
        statements=statements,
        covered_lines=covered,
        branches=branches,
        covered_branches=covered_b,
        files=files,
    )


def _tests(result: dict[str, Any]) -> TestSummary:
    summary = TestSummary(collected=int(result.get("collected", 0)),
                          exit_status=result.get("exit_status"))
    counts = dict.fromkeys(_OUTCOME_FIELD.values(), 0)
    cases = []
    for raw in result.get("cases", [])[:5000]:
        outcome = raw.get("outcome") or "error"
        case = TestCase(
            nodeid=str(raw.get("nodeid", ""))[:500],
            outcome=outcome if outcome in _OUTCOME_FIELD else "error",
            duration_seconds=round(float(raw.get("duration_seconds", 0.0)), 6),
            message=(str(raw["message"])[:4000] if raw.get("message") else None),
            # a result without the counts claims no assertion ran (fail closed)
            assertions=max(0, int(raw.get("assertions") or 0)),
            failed_assertions=max(0, int(raw.get("failed_assertions") or 0)),
        )
        counts[_OUTCOME_FIELD[case.outcome]] += 1
        cases.append(case)
    for skip in result.get("collect_skipped", [])[:100]:
        counts["skipped"] += 1
        cases.append(TestCase(nodeid=str(skip.get("nodeid", "<collection>"))[:500], outcome="skipped",
                              message="skipped at collection: " + str(skip.get("message", ""))[:4000]))
    for err in result.get("collect_errors", [])[:100]:
        counts["errors"] += 1
        cases.append(TestCase(nodeid=str(err.get("nodeid", "<collection>"))[:500], outcome="error",
                              message="collection error: " + str(err.get("message", ""))[:4000]))
    return summary.model_copy(update={**counts, "cases": cases})


def _entrypoint(data: Any) -> EntrypointCheck:
    if not isinstance(data, dict):
        return EntrypointCheck(problem="the test process did not report the entrypoint check")
    return EntrypointCheck(
        name=str(data.get("name", ""))[:300],
        resolved=bool(data.get("resolved")),
        problem=str(data["problem"])[:1000] if data.get("problem") else None,
        tested_by=[str(n)[:500] for n in (data.get("tested_by") or [])[:1000]],
    )


_OPERATORS = {"null_entrypoint", "raising_entrypoint", "comparison", "arithmetic", "boolean",
              "negate", "constant", "remove"}
_MAX_SURVIVORS = 200


def _text(value: Any, limit: int) -> str:
    return str(value if value is not None else "")[:limit]


def _mutation(data: Any) -> MutationSummary | None:
    """The harness's ``mutation`` section. The counts are recomputed from the mutant list."""
    if not isinstance(data, dict):
        return None
    if not data.get("ran"):
        return MutationSummary(ran=False, skipped_reason=_text(data.get("skipped_reason") or "not run", 500))
    mutants = [m for m in data.get("mutants") or [] if isinstance(m, dict)][:5000]
    outcomes = [m.get("outcome") for m in mutants]
    killed, survived, timed_out = (outcomes.count(k) for k in ("killed", "survived", "timed_out"))
    run = killed + survived + timed_out
    survivors: list[Survivor] = []
    for m in mutants:
        if m.get("outcome") != "survived" or len(survivors) >= _MAX_SURVIVORS:
            continue
        operator = m.get("operator")
        survivors.append(Survivor(
            file=_text(m.get("file"), 500),
            line=int(m.get("line") or 0),
            operator=operator if operator in _OPERATORS else "remove",
            before=_text(m.get("before"), 300),
            after=_text(m.get("after"), 300),
        ))
    null = next((m.get("outcome") for m in mutants if m.get("operator") == "null_entrypoint"), None)
    null_text = null if null in ("killed", "survived", "timed_out") else _text(
        data.get("null_entrypoint") or "not run", 300)
    if null_text == "made":  # made but never reported: the phase stopped first
        null_text = "not run"
    decided = data.get("decided_early")
    seconds = data.get("wall_seconds", data.get("seconds")) or 0.0
    return MutationSummary(
        ran=True,
        problem=_text(data["problem"], 500) if data.get("problem") else None,
        score=round(100.0 * (killed + timed_out) / run, 2) if run else None,
        killed=killed,
        survived=survived,
        timed_out=timed_out,
        total=max(int(data.get("total") or 0), run),
        run=run,
        generated=int(data.get("generated") or 0),
        budget_exhausted=bool(data.get("budget_exhausted")),
        decided_early=decided if decided in ("pass", "fail") else None,
        line_tests=bool(data.get("line_tests")),
        controls=max(0, int(data.get("controls") or 0)),
        null_entrypoint=null_text,
        survivors=survivors,
        seconds=round(float(seconds), 4),
    )


def _findings(static: dict[str, Any], reasons: list[Reason]) -> list[Finding]:
    try:
        return [Finding(**f) for f in static.get("findings", [])]
    except (ValidationError, TypeError) as exc:
        reasons.append(Reason(code=ReasonCode.infrastructure, message=f"unreadable semgrep findings: {exc}"))
        return []


def build_report(base: EvaluationReport, run: SandboxRun, *, image_id: str | None) -> EvaluationReport:
    reasons: list[Reason] = []
    harness = run.harness or {}
    cgroup = harness.get("cgroup") or {}
    dynamic = harness.get("dynamic") or {}
    oom = run.oom_killed or bool(cgroup.get("oom_kills"))
    mutation_data = harness.get("mutation")
    if isinstance(mutation_data, dict) and mutation_data.get("ran") and isinstance(cgroup.get("oom_kills"), int):
        # The harness read the cgroup's counters before the mutation phase: a mutant
        # killed for memory is a killed mutant, not a limit the skill hit.
        oom = bool(cgroup.get("oom_kills"))
    timed_out = run.timed_out or bool(dynamic.get("timed_out"))
    sandbox = SandboxInfo(
        runtime=run.runtime,
        image=run.image,
        image_id=image_id,
        exit_code=run.exit_code,
        timed_out=timed_out,
        oom_killed=oom,
        pids_limited=bool(cgroup.get("pids_max_hits")),
        wall_seconds=round(run.wall_seconds, 4),
        peak_memory_bytes=cgroup.get("peak_memory_bytes"),
        output_truncated=bool(dynamic.get("output_truncated")),
        container_id=run.container_id,
    )
    timings = {f"sandbox_{k}": round(v, 4) for k, v in run.timings.items()}
    for key, value in (harness.get("timings") or {}).items():
        if isinstance(value, (int, float)):
            timings[key] = round(float(value), 4)
    update: dict[str, Any] = {"sandbox": sandbox, "timings": timings,
                              "output": str(dynamic.get("output", ""))}

    static = harness.get("static") or (run.static or {}).get("static") or {}
    if run.tampered:
        reasons.append(Reason(code=ReasonCode.crashed, message=(
            "something other than the harness wrote to the harness's output channel; "
            "nothing from this run is trusted as a pass")))
    if run.harness is None:
        if timed_out:
            reasons.append(Reason(code=ReasonCode.timeout,
                                  message=f"the sandbox was killed from outside after {run.wall_seconds:.1f}s"))
        elif oom:
            reasons.append(Reason(code=ReasonCode.memory_limit, message="the sandbox ran out of memory"))
        elif run.exit_code is not None and run.exit_code > 128:
            # Only a process inside the sandbox can signal the harness like this
            # (under gVisor; runc protects PID 1): the skill's doing.
            reasons.append(Reason(code=ReasonCode.crashed, message=(
                f"the harness was killed by signal {run.exit_code - 128} from inside the sandbox")))
        elif not run.tampered:
            reasons.append(Reason(code=ReasonCode.infrastructure,
                                  message=f"the sandbox gave no result: {run.problem}"))
        update["findings"] = _findings(static, reasons)
        return base.model_copy(update={**update, "reasons": reasons})
    if run.exit_code not in (0, None):
        reasons.append(Reason(code=ReasonCode.crashed,
                              message=f"the harness exited with status {run.exit_code} after reporting"))

    # Static phase
    if static and not static.get("ran"):
        reasons.append(Reason(code=ReasonCode.infrastructure,
                              message="the static phase did not complete: " + "; ".join(static.get("errors", []))))
    update["findings"] = _findings(static, reasons)

    # Dynamic phase
    result = dynamic.get("result")
    if dynamic.get("ran") and isinstance(result, dict):
        try:
            update["tests"] = _tests(result)
            update["coverage"] = _coverage(result.get("coverage"))
            update["entrypoint"] = _entrypoint(result.get("entrypoint"))
        except (ValidationError, TypeError, ValueError, AttributeError) as exc:
            reasons.append(Reason(code=ReasonCode.crashed, message=f"the test results were malformed: {exc}"))
    elif dynamic.get("ran"):
        detail = dynamic.get("problem") or "no results"
        if dynamic.get("signal"):
            detail += f" (test process killed by {dynamic['signal']})"
        elif dynamic.get("returncode") not in (None, 0):
            detail += f" (test process exit code {dynamic['returncode']})"
        if not (timed_out or oom or sandbox.output_truncated):
            reasons.append(Reason(code=ReasonCode.crashed, message=detail))
        update["tests"] = TestSummary()
    if dynamic.get("problem") and isinstance(result, dict):
        reasons.append(Reason(code=ReasonCode.crashed, message=str(dynamic["problem"])))
    if isinstance(result, dict) and (dynamic.get("signal") or dynamic.get("returncode") not in (0, None)):
        # The runner exits 0 right after its final frame; a result followed by another
        # ending (a forger's os._exit, a kill) is not trusted, whatever the harness said.
        how = (f"was killed by {dynamic['signal']}" if dynamic.get("signal")
               else f"exited with status {dynamic.get('returncode')}")
        reasons.append(Reason(code=ReasonCode.crashed,
                              message=f"the test process {how} after reporting results"))

    # Mutation phase
    if isinstance(mutation_data, dict) or "mutation" in harness:
        internal = mutation_data.get("internal_error") if isinstance(mutation_data, dict) else None
        if internal:
            reasons.append(Reason(code=ReasonCode.infrastructure,
                                  message=f"the mutation phase failed in the harness: {internal}"[:600]))
        try:
            update["mutation"] = _mutation(mutation_data)
        except (ValidationError, TypeError, ValueError, AttributeError) as exc:
            update["mutation"] = MutationSummary(ran=True, problem=f"the mutation results were malformed: {exc}"[:500])
    return base.model_copy(update={**update, "reasons": reasons})
