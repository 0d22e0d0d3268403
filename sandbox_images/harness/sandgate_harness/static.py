"""Static phase, before any submitted code runs: semgrep's native engine over the stored bytes,
then the allow-list rules of :mod:`sandgate_harness.pyrules` over the syntax tree CPython builds.

Every target must be scanned: semgrep's own size cap is set explicitly above intake's
(:data:`MAX_TARGET_BYTES`), and a target semgrep does not report as scanned, or reports an
error for (a parse failure, a rule timeout), becomes a critical ``static-scan-incomplete``
finding: the evaluation fails closed instead of trusting a partial scan.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from sandgate_harness.pyrules import RULES, run_pyrules

SEVERITIES = {"critical", "high", "medium", "low", "info"}
_SEMGREP_SEVERITY = {"ERROR": "high", "WARNING": "medium", "INFO": "low"}
MAX_SEMGREP_OUTPUT = 16 * 1024 * 1024
#: semgrep silently skips larger targets (its default is 1,000,000 bytes, below intake's 1 MiB cap)
MAX_TARGET_BYTES = 4 * 1024 * 1024


def semgrep_binary() -> str:
    import semgrep  # only to locate the package; its Python CLI is not used

    return os.path.join(os.path.dirname(semgrep.__file__), "bin", "semgrep-core")


def semgrep_command(rules_dir: str, targets: list[str]) -> list[str]:
    # argv[0] "osemgrep" selects semgrep-core's native CLI. nosemgrep comments and
    # ignore files are NOT honoured: the submission must not silence its own scan.
    return [
        "osemgrep", "scan", "--experimental", "--config", rules_dir, "--json",
        "--disable-nosem", "--x-ignore-semgrepignore-files", "--metrics=off",
        f"--max-target-bytes={MAX_TARGET_BYTES}",
        *targets,
    ]


def run_static(skill_dir: str, rules_dir: str, targets: list[str], timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    if not targets:
        return {"ran": True, "findings": [], "errors": [], "seconds": 0.0}
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "SEMGREP_ENABLE_VERSION_CHECK": "0",
        "SEMGREP_SEND_METRICS": "off",
        "LANG": "C.UTF-8",
    }
    try:
        proc = subprocess.run(
            semgrep_command(rules_dir, targets),
            executable=semgrep_binary(),
            cwd=skill_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        # The submission's own size or shape kept the engine busy: nothing was scanned, which is
        # a finding against the submission (fail closed), not an infrastructure error.
        findings = _unscanned(targets, [], [])
        for finding in findings:
            finding["message"] = f"semgrep did not finish within {timeout:.1f}s. " + \
                finding["message"].split(". ", 1)[1]
        findings.extend(run_pyrules(skill_dir, targets)["findings"])
        return {"ran": True, "findings": findings, "errors": [f"semgrep timed out after {timeout:.1f}s"],
                "seconds": time.monotonic() - started, "scanned": []}
    seconds = time.monotonic() - started
    if len(proc.stdout) > MAX_SEMGREP_OUTPUT:
        return {"ran": False, "findings": [], "errors": ["semgrep output too large"], "seconds": seconds}
    try:
        data = json.loads(proc.stdout or b"{}")
    except ValueError:
        data = {}
    if "results" not in data:
        tail = proc.stderr.decode("utf-8", "replace")[-2000:]
        return {"ran": False, "findings": [],
                "errors": [f"semgrep exited {proc.returncode} without results: {tail}"],
                "seconds": seconds}
    findings = [_finding(r) for r in data.get("results", [])]
    raw_errors = [e for e in data.get("errors", []) if isinstance(e, dict)]
    errors = [_error(e) for e in raw_errors]
    scanned = sorted(str(p) for p in (data.get("paths") or {}).get("scanned", []) or [])
    findings.extend(_unscanned(targets, scanned, raw_errors))
    ast_rules = run_pyrules(skill_dir, targets)
    findings.extend(ast_rules["findings"])
    return {"ran": True, "findings": findings, "errors": errors,
            "seconds": time.monotonic() - started, "scanned": scanned}


def _norm(path: str) -> str:
    return os.path.normpath(path).removeprefix("./")


def _unscanned(targets: list[str], scanned: list[str], errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``static-scan-incomplete`` finding for every target semgrep skipped or failed on."""
    severity, _category, message = RULES["static-scan-incomplete"]
    seen = {_norm(p) for p in scanned}
    failed: dict[str, str] = {}
    for error in errors:
        path = error.get("path")
        if path:
            kind = str(error.get("type") or error.get("message") or "error")
            if isinstance(error.get("type"), list):
                kind = str(error["type"][0])
            failed.setdefault(_norm(str(path)), kind[:200])
    out = []
    for target in targets:
        why = None
        if _norm(target) not in seen:
            why = "semgrep did not scan it"
        elif _norm(target) in failed:
            why = f"semgrep reported an error for it ({failed[_norm(target)]})"
        if why:
            out.append({"rule_id": "static-scan-incomplete", "severity": severity, "path": target,
                        "line": 0, "message": f"{why}. {message}"})
    return out


def _finding(result: dict[str, Any]) -> dict[str, Any]:
    extra = result.get("extra") or {}
    metadata = extra.get("metadata") or {}
    severity = str(metadata.get("severity", "")).lower()
    if severity not in SEVERITIES:
        severity = _SEMGREP_SEVERITY.get(str(extra.get("severity", "")).upper(), "high")
    return {
        "rule_id": str(result.get("check_id", "")).rsplit(".", 1)[-1],
        "severity": severity,
        "path": str(result.get("path", "")),
        "line": int((result.get("start") or {}).get("line", 0)),
        "message": str(extra.get("message", "")).strip(),
    }


def _error(error: dict[str, Any]) -> str:
    message = error.get("message") or error.get("type") or "semgrep error"
    path = error.get("path")
    return f"{path}: {message}" if path else str(message)
