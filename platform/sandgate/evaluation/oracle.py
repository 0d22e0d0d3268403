"""The oracle phase: the controller calls the skill's entrypoint and judges every answer itself.

Whatever runs in the process that runs submitted code is that code's own
*claim* (its tests, their results, its coverage). This phase produces
*evidence*: the entrypoint is served in a second single-use sandbox
(:mod:`sandgate.sandbox.serve`; same image, hardening, labels and limits; the
only process is ``sandgate_harness.serve``, which holds no secret), the
controller sends one call at a time and compares each answer here, outside
the sandbox. The controller never imports or runs submitted code: the
entrypoint's types come from the AST (:mod:`sandgate.evaluation.oracle_types`).

Calls, in the order they are sent:

1. ``example``: the submission's ``[[examples]]`` and ``examples.jsonl``;
2. ``acceptance``: the operator's ``policies/acceptance/<skill>.jsonl``;
3. ``replay``: inputs of every earlier version's examples (and of 1 and 2),
   also sent to the *active* version served in its own sandbox; every
   difference is a behaviour change, *declared* when the manifest's
   ``[[oracle.changes]]`` lists the input or the candidate's own examples (or the
   acceptance set) say what the new answer must be and it is;
4. ``contract``: inputs generated from the type hints (bounded generators with
   edge cases, seeded by the content hash, so the same version always gets the
   same inputs), each called twice: the answer must be a value of the declared
   return type or an exception the manifest's ``[oracle] raises`` allows, the
   same both times, within the per-call limit.

A call fails when its answer is wrong, or never comes (``timeout``), or the
transport misbehaves (bytes before the request, an answer to another request,
a malformed or oversized frame, a closed stream): the server is then killed and
every later call to it is ``not_run`` (counted as failed). Examples and
acceptance calls go first so a misbehaving generated input cannot hide them.

When it counts: only after the dynamic phase produced a report that is not
already ``error`` or ``rejected`` (a ``failed`` report still gets the phase: its
failures are what a generation loop needs). The sandbox is started once the
evaluation sandbox has its payload, and the calls are made — and the served
sandboxes removed — as soon as the server is ready, while the evaluation
sandbox still runs its static, dynamic and mutation phases: :func:`conclude`
waits for them (usually long done) and judges; an ``error`` report drops the
answers. The served skill was already loaded beside the static phase before;
sending it its calls then changes nothing of what runs where.
A failure of the oracle's own sandbox is ``infrastructure`` (verdict ``error``).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sandgate.errors import InfrastructureError, SubmissionError
from sandgate.evaluation import oracle_types as ot
from sandgate.examples import Example, ExampleError, input_key, parse_examples_jsonl, same_value
from sandgate.oracle_report import BehaviourChange, OracleCall, OracleSource, OracleSummary
from sandgate.policy import decide
from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict
from sandgate.submission import submission_from_files

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.policy import Policy
    from sandgate.sandbox.serve import ServedSkill

__all__ = ["Baseline", "OraclePhase", "load_acceptance", "ACCEPTANCE_DIR", "MAX_LISTED"]

ACCEPTANCE_DIR = "acceptance"
#: failures and changes kept in the report (the counts are always complete)
MAX_LISTED = 200
_TEXT_CAP = 300


@dataclass(frozen=True)
class Baseline:
    """What the store knows about earlier versions of the skill (for differential replay)."""

    active_version: int | None = None
    #: the active version's stored files (None: no active version)
    active_files: Mapping[str, bytes] | None = None
    #: inputs ``(args, kwargs)`` of every earlier version's examples
    history_inputs: tuple[tuple[list[Any], dict[str, Any]], ...] = ()


def load_acceptance(policies_dir: Path, skill: str) -> list[Example]:
    """The operator's acceptance examples for ``skill`` (none when there is no file).

    An invalid file is the operator's problem, not the skill's:
    :class:`InfrastructureError`.
    """
    path = Path(policies_dir) / ACCEPTANCE_DIR / f"{skill}.jsonl"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InfrastructureError(f"cannot read the acceptance set {path}: {exc}") from exc
    try:
        return parse_examples_jsonl(data, where=str(path))
    except ExampleError as exc:
        raise InfrastructureError(f"invalid acceptance set: {exc}") from exc


def _text(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _TEXT_CAP else text[:_TEXT_CAP - 1] + "…"


def _answer_text(body: dict[str, Any]) -> str:
    if body.get("ok") is True:
        return _text(body.get("value"))
    if "raised" in body:
        message = str(body.get("message") or "")
        text = f"raises {body['raised']}" + (f": {message}" if message else "")
        return text if len(text) <= _TEXT_CAP else text[:_TEXT_CAP - 1] + "…"
    return f"unserializable: {str(body.get('unserializable', '?'))[:100]}"


def _outcome_key(body: dict[str, Any]) -> str:
    """What two answers must share to be "the same answer"."""
    if body.get("ok") is True:
        return "value:" + json.dumps(body.get("value"), sort_keys=True)
    if "raised" in body:
        return f"raised:{body['raised']}"
    return f"unserializable:{body.get('unserializable')}"


def _valid_answer(body: dict[str, Any]) -> bool:
    if body.get("ok") is True:
        return "value" in body
    if body.get("ok") is False:
        return isinstance(body.get("raised"), str) or isinstance(body.get("unserializable"), str)
    return False


@dataclass
class _Planned:
    source: OracleSource
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    example: Example | None = None
    #: contract: called twice
    repeat: bool = False


@dataclass
class _Result:
    """A planned call's answers (``bodies``) or why there are none."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # timeout | transport | not_run
    detail: str = ""
    seconds: float = 0.0


