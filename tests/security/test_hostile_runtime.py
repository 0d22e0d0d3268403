"""Hostile skills against the real sandbox, under runc and gVisor (runsc).

Every case is a small, realistic skill (``hostile_skills.py``) evaluated for real
through :func:`sandgate.evaluation.evaluate`; each test asserts the OBSERVED outcome:
the verdict and reason codes, the sandbox evidence (``timed_out``, ``oom_killed``,
``pids_limited``, ``output_truncated``, what the skill saw from inside), that no
sandbox container is left behind, and - last in the module - that the controller
still evaluates a clean skill to ``passed``.

The policy (:func:`hostile_policy`) blocks no finding severity and has no coverage
gate, so the *dynamic* phase - the sandbox - is what decides: a static
``policy_violation`` would otherwise hide whether the sandbox contained the skill.
The static phase still runs, and where the platform's semgrep rules are meant to
catch the behaviour the test asserts that their findings were reported anyway.

A hostile skill must end ``failed`` (``rejected`` for intake cases), never
``passed`` and never ``error`` (``error`` is "the infrastructure's fault" and is
never counted against the skill, so a skill that can cause it escapes its verdict).
Where runsc legitimately differs from runc the runtime-specific outcome is asserted
explicitly, with the reason in a comment. Where the observed outcome is wrong, the
test asserts the CORRECT behaviour and fails until the platform is fixed.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from sandgate.evaluation import evaluate, evaluate_path
from sandgate.policy import Policy, load_policy, parse_policy
from sandgate.report import EvaluationReport, TestCase, Verdict
from sandgate.submission import submission_from_files
from tests.security import hostile_skills as skills

pytestmark = pytest.mark.docker

RUNTIMES = ("runc", "runsc")
#: wall clock of most cases: nothing here needs more than ~2 s when contained
TIMEOUT = 8
#: wall clock of the cases that only end by the clock (each costs its full timeout)
SHORT_TIMEOUT = 5
MEMORY_MB = 256
PIDS = 64
OUTPUT_KB = 64
WORK_DISK_MB = 64
#: the harness kills at the deadline; the controller only from outside after a grace period
KILL_GRACE = 5.0


def hostile_policy(runtime: str, timeout: float = TIMEOUT) -> Policy:
    return parse_policy(
        {
            "description": "hostile runtime tests: the sandbox decides, not the static phase",
            "gates": {
                "tests_must_pass": True,
                "min_tests": 1,
                "min_line_coverage": 0.0,  # coverage would only add noise to the verdicts
                "min_branch_coverage": 0.0,
                "blocked_severities": [],  # findings are reported, but do not decide
            },
            "limits": {
                "runtime": runtime,
                "timeout_seconds": timeout,
                "memory_mb": MEMORY_MB,
                "pids": PIDS,
                "cpus": 1.0,
                "output_kb": OUTPUT_KB,
                "work_disk_mb": WORK_DISK_MB,
            },
        },
        name=f"hostile-{runtime}",
    )


def _encode(files: Mapping[str, str]) -> dict[str, bytes]:
    return {path: text.encode("utf-8") for path, text in files.items()}


def explain(report: EvaluationReport) -> str:
    """Enough of a report to understand a failed assertion."""
    sandbox = report.sandbox.model_dump() if report.sandbox else None
    cases = [(c.nodeid, c.outcome, (c.message or "")[-300:]) for c in report.tests.cases]
    return (f"verdict={report.verdict.value} reasons={[(r.code.value, r.message) for r in report.reasons]}\n"
            f"sandbox={sandbox}\ntests={cases}\nfindings={[(f.rule_id, f.path, f.line) for f in report.findings]}\n"
            f"output tail={report.output[-500:]!r}")


def codes(report: EvaluationReport) -> set[str]:
    return {r.code.value for r in report.reasons}


def reason(report: EvaluationReport, code: str) -> str:
    return next(r.message for r in report.reasons if r.code.value == code)


def case(report: EvaluationReport, name: str) -> TestCase:
    found = [c for c in report.tests.cases if c.nodeid.endswith("::" + name)]
    assert len(found) == 1, f"test {name!r} not reported once\n{explain(report)}"
    return found[0]


def assert_failed_by_the_sandbox(report: EvaluationReport, runtime: str, *expected: str) -> None:
    """``failed``, never ``passed``/``error``, with at least the ``expected`` reasons."""
    assert report.verdict is Verdict.failed, explain(report)
    assert "infrastructure" not in codes(report), explain(report)
    assert set(expected) <= codes(report), explain(report)
    assert report.sandbox is not None and report.sandbox.runtime == runtime, explain(report)


def line_of(files: Mapping[str, str], path: str, needle: str) -> int:
    lines = [i for i, text in enumerate(files[path].splitlines(), start=1) if needle in text]
    assert lines, f"{needle!r} not in {path}"
    return lines[0]


def assert_findings(report: EvaluationReport, *expected: tuple[str, str, int | None]) -> None:
    """The static phase reported ``(rule_id, path, line)`` (``line`` None: anywhere in path)."""
    seen = {(f.rule_id, f.path, f.line) for f in report.findings}
    missing = [
        want for want in expected
        if not any(rule == want[0] and path == want[1] and (want[2] is None or line == want[2])
                   for rule, path, line in seen)
    ]
    assert not missing, (f"static rules did not report {missing}; reported: {sorted(seen)}\n"
                         f"(runtime verdict: {report.verdict.value} {sorted(codes(report))})")


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> str:
    return request.param


@pytest.fixture
def run_skill(sandbox_image, no_leftovers, runtime) -> Callable[..., EvaluationReport]:
    """Evaluate a hostile skill under the hostile policy for ``runtime``."""

    def run(files: Mapping[str, str], *, timeout: float = TIMEOUT) -> EvaluationReport:
        return evaluate(submission_from_files(_encode(files)), policy=hostile_policy(runtime, timeout))

    return run


# -- resource exhaustion --------------------------------------------------------------


def test_fork_bomb(run_skill, runtime) -> None:
    files = skills.fork_bomb()
    report = run_skill(files, timeout=SHORT_TIMEOUT)

    if runtime == "runc":
        # The pids cgroup caps the bomb (fork fails with EAGAIN, the bomb retries
        # forever): the harness stops it at the deadline and reports both facts.
        assert_failed_by_the_sandbox(report, runtime, "timeout", "pids_limit")
        assert report.sandbox.timed_out and report.sandbox.pids_limited, explain(report)
        assert "harness_total" in report.timings, "the harness reported, not a kill from outside"
    else:
        # gVisor: the guest limit is RLIMIT_NPROC inside the sentry (no pids.events in the
        # guest, the host cgroup ceiling is pids*16), so pids_limited is never seen; the
        # forked interpreters' copied pages exhaust the 256 MiB first and the host kills
        # the whole sandbox: memory_limit, observed every run.
        assert_failed_by_the_sandbox(report, runtime, "memory_limit")
        assert report.sandbox.oom_killed and not report.sandbox.pids_limited, explain(report)
    assert report.sandbox.wall_seconds < SHORT_TIMEOUT + KILL_GRACE + 5, explain(report)
    assert report.tests.passed == 0

    # The static phase ran before any submitted code and found the fork; its findings
    # must survive whatever the dynamic phase does to the sandbox afterwards.
    assert_findings(report, ("process-fork", "workers.py", line_of(files, "workers.py", "os.fork()")))


def test_memory_bomb(run_skill, runtime) -> None:
    report = run_skill(skills.memory_bomb())

    assert_failed_by_the_sandbox(report, runtime, "memory_limit")
    assert report.sandbox.oom_killed and not report.sandbox.timed_out, explain(report)
    assert report.tests.passed == 0
    if runtime == "runc":
        # The kernel's OOM killer takes the test process (oom_score_adj 1000), PID 1
        # survives and reports the cgroup's peak.
        assert "harness_total" in report.timings, explain(report)
        assert report.sandbox.peak_memory_bytes >= (MEMORY_MB - 16) * 1024 * 1024, explain(report)
    else:
        # gVisor: the host cgroup holds the whole sentry, so the host OOM killer ends the
        # whole sandbox (exit 137); the controller sees Docker's OOMKilled, no harness result.
        assert report.sandbox.exit_code == 137, explain(report)
        assert "harness_total" not in report.timings, explain(report)


def test_infinite_loop_ignoring_sigterm(run_skill, runtime) -> None:
    files = skills.sigterm_loop()
    report = run_skill(files, timeout=SHORT_TIMEOUT)

    assert_failed_by_the_sandbox(report, runtime, "timeout")
    assert report.sandbox.timed_out and not report.sandbox.oom_killed, explain(report)
    # the harness's own deadline (SIGKILL, which cannot be ignored) ended it, well before
    # the controller's kill from outside
    assert "harness_total" in report.timings, explain(report)
    assert SHORT_TIMEOUT <= report.sandbox.wall_seconds < SHORT_TIMEOUT + KILL_GRACE, explain(report)
    assert report.tests.passed == 0
    assert_findings(report, ("signal-handler-override", "spinner.py", None))


def test_daemonised_child_does_not_outlive_the_sandbox(run_skill, runtime) -> None:
    tag = f"sandgate-hostile-beacon-{uuid.uuid4().hex}"
    files = skills.daemon(tag)
    report = run_skill(files)

    # The detached grandchild keeps the test output pipe open and ignores SIGTERM: the
    # harness SIGKILLs it after the test process exits, so it neither hangs the run nor
    # changes the verdict of a skill whose tests pass.
    assert report.verdict is Verdict.passed, explain(report)
    assert report.reasons == []
    assert report.tests.passed == 2 and report.tests.failed == 0, explain(report)
    assert not report.sandbox.timed_out and report.sandbox.wall_seconds < TIMEOUT, explain(report)
    # Under runc sandbox processes are host processes: none may still carry the tag.
    # (Under runsc they live inside the sentry, which is gone with the container.)
    assert not _host_processes_with(tag), "the daemon outlived its sandbox"
    assert_findings(
        report,
        ("process-fork", "beacon.py", line_of(files, "beacon.py", "pid = os.fork()")),
        ("os-exit", "beacon.py", None),
        ("signal-handler-override", "beacon.py", None),
        ("os-command-execution", "beacon.py", line_of(files, "beacon.py", "os.execv(")),
    )


def _host_processes_with(tag: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if tag.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_disk_fill(run_skill, runtime) -> None:
    report = run_skill(skills.disk_fill())

    assert_failed_by_the_sandbox(report, runtime, "tests_failed")
    assert not (report.sandbox.timed_out or report.sandbox.oom_killed), explain(report)
    seen = skills.probe_of(case(report, "test_fill_disks").message)
    cap = WORK_DISK_MB * 1024 * 1024
    assert seen["cwd"] == "/work/skill"
    # both writable file systems are size-capped tmpfs: ENOSPC, not EFBIG/SIGXFSZ, not memory
    assert seen["work_errno"] == "ENOSPC" and 0 < seen["work_bytes"] <= cap, seen
    assert seen["tmp_errno"] == "ENOSPC" and 0 < seen["tmp_bytes"] <= cap, seen
    # and the harness still reported with both of them full
    assert "harness_total" in report.timings


def test_output_flood(run_skill, runtime) -> None:
    report = run_skill(skills.output_flood())

    assert_failed_by_the_sandbox(report, runtime, "output_limit")
    assert report.sandbox.output_truncated and not report.sandbox.timed_out, explain(report)
    assert len(report.output.encode("utf-8")) <= OUTPUT_KB * 1024, len(report.output)
    assert "all work and no play" in report.output
    # the flood was cut at the cap (the test process is killed), not left to the clock
    assert report.sandbox.wall_seconds < TIMEOUT, explain(report)
    assert report.tests.passed == 0


# -- reaching out -------------------------------------------------------------------


@pytest.fixture
def host_loopback_server():
    """A TCP server on the HOST's 127.0.0.1; yields its port, then whether anyone connected."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    connected: list[object] = []

    def accepted() -> list[object]:
        # a completed handshake waits in the backlog: a non-blocking accept finds it
        server.setblocking(False)
        while True:
            try:
                conn, peer = server.accept()
            except BlockingIOError:
                return connected
            connected.append(peer)
            conn.close()

    try:
        yield server.getsockname()[1], accepted
    finally:
        server.close()


