"""The one code path from a submission to an active version.

The CLI, the API, workers and the tests all call these functions::

    submit(store, submission=..., policy=..., actor=...)   -> SubmitResult
    run_evaluation(store, evaluation_id=..., submission=..., policy=...) -> EvaluationRecord
    run_claimed(store, claimed, owner=...)                 -> ClaimedRun (a worker's job, end to end)
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

Collaborators are parameters: ``evaluate=`` (default :func:`default_evaluate`,
the sandbox, given the oracle's replay baseline read from the store) and
``policy_loader=`` (default :func:`load_policy`, the configured policies); a lease ``owner=`` makes storing the report a
compare-and-set on that worker's lease. Tests pass fakes; nothing here is
meant to be patched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sandgate import delivery, tracing
from sandgate import report as reports
from sandgate.config import get_settings
from sandgate.errors import (
    Conflict,
    InfrastructureError,
    InvalidTransition,
    NotFound,
    SandgateError,
    StoreError,
    SubmissionError,
)
from sandgate.evaluation import evaluate as _sandbox_evaluate
from sandgate.evaluation.oracle import Baseline
from sandgate.examples import EXAMPLES_SOURCES, examples_inputs
from sandgate.policy import load_policy as _load_policy
from sandgate.records import EvaluationRecord, PointerMove, VersionRecord
from sandgate.report import EvaluationReport
from sandgate.store import evaluations, pointers, versions
from sandgate.store.engine import Store
from sandgate.submission import load_submission as _load_submission
from sandgate.submission import submission_from_files

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.policy import Policy
    from sandgate.submission import Submission

__all__ = [
    "EvaluateFn",
    "PolicyLoader",
    "SubmitResult",
    "ClaimedRun",
    "Requeue",
    "RequeueCheck",
    "submit",
    "run_evaluation",
    "run_claimed",
    "auto_promote",
    "promote",
    "rollback",
    "yank",
    "default_evaluate",
    "load_policy",
    "load_submission",
    "policy_actor",
]


class EvaluateFn(Protocol):
    # submission is passed by position (implementations name it as they like)
    def __call__(self, submission: Any, /, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport: ...


#: loads a policy by name (None: the configured one)
PolicyLoader = Callable[[str | None], "Policy"]

#: given a finished run's report: why it must not be stored but run again elsewhere, or None
RequeueCheck = Callable[[EvaluationReport], str | None]


class Requeue(Exception):  # noqa: N818 - an instruction to the caller, not an error of the run
    """The report is not the skill's: nothing was stored, the caller hands the job back to the queue.

    Raised by :func:`run_evaluation` when its ``requeue_if`` says so (a worker whose
    Docker engine died during the run: the report describes the engine, not the skill).
    """


def default_evaluate(
    submission: Submission,
    *,
    policy: Policy,
    evaluation_id: str | None = None,
    baseline: Baseline | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """``sandgate.evaluation.evaluate``: the sandbox (which imports Docker only when it runs).
    ``progress`` is told each phase as it begins (the CLI's progress line).

    ``baseline`` (the active version and earlier examples) enables the oracle's
    differential replay; :func:`run_evaluation` loads it from the store.
    """
    if progress is None:
        return _sandbox_evaluate(submission, policy=policy, evaluation_id=evaluation_id, baseline=baseline)
    return _sandbox_evaluate(submission, policy=policy, evaluation_id=evaluation_id, baseline=baseline,
                             progress=progress)


def _default_run(store: Store, progress: Callable[[str], None] | None = None) -> EvaluateFn:
    """:func:`default_evaluate` with the replay baseline read from ``store``."""

    def run(submission: Any, *, policy: Any, evaluation_id: str | None = None) -> EvaluationReport:
        try:
            baseline = load_baseline(store, skill=submission.name, content_hash=submission.content_hash)
        except StoreError as exc:
            raise InfrastructureError(f"the oracle's replay baseline could not be read: {exc}") from exc
        return default_evaluate(submission, policy=policy, evaluation_id=evaluation_id, baseline=baseline,
                                progress=progress)

    return run


def store_evaluate(store: Store, *, progress: Callable[[str], None] | None = None) -> EvaluateFn:
    """The default evaluator of a submit into ``store`` (replay baseline from the store), telling
    ``progress`` each phase as it begins."""
    return _default_run(store, progress)


def load_baseline(store: Store, *, skill: str, content_hash: str | None = None) -> Baseline:
    """What the store knows about ``skill``'s earlier versions, for the oracle's differential replay:
    the active version's stored bytes (unless it is ``content_hash`` itself) and every earlier
    version's examples (data, never code). A skill not yet stored: an empty :class:`Baseline`."""
    try:
        stored = versions.list_versions(store, name=skill)
    except NotFound:
        return Baseline()
    active = next((v for v in stored if v.active), None)
    inputs: list[tuple[list[Any], dict[str, Any]]] = []
    active_files = None
    # the examples' files of every version in one read (not every version's every file)
    examples_files = versions.get_files_of_versions(store, name=skill, paths=EXAMPLES_SOURCES)
    for version in stored:
        if version.content_hash == content_hash:
            continue
        inputs += examples_inputs(examples_files.get(version.number, {}))
        if active is not None and version.number == active.number:
            active_files = versions.get_version_files(store, name=skill, number=version.number)
    if active is None or active_files is None:
        return Baseline(history_inputs=tuple(inputs))
    return Baseline(active_version=active.number, active_files=active_files, history_inputs=tuple(inputs))


def load_policy(name: str | None = None) -> Policy:
    """The named policy, or the configured one (``Settings.policy``)."""
    return _load_policy(name or get_settings().policy)


def load_submission(path: Any) -> Submission:
    return _load_submission(path)


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
    promotion_mode: Literal["auto", "manual", "canary"]
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


def _ids(submission: Any, policy: Any) -> dict[str, Any]:
    return {
        "skill": getattr(submission, "name", None),
        "content_hash": getattr(submission, "content_hash", None),
        "policy": getattr(policy, "name", None),
        "policy_hash": getattr(policy, "hash", None),
    }


def run_evaluation(
    store: Store,
    *,
    evaluation_id: str,
    submission: Any,
    policy: Any,
    evaluate: EvaluateFn | None = None,
    owner: str | None = None,
    requeue_if: RequeueCheck | None = None,
) -> EvaluationRecord:
    """Run a started evaluation and store its report (used by ``submit`` and workers).

    ``requeue_if(report)``: a reason means the report is not stored and
    :class:`Requeue` is raised (the caller hands the job back).

    The evaluator's exceptions never leave the evaluation dangling: an
    :class:`InfrastructureError` becomes an ``error`` verdict, a
    :class:`SubmissionError` a ``rejected`` one; anything else is stored as an
    ``error`` verdict and re-raised (it is a bug). ``owner``: the worker whose
    lease must still hold when the report is stored (``Conflict`` otherwise).
    """
    run = evaluate if evaluate is not None else _default_run(store)
    bug: BaseException | None = None
    try:
        report = run(submission, policy=policy, evaluation_id=evaluation_id)
        if report.evaluation_id != evaluation_id:
            report = report.model_copy(update={"evaluation_id": evaluation_id})
    except BaseException as exc:
        if not isinstance(exc, InfrastructureError | SubmissionError):
            bug = exc
        report = reports.from_exception(exc, evaluation_id=evaluation_id, **_ids(submission, policy))
    if bug is None and requeue_if is not None:
        why = requeue_if(report)
        if why is not None:
            raise Requeue(why)
    with tracing.span("sandgate.finish", {"sandgate.evaluation_id": evaluation_id,
                                          "sandgate.verdict": getattr(report.verdict, "value", report.verdict)}):
        record = evaluations.finish_evaluation(store, evaluation_id=evaluation_id, report=report, owner=owner)
    if bug is not None:
        raise bug
    return record


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """What :func:`run_claimed` did with one claimed evaluation."""

    evaluation: EvaluationRecord
    #: the pointer move auto-promotion made, if any
    promoted: PointerMove | None = None
    #: why a due promotion did not happen, or a note
    note: str | None = None
    #: the hash of the policy content it ran under (None: the policy did not load)
    policy_hash: str | None = None


def stored_submission(store: Store, *, name: str, number: int) -> Submission:
    """A version's exact stored bytes, validated again; they must hash to its content hash."""
    version = versions.get_version(store, name=name, number=number)
    submission = submission_from_files(versions.get_version_files(store, name=name, number=number))
    if submission.content_hash != version.content_hash:
        raise StoreError(
            f"{version.ref}: the stored bytes hash to {submission.content_hash}, "
            f"not the version's {version.content_hash}"
        )
    return submission


def run_claimed(
    store: Store,
    claimed: EvaluationRecord,
    *,
    owner: str,
    evaluate: EvaluateFn | None = None,
    policy_loader: PolicyLoader = load_policy,
    requeue_if: RequeueCheck | None = None,
) -> ClaimedRun:
    """Run an evaluation claimed under ``owner``'s lease end to end: evaluate → finish → auto-promote.

    The policy is loaded by the name it was queued under (its *current*
    content: the stored evaluation records the hash actually used). A policy
    that does not load ends it as verdict ``error``; stored bytes that do not
    validate as ``rejected``, or that do not match the version as ``error``.
    Every report is stored as a compare-and-set on ``owner``'s lease: a lost
    lease raises :class:`Conflict` (code ``lease_lost``) and nothing is stored.
    ``requeue_if``: see :func:`run_evaluation` (raises :class:`Requeue`, nothing stored).
    """
    c = claimed
    policy, nothing_ran = None, None
    try:
        policy = policy_loader(c.policy_name)
        submission = stored_submission(store, name=c.skill, number=c.version)
    except SandgateError as exc:
        ids = {
            "skill": c.skill,
            "policy": c.policy_name,
            "policy_hash": policy.hash if policy is not None else c.policy_hash,
        }
        if policy is None:
            nothing_ran = reports.infrastructure_error(
                f"policy {c.policy_name!r} cannot be loaded: {exc}", evaluation_id=c.id, **ids
            )
        elif isinstance(exc, SubmissionError):
            nothing_ran = reports.rejected(exc, evaluation_id=c.id, **ids)
        elif isinstance(exc, StoreError):
            nothing_ran = reports.infrastructure_error(str(exc), evaluation_id=c.id, **ids)
        else:
            raise
    if nothing_ran is not None:
        finished = evaluations.finish_evaluation(store, evaluation_id=c.id, report=nothing_ran, owner=owner)
        return ClaimedRun(finished, policy_hash=policy.hash if policy is not None else None)
    assert policy is not None  # a policy that did not load ended the run above
    record = run_evaluation(
        store, evaluation_id=c.id, submission=submission, policy=policy, evaluate=evaluate, owner=owner,
        requeue_if=requeue_if,
    )
    move, note = auto_promote(store, evaluation=record, policy=policy)
    return ClaimedRun(record, promoted=move, note=note, policy_hash=policy.hash)


def submit(
    store: Store,
    *,
    submission: Any,
    policy: Any,
    actor: str,
    evaluate: EvaluateFn | None = None,
    wait: bool = True,
    provenance: Mapping[str, Any] | None = None,
    tenant: str = evaluations.LOCAL_TENANT,
    max_queued: int | None = None,
    limit_setting: str | None = None,
) -> SubmitResult:
    """Store, evaluate (or reuse an evaluation), and auto-promote when the policy says so.

    ``wait=False`` only queues the evaluation (status ``queued``) for a worker, under
    ``tenant`` (fair share between tenants). ``max_queued``: a tenant that already has
    that many queued is refused with :class:`~sandgate.errors.QueueFull` *before* the
    version is stored; the queueing transaction checks again, so a submit that loses
    a race for the last place keeps its stored version (content-addressed: a retry
    of the same content reuses it) but queues nothing. With traces on, all of it is
    the span ``sandgate.submit``, whose context is stored on a queued evaluation (the
    worker that claims it continues the trace).
    """
    with tracing.span("sandgate.submit", {"sandgate.skill": getattr(submission, "name", None),
                                          "sandgate.policy": getattr(policy, "name", None),
                                          "sandgate.wait": wait}) as span:
        result = _submit(store, submission=submission, policy=policy, actor=actor, evaluate=evaluate, wait=wait,
                         provenance=provenance, tenant=tenant, max_queued=max_queued, limit_setting=limit_setting)
        if span is not None:
            span.set_attribute("sandgate.version", result.version.number)
            if result.evaluation is not None:
                span.set_attribute("sandgate.evaluation_id", result.evaluation.id)
                span.set_attribute("sandgate.reused_evaluation", result.reused_evaluation)
            if result.verdict is not None:
                span.set_attribute("sandgate.verdict", result.verdict)
        return result


def _submit(
    store: Store,
    *,
    submission: Any,
    policy: Any,
    actor: str,
    evaluate: EvaluateFn | None,
    wait: bool,
    provenance: Mapping[str, Any] | None,
    tenant: str,
    max_queued: int | None,
    limit_setting: str | None,
) -> SubmitResult:
    if not wait:
        evaluations.queue_room(store, tenant=tenant, max_queued=max_queued, limit_setting=limit_setting)
    version, created = versions.create_version(store, submission=submission, actor=actor, provenance=provenance)
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
    # reuse a conclusive evaluation, take over a queued one, or open one: one transaction
    evaluation, reused = evaluations.begin_evaluation(
        store, name=name, number=number, policy_name=policy.name, policy_hash=policy.hash, start=wait,
        tenant=tenant, max_queued=max_queued, limit_setting=limit_setting,
        traceparent=tracing.traceparent(),
    )
    if reused:
        note = None
        if evaluation.verdict == "passed" and mode == "auto" and not version.active:
            note = (
                f"{version.ref} already passed under {policy.name}; not promoted again "
                "automatically (it may have been rolled back on purpose): promote it by hand"
            )
        return SubmitResult(**base, evaluation=evaluation, reused_evaluation=True, promotion_note=note)
    if not wait:
        return SubmitResult(**base, evaluation=evaluation, reused_evaluation=False)

    finished = run_evaluation(
        store, evaluation_id=evaluation.id, submission=submission, policy=policy, evaluate=evaluate
    )
    promoted, note = auto_promote(store, evaluation=finished, policy=policy)
    base["version"] = versions.get_version(store, name=name, number=number)
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
    Shared by :func:`submit` and the workers. With traces on: the span ``sandgate.promotion``.
    """
    if not tracing.enabled():
        return _auto_promote(store, evaluation=evaluation, policy=policy)
    with tracing.span("sandgate.promotion", {"sandgate.evaluation_id": evaluation.id,
                                             "sandgate.verdict": evaluation.verdict}) as span:
        move, note = _auto_promote(store, evaluation=evaluation, policy=policy)
        span.set_attribute("sandgate.promotion.mode", policy.promotion.mode_for(evaluation.skill))
        span.set_attribute("sandgate.promoted", move is not None)
        if move is not None:
            span.set_attribute("sandgate.promoted_version", move.to_version)
        if note:
            span.set_attribute("sandgate.promotion.note", note)
        return move, note


def _auto_promote(store: Store, *, evaluation: Any, policy: Any) -> tuple[Any, str | None]:
    mode = policy.promotion.mode_for(evaluation.skill)
    if evaluation.verdict != "passed" or mode not in ("auto", "canary"):
        return None, None
    if mode == "canary":
        skill = versions.get_skill(store, name=evaluation.skill)
        if skill.active_version is not None:  # the first version has nothing to compare with: promoted as auto
            if skill.active_version == evaluation.version:
                return None, None
            return None, _start_canary(store, evaluation=evaluation, policy=policy, skill=skill)
    try:
        # one transaction: the newer-active check and the compare-and-set see the same pointer
        move = pointers.promote(
            store,
            name=evaluation.skill,
            number=evaluation.version,
            actor=policy_actor(policy),
            reason=f"auto-promotion: passed {policy.name}",
            policy=policy,
            over_newer=False,
        )
    except InvalidTransition as exc:
        if exc.code == "already_active":
            return None, None
        if exc.code == "newer_active":
            return None, str(exc)
        return None, f"auto-promotion did not happen: {exc}"
    except Conflict as exc:
        return None, f"auto-promotion did not happen: {exc}"
    return move, None


def _start_canary(store: Store, *, evaluation: Any, policy: Any, skill: Any) -> str:
    """Promotion mode ``canary``: the passed version becomes the candidate (sandgate.delivery)."""
    ref = f"{evaluation.skill}@{evaluation.version}"
    if skill.active_version > evaluation.version:
        return f"{evaluation.skill}@{skill.active_version} is active and newer: no canary of {ref}"
    try:
        record = delivery.start(
            store,
            name=evaluation.skill,
            number=evaluation.version,
            actor=policy_actor(policy),
            policy=policy,
            reason=f"canary: passed {policy.name}",
            expected_generation=skill.generation,
        )
    except (Conflict, InvalidTransition) as exc:
        return f"canary did not start: {exc}"
    return f"canary started: {ref} at {record.weight} % beside {evaluation.skill}@{record.baseline}"


# --------------------------------------------------------------------------- pointer moves


def promote(
    store: Store,
    *,
    policy: Any | None = None,
    policy_loader: PolicyLoader | None = None,
    **move: Any,
) -> PointerMove:
    """:func:`pointers.promote <sandgate.store.pointers.promote>` (same keywords: ``name``, ``number``,
    ``actor``, ``reason``, ``expected_generation``, ``force``) under the given policy — by default
    ``policy_loader(None)``, the configured one."""
    if policy is None:
        policy = (policy_loader or load_policy)(None)
    return pointers.promote(store, policy=policy, **move)


#: pointer moves that need no policy: the store's own
rollback = pointers.rollback
yank = pointers.yank
