"""Static phase, before any submitted code runs: semgrep's native engine over the stored bytes,
then the allow-list rules of :mod:`sandgate_harness.pyrules` over the syntax tree CPython builds.

Every target must be scanned: semgrep's own size cap is set explicitly above intake's
(:data:`MAX_TARGET_BYTES`), and a target semgrep does not report as scanned, or reports an
error for (a parse failure, a rule timeout), becomes a critical ``static-scan-incomplete``
finding: the evaluation fails closed instead of trusting a partial scan.

The engine is started before the payload arrives (:class:`PrestartedEngine`): the image holds
the platform's rules merged into one file (:func:`merge_rules`, at image build), and
``semgrep-core`` parses them and then blocks opening its target list, a FIFO. When the
payload's rules merge to the same bytes, the target list is put in place and the scan alone
is left (≈ 0.05 s instead of ≈ 0.3 s, most of it the engine's start-up); any other rules take
the cold path (``osemgrep``, the rules directory). Both read the same rules and report in the
same JSON; no submitted byte reaches the engine before the payload does.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from sandgate_harness.pyrules import RULES, run_pyrules

SEVERITIES = {"critical", "high", "medium", "low", "info"}
_SEMGREP_SEVERITY = {"ERROR": "high", "WARNING": "medium", "INFO": "low"}
MAX_SEMGREP_OUTPUT = 16 * 1024 * 1024
#: semgrep silently skips larger targets (its default is 1,000,000 bytes, below intake's 1 MiB cap)
MAX_TARGET_BYTES = 4 * 1024 * 1024


#: the platform's rules as one file, written at image build by :func:`bake_rules`
BAKED_RULES = "/opt/sandgate/platform-rules.yml"
#: semgrep's own defaults for the CLI (osemgrep): seconds per rule and file, timeouts before a
#: file is skipped. semgrep-core's defaults are none; the prestarted engine is given the CLI's.
RULE_TIMEOUT = "5"
RULE_TIMEOUT_THRESHOLD = "3"
_RULE_ID = re.compile(rb"^  - id: *([^\s#]+)")


def merge_rules(files: dict[str, bytes]) -> bytes | None:
    """The rule files (name → YAML text, as the controller sends them) as one file holding the
    same rules, for semgrep-core (which reads one rules file); None when the text is not in the
    plain shape every platform file has, so a merge could change what it means: a first line
    (after comments) ``rules:`` and every other line blank, a comment, or indented by two or more
    spaces with the list's items at exactly two (``  - id: NAME``), no rule id twice. No YAML
    parser: the image has none, and this shape keeps every file's text a valid continuation."""
    if not files:
        return None
    out = [b"rules:\n"]
    ids: set[bytes] = set()
    for name in sorted(files):
        if not name.endswith((".yml", ".yaml")) or "/" in name:
            return None
        header = False
        first_item = True
        for line in files[name].replace(b"\r\n", b"\n").split(b"\n"):
            if b"\r" in line or b"\t" in line:
                return None
            stripped = line.strip()
            if not header:
                if not stripped or stripped.startswith(b"#"):
                    continue
                if line.rstrip() != b"rules:":
                    return None
                header = True
                continue
            if not stripped or stripped.startswith(b"#"):
                out.append(line + b"\n")
                continue
            if not line.startswith(b"  "):
                return None
            at_two = not line.startswith(b"   ")
            if at_two and not line.startswith(b"  - "):
                return None
            if first_item and not at_two:
                return None
            first_item = False
            if at_two:
                match = _RULE_ID.match(line)
                if match is None or match.group(1) in ids:
                    return None
                ids.add(match.group(1))
            out.append(line + b"\n")
        if not header or first_item:
            return None
    return b"".join(out)


