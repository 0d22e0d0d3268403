"""generate → parse → intake → evaluate → repair, until ``passed`` or the attempts run out.

::

    generate_skill(name, description, requirements=..., attempts=3, policy=..., client=...)
        for each attempt (at most ``attempts``):
            ask the model  (first prompt, or a repair prompt built from the last result)
            parse          (malformed: re-ask with the problems, at most ``max_reasks`` times
                            per attempt; those re-asks do NOT count as attempts)
            intake         (submission_from_files; a refusal is the attempt's result: rejected)
            evaluate       (the real sandbox by default)
            passed → submit through lifecycle.submit (the policy decides promotion), stop
            error  → stop: the infrastructure broke, not the model; no attempt is burnt
            failed / rejected → the next attempt gets the concrete reasons

Judgement calls
    * Malformed output has its own small budget (``max_reasks``, default 2, per
      attempt): a format slip is cheap to fix and says nothing about the code.
      When it is spent the attempt ends with outcome ``malformed`` and counts.
    * The repair prompt shows only the *last* submission and its feedback (not
      the whole history), so the context stays bounded.
    * ``skill.toml`` must name the requested skill; another name is a
      ``rejected`` attempt (the version would otherwise land under another name).
    * Only the passing version is stored; the attempts before it live in its
      ``provenance``. Its evaluation is not run twice: ``lifecycle.submit`` gets
      an evaluate function that returns the loop's report for that same content
      under that same policy (any other content is evaluated normally).
    * A provider failure after all retries (:class:`LLMError`), an exhausted
      budget and cancellation stop the loop and are returned in the result
      (``status`` ``error`` / ``budget_exceeded`` / ``cancelled``) together
      with the attempts so far; they are not raised. Bad arguments are.

Provenance (per attempt): number, model (asked and answered), base URL host,
sha256 of the prompt (canonical JSON of the messages sent) and of the reply
text, for every exchange (re-asks included) and for the one evaluated, tokens,
outcome, verdict, reason codes, content hash, evaluation id.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sandgate import lifecycle
from sandgate import report as reports
from sandgate.errors import InfrastructureError, SandgateError, SubmissionError
from sandgate.evaluation import evaluate as sandbox_evaluate
from sandgate.evaluation import rejected_report
from sandgate.generation.client import Budget, Completion
from sandgate.generation.errors import BudgetExceeded, GenerationError, LLMError, MalformedOutput
from sandgate.generation.parse import ParsedOutput, parse_output
from sandgate.generation.prompt import first_messages, reask_prompt, repair_messages, repair_prompt
from sandgate.names import SKILL_NAME_PATTERN, is_skill_name
from sandgate.submission import submission_from_files

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.policy import Policy
    from sandgate.report import EvaluationReport
    from sandgate.submission import Submission

__all__ = [
    "generate_skill",
    "GenerationResult",
    "Attempt",
    "Exchange",
    "Status",
    "lifecycle_submitter",
    "PROVENANCE_SCHEMA",
]

PROVENANCE_SCHEMA = 1

Status = Literal["passed", "failed", "error", "budget_exceeded", "cancelled"]
Outcome = Literal["passed", "failed", "rejected", "error", "malformed", "budget_exceeded",
                  "llm_error", "cancelled"]
EventFn = Callable[[dict[str, Any]], None]


class ChatLike(Protocol):
    """What the loop needs of :class:`~sandgate.generation.client.ChatClient`."""

    @property
    def model(self) -> str: ...

    @property
    def host(self) -> str: ...

    def complete(self, messages: Sequence[Mapping[str, str]], *,
                 budget: Budget | None = None) -> Completion: ...


class SubmitFn(Protocol):
    def __call__(self, submission: Submission, *, provenance: dict[str, Any],
                 report: EvaluationReport) -> Any: ...


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_sha256(messages: Sequence[Mapping[str, str]]) -> str:
    """sha256 of the canonical JSON of the messages sent (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps([dict(m) for m in messages], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return sha256_text(canonical)


@dataclass
class Exchange:
    """One chat completion (the first ask or a re-ask)."""

    prompt_sha256: str
    response_sha256: str
    tokens: int
    tokens_estimated: bool
    finish_reason: str | None
    response_model: str | None
    requests: int
    elapsed_seconds: float
    #: why the reply could not be parsed (None: it parsed)
    parse_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Attempt:
    number: int
    model: str
    base_url_host: str
    exchanges: list[Exchange] = field(default_factory=list)
    outcome: Outcome | None = None
    #: the evaluation verdict (None when nothing was evaluated: malformed, LLM failure, ...)
    verdict: str | None = None
    reason_codes: list[str] = field(default_factory=list)
    content_hash: str | None = None
    evaluation_id: str | None = None
    duration_seconds: float = 0.0
    #: the parsed files (not in the provenance: the stored version has the passing ones)
    files: dict[str, str] | None = field(default=None, repr=False)
    report: EvaluationReport | None = field(default=None, repr=False)
    #: the message shown to the model for the next attempt
    feedback: str | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.exchanges)

    @property
    def prompt_sha256(self) -> str | None:
        return self.exchanges[-1].prompt_sha256 if self.exchanges else None

    @property
    def response_sha256(self) -> str | None:
        return self.exchanges[-1].response_sha256 if self.exchanges else None

    def provenance(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "model": self.model,
            "response_model": next((e.response_model for e in reversed(self.exchanges)
                                    if e.response_model), None),
            "base_url_host": self.base_url_host,
            "prompt_sha256": self.prompt_sha256,
            "response_sha256": self.response_sha256,
            "tokens": self.tokens,
            "tokens_estimated": any(e.tokens_estimated for e in self.exchanges),
            "outcome": self.outcome,
            "verdict": self.verdict,
            "reason_codes": list(self.reason_codes),
            "content_hash": self.content_hash,
            "evaluation_id": self.evaluation_id,
            "reasks": max(0, len(self.exchanges) - 1),
            "exchanges": [e.to_dict() for e in self.exchanges],
            "duration_seconds": self.duration_seconds,
            "error": self.error,
        }


@dataclass
class GenerationResult:
    name: str
    status: Status
    model: str
    base_url_host: str
    policy: str
    policy_hash: str
    attempts: list[Attempt] = field(default_factory=list)
    #: the last evaluation report (the passing one when ``status == "passed"``)
    report: EvaluationReport | None = field(default=None, repr=False)
    #: the passing submission
    submission: Submission | None = field(default=None, repr=False)
    #: the last parsed files
    files: dict[str, str] | None = field(default=None, repr=False)
    #: what the submit function returned (``lifecycle.SubmitResult``), None if not submitted
    submitted: Any = field(default=None, repr=False)
    error: str | None = None
    error_code: str | None = None
    tokens_used: int = 0
    cost: float | None = None
    started_at: str = ""
    finished_at: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "sandgate.generation",
            "schema": PROVENANCE_SCHEMA,
            "skill": self.name,
            "model": self.model,
            "base_url_host": self.base_url_host,
            "policy": self.policy,
            "policy_hash": self.policy_hash,
            "status": self.status,
            "tokens_used": self.tokens_used,
            "cost": self.cost,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": [a.provenance() for a in self.attempts],
        }

    def to_dict(self) -> dict[str, Any]:
        submitted = self.submitted
        if submitted is not None and hasattr(submitted, "to_dict"):
            submitted = submitted.to_dict()
        return {
            **self.provenance(),
            "passed": self.passed,
            "error": self.error,
            "error_code": self.error_code,
            "content_hash": self.submission.content_hash if self.submission else None,
            "files": sorted(self.files) if self.files else [],
            "report": self.report.model_dump(mode="json") if self.report is not None else None,
            "submitted": submitted,
        }


