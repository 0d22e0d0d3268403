"""The oracle phase against hostile skills, in the real sandbox.

The oracle is the one part of the verdict a skill cannot write: the controller
calls the entrypoint served in a second sandbox and judges each answer itself.
Each case is a skill built to get ``passed`` without working code, or to make
the server lie; each must end ``failed`` (never ``passed``, never ``error``),
with the failing calls listed. Infrastructure failures of the oracle's own
sandbox are ``error``. Every test checks that no sandbox container is left.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from sandgate.config import Settings
from sandgate.evaluation import evaluate
from sandgate.policy import load_policy, parse_policy
from sandgate.report import EvaluationReport, Verdict
from sandgate.submission import submission_from_files

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("sandbox_image", "no_leftovers")]

ROOT = Path(__file__).resolve().parents[2]


def policy(runtime: str = "runc", call_timeout: float = 1.0, **gates):
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"].update(runtime=runtime, timeout_seconds=20)
    # the oracle decides here, not the scan or the mutants (the mutation gate has its own hostile tests)
    data["gates"].update(blocked_severities=[], min_mutation_score=0.0, null_entrypoint_must_be_killed=False,
                         **gates)
    data["mutation"].update(max_mutants=0)
    data["oracle"].update(call_timeout_seconds=call_timeout, timeout_seconds=15)
    return parse_policy({k: v for k, v in data.items() if v is not None}, name=f"oracle-{runtime}")


def codes(report: EvaluationReport) -> set[str]:
    return {r.code.value for r in report.reasons}


def explain(report: EvaluationReport) -> str:
    o = report.oracle.model_dump() if report.oracle else None
    return f"verdict={report.verdict.value} reasons={[(r.code.value, r.message) for r in report.reasons]}\noracle={o}"


MANIFEST = '''name = "adder"
entrypoint = "adder:add"

[[examples]]
args = [1, 2]
expect = 3

[[examples]]
args = [-5, 5]
expect = 0

[[examples]]
args = [10, 20]
expect = 30
'''


def skill(module: str, tests: str, manifest: str = MANIFEST, **extra: str):
    files = {"skill.toml": manifest, "adder.py": module, "tests/test_adder.py": tests, **extra}
    return submission_from_files({k: v.encode() for k, v in files.items()})


HONEST_TESTS = "from adder import add\n\ndef test_add():\n    assert add(1, 2) == 3\n    assert add(-5, 5) == 0\n"


def test_honest_skill_passes_with_oracle_evidence() -> None:
    report = evaluate(skill("def add(a: int, b: int) -> int:\n    return a + b\n", HONEST_TESTS),
                      policy=policy())
    assert report.verdict is Verdict.passed, explain(report)
    o = report.oracle
    assert o.status == "ran" and o.calls["example"] == 3 and o.passed["example"] == 3
    assert o.contract_checks == 20 and o.passed["contract"] == 40 and o.failures == []
    assert o.contract_values == 20
    assert o.signature == "(a: int, b: int) -> int"


def test_tests_that_agree_with_wrong_code_still_fail_on_the_examples() -> None:
    # the skill's own tests are written to pass (they assert the bug); its claims are all
    # "passed", 100% coverage - the examples are judged by the controller
    wrong = "def add(a: int, b: int) -> int:\n    return a + b + 1\n"
    tests = "from adder import add\n\ndef test_add():\n    assert add(1, 2) == 4\n"
    report = evaluate(skill(wrong, tests), policy=policy())
    assert report.tests.passed == 1 and report.tests.failed == 0
    assert report.verdict is Verdict.failed, explain(report)
    assert codes(report) == {"examples_failed"}, explain(report)
    failures = report.oracle.failures
    assert [(f.args, f.expected, f.got, f.problem) for f in failures] == [
        ([1, 2], "3", "4", "wrong_value"), ([-5, 5], "0", "1", "wrong_value"),
        ([10, 20], "30", "31", "wrong_value")]


def test_forged_test_results_do_not_reach_the_oracle() -> None:
    # the tests "pass" by exiting the test process early with status 0 before any
    # assertion runs; whatever the dynamic phase makes of that, the served entrypoint is wrong
    wrong = "def add(a: int, b: int) -> int:\n    return 0\n"
    tests = ("import os\nfrom adder import add\n\ndef test_add():\n"
             "    os._exit(0)\n    assert add(1, 2) == 3\n")
    report = evaluate(skill(wrong, tests), policy=policy())
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report), explain(report)
    assert len(report.oracle.failed("example")) == 2  # add(-5, 5) == 0 is right by accident


def test_a_skill_that_behaves_only_under_test_fails_when_served() -> None:
    sniffing = '''import sys


def add(a: int, b: int) -> int:
    if "pytest" in sys.modules or "coverage" in sys.modules:
        return a + b
    return a - b
'''
    report = evaluate(skill(sniffing, HONEST_TESTS), policy=policy())
    assert report.tests.passed == 1 and report.tests.failed == 0, explain(report)
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report), explain(report)
    assert [f.got for f in report.oracle.failed("example")] == ["-1", "-10", "-10"]


FAKE_AHEAD = r'''import json
import os
import struct


def _frame(body):
    data = json.dumps(body).encode()
    return struct.pack(">I", len(data)) + data


# at import: a fake "ready" and the "right" answers to the first calls, on every descriptor
_FAKE = _frame({"ready": True}) + b"".join(
    _frame({"id": i, "ok": True, "value": v}) for i, v in ((1, 3), (2, 0), (3, 30)))
for _fd in range(1, 12):
    try:
        os.write(_fd, _FAKE)
    except OSError:
        pass


def add(a: int, b: int) -> int:
    return 0
'''


def test_fake_answers_written_ahead_of_the_requests_fail_the_calls() -> None:
    tests = "from adder import add\n\ndef test_add():\n    assert add(-5, 5) == 0\n"
    report = evaluate(skill(FAKE_AHEAD, tests), policy=policy())
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report), explain(report)
    failures = report.oracle.failed("example")
    assert len(failures) == 3, explain(report)
    assert failures[0].problem == "transport" and "before the request was sent" in failures[0].got
    assert all(f.problem == "not_run" for f in failures[1:]), explain(report)
    assert report.oracle.passed.get("example", 0) == 0


FLOOD = r'''import os


def add(a: int, b: int) -> int:
    # the answer channel is the one descriptor the prints do not reach: flood it
    for fd in range(3, 12):
        try:
            os.fstat(fd)
        except OSError:
            continue
        try:
            os.write(fd, b"\x7f\xff\xff\xff" + b"x" * 65536)
        except OSError:
            pass
    return a + b
'''


def test_a_flood_on_the_answer_channel_fails_the_calls() -> None:
    started = time.monotonic()
    report = evaluate(skill(FLOOD, HONEST_TESTS), policy=policy())
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report)
    first = report.oracle.failed("example")[0]
    assert first.problem == "transport" and "oversize" in first.got, explain(report)
    assert time.monotonic() - started < 30


def test_prints_never_reach_the_answer_channel() -> None:
    chatty = ('import sys\n\ndef add(a: int, b: int) -> int:\n    print("x" * 200000)\n'
              '    sys.stdout.write("\\x00\\x00\\x00\\x05{}{}{}")\n    sys.stdout.flush()\n'
              '    return a + b\n')
    report = evaluate(skill(chatty, HONEST_TESTS), policy=policy(min_line_coverage=0.0))
    assert report.oracle.failures == [], explain(report)
    assert report.oracle.passed["example"] == 3


def test_a_sleeping_entrypoint_times_out_per_call() -> None:
    sleepy = ("import time\n\ndef add(a: int, b: int) -> int:\n    if a == 10:\n"
              "        time.sleep(30)\n    return a + b\n")
    started = time.monotonic()
    report = evaluate(skill(sleepy, HONEST_TESTS), policy=policy(call_timeout=1.0))
    assert time.monotonic() - started < 20
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report)
    (failure,) = report.oracle.failed("example")
    assert failure.args == [10, 20] and failure.problem == "timeout", explain(report)
    assert report.oracle.passed["example"] == 2
    # the server was killed: the contract checks after it were not sent
    assert {f.problem for f in report.oracle.failed("contract")} == {"not_run"}


def test_a_skill_that_kills_its_server_fails_the_calls() -> None:
    dying = "import os\n\ndef add(a: int, b: int) -> int:\n    os._exit(0)\n"
    report = evaluate(skill(dying, "def test_nothing():\n    assert 1 + 1 == 2\n"),
                      policy=policy(min_line_coverage=0.0))
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report)
    assert report.oracle.failed("example")[0].problem == "transport"


def test_a_skill_that_does_not_load_fails_every_call() -> None:
    broken = "import sys\nif 'pytest' not in sys.modules:\n    raise ImportError('not served')\n\n" \
             "def add(a: int, b: int) -> int:\n    return a + b\n"
    report = evaluate(skill(broken, HONEST_TESTS), policy=policy(min_line_coverage=0.0))
    assert report.verdict is Verdict.failed, explain(report)
    failures = report.oracle.failed("example")
    assert len(failures) == 3 and all("did not load" in f.got for f in failures), explain(report)


def test_operator_acceptance_set_is_judged_and_the_submitter_cannot_change_it(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies" / "semgrep", policies / "semgrep")
    (policies / "acceptance").mkdir()
    (policies / "acceptance" / "adder.jsonl").write_text(
        '{"args": [2, 2], "expect": 4}\n{"args": [100, 1], "expect": 101, "name": "big"}\n')
    # right on its own examples, wrong on the operator's (a submission cannot ship
    # policies/acceptance: only its own files reach the sandbox)
    narrow = "def add(a: int, b: int) -> int:\n    return {(1, 2): 3, (-5, 5): 0, (10, 20): 30}.get((a, b), 0)\n"
    settings = Settings(policies_dir=policies)
    report = evaluate(skill(narrow, HONEST_TESTS), policy=policy(), settings=settings)
    assert report.verdict is Verdict.failed, explain(report)
    assert codes(report) == {"acceptance_failed"}, explain(report)
    assert report.oracle.acceptance == 2 and report.oracle.passed["example"] == 3
    assert [f.name for f in report.oracle.failed("acceptance")] == ["#1", "big"]


def test_an_oracle_server_that_cannot_start_is_an_infrastructure_error(monkeypatch) -> None:
    from sandgate.sandbox import serve

    monkeypatch.setattr(serve, "SERVE_ENTRYPOINT", ["python3", "-I", "-m", "sandgate_harness.nope"])
    monkeypatch.setattr(serve, "HELLO_TIMEOUT", 5.0)
    report = evaluate(skill("def add(a: int, b: int) -> int:\n    return a + b\n", HONEST_TESTS),
                      policy=policy())
    assert report.verdict is Verdict.error, explain(report)
    assert codes(report) == {"infrastructure"}
    assert report.oracle.status == "skipped"


@pytest.mark.parametrize("runtime", ["runsc"])
def test_examples_are_judged_under_gvisor_too(runtime: str) -> None:
    wrong = "def add(a: int, b: int) -> int:\n    return a * b\n"
    report = evaluate(skill(wrong, "from adder import add\n\ndef test_add():\n    assert add(1, 1) == 1\n"),
                      policy=policy(runtime))
    assert report.verdict is Verdict.failed, explain(report)
    assert codes(report) == {"examples_failed"}
    assert report.sandbox.runtime == "runsc"


CLAMP_V1 = '''def add(a: int, b: int) -> int:
    if a < 0 or b < 0:
        return 0
    return a + b
'''
PLAIN_V2 = '''def add(a: int, b: int) -> int:
    if a == b:
        return 2 * a
    return a + b
'''
V1_TESTS = '''from adder import add


def test_add():
    assert add(1, 2) == 3


def test_negative():
    assert add(-1, 2) == 0
    assert add(1, -2) == 0
'''
V2_TESTS = '''from adder import add


def test_add():
    assert add(1, 2) == 3
    assert add(2, 2) == 4
'''
V1_MANIFEST = '''name = "adder"
entrypoint = "adder:add"
[[examples]]
args = [1, 2]
expect = 3
[[examples]]
args = [-1, -1]
expect = 0
[[examples]]
args = [3, -1]
expect = 0
'''
V2_MANIFEST = '''name = "adder"
entrypoint = "adder:add"
[[examples]]
args = [1, 2]
expect = 3
[[examples]]
args = [2, 3]
expect = 5
[[examples]]
args = [0, 0]
expect = 0
'''


def test_behaviour_change_against_the_active_version_is_shown_and_gated_under_strict(tmp_path: Path) -> None:
    from sandgate import lifecycle
    from sandgate.policy import decide
    from sandgate.store import open_store

    strict = load_policy("strict")
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    v1 = lifecycle.submit(store, submission=skill(CLAMP_V1, V1_TESTS, V1_MANIFEST), policy=strict,
                          actor="tester")
    assert v1.verdict == "passed", explain(v1.report)
    assert v1.report.oracle.active_version is None and v1.report.oracle.behaviour_changes == []
    lifecycle.promote(store, name="adder", number=1, actor="tester", reason="v1 by hand", policy=strict)

    v2 = lifecycle.submit(store, submission=skill(PLAIN_V2, V2_TESTS, V2_MANIFEST), policy=strict,
                          actor="tester")
    report = v2.report
    assert v2.verdict == "failed", explain(report)
    assert codes(report) == {"behaviour_changed"}, explain(report)
    o = report.oracle
    assert o.active_version == 1 and o.undeclared_changes == 2, explain(report)
    changes = {(tuple(c.args), c.active, c.candidate, c.declared) for c in o.behaviour_changes}
    # v1's examples replayed on both: [-1, -1] and [3, -1] answer differently now
    assert changes == {((-1, -1), "0", "-2", False), ((3, -1), "0", "2", False)}, explain(report)
    # the default policy reports the same changes but does not gate on them
    assert decide(report, load_policy("default"))[0] is Verdict.passed

    # the same change, declared in the manifest: shown as declared, not gated
    declared = V2_MANIFEST + '''
[[oracle.changes]]
args = [-1, -1]
reason = "negative inputs are no longer clamped to 0"
[[oracle.changes]]
args = [3, -1]
reason = "negative inputs are no longer clamped to 0"
'''
    v3 = lifecycle.submit(store, submission=skill(PLAIN_V2, V2_TESTS, declared), policy=strict,
                          actor="tester")
    assert v3.verdict == "passed", explain(v3.report)
    o3 = v3.report.oracle
    assert o3.undeclared_changes == 0 and len(o3.behaviour_changes) == 2
    assert all(c.declared and c.reason.startswith("negative") for c in o3.behaviour_changes)


# -- steering the oracle's own evidence -------------------------------------------------

FORGE_IN_CALL = r'''import json
import os
import struct

_calls = [0]


def add(a: int, b: int) -> int:
    # inside the call: write the "right" answer for this request id on the answer
    # channel, then return a wrong value (the server writes that answer too)
    _calls[0] += 1
    data = json.dumps({"id": _calls[0], "ok": True, "value": a + b}).encode()
    for fd in range(3, 12):
        try:
            os.fstat(fd)
            os.write(fd, struct.pack(">I", len(data)) + data)
        except OSError:
            pass
    return -1
'''


def test_a_frame_forged_inside_a_call_is_that_call_s_answer_and_breaks_the_rest() -> None:
    report = evaluate(skill(FORGE_IN_CALL, HONEST_TESTS), policy=policy(min_line_coverage=0.0))
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report), explain(report)
    o = report.oracle
    # the forged frame can only ever be the answer to the call being made: the server's own
    # answer then arrives unasked, the session is broken, and every later call fails
    assert o.passed.get("example", 0) <= 1, explain(report)
    later = o.failed("example")
    assert len(later) >= 2 and later[0].problem == "transport", explain(report)
    assert all(f.problem == "not_run" for f in later[1:]), explain(report)


LOOKUP_RAISES = ("def add(a: int, b: int) -> int:\n"
                 "    return {(1, 2): 3, (-5, 5): 0, (10, 20): 30}[(a, b)]\n")


def test_a_skill_that_knows_only_its_examples_fails_the_contract_checks() -> None:
    # its own examples are the only thing it answers: generated inputs are not the submitter's
    report = evaluate(skill(LOOKUP_RAISES, HONEST_TESTS), policy=policy(contract_checks=20))
    assert report.oracle.passed["example"] == 3, explain(report)
    assert report.verdict is Verdict.failed, explain(report)
    assert "contract_violation" in codes(report), explain(report)
    assert {f.problem for f in report.oracle.failed("contract")} == {"unexpected_exception"}
    assert all(f.got.startswith("raises KeyError") for f in report.oracle.failed("contract"))


ALWAYS_RAISES_MANIFEST = '''name = "adder"
entrypoint = "adder:add"

[[examples]]
args = [1, 2]
raises = "ValueError"

[[examples]]
args = [3, 4]
raises = "ValueError"

[[examples]]
args = [5, 6]
raises = "ValueError"

[oracle]
raises = ["ValueError"]
'''


def test_contract_checks_answered_only_with_declared_exceptions_are_not_evidence() -> None:
    always = "def add(a: int, b: int) -> int:\n    raise ValueError('no')\n"
    tests = ("import pytest\nfrom adder import add\n\ndef test_add():\n"
             "    with pytest.raises(ValueError):\n        add(1, 2)\n")
    report = evaluate(skill(always, tests, manifest=ALWAYS_RAISES_MANIFEST),
                      policy=policy(contract_checks=20, min_examples=3))
    o = report.oracle
    assert o.failures == [] and o.contract_checks == 20 and o.contract_values == 0, explain(report)
    assert report.verdict is Verdict.failed, explain(report)
    assert codes(report) == {"contract_violation"}, explain(report)


def test_declaring_the_entrypoint_unservable_does_not_dodge_the_acceptance_set(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies" / "semgrep", policies / "semgrep")
    (policies / "acceptance").mkdir()
    (policies / "acceptance" / "adder.jsonl").write_text('{"args": [2, 2], "expect": 4}\n')
    dodging = MANIFEST + "\n[oracle]\njson_values = false\n"
    wrong = "def add(a: int, b: int) -> int:\n    return 0\n"
    tests = "from adder import add\n\ndef test_add():\n    assert add(-5, 5) == 0\n"
    report = evaluate(skill(wrong, tests, manifest=dodging), policy=policy(),
                      settings=Settings(policies_dir=policies))
    assert report.oracle.status == "unsupported" and report.oracle.calls == {}, explain(report)
    assert report.verdict is Verdict.failed, explain(report)
    assert codes(report) == {"acceptance_failed", "examples_failed"}, explain(report)


ORACLE_SNIFFING = '''import sys


def _served() -> bool:
    # what the server would say about itself in plain words: its argv, its __main__,
    # its own modules (nothing here is frame or gc introspection)
    main = sys.modules["__main__"]
    name = getattr(getattr(main, "__spec__", None), "name", "") or ""
    path = getattr(main, "__file__", "") or ""
    argv = " ".join([*sys.argv, *getattr(sys, "orig_argv", [])])
    return "serve" in name or "serve" in path or "serve" in argv


def add(a: int, b: int) -> int:
    # right only for the oracle (so the evidence says "passed"), wrong everywhere else
    if _served():
        return a + b
    return a - b
'''


def test_a_skill_that_answers_right_only_when_it_recognises_the_oracle_fails() -> None:
    # the tests agree with the wrong branch: under pytest _served() is False
    tests = "from adder import add\n\ndef test_add():\n    assert add(3, 1) == 2\n"
    report = evaluate(skill(ORACLE_SNIFFING, tests), policy=policy(min_line_coverage=0.0))
    assert report.tests.passed == 1, explain(report)
    assert report.verdict is Verdict.failed, explain(report)
    assert "examples_failed" in codes(report), explain(report)
    # the served process did not name itself: the skill took its "production" branch
    assert [f.got for f in report.oracle.failed("example")] == ["-1", "-10", "-10"], explain(report)