def test_network_to_host_loopback(run_skill, runtime, host_loopback_server) -> None:
    port, accepted = host_loopback_server
    report = run_skill(skills.network(port))

    assert_failed_by_the_sandbox(report, runtime, "tests_failed")
    assert accepted() == [], "the host's loopback server received a connection from the sandbox"
    seen = skills.probe_of(case(report, "test_phone_home").message)
    # 127.0.0.1 inside the sandbox is the sandbox's own loopback, where nobody listens
    assert seen["create_connection"] == "ConnectionRefusedError", seen
    assert seen["raw_connect"] == "ConnectionRefusedError", seen
    assert seen["if_nameindex"] == ["lo"], seen
    assert seen["sys_class_net"] == ["lo"], seen
    assert_findings(report, ("network-socket", "uplink.py", None))


def test_reading_host_files_and_environment(run_skill, runtime) -> None:
    files = skills.host_files()
    report = run_skill(files)

    assert_failed_by_the_sandbox(report, runtime, "tests_failed")
    outcomes = {c.nodeid.rsplit("::", 1)[1]: c.outcome for c in report.tests.cases}
    # runc: the non-dumpable harness keeps /proc/1/* from the same uid. gVisor (the
    # 2022 release Debian ships) lets the same uid read /proc/1/environ (which holds
    # only PATH/LANG/HOSTNAME/HOME: the channel key never is in the environment) and
    # open /proc/1/fd/1 — writing there is caught as tampering, see the takeover tests.
    proc1_open = runtime == "runsc"
    assert outcomes == {
        # the snooping tests fail where the attempt is refused
        "test_read_shadow": "failed",
        "test_read_init_environ": "passed" if proc1_open else "failed",
        "test_write_init_stdout": "passed" if proc1_open else "failed",
        # the tests asserting the safe state pass
        "test_shadow_refused": "passed",
        "test_init_environ_refused": "failed" if proc1_open else "passed",
        "test_init_stdout_refused": "failed" if proc1_open else "passed",
        "test_no_docker_socket": "passed",
        "test_environment_is_the_known_set": "passed",
    }, explain(report)
    refused = ("test_read_shadow",) if proc1_open else (
        "test_read_shadow", "test_read_init_environ", "test_write_init_stdout")
    for name in refused:
        assert "PermissionError" in (case(report, name).message or ""), explain(report)
    test = "tests/test_snoop.py"
    assert_findings(
        report,
        ("fs-read-sensitive-path", test, line_of(files, test, 'read("/etc/shadow")')),
        ("fs-read-sensitive-path", test, line_of(files, test, 'read("/proc/1/environ")')),
        ("fs-read-sensitive-path", test, line_of(files, test, 'open_for_write("/proc/1/fd/1")')),
    )


