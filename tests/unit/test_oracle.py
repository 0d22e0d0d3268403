"""The oracle without Docker: the type language, the framing, the transport's judgement of
what a server sends, the judging of answers, and the gates. The real sandbox is in
``tests/security/test_hostile_oracle.py``."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from sandgate.errors import SubmissionError
from sandgate.evaluation import oracle_types as ot
from sandgate.evaluation.oracle import Baseline, OraclePhase
from sandgate.examples import same_value
from sandgate.oracle_report import BehaviourChange, OracleCall, OracleSummary
from sandgate.policy import decide, load_policy, parse_policy
from sandgate.report import EvaluationReport, ReasonCode, Verdict
from sandgate.sandbox.serve import CallOutcome, ServedSkill, _Demux, encode_frame
from sandgate.submission import submission_from_files
from sandgate_harness import serve as server

# -- the type language ----------------------------------------------------------


@pytest.mark.parametrize(("text", "described"), [
    ("int", "int"), ("float", "float"), ("str", "str"), ("bool", "bool"), ("None", "None"),
    ("list[int]", "list[int]"), ("List[str]", "list[str]"), ("dict[str, float]", "dict[str, float]"),
    ("typing.Dict[str, list[int]]", "dict[str, list[int]]"), ("tuple[int, str]", "tuple[int, str]"),
    ("tuple[int, ...]", "tuple[int, ...]"), ("Optional[int]", "int | None"), ("int | None", "int | None"),
    ("Union[int, str, None]", "int | str | None"), ("Literal['a', 1, True, None]", "Literal['a', 1, True, None]"),
    ("'list[int]'", "list[int]"), ("Any", "Any"), ("object", "Any"), ("dict", "dict[str, Any]"),
    ("int | int", "int"),
])
def test_annotations_map_to_the_type_language(text: str, described: str) -> None:
    assert ot.describe(ot.parse_annotation(text)) == described


@pytest.mark.parametrize("text", ["set[int]", "dict[int, str]", "Callable[[int], int]", "MyClass",
                                  "Literal[1.5]", "bytes", "Sequence[int]", "list[int, str]"])
def test_anything_else_is_unsupported(text: str) -> None:
    with pytest.raises(ot.Unsupported):
        ot.parse_annotation(text)


def test_json_schema_maps_to_the_same_language() -> None:
    assert ot.describe(ot.from_schema({"type": "array", "items": {"type": "integer"}})) == "list[int]"
    assert ot.describe(ot.from_schema({"type": ["string", "null"]})) == "str | None"
    assert ot.describe(ot.from_schema({"enum": ["a", "b"]})) == "Literal['a', 'b']"
    assert ot.describe(ot.from_schema({"type": "object", "additionalProperties": {"type": "number"}})) \
        == "dict[str, float]"
    assert ot.describe(ot.from_schema({"type": "array", "prefixItems": [{"type": "integer"},
                                                                        {"type": "string"}]})) == "tuple[int, str]"
    with pytest.raises(ot.Unsupported):
        ot.from_schema({"type": "binary"})


SOURCE = b'''
from typing import Optional

def helper(x): return x

def f(a: int, b: "list[str]", c: Optional[float] = None, *, d: bool = False, e: int) -> dict[str, int]:
    return {}

def untyped(a, b: int) -> int:
    return b

def opaque(a: int) -> "Frobnicator":
    return a

def defaults_only(a: int, b=3) -> int:
    return a
'''


def test_signatures_are_read_from_the_ast_never_run() -> None:
    sig = ot.read_signature(SOURCE + b"\nraise SystemExit('never executed')\n", "f")
    assert sig.unsupported is None
    assert [(p.name, p.kind, ot.describe(p.type), p.has_default) for p in sig.params] == [
        ("a", "positional", "int", False), ("b", "positional", "list[str]", False),
        ("c", "positional", "float | None", True), ("d", "keyword", "bool", True),
        ("e", "keyword", "int", False)]
    assert ot.describe(sig.returns) == "dict[str, int]"
    assert "parameter 'a' has no type hint" in ot.read_signature(SOURCE, "untyped").unsupported
    assert "Frobnicator" in ot.read_signature(SOURCE, "opaque").unsupported
    assert ot.read_signature(SOURCE, "defaults_only").unsupported is None  # b keeps its default
    assert "no top-level 'def nope'" in ot.read_signature(SOURCE, "nope").unsupported
    assert "coroutine" in ot.read_signature(b"async def g(a: int) -> int: ...\n", "g").unsupported


def test_a_manifest_schema_replaces_the_hints() -> None:
    sig = ot.read_signature(b"def g(*a, **k): ...\n", "g",
                            {"params": {"x": {"type": "integer"}}, "returns": {"type": "string"}})
    assert sig.unsupported is None and [p.name for p in sig.params] == ["x"]
    assert ot.read_signature(b"", "g", {"params": {}}).unsupported.endswith("no 'returns' schema")


@pytest.mark.parametrize(("value", "text", "ok"), [
    (1, "int", True), (True, "int", False), (1.5, "int", False), (1, "float", True),
    (True, "float", False), (False, "bool", True), (None, "int | None", True), ([1, 2], "list[int]", True),
    ([1, "x"], "list[int]", False), ({"a": 1}, "dict[str, int]", True), ({"a": "b"}, "dict[str, int]", False),
    ([1, "a"], "tuple[int, str]", True), ([1], "tuple[int, str]", False), ([1, 2, 3], "tuple[int, ...]", True),
    ("a", "Literal['a', 'b']", True), ("c", "Literal['a', 'b']", False), (True, "Literal[1]", False),
    ({"x": [1, None]}, "Any", True), ("x", "None", False),
])
def test_values_are_checked_against_types(value: Any, text: str, ok: bool) -> None:
    assert ot.check(value, ot.parse_annotation(text)) is ok


@pytest.mark.parametrize("text", ["int", "float", "str", "bool", "list[int]", "dict[str, list[str]]",
                                  "tuple[int, str]", "tuple[float, ...]", "Optional[str]",
                                  "Literal['x', 2]", "Any", "list[dict[str, int | None]]"])
def test_generated_values_are_values_of_their_type(text: str) -> None:
    t = ot.parse_annotation(text)
    rng = random.Random(text)
    values = [ot.generate(t, rng) for _ in range(200)]
    assert all(ot.check(v, t) for v in values)
    assert all(len(json.dumps(v)) < 20000 for v in values)


def test_same_value_is_json_equality_with_optional_tolerance() -> None:
    assert same_value(1, 1.0) and not same_value(True, 1) and not same_value(1, True)
    assert same_value([1, {"a": 2.0}], [1, {"a": 2}]) and not same_value({"a": 1}, {"a": 1, "b": 2})
    assert not same_value(0.3, 0.1 + 0.2) and same_value(0.3, 0.1 + 0.2, 1e-9)
    assert not same_value("1", 1) and not same_value(None, 0)


# -- the server's side of the framing ---------------------------------------------


def test_server_answers_values_exceptions_and_unserializable() -> None:
    assert server.answer(lambda a, b: (a + b, [a]), {"id": 1, "args": [1, 2], "kwargs": {}}) == \
        {"id": 1, "ok": True, "value": [3, [1]]}
    answer = server.answer(lambda: {}["k"], {"id": 2})
    assert answer["ok"] is False and answer["raised"] == "KeyError"
    assert server.answer(lambda: {1, 2}, {"id": 3}) == {"id": 3, "ok": False, "unserializable": "set"}
    assert server.answer(lambda: {1: "a"}, {"id": 4})["unserializable"] == "dict key of type int"
    assert server.answer(lambda: float("nan"), {"id": 5})["unserializable"] == "float nan"
    assert server.answer(lambda: exit(3), {"id": 6})["raised"] == "SystemExit"


def test_server_frames_round_trip_and_cap() -> None:
    r, w = os.pipe()
    server.write_frame(w, {"a": [1, "é"]})
    assert json.loads(server.read_frame(r, 100)) == {"a": [1, "é"]}
    os.write(w, struct.pack(">I", 1000))
    with pytest.raises(ValueError):
        server.read_frame(r, 100)
    os.close(w)
    with pytest.raises(EOFError):
        server.read_frame(r, 100)
    os.close(r)


# -- the controller's side: demultiplexing and what a server may send -------------


def mux(data: bytes, stream: int = 1) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(data)) + data


def answer_frame(body: Any) -> bytes:
    return encode_frame(json.dumps(body).encode())


def test_demux_splits_stdout_from_stderr_across_chunk_boundaries() -> None:
    d = _Demux()
    stream = mux(b"out1") + mux(b"err", 2) + mux(b"out2")
    for i in range(len(stream)):
        d.feed(stream[i:i + 1])
    assert bytes(d.stdout) == b"out1out2" and bytes(d.stderr) == b"err"


class FakeApi:
    def __init__(self) -> None:
        self.killed = 0

    def kill(self, _cid: str) -> None:
        self.killed += 1


def served(peer_bytes: bytes = b"") -> tuple[ServedSkill, socket.socket]:
    ours, theirs = socket.socketpair()
    skill = ServedSkill(client=type("C", (), {"api": FakeApi()})(), image="i", limits=None,  # type: ignore[arg-type]
                        payload=b"")
    skill._raw = ours
    skill.container_id = "c"
    if peer_bytes:
        theirs.sendall(peer_bytes)
    return skill, theirs


def reply_after_request(skill: ServedSkill, peer: socket.socket, sent: bytes) -> None:
    """The peer sends ``sent`` once the request has gone out (as a real server would)."""
    original = skill._read_answer

    def send_then_read(deadline: float, expect_id: int | None) -> CallOutcome:
        if sent:
            peer.sendall(sent)
        return original(deadline, expect_id)

    skill._read_answer = send_then_read  # type: ignore[method-assign]


def test_an_answer_to_the_request_is_accepted() -> None:
    skill, peer = served()
    reply_after_request(skill, peer, mux(answer_frame({"id": 1, "ok": True, "value": 3})))
    outcome = skill.call([1, 2], {}, 1.0)
    assert outcome.status == "answer" and outcome.body["value"] == 3 and skill.broken is None
    request = peer.recv(1000)
    assert json.loads(request[4:]) == {"id": 1, "args": [1, 2], "kwargs": {}}


@pytest.mark.parametrize(("sent", "status"), [
    (mux(answer_frame({"id": 7, "ok": True, "value": 3})), "malformed"),  # another request's answer
    (mux(answer_frame([1, 2])), "malformed"),
    (mux(encode_frame(b"{not json")), "malformed"),
    (mux(struct.pack(">I", 50 * 1024 * 1024)), "oversize"),
    (mux(b"\x00\x00"), "timeout"),  # half a header, then silence
    (b"", "timeout"),
])
def test_a_misbehaving_answer_fails_the_call_and_breaks_the_session(sent: bytes, status: str) -> None:
    skill, peer = served()
    reply_after_request(skill, peer, sent)
    outcome = skill.call([1], {}, 0.3)
    assert outcome.status == status
    assert skill.broken is not None and skill.client.api.killed == 1
    assert skill.call([1], {}, 0.3).status == "closed"  # nothing more is sent


def test_bytes_before_the_request_fail_that_call() -> None:
    skill, peer = served(mux(answer_frame({"id": 1, "ok": True, "value": 3})))
    time.sleep(0.05)
    outcome = skill.call([1, 2], {}, 1.0)
    assert outcome.status == "early" and "before the request" in outcome.detail
    assert skill.call([1, 2], {}, 1.0).status == "closed"


def test_a_closed_stream_fails_the_call() -> None:
    skill, peer = served()
    peer.close()
    assert skill.call([1], {}, 1.0).status in ("closed", "transport")


def test_prints_on_stderr_never_become_answers() -> None:
    skill, peer = served()
    reply_after_request(skill, peer, mux(answer_frame({"id": 1, "ok": True, "value": 99}), 2)
                        + mux(answer_frame({"id": 1, "ok": True, "value": 3})))
    assert skill.call([], {}, 1.0).body["value"] == 3
    assert b'"value": 99' in bytes(skill._demux.stderr)


# -- judging ----------------------------------------------------------------------


class FakeServed:
    """A served skill in-process: ``fn`` answers like sandgate_harness.serve would."""

    def __init__(self, fn: Any, *, hang_on: Any = None, ready: Any = None) -> None:
        self.fn, self.hang_on = fn, hang_on
        self.ready = ready if ready is not None else {"ready": True}
        self.calls: list[Any] = []
        self.broken: str | None = None
        self.timings: dict[str, float] = {}

    def call(self, args: list[Any], kwargs: dict[str, Any], timeout: float) -> CallOutcome:
        if self.broken:
            return CallOutcome("closed", detail=f"not sent: {self.broken}")
        self.calls.append(args)
        if self.hang_on is not None and args == self.hang_on:
            self.broken = "timeout"
            return CallOutcome("timeout", detail="no answer in time", seconds=timeout)
        return CallOutcome("answer", body=server.answer(self.fn, {"id": 1, "args": args, "kwargs": kwargs}))

    def _break(self, why: str) -> None:
        self.broken = why

    def start(self) -> None:
        pass

    def wait_ready(self, _timeout: float) -> Any:
        return self.ready

    def close(self) -> None:
        pass


MANIFEST = b'''name = "adder"
entrypoint = "adder:add"
[[examples]]
args = [1, 2]
expect = 3
[[examples]]
args = ["a", 1]
raises = "TypeError"
[oracle]
raises = ["OverflowError"]
'''


def submission(manifest: bytes = MANIFEST, module: bytes = b"def add(a: int, b: int) -> int:\n    return a + b\n"):
    return submission_from_files({"skill.toml": manifest, "adder.py": module,
                                  "tests/test_a.py": b"def test_a():\n    assert True\n"})


def phase(fn: Any, *, sub: Any = None, active: Any = None, baseline: Baseline | None = None,
          policy: Any = None, tmp_path: Path, hang_on: Any = None) -> tuple[OracleSummary, FakeServed]:
    p = OraclePhase(sub or submission(), policy=policy or load_policy("default"), client=None,
                    image="i", limits=None, evaluation_id="e", policies_dir=tmp_path, baseline=baseline)
    fake = FakeServed(fn, hang_on=hang_on)
    p.candidate = fake  # type: ignore[assignment]
    if active is not None:
        p.active = FakeServed(active)  # type: ignore[assignment]
    return p.run(), fake


def test_a_correct_skill_passes_examples_and_contract(tmp_path: Path) -> None:
    summary, fake = phase(lambda a, b: a + b, tmp_path=tmp_path)
    assert summary.status == "ran" and summary.failures == [] and summary.nondeterministic == []
    assert summary.calls == {"example": 2, "contract": 40} and summary.passed == summary.calls
    assert summary.examples == 2 and summary.contract_checks == 20
    assert fake.calls[:2] == [[1, 2], ["a", 1]]  # examples first


def test_wrong_values_types_and_exceptions_are_failures(tmp_path: Path) -> None:
    summary, _ = phase(lambda a, b: str(a * b) if isinstance(a, int) else 0, tmp_path=tmp_path)
    examples = summary.failed("example")
    assert [(f.expected, f.got, f.problem) for f in examples] == [
        ("3", '"2"', "wrong_value"), ("raises TypeError", "0", "wrong_value")]
    contract = summary.failed("contract")
    assert contract and {f.problem for f in contract} == {"wrong_type"}
    assert contract[0].expected == "a value of int or raises OverflowError"


def test_undeclared_exceptions_break_the_contract_declared_ones_do_not(tmp_path: Path) -> None:
    def fn(a, b):
        if a < 0:
            raise OverflowError("declared")
        raise KeyError("not declared")

    summary, _ = phase(fn, tmp_path=tmp_path)
    problems = {f.problem for f in summary.failed("contract")}
    assert problems == {"unexpected_exception"}
    assert all(f.got.startswith("raises KeyError") for f in summary.failed("contract"))
    assert summary.passed.get("contract", 0) > 0  # the negative a's raised the declared one


def test_two_answers_to_one_input_are_nondeterministic(tmp_path: Path) -> None:
    counter = iter(range(10**6))
    summary, _ = phase(lambda a, b: a + b + (next(counter) % 2), tmp_path=tmp_path)
    assert summary.nondeterministic and summary.nondeterministic[0].problem == "nondeterministic"
    assert summary.nondeterministic[0].expected == "the same answer twice"


def test_a_timeout_fails_the_call_and_the_rest_are_not_run(tmp_path: Path) -> None:
    summary, fake = phase(lambda a, b: a + b, tmp_path=tmp_path, hang_on=[1, 2])
    first, second = summary.failed("example")
    assert first.problem == "timeout" and second.problem == "not_run"
    assert len(fake.calls) == 1
    assert {f.problem for f in summary.failed("contract")} == {"not_run"}


def test_a_skill_that_did_not_load_fails_every_call(tmp_path: Path) -> None:
    p = OraclePhase(submission(), policy=load_policy("default"), client=None, image="i", limits=None,
                    evaluation_id="e", policies_dir=tmp_path)
    p.candidate = FakeServed(lambda: 0, ready={"ready": False, "error": "ImportError: boom"})  # type: ignore[assignment]
    summary = p.run()
    assert all(f.problem == "not_run" and "did not load: ImportError: boom" in f.got for f in summary.failures)
    assert len(summary.failures) == 22


def test_unsupported_types_run_no_contract_checks(tmp_path: Path) -> None:
    sub = submission(module=b"def add(a, b):\n    return a + b\n")
    summary, _ = phase(lambda a, b: a + b, sub=sub, tmp_path=tmp_path)
    assert summary.status == "ran" and summary.contract_checks == 0
    assert "has no type hint" in summary.contract_unsupported
    manifest = b'name = "adder"\nentrypoint = "adder:add"\n[oracle]\njson_values = false\n'
    summary, fake = phase(lambda a, b: a + b, sub=submission(manifest), tmp_path=tmp_path)
    assert summary.status == "unsupported" and fake.calls == []


def test_replay_lists_changes_and_marks_declared_ones(tmp_path: Path) -> None:
    active_files = dict(submission().files)
    baseline = Baseline(active_version=1, active_files=active_files,
                        history_inputs=(([5, 5], {}), ([7, 1], {}), ([0, 0], {})))
    manifest = MANIFEST + b'[[oracle.changes]]\nargs = [7, 1]\nreason = "on purpose"\n'
    summary, fake = phase(lambda a, b: a * b if isinstance(a, int) and a > 4 else a + b,
                          sub=submission(manifest), active=lambda a, b: a + b,
                          baseline=baseline, tmp_path=tmp_path)
    changes = {tuple(c.args): (c.active, c.candidate, c.declared, c.reason) for c in summary.behaviour_changes}
    assert changes == {(5, 5): ("10", "25", False, None), (7, 1): ("8", "7", True, "on purpose")}
    assert summary.undeclared_changes == 1 and summary.active_version == 1
    assert summary.calls["replay"] == 3  # the earlier inputs are sent to the candidate too


def test_acceptance_sets_come_from_the_operator(tmp_path: Path) -> None:
    (tmp_path / "acceptance").mkdir()
    (tmp_path / "acceptance" / "adder.jsonl").write_text('{"args": [2, 2], "expect": 4}\n')
    summary, _ = phase(lambda a, b: 5, tmp_path=tmp_path)
    assert summary.acceptance == 1 and summary.failed("acceptance")[0].got == "5"
    (tmp_path / "acceptance" / "adder.jsonl").write_text('{"args": 2}\n')
    from sandgate.errors import InfrastructureError
    with pytest.raises(InfrastructureError, match="invalid acceptance set"):
        phase(lambda a, b: 5, tmp_path=tmp_path)


# -- intake -------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (b'[[examples]]\nargs = [1]\n', "exactly one of 'expect'"),
    (b'[[examples]]\nargs = [1]\nexpect = 1\nraises = "ValueError"\n', "exactly one of 'expect'"),
    (b'[[examples]]\nargs = 1\nexpect = 1\n', "args: Input should be a valid list"),
    (b'[[examples]]\nexpect = 1979-05-27\n', "not a JSON value"),
    (b'[[examples]]\nexpect = inf\n', "JSON numbers are finite"),
    (b'[[examples]]\nexpect = 1\ncolour = 2\n', "unknown key 'colour'"),
    (b'[[examples]]\nraises = "not a name"\n', "not an exception type name"),
    (b'[[examples]]\nkwargs = {"1a" = 2}\nexpect = 1\n', "not a parameter name"),
    (b'[oracle]\nraises = ["no such"]\n', "not an exception type name"),
    (b'[oracle]\ncolour = 1\n', "unknown key 'oracle.colour'"),
])
def test_invalid_examples_are_refused_at_intake(extra: bytes, message: str) -> None:
    with pytest.raises(SubmissionError, match=message.replace("(", r"\(")):
        submission(b'name = "adder"\nentrypoint = "adder:add"\n' + extra)


def test_examples_jsonl_is_read_and_validated() -> None:
    files = dict(submission().files)
    files["examples.jsonl"] = b'{"args": [1, 1], "expect": null}\n\n{"args": [2, 2], "expect": 4}\n'
    sub = submission_from_files(files)
    assert [(e.args, e.expect) for e in sub.examples()] == [([1, 2], 3), (["a", 1], None), ([1, 1], None),
                                                           ([2, 2], 4)]
    files["examples.jsonl"] = b'{"args": [1, 1], "expect": NaN}\n'
    with pytest.raises(SubmissionError, match=r"examples.jsonl, line 1: not valid JSON"):
        submission_from_files(files)
    files["examples.jsonl"] = b'[1]\n'
    with pytest.raises(SubmissionError, match="line 1: not a JSON object"):
        submission_from_files(files)


# -- gates --------------------------------------------------------------------------


def call(source: str, name: str = "#1") -> OracleCall:
    return OracleCall(source=source, name=name, expected="3", got="4", problem="wrong_value")


def oracle_report(**oracle: Any) -> EvaluationReport:
    from sandgate.report import CoverageSummary, SandboxInfo, TestCase, TestSummary

    tests = TestSummary(collected=1, passed=1, cases=[TestCase(nodeid="t::a", outcome="passed")])
    summary = OracleSummary(**{"status": "ran", "examples": 3, "contract_checks": 20,
                               "calls": {"example": 3, "contract": 40}, **oracle})
    return EvaluationReport(evaluation_id="e", verdict=Verdict.passed, tests=tests,
                            coverage=CoverageSummary(line_percent=100.0, branch_percent=100.0),
                            sandbox=SandboxInfo(runtime="runc", image="i"), oracle=summary)


def strictish():
    data = load_policy("strict").model_dump(mode="json", exclude={"name"})
    return parse_policy(data, name="strictish")


def test_default_gates_only_on_declared_examples_and_acceptance() -> None:
    default = load_policy("default")
    change = BehaviourChange(args=[1], active="1", candidate="2")
    report = oracle_report(failures=[call("contract")], nondeterministic=[call("contract")],
                           behaviour_changes=[change], undeclared_changes=1, examples=0)
    assert decide(report, default) == (Verdict.passed, [])
    verdict, reasons = decide(oracle_report(failures=[call("example"), call("acceptance", "big")]), default)
    assert verdict is Verdict.failed
    assert [r.code for r in reasons] == [ReasonCode.acceptance_failed, ReasonCode.examples_failed]
    assert "big: expected 3, got 4" in reasons[0].message


def test_strict_uses_every_oracle_gate() -> None:
    strict = strictish()
    assert decide(oracle_report(), strict) == (Verdict.passed, [])
    change = BehaviourChange(args=[1], active="1", candidate="2")
    declared = BehaviourChange(args=[2], active="1", candidate="2", declared=True, reason="r")
    _, reasons = decide(oracle_report(examples=1, failures=[call("contract")], nondeterministic=[call("contract")],
                                      behaviour_changes=[change, declared], undeclared_changes=1,
                                      active_version=4), strict)
    assert [r.code for r in reasons] == [ReasonCode.too_few_examples, ReasonCode.contract_violation,
                                         ReasonCode.nondeterministic, ReasonCode.behaviour_changed]
    assert "version 4" in reasons[-1].message and "[1]: 1 -> 2" in reasons[-1].message
    _, reasons = decide(oracle_report(contract_checks=0, contract_unsupported="parameter 'a' has no type hint"),
                        strict)
    assert [r.code for r in reasons] == [ReasonCode.contract_violation]
    assert "unsupported" in reasons[0].message


@pytest.mark.parametrize("oracle", [None, "skipped", "unsupported"])
def test_strict_without_oracle_evidence_fails(oracle: str | None) -> None:
    report = oracle_report(status=oracle, examples=0, contract_checks=0) if oracle else \
        oracle_report().model_copy(update={"oracle": None})
    verdict, reasons = decide(report, strictish())
    assert verdict is Verdict.failed
    assert {r.code for r in reasons} == {ReasonCode.too_few_examples, ReasonCode.contract_violation}


@pytest.mark.parametrize("status", ["unsupported", "skipped"])
def test_an_unservable_entrypoint_cannot_dodge_its_examples_or_the_acceptance_set(status: str) -> None:
    # [oracle] json_values = false makes the phase "unsupported": nothing is sent, so nothing
    # can fail - unless the gate counts examples that were never answered as failed
    report = oracle_report(status=status, note="the manifest says ...", calls={}, contract_checks=0,
                           examples=2, acceptance=5)
    verdict, reasons = decide(report, load_policy("default"))
    assert verdict is Verdict.failed
    assert [r.code for r in reasons] == [ReasonCode.acceptance_failed, ReasonCode.examples_failed]
    assert "5 operator acceptance examples never answered" in reasons[0].message
    assert status in reasons[0].message
    # with nothing declared and no acceptance set, an unsupported entrypoint decides nothing by default
    quiet = oracle_report(status=status, calls={}, contract_checks=0, examples=0, acceptance=0)
    assert decide(quiet, load_policy("default")) == (Verdict.passed, [])


def test_contract_checks_that_only_raise_declared_exceptions_are_not_evidence() -> None:
    # [oracle] raises = ["ValueError"] and an entrypoint raising it for every input keeps
    # every check "held" while checking no returned value at all
    strict = strictish()
    vacuous = oracle_report(contract_values=0)
    verdict, reasons = decide(vacuous, strict)
    assert verdict is Verdict.failed and [r.code for r in reasons] == [ReasonCode.contract_violation]
    assert "raised a declared exception" in reasons[0].message
    assert decide(oracle_report(contract_values=1), strict) == (Verdict.passed, [])
    # reported, not gated, by default
    assert decide(vacuous, load_policy("default")) == (Verdict.passed, [])


def test_oracle_reasons_are_recomputed_not_carried() -> None:
    from sandgate.report import Reason

    report = oracle_report().model_copy(update={"reasons": [Reason(code=ReasonCode.examples_failed, message="old")]})
    assert decide(report, load_policy("default")) == (Verdict.passed, [])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("min_examples", -1, "greater than or equal to 0"),
    ("contract_checks", "3", "valid integer"),
    ("max_behaviour_changes", 1.5, "valid integer"),
    ("examples_must_pass", 1, "valid boolean"),
])
def test_oracle_gates_are_validated(key: str, value: Any, message: str) -> None:
    from sandgate.errors import PolicyError

    with pytest.raises(PolicyError, match=message):
        parse_policy({"gates": {key: value}}, name="p")
    with pytest.raises(PolicyError, match="oracle.call_timeout_seconds"):
        parse_policy({"oracle": {"call_timeout_seconds": 0}}, name="p")


# -- the human report ---------------------------------------------------------------


def test_failing_calls_print_as_a_table_literally() -> None:
    from rich.console import Console

    from sandgate.cli.evaluate import render_report

    o = OracleSummary(status="ran", calls={"example": 3}, passed={"example": 2},
                      failures=[OracleCall(source="example", name="[bold red]x[/]", args=["[/]", 1],
                                           kwargs={"k": "[red]"}, expected="[/]", got="raises [b]E[/b]",
                                           problem="wrong_value")],
                      behaviour_changes=[BehaviourChange(args=[1], active="1", candidate="[/]2")],
                      undeclared_changes=1, active_version=2)
    console = Console(width=160, record=True, force_terminal=False)
    render_report(EvaluationReport(evaluation_id="e", verdict=Verdict.failed, oracle=o), console)
    text = console.export_text()
    assert "oracle: ran — 2/3 example answered right" in text
    for literal in ("[bold red]x[/]", '"[/]", 1, k="[red]"', "raises [b]E[/b]", "[/]2", "active (v2)"):
        assert literal in text, text



def test_control_characters_in_served_answers_are_escaped_in_the_human_report() -> None:
    # a served skill chooses its exception messages and its example names: a terminal escape
    # or a bidi override must reach the reader as text, never as a control sequence
    from rich.console import Console

    from sandgate.cli.evaluate import render_report

    o = OracleSummary(status="ran", calls={"example": 1}, note="active says \x1b[2J",
                      failures=[OracleCall(source="example", name="n\u202eam", args=["a\x1b[31mb"],
                                           expected="1", got="raises E: \x1b]0;pwned\x07",
                                           problem="wrong_exception")])
    console = Console(width=200, record=True, force_terminal=False)
    render_report(EvaluationReport(evaluation_id="e", verdict=Verdict.failed, oracle=o), console)
    text = console.export_text()
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    for shown in ("n\\u202eam", "\\x1b]0;pwned\\x07", "active says \\x1b[2J"):
        assert shown in text, text


# -- the generation loop --------------------------------------------------------------


def test_the_model_is_asked_for_examples_and_told_the_oracle_failures() -> None:
    from sandgate.generation.prompt import repair_prompt, system_prompt

    strict = strictish()
    system = system_prompt(strict)
    assert "[[examples]]" in system and "at least 3 `[[examples]]`" in system
    assert "20 generated inputs keep the contract" in system
    o = OracleSummary(status="ran", calls={"example": 2}, examples=2, active_version=3,
                      failures=[OracleCall(source="example", name="#2", args=[2, 2], expected="4", got="5",
                                           problem="wrong_value")],
                      contract_unsupported="parameter 'a' has no type hint",
                      behaviour_changes=[BehaviourChange(args=[1], active="1", candidate="2")],
                      undeclared_changes=1)
    report = oracle_report().model_copy(update={"oracle": o, "verdict": Verdict.failed})
    text = repair_prompt(report, strict, attempt=1)
    assert "- example #2: f(2, 2) expected 4, got 5" in text
    assert "Contract checks could not run: parameter 'a' has no type hint" in text
    assert "active version 3" in text and "f(1): was 1, now 2" in text
