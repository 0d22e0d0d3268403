"""The dynamic phase's child process: pytest + coverage, results sent as an HMAC frame.

Run as ``python3 -I -m sandgate_harness.runner KEY_FD RESULT_FD CONFIG_JSON``.
The key is read and its pipe closed before any submitted code is imported.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import signal
import struct
import sys
import time
from typing import Any

MAGIC = b"SGR1"


def frame(key: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return MAGIC + struct.pack(">I", len(payload)) + mac + payload


class _Collector:
    """A pytest plugin object: per-test outcomes straight from pytest's hooks."""

    def __init__(self) -> None:
        self.collected = 0
        self.collect_errors: list[dict[str, Any]] = []
        self.cases: dict[str, dict[str, Any]] = {}
        self.exit_status: int | None = None

    def pytest_collection_finish(self, session: Any) -> None:
        self.collected = len(session.items)

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors.append({"nodeid": report.nodeid or "<collection>",
                                        "message": _longrepr(report)})

    def pytest_runtest_logreport(self, report: Any) -> None:
        case = self.cases.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": None,
                                                      "duration_seconds": 0.0, "message": None})
        case["duration_seconds"] += float(getattr(report, "duration", 0.0) or 0.0)
        wasxfail = hasattr(report, "wasxfail")
        if report.when == "call":
            if report.passed:
                case["outcome"] = "xpassed" if wasxfail else "passed"
            elif report.skipped:
                case["outcome"] = "xfailed" if wasxfail else "skipped"
            else:
                case["outcome"] = "failed"
                case["message"] = _longrepr(report)
        elif report.failed:  # setup or teardown error
            case["outcome"] = "error"
            case["message"] = f"error in {report.when}: " + _longrepr(report)
        elif report.skipped and case["outcome"] is None:
            case["outcome"] = "xfailed" if wasxfail else "skipped"

    def pytest_sessionfinish(self, session: Any, exitstatus: Any) -> None:
        self.exit_status = int(exitstatus)


def _longrepr(report: Any) -> str:
    try:
        text = str(report.longreprtext)
    except Exception:  # noqa: BLE001 - never let a hostile repr break reporting
        text = "<unprintable>"
    return text[-4000:]


def _slim(report: Any) -> Any:
    """Keep what the report needs from coverage's JSON: totals and per-file misses."""
    if not isinstance(report, dict) or "files" not in report:
        return report
    keep = ("covered_lines", "num_statements", "num_branches", "covered_branches",
            "missing_branches", "percent_covered")
    files = {}
    for path, data in report["files"].items():
        summary = data.get("summary", {})
        files[path] = {
            "summary": {k: summary.get(k, 0) for k in keep},
            "missing_lines": data.get("missing_lines", []),
        }
    totals = report.get("totals", {})
    return {"files": files, "totals": {k: totals.get(k, 0) for k in keep}}


def main() -> None:
    key_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
    config = json.loads(sys.argv[3])
    with os.fdopen(key_fd, "rb") as key_pipe:
        key = key_pipe.read(32)
    os.set_inheritable(result_fd, False)
    result_out = os.fdopen(result_fd, "wb", buffering=0)

    import coverage
    import pytest

    skill_dir = config["skill_dir"]
    sys.path.append(skill_dir)  # appended: stdlib and the toolchain always win
    cov = coverage.Coverage(
        data_file=None,
        branch=True,
        source=[skill_dir],
        omit=[os.path.join(skill_dir, t) for t in config["tests"]],
        config_file=False,
    )
    collector = _Collector()
    args = [
        "-c", os.path.join(os.path.dirname(__file__), "pytest.ini"),
        "--rootdir", skill_dir,
        "--import-mode=importlib",
        "--noconftest",
        "-p", "no:cacheprovider",
        "-p", "no:pytester",
        "--basetemp", "/tmp/pytest",
        "-q", "-rfE", "--color=no",
        # tee: what tests print also reaches the harness's capped pipe at once, so
        # an output flood is stopped by the cap instead of filling pytest's buffer
        "--capture=tee-sys",
        *config["tests"],
    ]
    started = time.monotonic()
    cov.start()
    try:
        exit_status = int(pytest.main(args, plugins=[collector]))
    finally:
        cov.stop()
    seconds = time.monotonic() - started
    # Whatever submitted code left running dies now, before results are built.
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass

    report = io.StringIO()
    real_stdout = sys.stdout
    sys.stdout = report
    try:
        cov.json_report(outfile="-", ignore_errors=True)
        coverage_json: Any = json.loads(report.getvalue() or "null")
    except Exception as exc:  # noqa: BLE001 - e.g. "No data to report."
        coverage_json = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        sys.stdout = real_stdout

    result = {
        "coverage": _slim(coverage_json),
        "collected": collector.collected,
        "collect_errors": collector.collect_errors,
        "cases": list(collector.cases.values()),
        "exit_status": collector.exit_status if collector.exit_status is not None else exit_status,
        "seconds": seconds,
    }
    result_out.write(frame(key, json.dumps(result).encode()))
    result_out.close()


if __name__ == "__main__":
    main()