def test_writing_outside_the_work_dir(run_skill, runtime) -> None:
    files = skills.write_outside()
    report = run_skill(files)

    assert_failed_by_the_sandbox(report, runtime, "tests_failed")
    outcomes = {c.nodeid.rsplit("::", 1)[1]: c.outcome for c in report.tests.cases}
    assert outcomes == {
        "test_write_refused[/etc/x]": "passed",
        "test_write_refused[/usr/lib/x]": "passed",
        "test_write_refused[/x]": "passed",
        "test_write_refused[/opt/sandgate/lib/x.py]": "passed",
        "test_world_writable_dir_on_root_fs_is_read_only": "passed",
        "test_plant_in_etc": "failed",
    }, explain(report)
    planted = case(report, "test_plant_in_etc").message or ""
    # runc: the read-only mount answers first (EROFS); gVisor checks permissions first (EACCES)
    expected = "Read-only file system" if runtime == "runc" else "Permission denied"
    assert expected in planted, planted[-500:]
    test = "tests/test_persist.py"
    assert_findings(
        report,
        ("fs-write-outside-workdir", test, line_of(files, test, 'plant("/etc/cron.d/skill")')),
    )


# -- attacks on the result channel and the harness --------------------------------------


def test_forged_results(run_skill, runtime) -> None:
    files = skills.forged_results()
    report = run_skill(files)

    assert_failed_by_the_sandbox(report, runtime, "crashed")
    assert "forged results" in reason(report, "crashed"), explain(report)
    # nothing from the fake frame or the fake junit/coverage files made it into the report
    assert report.tests.passed == 0, explain(report)
    assert not any("test_forged_" in c.nodeid for c in report.tests.cases), explain(report)
    assert report.coverage is None or report.coverage.statements != 99, explain(report)
    assert_findings(
        report,
        ("harness-config-write", "forger.py", line_of(files, "forger.py", '".coverage"')),
    )


