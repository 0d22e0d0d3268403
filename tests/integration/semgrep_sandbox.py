"""Run the platform's semgrep rules over a file set inside the real sandbox image.

Used by ``tests/integration/test_semgrep_rules.py`` through its ``semgrep_scan``
fixture. The scan runs in a hardened sandbox (``sandgate.sandbox.run_sandbox``,
network off), with the image's semgrep native engine and exactly the command of
the harness's static phase (``sandgate_harness.static.semgrep_command``), and
returns semgrep's raw JSON report so the rule tests can check rule ids, lines
and metadata.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

__all__ = ["ScanFailed", "SemgrepUnavailable", "scan_files_in_sandbox"]

# Extracts the payload (skill/..., rules/...) and runs the static phase's command,
# printing semgrep's JSON untouched.
SCAN_SCRIPT = r"""
import os, subprocess, sys, tarfile
from sandgate_harness.payload import read_payload, write_tree
from sandgate_harness.static import semgrep_binary, semgrep_command
files = read_payload(sys.stdin.buffer)
skill = {k[6:]: v for k, v in files.items() if k.startswith("skill/")}
rules = {k[6:]: v for k, v in files.items() if k.startswith("rules/")}
write_tree("/work/skill", skill)
write_tree("/work/rules", rules)
proc = subprocess.run(semgrep_command("/work/rules", sorted(skill)), executable=semgrep_binary(),
                      cwd="/work/skill", capture_output=True, stdin=subprocess.DEVNULL,
                      env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "SEMGREP_ENABLE_VERSION_CHECK": "0"})
sys.stdout.buffer.write(proc.stdout)
sys.stderr.buffer.write(proc.stderr[-4000:])
"""


class SemgrepUnavailable(RuntimeError):
    """No engine or no sandbox image to scan with."""


class ScanFailed(RuntimeError):
    """semgrep ran but did not produce a JSON report."""


def _safe_relative(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ValueError(f"file name must be a relative path inside the submission: {name!r}")
    return str(path)


def scan_files_in_sandbox(files: dict[str, bytes], rules_dir: Path) -> dict:
    from sandgate.config import Settings
    from sandgate.errors import InfrastructureError
    from sandgate.evaluation import rules_files
    from sandgate.limits import Limits
    from sandgate.sandbox import connect, make_payload, require_image, run_sandbox

    if not files:
        raise ValueError("nothing to scan: files is empty")
    settings = Settings()
    try:
        client = connect(settings)
        require_image(client, settings.image)
    except InfrastructureError as exc:
        raise SemgrepUnavailable(str(exc)) from exc
    payload = {f"skill/{_safe_relative(n)}": data for n, data in files.items()}
    payload.update({f"rules/{n}": data for n, data in rules_files(Path(rules_dir)).items()})
    run = run_sandbox(client, image=settings.image, payload=make_payload(payload),
                      limits=Limits(timeout_seconds=120, memory_mb=1024),
                      entrypoint=["python3", "-I", "-c", SCAN_SCRIPT])
    stdout = (run.harness or {}).get("stdout", "")
    try:
        report = json.loads(stdout)
    except ValueError as exc:
        raise ScanFailed(f"semgrep in the sandbox gave no JSON (exit {run.exit_code}): {stdout[-2000:]}") from exc
    if not isinstance(report, dict) or "results" not in report:
        raise ScanFailed(f"unexpected semgrep report shape: {str(report)[:500]}")
    report["x_sandgate"] = {"exit_code": run.exit_code, "wall_seconds": run.wall_seconds}
    return report