def _signature_text(sig: ot.Signature) -> str | None:
    if not sig.params and sig.returns is None:
        return None
    parts = []
    for p in sig.params:
        t = ot.describe(p.type) if p.type else "?"
        parts.append(f"{p.name}: {t}" + (" = …" if p.has_default else ""))
    ret = ot.describe(sig.returns) if sig.returns else "?"
    return f"({', '.join(parts)}) -> {ret}"


def _contract_inputs(sig: ot.Signature, count: int, seed: str) -> list[tuple[list[Any], dict[str, Any]]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[list[Any], dict[str, Any]]] = []
    for _attempt in range(count * 5):
        if len(out) >= count:
            break
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in sig.params:
            if p.has_default and (p.type is None or rng.random() < 0.5):
                continue
            assert p.type is not None  # required parameters are typed, or sig.unsupported is set
            value = ot.generate(p.type, rng)
            if p.kind == "positional" and not p.has_default and not kwargs:
                args.append(value)
            else:
                kwargs[p.name] = value
        key = input_key(args, kwargs)
        if key in seen:
            continue
        seen.add(key)
        out.append((args, kwargs))
    return out


class OraclePhase:
    """One oracle phase: :meth:`start` (in the background), then :meth:`run` or :meth:`skip`,
    and always :meth:`close`."""

    def __init__(self, submission: Any, *, policy: Any, client: Any, image: str, limits: Any,
                 evaluation_id: str, policies_dir: Path, baseline: Baseline | None = None) -> None:
        # the sandbox imports docker: loaded when a phase is planned, as in sandgate.evaluation
        from sandgate.sandbox import make_payload
        from sandgate.sandbox.serve import ServedSkill

        self.submission = submission
        self.policy = policy
        self.settings_oracle = policy.oracle
        self.baseline = baseline or Baseline()
        self.started = time.monotonic()
        self.acceptance = load_acceptance(policies_dir, submission.name)
        self.examples = submission.examples()
        manifest_oracle = submission.manifest.oracle
        self.allowed_raises = set(manifest_oracle.raises) if manifest_oracle else set()
        self.intended = {c.key: c.reason for c in manifest_oracle.changes} if manifest_oracle else {}
        self.json_values = manifest_oracle.json_values if manifest_oracle else True
        schema = manifest_oracle.schema_ if manifest_oracle else None
        module_file = self._module_file(submission.manifest.module, submission.files)
        self.signature = ot.read_signature(
            submission.files.get(module_file, b"") if module_file else b"",
            submission.manifest.function, schema)
        self._active_manifest: Any = None
        self.plan = self._plan()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: the calls' answers (candidate, active) and timings, made by the start thread as soon
        #: as the servers are ready: while the evaluation sandbox still runs (see :meth:`start`)
        self._results: dict[str, _Result] | None = None
        self._active_results: dict[str, _Result] | None = None
        self._call_timings: dict[str, float] = {}
        self._close_error: InfrastructureError | None = None
        self.candidate: ServedSkill | None = None
        self.active: ServedSkill | None = None
        self.ready: dict[str, dict[str, Any] | None] = {}
        if self.status != "ran":
            return

        def served(files: Mapping[str, bytes], manifest: Any, role: str) -> ServedSkill:
            payload = {f"skill/{p}": d for p, d in files.items()}
            payload["serve.json"] = json.dumps(
                {"module": manifest.module, "function": manifest.function}).encode()
            return ServedSkill(client, image, limits, make_payload(payload),
                               evaluation_id=evaluation_id, role=role)

        self.candidate = served(submission.files, submission.manifest, "candidate")
        if self._replay_inputs and self.baseline.active_files is not None:
            self.active = served(self.baseline.active_files, self._active_manifest, "active")

    # -- planning -----------------------------------------------------------

    @staticmethod
    def _module_file(module: str, files: Mapping[str, bytes]) -> str | None:
        base = module.replace(".", "/")
        return next((c for c in (f"{base}.py", f"{base}/__init__.py") if c in files), None)

    def _plan(self) -> list[_Planned]:
        self.status: Literal["ran", "unsupported", "skipped"] = "ran"
        self.note = ""
        if not self.json_values:
            self.status = "unsupported"
            self.note = "the manifest says the entrypoint takes or returns values JSON cannot carry"
            self._replay_inputs: list[tuple[list[Any], dict[str, Any]]] = []
            return []
        plan = [_Planned("example", e.name or f"#{i + 1}", e.args, e.kwargs, e)
                for i, e in enumerate(self.examples)]
        plan += [_Planned("acceptance", e.name or f"#{i + 1}", e.args, e.kwargs, e)
                 for i, e in enumerate(self.acceptance)]
        known = {input_key(p.args, p.kwargs) for p in plan}
        # replay: earlier versions' inputs (new ones are sent to the candidate too), and the
        # candidate's own and the acceptance inputs (already sent), all sent to the active version
        replay: list[tuple[list[Any], dict[str, Any]]] = []
        if self.baseline.active_files is not None:
            self._active_manifest = self._parse_active()
        if self._active_manifest is not None:
            seen: set[str] = set()
            for args, kwargs in [*((p.args, p.kwargs) for p in plan), *self.baseline.history_inputs]:
                key = input_key(args, kwargs)
                if key in seen:
                    continue
                seen.add(key)
                replay.append((args, kwargs))
                if key not in known:
                    plan.append(_Planned("replay", f"#{len(replay)}", args, kwargs))
                    known.add(key)
        self._replay_inputs = replay
        budget = self.settings_oracle.max_calls - len(plan)
        wanted = max(self.policy.gates.contract_checks, self.settings_oracle.contract_inputs)
        if self.signature.unsupported is None and wanted > 0 and budget >= 2:
            inputs = _contract_inputs(self.signature, min(wanted, budget // 2),
                                      self.submission.content_hash)
            plan += [_Planned("contract", f"#{i + 1}", a, k, repeat=True)
                     for i, (a, k) in enumerate(inputs)]
        plan = plan[:self.settings_oracle.max_calls]
        if not plan:
            if self.signature.unsupported is not None:
                self.status = "unsupported"
                self.note = f"no examples, and no contract checks: {self.signature.unsupported}"
            else:
                self.status = "skipped"
                self.note = "nothing to call: no examples, acceptance set or contract checks"
        return plan

    def _parse_active(self) -> Any:
        try:
            return submission_from_files(dict(self.baseline.active_files or {})).manifest
        except SubmissionError as exc:
            self.note = f"the active version cannot be served for replay: {exc}"
            return None

    # -- running ------------------------------------------------------------

    def start(self) -> None:
        """Start the sandbox(es) in the background, make the calls as soon as they are ready,
        and remove them; :meth:`run` waits for that and judges the answers.

        The calls need nothing of the evaluation sandbox (the served skill was loaded at
        start, beside the static phase, as before), so they are made while it still runs
        its tests and mutants, and the removal of the served sandboxes is off the
        evaluation's critical path too. Whether they count is decided by :func:`conclude`
        as before (an ``error`` evaluation skips the phase; its answers are dropped).
        """
        if self.candidate is None or self._thread is not None:
            return
        ready_timeout = self.settings_oracle.timeout_seconds

        def work() -> None:
            try:
                for served in (self.candidate, self.active):
                    if served is not None:
                        served.start()
                for role, served in (("candidate", self.candidate), ("active", self.active)):
                    if served is not None:
                        self.ready[role] = served.wait_ready(ready_timeout)
                self._make_calls()
            except BaseException as exc:  # noqa: BLE001 - re-raised in run()
                self._error = exc
            finally:
                try:
                    self._close_served()
                except InfrastructureError as exc:  # reported by close(), as when it removed them
                    self._close_error = exc

        self._thread = threading.Thread(target=work, name="sandgate-oracle-start", daemon=True)
        self._thread.start()

    def _make_calls(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.settings_oracle.timeout_seconds
        assert self.candidate is not None
        self._results = self._send(self.candidate, self.ready.get("candidate"),
                                   [(p.args, p.kwargs, 2 if p.repeat else 1) for p in self.plan], deadline)
        self._call_timings["calls"] = round(time.monotonic() - t0, 4)
        if self.active is not None:
            t1 = time.monotonic()
            self._active_results = self._send(self.active, self.ready.get("active"),
                                              [(a, k, 1) for a, k in self._replay_inputs], deadline)
            self._call_timings["active_calls"] = round(time.monotonic() - t1, 4)

    def _close_served(self) -> None:
        problem: InfrastructureError | None = None
        for served in (self.candidate, self.active):
            if served is not None:
                try:
                    served.close()
                except InfrastructureError as exc:
                    problem = problem or exc
        if problem is not None:
            raise problem

    def skip(self, why: str) -> OracleSummary:
        return OracleSummary(status="skipped", note=why, examples=len(self.examples),
                             acceptance=len(self.acceptance))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            for served in (self.candidate, self.active):  # a server still loading or answering: stop it
                if served is not None and served.container_id is not None:
                    served._break("the oracle phase was closed")
            self._thread.join(self.settings_oracle.timeout_seconds + 30)
        self._close_served()  # what the thread has not removed (it never ran, or it is stuck)
        if self._close_error is not None:
            problem, self._close_error = self._close_error, None
            raise problem

    def run(self) -> OracleSummary:
        """Make the calls and judge them. Raises :class:`InfrastructureError` when the
        oracle's sandbox itself failed."""
        t0 = time.monotonic()
        summary = OracleSummary(
            status=self.status, note=self.note, examples=len(self.examples),
            acceptance=len(self.acceptance), contract_unsupported=self.signature.unsupported,
            signature=_signature_text(self.signature),
            active_version=self.baseline.active_version if self._active_manifest is not None else None,
        )
        if self.status != "ran":
            return summary
        if self._thread is None and self.candidate is not None:
            self.start()  # the evaluation sandbox never reported its start
        if self._thread is not None:
            # start-up, then the calls, each within the phase's timeout; then the removal
            self._thread.join(2 * self.settings_oracle.timeout_seconds + 60)
        if self._error is not None:
            if isinstance(self._error, InfrastructureError):
                raise self._error
            raise InfrastructureError(f"the oracle sandbox failed to start: {self._error}") from self._error
        if self._results is None:
            raise InfrastructureError("the oracle phase did not finish its calls in time")
        summary.timings.update(self._call_timings)
        summary.timings["wait"] = round(time.monotonic() - t0, 4)
        self._judge(summary, self._results)
        if self.active is not None and self._active_results is not None:
            self._compare(summary, self._results, self._active_results)
        for role, served in (("candidate", self.candidate), ("active", self.active)):
            if served is not None:
                for key, value in served.timings.items():
                    summary.timings[f"{role}_{key}"] = round(value, 4)
        summary.failures = summary.failures[:MAX_LISTED]
        summary.nondeterministic = summary.nondeterministic[:MAX_LISTED]
        summary.behaviour_changes = summary.behaviour_changes[:MAX_LISTED]
        return summary

    def _send(self, served: Any, ready: dict[str, Any] | None,
              calls: list[tuple[list[Any], dict[str, Any], int]], deadline: float) -> dict[str, _Result]:
        """Each distinct input once (``times`` answers each); results by input key."""
        out: dict[str, _Result] = {}
        not_loaded = None
        if ready is None:
            not_loaded = f"the server never became ready ({served.broken or 'no answer'})"
        elif ready.get("ready") is not True:
            not_loaded = f"the skill did not load: {str(ready.get('error', ready))[:_TEXT_CAP]}"
        per_call = self.settings_oracle.call_timeout_seconds
        wanted: dict[str, tuple[list[Any], dict[str, Any], int]] = {}
        for args, kwargs, times in calls:
            key = input_key(args, kwargs)
            previous = wanted.get(key)
            wanted[key] = (args, kwargs, max(times, previous[2] if previous else 0))
        for key, (args, kwargs, times) in wanted.items():
            result = out[key] = _Result()
            if not_loaded is not None:
                result.problem, result.detail = "not_run", not_loaded
                continue
            for _ in range(times):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    result.problem, result.detail = "not_run", "the oracle phase's time ran out"
                    break
                outcome = served.call(args, kwargs, min(per_call, remaining))
                result.seconds += outcome.seconds
                if outcome.status == "answer" and outcome.body is not None and _valid_answer(outcome.body):
                    result.bodies.append(outcome.body)
                    continue
                if outcome.status == "answer":
                    served._break("an answer without a valid outcome")
                    result.problem, result.detail = "transport", "malformed answer (no valid outcome)"
                elif outcome.status == "closed" and outcome.detail.startswith("not sent"):
                    result.problem, result.detail = "not_run", outcome.detail
                elif outcome.status == "timeout":
                    result.problem = "timeout"
                    result.detail = f"no answer within {min(per_call, remaining):.1f}s"
                else:
                    result.problem, result.detail = "transport", f"{outcome.status}: {outcome.detail}"
                break
        return out

    def _judge(self, summary: OracleSummary, results: dict[str, _Result]) -> None:
        calls: dict[str, int] = {}
        passed: dict[str, int] = {}
        if self.plan and any(p.source == "contract" for p in self.plan):
            summary.contract_values = 0
        for p in self.plan:
            result = results[input_key(p.args, p.kwargs)]
            calls[p.source] = calls.get(p.source, 0) + (2 if p.repeat else 1)
            if p.source == "replay":
                continue  # compared with the active version, not judged
            if p.source == "contract":
                summary.contract_checks += 1
            failure = self._verdict(p, result)
            if failure is None:
                passed[p.source] = passed.get(p.source, 0) + (2 if p.repeat else 1)
                if p.source == "contract" and result.bodies[0].get("ok") is True:
                    summary.contract_values = (summary.contract_values or 0) + 1
            elif failure.problem == "nondeterministic":
                summary.nondeterministic.append(failure)
            else:
                summary.failures.append(failure)
        summary.calls, summary.passed = calls, passed

    def _call(self, p: _Planned, expected: str, got: str, problem: str, result: _Result) -> OracleCall:
        return OracleCall(source=p.source, name=p.name, args=p.args, kwargs=p.kwargs,
                          expected=expected, got=got, problem=problem,
                          seconds=round(result.seconds, 6))

    def _verdict(self, p: _Planned, result: _Result) -> OracleCall | None:
        e = p.example
        if e is not None:
            expected = f"raises {e.raises}" if e.raises is not None else _text(e.expect)
        else:
            returns = ot.describe(self.signature.returns) if self.signature.returns else "?"
            allowed = ", ".join(sorted(self.allowed_raises))
            expected = f"a value of {returns}" + (f" or raises {allowed}" if allowed else "")
        if result.problem is not None or not result.bodies:
            got = result.detail or "no answer"
            if result.problem == "timeout":
                got = f"timeout ({result.detail})"
            return self._call(p, expected, got, result.problem or "not_run", result)
        body = result.bodies[0]
        got = _answer_text(body)
        if e is not None:
            if e.raises is not None:
                if "raised" in body:
                    return None if body["raised"] == e.raises else self._call(
                        p, expected, got, "wrong_exception", result)
                return self._call(p, expected, got, "wrong_value" if body.get("ok") else "unserializable", result)
            if body.get("ok") is True:
                return None if same_value(e.expect, body.get("value"), e.tolerance) else self._call(
                    p, expected, got, "wrong_value", result)
            return self._call(p, expected, got, "unexpected_exception" if "raised" in body else "unserializable",
                              result)
        # contract
        if body.get("ok") is True:
            if self.signature.returns is not None and not ot.check(body.get("value"), self.signature.returns):
                return self._call(p, expected, got, "wrong_type", result)
        elif "raised" in body:
            if body["raised"] not in self.allowed_raises:
                return self._call(p, expected, got, "unexpected_exception", result)
        else:
            return self._call(p, expected, got, "unserializable", result)
        if len(result.bodies) < 2:  # pragma: no cover - a missing second answer has a problem set
            return self._call(p, expected, got, "not_run", result)
        if _outcome_key(result.bodies[0]) != _outcome_key(result.bodies[1]):
            return self._call(p, "the same answer twice",
                              f"{got}, then {_answer_text(result.bodies[1])}", "nondeterministic", result)
        return None

    def _compare(self, summary: OracleSummary, candidate: dict[str, _Result],
                 active: dict[str, _Result]) -> None:
        declared_by_examples: dict[str, str] = {}
        for p in self.plan:
            if p.example is not None and p.source in ("example", "acceptance"):
                result = candidate.get(input_key(p.args, p.kwargs))
                if result is not None and self._verdict(p, result) is None:
                    declared_by_examples[input_key(p.args, p.kwargs)] = (
                        f"the candidate's {'acceptance ' if p.source == 'acceptance' else ''}"
                        f"example {p.name} states the new answer")
        incomparable = 0
        for args, kwargs in self._replay_inputs:
            key = input_key(args, kwargs)
            mine, theirs = candidate.get(key), active.get(key)
            if theirs is None or theirs.problem is not None or not theirs.bodies:
                incomparable += 1
                continue
            if mine is None or mine.problem is not None or not mine.bodies:
                cand_text = (f"timeout ({mine.detail})" if mine and mine.problem == "timeout"
                             else (mine.detail if mine else "no answer"))
                changed = True
            else:
                cand_text = _answer_text(mine.bodies[0])
                changed = _outcome_key(mine.bodies[0]) != _outcome_key(theirs.bodies[0])
            if not changed:
                continue
            reason = self.intended.get(key) or declared_by_examples.get(key)
            summary.behaviour_changes.append(BehaviourChange(
                args=args, kwargs=kwargs, active=_answer_text(theirs.bodies[0]), candidate=cand_text,
                declared=reason is not None, reason=reason))
        summary.undeclared_changes = sum(1 for c in summary.behaviour_changes if not c.declared)
        if incomparable:
            extra = f"{incomparable} replay input(s) got no answer from the active version"
            summary.note = f"{summary.note}; {extra}" if summary.note else extra


def begin(submission: Any, *, policy: Any, client: Any, image: str, limits: Any,
          evaluation_id: str, policies_dir: Path, baseline: Baseline | None) -> OraclePhase:
    """Plan the phase; its :meth:`~OraclePhase.start` is called once the evaluation sandbox
    runs (its sandboxes then start beside the static and dynamic phases)."""
    return OraclePhase(submission, policy=policy, client=client, image=image, limits=limits,
                       evaluation_id=evaluation_id, policies_dir=policies_dir, baseline=baseline)


def conclude(phase: OraclePhase, report: EvaluationReport, policy: Policy) -> EvaluationReport:
    """The report with its ``oracle`` section: run when the report so far is neither
    ``error`` nor ``rejected``, else skipped. Always removes the oracle's sandboxes."""
    started = time.monotonic()
    reasons = list(report.reasons)
    try:
        verdict, _ = decide(report, policy)
        if verdict in (Verdict.error, Verdict.rejected):
            summary = phase.skip(f"the evaluation is already {verdict.value}")
        else:
            try:
                summary = phase.run()
            except InfrastructureError as exc:
                summary = phase.skip(f"the oracle sandbox failed: {exc}")
                reasons.append(Reason(code=ReasonCode.infrastructure, message=f"oracle phase: {exc}"))
    finally:
        try:
            phase.close()
        except InfrastructureError as exc:
            reasons.append(Reason(code=ReasonCode.infrastructure, message=f"oracle phase: {exc}"))
    summary.timings["total"] = round(time.monotonic() - started, 4)
    timings = {**report.timings, "oracle": summary.timings["total"]}
    return report.model_copy(update={"oracle": summary, "reasons": reasons, "timings": timings})