def test_harness_stdout_takeover(run_skill, runtime) -> None:
    """A fake harness line on PID 1's stdout, then SIGKILL to PID 1, must never pass."""
    files = skills.harness_takeover()
    report = run_skill(files)

    assert report.verdict is not Verdict.passed, "a forged harness line was accepted\n" + explain(report)
    if runtime == "runc":
        assert_failed_by_the_sandbox(report, runtime, "tests_failed")
        assert report.tests.passed == 0 and report.tests.failed == 1, explain(report)
        assert "open /proc/1/fd/1: PermissionError" in (case(report, "test_is_even").message or "")
    else:
        # gVisor let the skill write its fake line and kill PID 1; the line fails
        # verification (it is not signed with the evaluation's key): tampering.
        assert_failed_by_the_sandbox(report, runtime, "crashed")
        assert "output channel" in reason(report, "crashed"), explain(report)
        assert report.tests.passed == 0, explain(report)
    assert_findings(
        report,
        ("process-kill", "parity.py", line_of(files, "parity.py", "os.kill(1, signal.SIGKILL)")),
    )


def test_harness_stdout_takeover_under_the_shipped_strict_policy(sandbox_image, no_leftovers,
                                                                  runtime) -> None:
    """The same takeover under ``policies/strict.toml`` (whose own runtime is runsc): the
    fake line also carries the static phase's findings, so blocking them must still hold."""
    strict = load_policy("strict")
    policy = strict.model_copy(update={"limits": strict.limits.model_copy(update={"runtime": runtime})})
    report = evaluate(submission_from_files(_encode(skills.harness_takeover())), policy=policy)

    assert report.verdict is Verdict.failed, explain(report)
    # the findings come from the static line, signed before the skill ran
    assert {"policy_violation", "tests_failed" if runtime == "runc" else "crashed"} <= codes(report), \
        explain(report)
    assert any(f.rule_id == "process-kill" and f.severity == "critical" for f in report.findings)