def bake_rules(rules_dir: str, out: str = BAKED_RULES) -> bool:
    """At image build: the platform's rules (``*.y*ml`` of ``rules_dir``) merged into ``out``;
    False (and no file) when they do not merge, so every evaluation takes the cold path."""
    files = {}
    for name in sorted(os.listdir(rules_dir)):
        if name.endswith((".yml", ".yaml")):
            with open(os.path.join(rules_dir, name), "rb") as handle:
                files[name] = handle.read()
    merged = merge_rules(files)
    if merged is None:
        return False
    with open(out, "wb") as handle:
        handle.write(merged)
    return True


def _engine_env() -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "SEMGREP_ENABLE_VERSION_CHECK": "0",
        "SEMGREP_SEND_METRICS": "off",
        "LANG": "C.UTF-8",
    }


class PrestartedEngine:
    """``semgrep-core`` started with the baked rules before the payload, blocked on its target
    list. :meth:`scan` hands it the targets when the payload's rules are the baked ones (else it
    is discarded and the caller scans cold). The target list is a FIFO while the engine waits:
    the list's real file is renamed over it, then the FIFO the engine may already be opening is
    fed the same bytes, so whichever the engine opens, it reads the same list."""

    def __init__(self, skill_dir: str, rules: str = BAKED_RULES, rule_timeout: str = RULE_TIMEOUT) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.rules = b""
        self.fifo: int | None = None
        if not os.path.isfile(rules):
            return
        with open(rules, "rb") as handle:
            self.rules = handle.read()
        self.dir = tempfile.mkdtemp(prefix="semgrep-", dir="/tmp")
        self.targets = os.path.join(self.dir, "targets.json")
        os.mkfifo(self.targets, 0o600)
        self.fifo = os.open(self.targets, os.O_PATH)
        # run where the skill will be written, as the cold CLI runs: paths come out relative to it
        os.makedirs(skill_dir, mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            ["semgrep-core", "-rules", rules, "-targets", self.targets, "-json_nodots", "-j", "1",
             "-timeout", rule_timeout, "-timeout_threshold", RULE_TIMEOUT_THRESHOLD],
            executable=semgrep_binary(), cwd=skill_dir, env=_engine_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def accepts(self, rules: dict[str, bytes]) -> bool:
        """Whether the payload's rules are the ones this engine has loaded."""
        return self.proc is not None and self.proc.poll() is None and merge_rules(rules) == self.rules

    def scan(self, targets: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        """(exit code, stdout, stderr) of the scan of ``targets`` (paths under the skill directory);
        raises :class:`subprocess.TimeoutExpired` after ``timeout`` s (the engine is killed)."""
        assert self.proc is not None
        body = json.dumps(["Targets", [
            ["CodeTarget", {"path": {"fpath": t, "ppath": "/" + t},
                            "analyzer": "python", "products": ["sast"]}] for t in targets]]).encode()
        real = self.targets + ".real"
        with open(real, "wb") as handle:
            handle.write(body)
        os.rename(real, self.targets)
        try:  # the engine already waits in open() on the FIFO: it reads the list from there
            fd = os.open(f"/proc/self/fd/{self.fifo}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: it has not opened it yet, and will open the real file
            if exc.errno != errno.ENXIO:
                raise
        else:
            try:
                os.set_blocking(fd, True)
                os.write(fd, body)
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.discard()
            raise
        finally:
            self._close()
        return self.proc.returncode, stdout, stderr

    def _close(self) -> None:
        if self.fifo is not None:
            os.close(self.fifo)
            self.fifo = None
            shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()


def semgrep_binary() -> str:
    import semgrep  # only to locate the package; its Python CLI is not used

    return os.path.join(os.path.dirname(semgrep.__file__), "bin", "semgrep-core")


def semgrep_command(rules_dir: str, targets: list[str], rule_timeout: str = RULE_TIMEOUT) -> list[str]:
    # argv[0] "osemgrep" selects semgrep-core's native CLI. nosemgrep comments and
    # ignore files are NOT honoured: the submission must not silence its own scan.
    return [
        "osemgrep", "scan", "--experimental", "--config", rules_dir, "--json",
        "--disable-nosem", "--x-ignore-semgrepignore-files", "--metrics=off",
        f"--max-target-bytes={MAX_TARGET_BYTES}",
        f"--timeout={rule_timeout}", f"--timeout-threshold={RULE_TIMEOUT_THRESHOLD}",
        *targets,
    ]


def run_static(skill_dir: str, rules_dir: str, targets: list[str], timeout: float,
               engine: PrestartedEngine | None = None, rule_timeout: str = RULE_TIMEOUT) -> dict[str, Any]:
    """The static phase over ``targets``: with ``engine`` (prestarted with the same rules as
    ``rules_dir``, and :data:`RULE_TIMEOUT`) the scan is handed to it, else semgrep runs cold
    on ``rules_dir`` with ``rule_timeout`` seconds per rule and file (the harness always
    passes the default; tests of the timeout itself pass a shorter one)."""
    started = time.monotonic()
    if not targets:
        if engine is not None:
            engine.discard()
        return {"ran": True, "findings": [], "errors": [], "seconds": 0.0}
    try:
        if engine is not None:
            returncode, stdout, stderr = engine.scan(targets, timeout)
        else:
            cold = subprocess.run(
                semgrep_command(rules_dir, targets, rule_timeout),
                executable=semgrep_binary(),
                cwd=skill_dir,
                env=_engine_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
            returncode, stdout, stderr = cold.returncode, cold.stdout, cold.stderr
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
    if len(stdout) > MAX_SEMGREP_OUTPUT:
        return {"ran": False, "findings": [], "errors": ["semgrep output too large"], "seconds": seconds}
    try:
        data = json.loads(stdout or b"{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict) or "results" not in data:
        tail = stderr.decode("utf-8", "replace")[-2000:]
        return {"ran": False, "findings": [],
                "errors": [f"semgrep exited {returncode} without results: {tail}"],
                "seconds": seconds}
    findings = [_finding(r) for r in data.get("results", [])]
    raw_errors = [e for e in data.get("errors", []) if isinstance(e, dict)]
    errors = [_error(e) for e in raw_errors]
    scanned = sorted(str(p) for p in (data.get("paths") or {}).get("scanned", []) or [])
    findings.extend(_unscanned(targets, scanned, raw_errors))
    ast_rules = run_pyrules(skill_dir, targets)
    findings.extend(ast_rules["findings"])
    return {"ran": True, "findings": findings, "errors": errors,
            "seconds": time.monotonic() - started, "scanned": scanned,
            "engine_seconds": seconds}  # the engine's part (the rest: its JSON read, the Python rules)


def _norm(path: str) -> str:
    return os.path.normpath(path).removeprefix("./")


def _error_path(error: dict[str, Any]) -> str | None:
    """The file an error is about: ``path`` in the CLI's JSON, ``location.path`` in the engine's
    (``semgrep-core``, as the prestarted engine reports a rule timeout)."""
    path = error.get("path")
    location = error.get("location")
    if not path and isinstance(location, dict):
        path = location.get("path")
    return str(path) if path else None


def _error_kind(error: dict[str, Any]) -> str:
    kind = error.get("type") or error.get("error_type") or error.get("message") or "error"
    if isinstance(kind, list):
        kind = kind[0] if kind else "error"
    return str(kind)[:200]


def _unscanned(targets: list[str], scanned: list[str], errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``static-scan-incomplete`` finding for every target semgrep skipped or failed on (an
    error that names no file, such as a warning about a rule, is about no target)."""
    severity, _category, message = RULES["static-scan-incomplete"]
    seen = {_norm(p) for p in scanned}
    failed: dict[str, str] = {}
    for error in errors:
        path = _error_path(error)
        if path:
            failed.setdefault(_norm(path), _error_kind(error))
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
    """One line for an error, from the CLI's JSON or the engine's (no message, a rule id)."""
    message = error.get("message")
    if not message:
        named = error.get("type") or error.get("error_type")
        message = _error_kind(error) if named else "semgrep error"
        if error.get("rule_id"):
            message = f"{message} ({error['rule_id']})"
    path = _error_path(error)
    return f"{path}: {message}" if path else str(message)