def lifecycle_submitter(store: Any, *, policy: Policy, actor: str,
                        evaluate: Callable[..., EvaluationReport] | None = None) -> SubmitFn:
    """A :class:`SubmitFn` storing through ``lifecycle.submit`` (policy decides promotion).

    The loop's report of the very same content under the very same policy is
    reused as the stored evaluation instead of running the sandbox again.
    """

    def submit(submission: Submission, *, provenance: dict[str, Any],
               report: EvaluationReport) -> Any:
        def reuse(sub: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
            if sub.content_hash == submission.content_hash and policy.hash == report.policy_hash \
                    and report.content_hash == submission.content_hash:
                return report.model_copy(update={"evaluation_id": evaluation_id
                                                 or report.evaluation_id})
            if evaluate is None:
                return lifecycle.default_evaluate(sub, policy=policy, evaluation_id=evaluation_id)
            return evaluate(sub, policy=policy)

        return lifecycle.submit(store, submission=submission, policy=policy, actor=actor,
                                evaluate=reuse, provenance=provenance)

    return submit


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Cancelled(Exception):
    pass


def generate_skill(
    name: str,
    description: str,
    *,
    requirements: Sequence[str] = (),
    attempts: int = 3,
    policy: Policy,
    client: ChatLike,
    evaluate: Callable[..., EvaluationReport] | None = None,
    submit: SubmitFn | None = None,
    store: Any = None,
    actor: str | None = None,
    max_reasks: int = 2,
    budget: Budget | None = None,
    on_event: EventFn | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Generate ``name`` with the model behind ``client`` until a version passes ``policy``.

    ``evaluate`` defaults to :func:`sandgate.evaluation.evaluate` (the sandbox).
    ``submit`` stores the passing version; ``store`` is a shortcut for
    ``submit=lifecycle_submitter(store, policy=policy, actor=actor)``.
    ``budget`` defaults to the client's settings (token/cost budget), if any.
    ``requirements`` are functional requirements (sentences the skill must
    satisfy), not packages: the sandbox is stdlib-only.
    """
    if not is_skill_name(name):
        raise GenerationError(f"{name!r} is not a skill name ({SKILL_NAME_PATTERN})",
                              code="invalid_request")
    if not description or not description.strip():
        raise GenerationError("a description is required", code="invalid_request")
    if attempts < 1:
        raise GenerationError("attempts must be at least 1", code="invalid_request")
    if max_reasks < 0:
        raise GenerationError("max_reasks must be at least 0", code="invalid_request")
    requirements = [r for r in requirements if r and r.strip()]
    if evaluate is None:
        evaluate = sandbox_evaluate
    actor = actor or f"generator:{client.model}"[:200]
    if submit is None and store is not None:
        submit = lifecycle_submitter(store, policy=policy, actor=actor, evaluate=evaluate)
    if budget is None:
        settings = getattr(client, "settings", None)
        budget = Budget.from_settings(settings) if settings is not None else Budget()
    emit: EventFn = on_event or (lambda _event: None)

    result = GenerationResult(name=name, status="failed", model=client.model,
                              base_url_host=client.host, policy=policy.name,
                              policy_hash=policy.hash, started_at=_now())

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise _Cancelled()

    previous_files: dict[str, str] | None = None
    feedback: str | None = None
    try:
        for number in range(1, attempts + 1):
            attempt = Attempt(number=number, model=client.model, base_url_host=client.host)
            result.attempts.append(attempt)
            started = time.monotonic()
            emit({"event": "attempt", "attempt": number, "of": attempts})
            try:
                _run_attempt(attempt, result, name=name, description=description,
                             requirements=requirements, policy=policy, client=client,
                             evaluate=evaluate, budget=budget, max_reasks=max_reasks,
                             previous_files=previous_files, feedback=feedback, emit=emit,
                             check_cancel=check_cancel)
            finally:
                attempt.duration_seconds = round(time.monotonic() - started, 3)
                result.tokens_used, result.cost = budget.tokens_used, budget.cost
            emit({"event": "attempt_done", "attempt": number, "of": attempts,
                  "outcome": attempt.outcome, "verdict": attempt.verdict,
                  "reason_codes": attempt.reason_codes, "tokens": attempt.tokens,
                  "seconds": attempt.duration_seconds, "error": attempt.error})
            if attempt.outcome == "passed":
                result.status = "passed"
                break
            if attempt.outcome == "error":
                result.status = "error"
                result.error_code = "infrastructure"
                result.error = ("the evaluation failed for reasons outside the skill "
                                f"(verdict error): {attempt.error}")
                break
            previous_files = attempt.files if attempt.files else previous_files
            feedback = attempt.feedback
        else:
            result.status = "failed"
            result.error = f"no attempt passed the gate ({attempts} attempt(s))"
            result.error_code = "attempts_exhausted"
    except _Cancelled:
        result.status = "cancelled"
        result.error, result.error_code = "generation cancelled", "cancelled"
        result.attempts[-1].outcome = result.attempts[-1].outcome or "cancelled"
    except BudgetExceeded as exc:
        result.status = "budget_exceeded"
        result.error, result.error_code = str(exc), exc.code
        result.attempts[-1].outcome = result.attempts[-1].outcome or "budget_exceeded"
        result.attempts[-1].error = str(exc)
    except LLMError as exc:
        result.status = "error"
        result.error, result.error_code = str(exc), exc.code
        result.attempts[-1].outcome = result.attempts[-1].outcome or "llm_error"
        result.attempts[-1].error = str(exc)
    result.tokens_used, result.cost = budget.tokens_used, budget.cost
    # an attempt interrupted before it produced anything is dropped from the record
    if result.attempts and not result.attempts[-1].exchanges and result.status != "passed":
        last = result.attempts[-1]
        if last.outcome in ("cancelled", "budget_exceeded"):
            result.attempts.pop()
            if result.error and last.outcome == "budget_exceeded":
                result.error += f" (before attempt {last.number})"

    if result.status == "passed" and submit is not None:
        assert result.submission is not None and result.report is not None
        result.finished_at = _now()
        try:
            result.submitted = submit(result.submission, provenance=result.provenance(),
                                      report=result.report)
        except SandgateError as exc:
            result.status = "error"
            result.error_code = getattr(exc, "code", "store")
            result.error = f"the passing version could not be stored: {exc}"
        else:
            emit({"event": "submitted", "result": _submitted_summary(result.submitted)})
    result.finished_at = _now()
    emit({"event": "done", "status": result.status, "tokens_used": result.tokens_used,
          "error": result.error})
    return result


def _submitted_summary(submitted: Any) -> Any:
    if hasattr(submitted, "to_dict"):
        return submitted.to_dict()
    return submitted


def _ask(client: ChatLike, messages: list[dict[str, str]], budget: Budget,
         attempt: Attempt) -> Completion:
    completion = client.complete(messages, budget=budget)
    attempt.exchanges.append(Exchange(
        prompt_sha256=prompt_sha256(messages),
        response_sha256=sha256_text(completion.content),
        tokens=completion.usage.total_tokens,
        tokens_estimated=completion.usage.estimated,
        finish_reason=completion.finish_reason,
        response_model=completion.model,
        requests=completion.requests,
        elapsed_seconds=completion.elapsed_seconds,
    ))
    return completion


def _run_attempt(attempt: Attempt, result: GenerationResult, *, name: str, description: str,
                 requirements: Sequence[str], policy: Policy, client: ChatLike,
                 evaluate: Callable[..., EvaluationReport], budget: Budget, max_reasks: int,
                 previous_files: dict[str, str] | None, feedback: str | None, emit: EventFn,
                 check_cancel: Callable[[], None]) -> None:
    if feedback is None:
        messages = first_messages(policy, name, description, requirements)
    else:
        messages = repair_messages(policy, name, description, requirements, previous_files,
                                   feedback)
    parsed: ParsedOutput | None = None
    for reask in range(max_reasks + 1):
        check_cancel()
        emit({"event": "ask", "attempt": attempt.number, "reask": reask,
              "model": client.model, "host": client.host})
        completion = _ask(client, messages, budget, attempt)
        try:
            parsed = parse_output(completion.content, finish_reason=completion.finish_reason)
            break
        except MalformedOutput as exc:
            attempt.exchanges[-1].parse_error = str(exc)[:2000]
            emit({"event": "malformed", "attempt": attempt.number, "reask": reask,
                  "problems": exc.problems})
            cut_off = completion.finish_reason == "length"
            if reask < max_reasks:
                messages = [*messages, {"role": "assistant", "content": completion.content},
                            {"role": "user", "content": reask_prompt(exc.problems,
                                                                     cut_off=cut_off)}]
                continue
            attempt.outcome = "malformed"
            attempt.reason_codes = [exc.code]
            attempt.error = str(exc)[:2000]
            attempt.feedback = (
                f"Your replies in attempt {attempt.number} could not be parsed, even after "
                f"{max_reasks} re-ask(s):\n" + reask_prompt(exc.problems, cut_off=cut_off))
            return
    assert parsed is not None
    attempt.files = dict(parsed.files)
    result.files = dict(parsed.files)

    report, submission = _intake_and_evaluate(attempt, parsed, name=name, policy=policy,
                                              evaluate=evaluate, emit=emit,
                                              check_cancel=check_cancel)
    result.report = report
    if report.verdict.value == "passed":
        result.submission = submission
    attempt.report = report
    attempt.verdict = report.verdict.value
    attempt.reason_codes = [r.code.value for r in report.reasons]
    attempt.evaluation_id = report.evaluation_id
    attempt.outcome = report.verdict.value
    if report.verdict.value == "error":
        attempt.error = "; ".join(r.message for r in report.reasons)[:2000] or "verdict error"
    elif report.verdict.value != "passed":
        attempt.feedback = repair_prompt(report, policy, attempt=attempt.number)


def _intake_and_evaluate(attempt: Attempt, parsed: ParsedOutput, *, name: str, policy: Policy,
                         evaluate: Callable[..., EvaluationReport], emit: EventFn,
                         check_cancel: Callable[[], None]
                         ) -> tuple[EvaluationReport, Submission | None]:
    try:
        submission = submission_from_files(parsed.as_bytes())
        if submission.name != name:
            raise SubmissionError(
                f"skill.toml: name is {submission.name!r}, but the skill to write is {name!r}",
                path="skill.toml")
    except SubmissionError as exc:
        emit({"event": "rejected", "attempt": attempt.number, "message": str(exc)})
        return rejected_report(exc, policy=policy, skill=name), None
    attempt.content_hash = submission.content_hash
    check_cancel()
    emit({"event": "evaluating", "attempt": attempt.number,
          "content_hash": submission.content_hash})
    try:
        report = evaluate(submission, policy=policy)
    except InfrastructureError as exc:
        report = reports.infrastructure_error(
            str(exc), evaluation_id=uuid.uuid4().hex, skill=name,
            content_hash=submission.content_hash, policy=policy.name, policy_hash=policy.hash)
    return report, submission
