"""The in-container harness's pure parts, run on the host (the image runs the same code)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from sandgate_harness.__main__ import defined_tests, parse_frames, unreported_tests
from sandgate_harness.payload import PayloadError, read_payload, write_tree
from sandgate_harness.runner import frame, function_body_lines
from sandgate_harness.static import _finding, semgrep_command

KEY = b"k" * 32


def _stream(*bodies: dict, key: bytes = KEY, start: int = 0) -> bytes:
    return b"".join(frame(key, start + i, json.dumps(b).encode()) for i, b in enumerate(bodies))


CASE = {"nodeid": "tests/test_m.py::test_a", "outcome": "passed", "duration_seconds": 0.0,
        "message": None, "assertions": 1, "failed_assertions": 0}
COLLECTED = {"kind": "collected", "nodeids": [CASE["nodeid"]]}
FINAL = {"kind": "final", "collected": 1, "cases": [CASE], "exit_status": 0}


def test_an_authentic_consistent_stream_is_accepted() -> None:
    result, problem = parse_frames(KEY, _stream(COLLECTED, {"kind": "case", "case": CASE}, FINAL))
    assert problem is None and result["cases"] == [CASE] and "kind" not in result


def test_forged_frame_is_refused_even_after_an_authentic_one() -> None:
    data = _stream(COLLECTED) + frame(b"x" * 32, 1, b'{"kind": "final"}')
    result, problem = parse_frames(KEY, data)
    assert result is None and "forged" in problem


def test_junk_and_cut_frames_are_problems() -> None:
    assert "not a result frame" in parse_frames(KEY, b"hello world" * 10)[1]
    assert "cut short" in parse_frames(KEY, _stream(FINAL)[:-2])[1]
    assert parse_frames(KEY, b"") == (None, "the test process exited without reporting results")


def test_a_second_final_frame_is_tampering() -> None:
    forged = {**FINAL, "cases": [{**CASE, "outcome": "passed"}]}
    data = _stream(COLLECTED, {"kind": "case", "case": CASE}, FINAL, forged)
    result, problem = parse_frames(KEY, data)
    assert result is None and "after the final" in problem


def test_frames_out_of_order_or_replayed_are_tampering() -> None:
    data = _stream(COLLECTED) + _stream(COLLECTED)  # frame 0 twice
    result, problem = parse_frames(KEY, data)
    assert result is None and "out of order" in problem


@pytest.mark.parametrize("streamed,final,needle", [
    # the final summary hides a failure that was streamed while the test ran
    ([{**CASE, "outcome": "failed"}], FINAL, "disagrees"),
    # an outcome for a test that was never collected
    ([{**CASE, "nodeid": "tests/test_m.py::test_other"}], FINAL, "never collected"),
    # the collected count does not match the collected ids
    ([CASE], {**FINAL, "collected": 5}, "number of collected"),
    # two outcomes for one test
    ([CASE, CASE], FINAL, "two outcomes"),
])
def test_a_final_summary_that_disagrees_with_the_stream_is_tampering(streamed, final, needle) -> None:
    data = _stream(COLLECTED, *({"kind": "case", "case": c} for c in streamed), final)
    result, problem = parse_frames(KEY, data)
    assert result is None and needle in problem, problem


def test_no_final_frame_is_a_problem() -> None:
    result, problem = parse_frames(KEY, _stream(COLLECTED, {"kind": "case", "case": CASE}))
    assert result is None and "without a final result" in problem


def test_defined_tests_come_from_the_ast_and_must_all_be_reported(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text(
        "def test_a():\n    assert 1\n"
        "def test_b():\n    assert 0\n"
        "test_b.__test__ = False\n"
        "def helper():\n    pass\n"
        "class TestK:\n    def test_c(self):\n        assert 1\n"
        "class TestInit:\n    def __init__(self):\n        pass\n    def test_d(self):\n        pass\n")
    required = defined_tests(str(tmp_path), ["tests/test_m.py"])
    assert required == [("tests/test_m.py", "TestK::test_c"), ("tests/test_m.py", "test_a"),
                        ("tests/test_m.py", "test_b")]
    result = {"cases": [{"nodeid": "tests/test_m.py::test_a[x-1]"},
                        {"nodeid": "tests/test_m.py::TestK::test_c"}]}
    assert unreported_tests(result, required) == ["tests/test_m.py::test_b"]
    # a module skipped (or broken) at collection excuses its file
    excused = {**result, "collect_skipped": [{"nodeid": "tests/test_m.py"}]}
    assert unreported_tests(excused, required) == []


def test_function_body_lines_exclude_module_and_class_bodies() -> None:
    source = ("import os\nX = 1\n\n@staticmethod\ndef f(a=2):\n    y = a\n    return y\n"
              "class C:\n    Z = 3\n    def m(self): return 4\nL = lambda q: q\n")
    assert function_body_lines(source) == {6, 7, 10, 11}


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            payload = (data or {}).get(info.name, b"")
            info.size = len(payload) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    buf.seek(0)
    return buf


def test_payload_reads_regular_files() -> None:
    info = tarfile.TarInfo("skill/mod.py")
    assert read_payload(_tar([info], {"skill/mod.py": b"x = 1\n"})) == {"skill/mod.py": b"x = 1\n"}


@pytest.mark.parametrize("name,kind", [
    ("skill/link.py", tarfile.SYMTYPE),
    ("skill/hard.py", tarfile.LNKTYPE),
    ("skill/dev", tarfile.CHRTYPE),
    ("/etc/passwd", tarfile.REGTYPE),
    ("skill/../../evil.py", tarfile.REGTYPE),
])
def test_payload_refuses_links_devices_and_escapes(name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    with pytest.raises(PayloadError):
        read_payload(_tar([info]))


def test_write_tree_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "mod.py")
    with pytest.raises(OSError):
        write_tree(str(root), {"mod.py": b"pwned"})
    assert not outside.exists()


def test_semgrep_does_not_honour_nosemgrep_or_ignore_files() -> None:
    command = semgrep_command("/work/rules", ["a.py"])
    assert "--disable-nosem" in command and "--x-ignore-semgrepignore-files" in command
    assert command[-1] == "a.py"  # explicit targets: tests/ is scanned too


def test_finding_takes_our_severity_and_strips_the_rule_path() -> None:
    finding = _finding({"check_id": "work.rules.no-subprocess", "path": "mod.py", "start": {"line": 3},
                        "extra": {"message": " m ", "severity": "WARNING", "metadata": {"severity": "critical"}}})
    assert finding == {"rule_id": "no-subprocess", "severity": "critical", "path": "mod.py", "line": 3,
                       "message": "m"}
    fallback = _finding({"check_id": "x", "extra": {"severity": "WARNING"}})
    assert fallback["severity"] == "medium"


def test_a_target_semgrep_did_not_scan_or_failed_on_is_a_critical_finding() -> None:
    from sandgate_harness.static import _unscanned

    findings = _unscanned(["a.py", "b.py", "tests/test_a.py"], ["a.py", "./tests/test_a.py"],
                          [{"path": "tests/test_a.py", "type": ["Timeout", "x"], "message": "t"}])
    assert [(f["rule_id"], f["severity"], f["path"]) for f in findings] == [
        ("static-scan-incomplete", "critical", "b.py"),
        ("static-scan-incomplete", "critical", "tests/test_a.py"),
    ]
    assert "did not scan" in findings[0]["message"] and "Timeout" in findings[1]["message"]
    assert _unscanned(["a.py"], ["a.py"], [{"message": "a rule file warning"}]) == []


def test_the_engines_own_error_shape_is_read_too() -> None:
    """The prestarted ``semgrep-core`` reports a rule timeout with ``error_type`` and
    ``location.path``, no ``path`` or ``message``: the file is still not trusted (it had been,
    and a rule that timed out on it reported nothing)."""
    from sandgate_harness.static import _error, _unscanned

    engine_error = {"error_type": "Timeout", "severity": "warn", "message": "", "rule_id": "os-exit",
                    "location": {"path": "tests/test_slug.py", "start": {"line": 1, "col": 1, "offset": 0}}}
    [finding] = _unscanned(["slug.py", "tests/test_slug.py"], ["slug.py", "tests/test_slug.py"], [engine_error])
    assert (finding["rule_id"], finding["severity"], finding["path"]) == (
        "static-scan-incomplete", "critical", "tests/test_slug.py")
    assert "(Timeout)" in finding["message"]
    assert _error(engine_error) == "tests/test_slug.py: Timeout (os-exit)"
    assert _error({"path": "a.py", "type": "Timeout", "message": "Timeout on a.py"}) == "a.py: Timeout on a.py"
    assert _error({}) == "semgrep error"


def test_semgrep_gets_an_explicit_target_size_above_intakes_cap() -> None:
    from sandgate.submission import IntakeLimits
    from sandgate_harness.static import MAX_TARGET_BYTES

    assert f"--max-target-bytes={MAX_TARGET_BYTES}" in semgrep_command("/r", ["a.py"])
    assert MAX_TARGET_BYTES > IntakeLimits().max_py_bytes


def test_wait_exit_returns_the_exit_status_and_times_out_like_popen_wait() -> None:
    import subprocess
    import sys

    from sandgate_harness.procs import wait_exit

    quick = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert wait_exit(quick, 30.0) == 3 and quick.returncode == 3
    assert wait_exit(quick, 0.0) == 3  # already reaped: its status again
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(slow, 0.2)
        assert slow.returncode is None  # still running, still ours to reap
    finally:
        slow.kill()
        assert wait_exit(slow, 30.0) == -9


# -- the prestarted engine's rules file --------------------------------------------------------

RULE = b"rules:\n  - id: %s\n    languages: [python]\n    severity: ERROR\n    message: m\n    pattern: f()\n"


def test_the_platform_rules_merge_into_one_file_of_the_same_rules() -> None:
    from sandgate.config import project_root
    from sandgate_harness.static import merge_rules

    files = {p.name: p.read_bytes() for p in sorted((project_root() / "policies" / "semgrep").glob("*.y*ml"))}
    merged = merge_rules(files)
    assert merged is not None and merged.startswith(b"rules:\n")
    ids = [line.split(b":", 1)[1].strip() for line in merged.splitlines() if line.startswith(b"  - id:")]
    assert len(ids) == len(set(ids)) == sum(text.count(b"\n  - id:") for text in files.values()) > 30
    # every file's text after its header, in name order: nothing dropped, nothing reordered
    body = b"".join(t.split(b"\nrules:\n", 1)[1] if not t.startswith(b"rules:\n") else t[len(b"rules:\n"):]
                    for _, t in sorted(files.items()))
    assert merged.replace(b"\n", b"") == (b"rules:" + body).replace(b"\n", b"")
    assert merge_rules(dict(reversed(list(files.items())))) == merged  # independent of the order given


@pytest.mark.parametrize("files", [
    {},  # nothing to load
    {"a.yml": RULE % b"x", "b.yml": RULE % b"x"},  # one id twice
    {"a.yml": b"rules:\n- id: x\n  languages: [python]\n"},  # items at column 0
    {"a.yml": RULE % b"x", "b.yml": b"rules:\n    - id: y\n      pattern: f()\n"},  # items at four spaces
    {"a.yml": RULE % b"x" + b"other: 1\n"},  # a second top-level key
    {"a.yml": RULE % b"x" + b"---\nrules: []\n"},  # a second document
    {"a.yml": b"# c\nrules: []\n"},  # flow style
    {"a.yml": b"rules:\n  - id: x\n\tpattern: f()\n"},  # a tab
    {"a.yml": b"rules:\r  - id: x\r"},  # CR line ends
    {"a.yml": RULE % b"x", "b.json": b"{}"},  # not YAML
    {"a.yml": b"rules:\n  - {id: x, pattern: f()}\n"},  # an item that is not `- id: NAME`
])
def test_rules_that_might_merge_into_something_else_are_not_merged(files: dict[str, bytes]) -> None:
    from sandgate_harness.static import merge_rules

    assert merge_rules(files) is None


def test_comments_and_crlf_merge() -> None:
    from sandgate_harness.static import merge_rules

    merged = merge_rules({"a.yml": b"# head\r\nrules:\r\n  # one\r\n" + (RULE % b"x")[len(b"rules:\n"):],
                          "b.yml": RULE % b"y"})
    assert merged is not None and merged.count(b"  - id: ") == 2 and b"\r" not in merged


def _mutation_config() -> dict:
    return {"tests": ["tests"], "mutation": {"max_mutants": 3, "seconds": 10}}


class _Server:
    def __init__(self) -> None:
        self.discarded = False

    def alive(self) -> bool:
        return True  # as alive() can answer while a signal is still unwinding the server

    def discard(self) -> None:
        self.discarded = True


def test_a_warm_mutation_server_that_dies_before_its_first_event_is_replaced_by_a_cold_one(monkeypatch) -> None:
    import time

    import sandgate_harness.__main__ as harness

    calls: list = []
    plan = {"plan": {"total": 1}}

    def serve(server, job, stop_at, started, seconds):
        calls.append(server)
        return (-2, [], None, False) if server is not None else (0, [plan], None, False)

    monkeypatch.setattr(harness, "_serve_job", serve)
    warm = _Server()
    out = harness.run_mutation(_mutation_config(), {}, {"result": {}}, time.monotonic() + 30, warm)
    assert calls == [warm, None]  # the warm one first, then a cold one
    assert out["warm"] is False and "status -2" not in (out.get("problem") or ""), out  # the cold run's


@pytest.mark.parametrize("events", [[{"plan": {"total": 1}}], []])
def test_a_mutation_server_that_dies_is_a_problem_once_it_reported_or_was_cold(monkeypatch, events) -> None:
    import time

    import sandgate_harness.__main__ as harness

    calls: list = []

    def serve(server, job, stop_at, started, seconds):
        calls.append(server)
        return (-9, events, None, False)

    monkeypatch.setattr(harness, "_serve_job", serve)
    server = _Server() if events else None  # reported before dying, or a cold server from the start
    out = harness.run_mutation(_mutation_config(), {}, {"result": {}}, time.monotonic() + 30, server)
    assert len(calls) == 1  # never retried: the phase ran submitted code, or nothing was warm
    assert "exited with status -9" in (out.get("problem") or ""), out