def test_exit_at_import(run_skill, runtime) -> None:
    files = skills.exit_at_import()
    report = run_skill(files)

    assert_failed_by_the_sandbox(report, runtime, "crashed")
    assert "exited without reporting results" in reason(report, "crashed"), explain(report)
    assert report.tests.passed == 0
    assert_findings(report, ("os-exit", "quitter.py", line_of(files, "quitter.py", "os._exit(0)")))


def test_killing_pid1_and_everything(run_skill, runtime) -> None:
    files = skills.kill_init()
    report = run_skill(files)

    if runtime == "runc":
        # The harness (PID 1) survives SIGKILL/SIGTERM/SIGSTOP and kill(-1) and reports
        # the test's own failure.
        assert_failed_by_the_sandbox(report, runtime, "tests_failed")
        assert report.sandbox.exit_code == 0 and "harness_total" in report.timings, explain(report)
        seen = skills.probe_of(case(report, "test_kill_everything").message)
        assert seen["pid1_after"] == "alive", seen
    else:
        # gVisor delivers the signal to PID 1: the harness dies. That is the skill's
        # doing, so the verdict is failed (crashed), never error.
        assert_failed_by_the_sandbox(report, runtime, "crashed")
        assert "killed by signal" in reason(report, "crashed"), explain(report)
    assert_findings(report, ("process-kill", "reaper.py", None))


# -- intake: nothing runs ---------------------------------------------------------------


def _write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("where", ["tests/conftest.py", "conftest.py"])
def test_conftest_smuggling_is_rejected(sandbox_image, no_leftovers, runtime, tmp_path, where) -> None:
    skill_dir = _write_tree(tmp_path / "skill", skills.conftest_smuggling(where))
    report = evaluate_path(skill_dir, policy=hostile_policy(runtime))

    assert report.verdict is Verdict.rejected, explain(report)
    assert codes(report) == {"invalid_submission"}, explain(report)
    assert "conftest.py" in report.reasons[0].message
    assert report.sandbox is None and report.tests.collected == 0  # nothing ran


@pytest.mark.parametrize("shadow", ["pytest.py", "json.py", "coverage/__init__.py", "sandgate_harness.py"])
def test_module_shadowing_is_rejected(sandbox_image, no_leftovers, runtime, tmp_path, shadow) -> None:
    skill_dir = _write_tree(tmp_path / "skill", skills.module_shadowing(shadow))
    report = evaluate_path(skill_dir, policy=hostile_policy(runtime))

    assert report.verdict is Verdict.rejected, explain(report)
    assert codes(report) == {"invalid_submission"}, explain(report)
    assert "shadow" in report.reasons[0].message
    assert report.sandbox is None and report.tests.collected == 0  # nothing ran


# -- afterwards: the controller is fine ---------------------------------------------------


def test_zz_controller_still_evaluates_a_clean_skill(run_skill, runtime) -> None:
    """Last in the module: after every hostile case, a clean skill still passes."""
    report = run_skill(skills.clean())

    assert report.verdict is Verdict.passed, explain(report)
    assert report.tests.passed == 2 and report.findings == []
    assert report.coverage is not None and report.coverage.line_percent == 100.0
    assert not (report.sandbox.timed_out or report.sandbox.oom_killed or report.sandbox.output_truncated)
