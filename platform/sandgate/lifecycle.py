"""The one code path from a submission to an active version.

The CLI, the API, workers and the tests all call these functions::

    submit(store, submission=..., policy=..., actor=...)   -> SubmitResult
    run_evaluation(store, evaluation_id=..., submission=..., policy=...) -> EvaluationRecord
    promote / rollback / yank                              -> thin wrappers that resolve the policy

``submit`` stores the version (idempotent on content), reuses a finished
conclusive evaluation of the same content under the same policy hash, or runs
one; when the verdict is ``passed`` and the policy's promotion mode for the
skill is ``auto``, it promotes (actor ``policy:<name>``). A lost promotion race
is reported in the result, never raised.

Judgement calls:

* ``error`` verdicts (the infrastructure's fault) are stored but never promote
  and are never reused: the next submit evaluates again.
* Auto-promotion happens only right after a *fresh* evaluation. Resubmitting
  content whose version already passed does not move the pointer again: that
  version may have been rolled back on purpose by a human.
* A yanked version is not evaluated again.
* A version that is already active and passes under a new policy stays
  active: no move, no event.
* ``wait=True`` runs a *queued* evaluation of the same content itself (after
  winning the queued → running compare-and-set); one that a worker is already
  running is not waited for — a second evaluation runs.

Seams for tests and embedding: :func:`default_evaluate`, :func:`load_policy`
and :func:`load_submission` are looked up at call time, so monkeypatching them
on this module changes what the CLI uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sandgate.errors import Conflict, InfrastructureError, InvalidTransition, SubmissionError
from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict
from sandgate.store import repository as repo
from sandgate.store.engine import Store
from sandgate.records import EvaluationRecord, PointerMove, VersionRecord, YankResult

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.policy import Policy
    from sandgate.submission import Submission

__all__ = [
    "EvaluateFn",
    "SubmitResult",
    "submit",
    "run_evaluation",
    "promote",
    "rollback",
    "yank",
    "default_evaluate",
    "load_policy",
    "load_submission",
    "policy_actor",
]


class EvaluateFn(Protocol):
    def __call__(
        self, submission: Any, *, policy: Any, evaluation_id: str | None = None
    ) -> EvaluationReport: ...


def default_evaluate(
    submission: Submission, *, policy: Policy, evaluation_id: str | None = None
) -> EvaluationReport:
    """``sandgate.evaluation.evaluate`` (imported lazily: it pulls in Docker)."""
    from sandgate.evaluation import evaluate

    return evaluate(submission, policy=policy, evaluation_id=evaluation_id)


def load_policy(name: str | None = None) -> Policy:
    """The named policy, or the configured one (``Settings.policy``)."""
    from sandgate.config import get_settings
    from sandgate.policy import load_policy as _load

    return _load(name or get_settings().policy)


def load_submission(path: Any) -> Submission:
    from sandgate.submission import load_submission as _load

    return _load(path)


def policy_actor(policy: Any) -> str:
    return f"policy:{policy.name}"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    version: VersionRecord
    #: False when identical content was already stored (same version returned)
    created: bool
    #: the evaluation used (None only when nothing was evaluated, e.g. a yanked version)
    evaluation: EvaluationRecord | None
    #: True when a finished evaluation of this content under this policy was reused
    reused_evaluation: bool
    #: "auto" | "manual": the policy's promotion mode for this skill
    promotion_mode: Literal["auto", "manual"]
    #: the pointer move made by auto-promotion, if any
    promoted: PointerMove | None = None
    #: why a promotion that was due did not happen (lost race, yanked, ...), or a note
    promotion_note: str | None = None

    @property
    def verdict(self) -> str | None:
        """passed | failed | rejected | error, or None while queued/running."""
        return self.evaluation.verdict if self.evaluation is not None else None

    @property
    def queued(self) -> bool:
        return self.evaluation is not None and self.evaluation.status != "done"

    @property
    def report(self) -> EvaluationReport | None:
        return self.evaluation.report_model() if self.evaluation is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "skill": self.version.skill,
            "version": self.version.number,
            "content_hash": self.version.content_hash,
            "created": self.created,
            "status": self.evaluation.status if self.evaluation else None,
            "verdict": self.verdict,
            "reasons": self.evaluation.reasons if self.evaluation else [],
            "evaluation_id": self.evaluation.id if self.evaluation else None,
            "reused_evaluation": self.reused_evaluation,
            "promotion_mode": self.promotion_mode,
            "promoted": self.promoted.to_dict() if self.promoted else None,
            "promotion_note": self.promotion_note,
            "yanked": self.version.yanked,
        }


def _error_report(evaluation_id: str, submission: Any, policy: Any, exc: BaseException) -> EvaluationReport:
    if isinstance(exc, SubmissionError):
        verdict, code = Verdict.rejected, _reason_code(exc.code, ReasonCode.invalid_submission)
    else:
        verdict, code = Verdict.error, ReasonCode.infrastructure
    return EvaluationReport(
        evaluation_id=evaluation_id,
        verdict=verdict,
        reasons=[Reason(code=code, message=f"{type(exc).__name__}: {exc}")],
        skill=getattr(submission, "name", None),
        content_hash=getattr(submission, "content_hash", None),
        policy=getattr(policy, "name", None),
        policy_hash=getattr(policy, "hash", None),
    )


def _reason_code(code: str, default: ReasonCode) -> ReasonCode:
    try:
        return ReasonCode(code)
    except ValueError:
        return default


def run_evaluation(
    store: Store,
    *,
    evaluation_id: str,
    submission: Any,
    policy: Any,
    evaluate: EvaluateFn | None = None,
) -> EvaluationRecord:
    """Run a started evaluation and store its report (used by ``submit`` and workers).

    The evaluator's exceptions never leave the evaluation dangling: an
    :class:`InfrastructureError` becomes an ``error`` verdict, a
    :class:`SubmissionError` a ``rejected`` one; anything else is stored as an
    ``error`` verdict and re-raised (it is a bug).
    """
    run = evaluate if evaluate is not None else default_evaluate
    try:
        report = run(submission, policy=policy, evaluation_id=evaluation_id)
    except (InfrastructureError, SubmissionError) as exc:
        report = _error_report(evaluation_id, submission, policy, exc)
    except BaseException as exc:
        repo.finish_evaluation(
            store,
            evaluation_id=evaluation_id,
            report=_error_report(evaluation_id, submission, policy, exc),
        )
        raise
    if report.evaluation_id != evaluation_id:
        report = report.model_copy(update={"evaluation_id": evaluation_id})
    return repo.finish_evaluation(store, evaluation_id=evaluation_id, report=report)


def submit(
    store: Store,
    *,
    submission: Any,
    policy: Any,
    actor: str,
    evaluate: EvaluateFn | None = None,
    wait: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> SubmitResult:
    """Store, evaluate (or reuse an evaluation), and auto-promote when the policy says so.

    ``wait=False`` only queues the evaluation (status ``queued``) for a worker.
    """
    version, created = repo.create_version(
        store, submission=submission, actor=actor, provenance=provenance
    )
    mode = policy.promotion.mode_for(version.skill)
    base = {"version": version, "created": created, "promotion_mode": mode}
    if version.yanked:
        return SubmitResult(
            **base,
            evaluation=None,
            reused_evaluation=False,
            promotion_note=f"{version.ref} is yanked ({version.yank_reason}); not evaluated again",
        )

    name, number = version.skill, version.number
    done = repo.latest_evaluation(
        store, name=name, number=number, policy_hash=policy.hash, conclusive=True
    )
    if done is not None:
        note = None
        if done.verdict == "passed" and mode == "auto" and not version.active:
            note = (
                f"{version.ref} already passed under {policy.name}; not promoted again "
                "automatically (it may have been rolled back on purpose): promote it by hand"
            )
        return SubmitResult(**base, evaluation=done, reused_evaluation=True, promotion_note=note)

    evaluation = repo.pending_evaluation(store, name=name, number=number, policy_hash=policy.hash)
    if not wait:
        if evaluation is None:
            evaluation = repo.queue_evaluation(
                store, name=name, number=number, policy_name=policy.name, policy_hash=policy.hash
            )
        return SubmitResult(**base, evaluation=evaluation, reused_evaluation=False)

    started = None
    if evaluation is not None and evaluation.status == "queued":
        try:
            started = repo.start_evaluation(store, evaluation_id=evaluation.id)
        except Conflict:
            started = None  # a worker took it; run our own
    if started is None:
        queued = repo.queue_evaluation(
            store, name=name, number=number, policy_name=policy.name, policy_hash=policy.hash
        )
        started = repo.start_evaluation(store, evaluation_id=queued.id)
    finished = run_evaluation(
        store, evaluation_id=started.id, submission=submission, policy=policy, evaluate=evaluate
    )
    version = repo.get_version(store, name=name, number=number)
    base["version"] = version

    promoted, note = auto_promote(store, evaluation=finished, policy=policy)
    if promoted is not None:
        base["version"] = repo.get_version(store, name=name, number=number)
    return SubmitResult(
        **base,
        evaluation=finished,
        reused_evaluation=False,
        promoted=promoted,
        promotion_note=note,
    )


def auto_promote(store: Store, *, evaluation: Any, policy: Any) -> tuple[Any, str | None]:
    """Promote a freshly evaluated version when the policy says ``auto``.

    Returns ``(PointerMove | None, note)``. Nothing happens unless the verdict is
    ``passed`` and the skill's mode is ``auto``; never over a newer active
    version (workers finish out of order); a lost race is a note, not an error.
    Shared by :func:`submit` and the workers.
    """
    if evaluation.verdict != "passed" or policy.promotion.mode_for(evaluation.skill) != "auto":
        return None, None
    skill = repo.get_skill(store, name=evaluation.skill)
    if skill.active_version == evaluation.version:
        return None, None
    if skill.active_version is not None and skill.active_version > evaluation.version:
        return None, (
            f"{evaluation.skill}@{skill.active_version} is active and newer: "
            f"{evaluation.skill}@{evaluation.version} not promoted over it"
        )
    try:
        move = repo.promote(
            store,
            name=evaluation.skill,
            number=evaluation.version,
            actor=policy_actor(policy),
            reason=f"auto-promotion: passed {policy.name}",
            policy=policy,
            expected_generation=skill.generation,
        )
    except (Conflict, InvalidTransition) as exc:
        return None, f"auto-promotion did not happen: {exc}"
    return move, None


# --------------------------------------------------------------------------- pointer moves


def promote(
    store: Store,
    *,
    name: str,
    number: int,
    actor: str,
    reason: str | None = None,
    policy: Any | None = None,
    expected_generation: int | None = None,
    force: bool = False,
) -> PointerMove:
    """``repository.promote`` under the given policy (default: the configured one)."""
    if policy is None:
        policy = load_policy()
    return repo.promote(
        store,
        name=name,
        number=number,
        actor=actor,
        reason=reason,
        policy=policy,
        expected_generation=expected_generation,
        force=force,
    )


def rollback(
    store: Store,
    *,
    name: str,
    to: int | None = None,
    actor: str,
    reason: str | None = None,
    expected_generation: int | None = None,
) -> PointerMove:
    return repo.rollback(
        store, name=name, to=to, actor=actor, reason=reason, expected_generation=expected_generation
    )


def yank(
    store: Store, *, name: str, number: int, actor: str, reason: str, rollback: bool = False
) -> YankResult:
    return repo.yank(store, name=name, number=number, actor=actor, reason=reason, rollback=rollback)

