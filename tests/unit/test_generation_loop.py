"""The generate → evaluate → repair loop: the real client and fake server, a FAKE evaluate.

The sandbox is replaced by a function that judges the generated tests by their
text, so these tests are fast; ``tests/integration/test_generation_e2e.py``
runs the same loop against the real sandbox.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from sandgate.errors import EngineUnavailable
from sandgate.generation import (
    Budget,
    ChatClient,
    GenerationError,
    GenerationSettings,
    generate_skill,
    start_generation,
)
from sandgate.generation.loop import prompt_sha256, sha256_text
from sandgate.policy import load_policy
from sandgate.report import (
    CoverageSummary,
    EvaluationReport,
    FileCoverage,
    Finding,
    Reason,
    ReasonCode,
    TestCase,
    TestSummary,
    Verdict,
)
from tests.fakes.openai_server import (  # noqa: F401
    CLAMP_TESTS_WRONG,
    FAILING_NODEID,
    MALFORMED_REPLY,
    FakeOpenAIServer,
    Reply,
    clamp_files,
    fake_llm,
    skill_reply,
)

POLICY = load_policy("default")
GOOD = skill_reply(clamp_files())
WRONG = skill_reply(clamp_files(tests=CLAMP_TESTS_WRONG))
SECRET = "sk-loop-SECRET-abcdef0123"


class FakeEvaluate:
    """Judges a submission by its test text; records what it was given."""

    def __init__(self, *, verdict_error: bool = False, raises: Exception | None = None) -> None:
        self.calls: list[Any] = []
        self.verdict_error = verdict_error
        self.raises = raises

    def __call__(self, submission: Any, *, policy: Any, evaluation_id: str | None = None
                 ) -> EvaluationReport:
        self.calls.append(submission)
        if self.raises is not None:
            raise self.raises
        base = dict(evaluation_id=evaluation_id or uuid.uuid4().hex, skill=submission.name,
                    content_hash=submission.content_hash, policy=policy.name,
                    policy_hash=policy.hash)
        if self.verdict_error:
            return EvaluationReport(verdict=Verdict.error, reasons=[Reason(
                code=ReasonCode.infrastructure, message="docker went away")], **base)
        tests = submission.files["tests/test_clamp.py"].decode()
        if "== 5" in tests:
            return EvaluationReport(
                verdict=Verdict.failed,
                reasons=[Reason(code=ReasonCode.tests_failed,
                                message=f"1 failed of 4 collected: {FAILING_NODEID}"),
                         Reason(code=ReasonCode.coverage_below_threshold,
                                message="line coverage 75.0% < 80%"),
                         Reason(code=ReasonCode.policy_violation, message="1 blocked finding")],
                tests=TestSummary(collected=4, passed=3, failed=1, cases=[
                    TestCase(nodeid=FAILING_NODEID, outcome="failed",
                             message="x" * 5000 + "\nE       assert 3 == 5"),
                    TestCase(nodeid="tests/test_clamp.py::test_inside", outcome="passed")]),
                coverage=CoverageSummary(line_percent=75.0, statements=8, covered_lines=6,
                                         files=[FileCoverage(path="clamp.py", statements=8,
                                                             missed_lines=[6, 7, 8, 11],
                                                             line_percent=75.0)]),
                findings=[Finding(rule_id="subprocess-usage", severity="high", path="clamp.py",
                                  line=3, message="Process execution via subprocess")],
                **base)
        return EvaluationReport(verdict=Verdict.passed, tests=TestSummary(collected=4, passed=4),
                                coverage=CoverageSummary(line_percent=100.0), **base)


@pytest.fixture
def client(fake_llm: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SANDGATE_LLM_API_KEY", SECRET)
    s = GenerationSettings.load(base_url=fake_llm.url, model="fake-model",
                                backoff_base_seconds=0.01, token_budget=100_000)
    with ChatClient(s) as c:
        yield c


def run(client: ChatClient, evaluate: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
    return generate_skill("clamp", "Clamp a number into a closed range",
                          requirements=["raise ValueError when low > high"], policy=POLICY,
                          client=client, evaluate=evaluate or FakeEvaluate(), **kw)


def test_passes_on_the_first_attempt(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(GOOD))
    events: list[dict[str, Any]] = []
    result = run(client, on_event=events.append)
    assert result.status == "passed" and result.passed and len(result.attempts) == 1
    assert result.submission is not None and result.submission.name == "clamp"
    assert result.submitted is None  # no store, no submit function
    [req] = fake_llm.requests
    system, user = req.messages
    assert system["role"] == "system" and "### FILE: skill.toml" in system["content"]
    assert "at least 80%" in system["content"] and "no conftest.py" in system["content"]
    assert "Write the skill `clamp`" in user["content"]
    assert "- raise ValueError when low > high" in user["content"]
    a = result.attempts[0]
    assert a.prompt_sha256 == prompt_sha256(req.messages)
    assert a.response_sha256 == sha256_text(GOOD)
    assert a.tokens == result.tokens_used > 0
    assert [e["event"] for e in events] == ["attempt", "ask", "evaluating", "attempt_done", "done"]


def test_failing_then_repaired(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(GOOD))
    evaluate = FakeEvaluate()
    result = run(client, evaluate)
    assert result.status == "passed" and len(result.attempts) == 2 and len(evaluate.calls) == 2
    first, second = result.attempts
    assert first.outcome == "failed"
    assert first.reason_codes == ["tests_failed", "coverage_below_threshold", "policy_violation"]
    assert second.outcome == "passed"
    repair = fake_llm.requests[1].messages
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert "assert clamp(5, 0, 3) == 5" in repair[2]["content"]  # the previous submission
    feedback = repair[3]["content"]
    assert FAILING_NODEID in feedback and "E       assert 3 == 5" in feedback
    assert "x" * 1300 not in feedback  # the message was trimmed to its tail
    assert "clamp.py: lines 6-8, 11" in feedback
    assert "subprocess-usage (high) at clamp.py:3" in feedback
    assert "(needed 80%)" in feedback


def test_attempts_exhausted(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(WRONG))
    result = run(client, attempts=2)
    assert result.status == "failed" and result.error_code == "attempts_exhausted"
    assert [a.outcome for a in result.attempts] == ["failed", "failed"]
    assert result.submission is None and result.report.verdict is Verdict.failed
    assert fake_llm.pending == 0 and len(fake_llm.requests) == 2


def test_error_verdict_stops_without_burning_attempts(fake_llm: FakeOpenAIServer,
                                                      client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(GOOD), Reply.chat(GOOD))
    evaluate = FakeEvaluate(verdict_error=True)
    result = run(client, evaluate, attempts=3)
    assert result.status == "error" and result.error_code == "infrastructure"
    assert "docker went away" in result.error
    assert len(result.attempts) == 1 and len(fake_llm.requests) == 1


def test_infrastructure_exception_from_evaluate_is_an_error_verdict(
        fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(GOOD))
    result = run(client, FakeEvaluate(raises=EngineUnavailable("no engine")))
    assert result.status == "error" and result.attempts[0].verdict == "error"
    assert result.attempts[0].reason_codes == ["infrastructure"]


def test_malformed_output_is_reasked_without_counting_an_attempt(
        fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(MALFORMED_REPLY), Reply.chat(GOOD))
    events: list[dict[str, Any]] = []
    result = run(client, attempts=1, on_event=events.append)
    assert result.status == "passed" and len(result.attempts) == 1
    [attempt] = result.attempts
    assert len(attempt.exchanges) == 2 and attempt.exchanges[0].parse_error
    assert attempt.provenance()["reasks"] == 1
    reask = fake_llm.requests[1].messages
    assert reask[-2] == {"role": "assistant", "content": MALFORMED_REPLY}
    assert "could not be parsed" in reask[-1]["content"]
    assert "without a '### FILE: <path>' header" in reask[-1]["content"]
    assert any(e["event"] == "malformed" for e in events)


def test_reask_budget_spent_ends_the_attempt_as_malformed(fake_llm: FakeOpenAIServer,
                                                          client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(MALFORMED_REPLY), Reply.chat("still no files"),
                     Reply.chat(GOOD))
    result = run(client, attempts=2, max_reasks=1)
    assert result.status == "passed"
    assert [a.outcome for a in result.attempts] == ["malformed", "passed"]
    assert result.attempts[0].reason_codes == ["malformed_output"]
    third = fake_llm.requests[2].messages
    assert len(third) == 3 and "could not be parsed, even after 1 re-ask" in third[-1]["content"]


def test_truncated_reply_says_so(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(GOOD[:-30], finish_reason="length"), Reply.chat(GOOD))
    assert run(client, attempts=1).status == "passed"
    assert "cut off at the token limit" in fake_llm.requests[1].messages[-1]["content"]


def test_intake_rejection_is_fed_back(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    broken = skill_reply(clamp_files(**{"clamp.py": "def clamp(:\n"}))
    fake_llm.enqueue(Reply.chat(broken), Reply.chat(GOOD))
    evaluate = FakeEvaluate()
    result = run(client, evaluate)
    assert result.status == "passed" and len(evaluate.calls) == 1  # nothing ran for attempt 1
    assert result.attempts[0].outcome == "rejected"
    assert result.attempts[0].reason_codes == ["syntax_error"]
    feedback = fake_llm.requests[1].messages[-1]["content"]
    assert "was rejected at intake" in feedback and "clamp.py, line 1" in feedback


def test_a_skill_under_another_name_is_rejected(fake_llm: FakeOpenAIServer,
                                                client: ChatClient) -> None:
    other = skill_reply(clamp_files(**{"skill.toml": clamp_files()["skill.toml"].replace(
        'name = "clamp"', 'name = "other"')}))
    fake_llm.enqueue(Reply.chat(other), Reply.chat(GOOD))
    result = run(client)
    assert [a.outcome for a in result.attempts] == ["rejected", "passed"]
    assert "name is 'other', but the skill to write is 'clamp'" in \
        fake_llm.requests[1].messages[-1]["content"]


def test_token_budget_stops_the_loop(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    usage = {"prompt_tokens": 900, "completion_tokens": 200, "total_tokens": 1100}
    fake_llm.enqueue(Reply.chat(WRONG, usage=usage), Reply.chat(GOOD, usage=usage))
    result = run(client, budget=Budget(max_tokens=1000))
    assert result.status == "budget_exceeded" and result.error_code == "budget_exceeded"
    assert "1100 of 1000" in result.error and "before attempt 2" in result.error
    assert len(result.attempts) == 1 and len(fake_llm.requests) == 1
    assert result.tokens_used == 1100


def test_provider_failure_stops_with_an_error(fake_llm: FakeOpenAIServer,
                                              client: ChatClient) -> None:
    fake_llm.enqueue(Reply.chat(WRONG), Reply.error(401, message="key revoked"))
    result = run(client)
    assert result.status == "error" and result.error_code == "llm_rejected"
    assert [a.outcome for a in result.attempts] == ["failed", "llm_error"]
    assert SECRET not in str(result.to_dict())


def test_passing_version_is_submitted_with_provenance(fake_llm: FakeOpenAIServer,
                                                      client: ChatClient, tmp_path: Path) -> None:
    from sandgate.store import open_store, versions

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(GOOD))
        evaluate = FakeEvaluate()
        result = run(client, evaluate, store=store)
        assert result.status == "passed"
        assert len(evaluate.calls) == 2  # the stored evaluation reused the loop's report
        submitted = result.submitted
        assert submitted.verdict == "passed" and submitted.created
        assert submitted.promoted is not None  # default policy: auto-promotion
        version = versions.get_version(store, name="clamp", number=1)
        assert version.active and version.created_by == "generator:fake-model"
        prov = version.provenance
        assert prov["source"] == "sandgate.generation" and prov["model"] == "fake-model"
        assert prov["base_url_host"] == f"127.0.0.1:{fake_llm.port}"
        assert [a["attempt"] for a in prov["attempts"]] == [1, 2]
        assert [a["verdict"] for a in prov["attempts"]] == ["failed", "passed"]
        assert prov["attempts"][0]["reason_codes"][0] == "tests_failed"
        assert prov["attempts"][1]["content_hash"] == version.content_hash
        assert prov["attempts"][1]["response_sha256"] == sha256_text(GOOD)
        assert prov["attempts"][0]["prompt_sha256"] == prompt_sha256(fake_llm.requests[0].messages)
        assert prov["tokens_used"] == sum(a["tokens"] for a in prov["attempts"]) > 0
        assert SECRET not in str(prov)
        assert "127.0.0.1" in str(prov) and "http://" not in str(prov)
    finally:
        store.close()


def test_failing_generation_stores_nothing(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    calls: list[Any] = []
    fake_llm.enqueue(Reply.chat(WRONG))
    result = run(client, attempts=1, submit=lambda *a, **k: calls.append((a, k)))
    assert result.status == "failed" and calls == [] and result.submitted is None


def test_cancel_before_the_next_request(fake_llm: FakeOpenAIServer, client: ChatClient) -> None:
    cancel = threading.Event()
    fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(GOOD))

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "attempt_done":
            cancel.set()

    result = run(client, on_event=on_event, cancel=cancel)
    assert result.status == "cancelled" and len(fake_llm.requests) == 1
    assert [a.outcome for a in result.attempts] == ["failed"]


def test_bad_arguments_are_raised(client: ChatClient) -> None:
    for kw in ({"name": "Bad-Name"}, {"description": "  "}, {"attempts": 0}):
        args = {"name": "clamp", "description": "d", **kw}
        with pytest.raises(GenerationError):
            generate_skill(args.pop("name"), args.pop("description"), policy=POLICY,
                           client=client, evaluate=FakeEvaluate(), **args)


def test_start_generation_runs_in_the_background(fake_llm: FakeOpenAIServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_llm.enqueue(Reply.chat(WRONG), Reply.chat(GOOD))
    settings = GenerationSettings(base_url=fake_llm.url, model="fake-model")
    job = start_generation("clamp", "Clamp a number", policy=POLICY, settings=settings,
                           evaluate=FakeEvaluate())
    result = job.result(timeout=30)
    assert result.status == "passed" and job.status == "passed"
    snap = job.snapshot()
    assert snap["result"]["status"] == "passed" and snap["result"]["passed"]
    kinds = [e["event"] for e in snap["events"]]
    assert kinds.count("attempt") == 2 and kinds[-1] == "done"
    from sandgate.generation import get_job

    assert get_job(job.id) is job
