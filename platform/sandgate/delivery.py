"""Progressive delivery: start a canary, watch it, decide, abort. One code path for CLI, API and scheduler.

::

    start(store, name=, number=, actor=, policy=, weight=None)   -> CanaryRecord   (promote --canary)
    abort(store, name=, actor=, reason=)                          -> CanaryRecord   (sandgate abort)
    status(store, name=)                                          -> dict           (sandgate status)
    run_canaries(store, webhook=None)                             -> [dict]         (the scheduler job)

Each look of :func:`run_canaries` (the scheduler's ``run_canaries`` job, every
``SANDGATE_SCHEDULER_CANARY_SECONDS``, default 5 s) analyses every running
canary with :func:`sandgate.policy.canary.analyse` over the runtime counts the
consumers sent, and applies the decision as one store transaction with one
event whose evidence is the decision (counts, rates, statistic, thresholds):

* ``rollback`` → the candidate is dropped (``canary_rolled_back``), and the
  optional webhook is called (``POST`` JSON, ``SANDGATE_SCHEDULER_CANARY_WEBHOOK``,
  timeout ``SANDGATE_SCHEDULER_CANARY_WEBHOOK_TIMEOUT_SECONDS``; a failing
  webhook is logged, never retried, never undoes the rollback);
* ``advance`` → the weight goes to the next step (``canary_advanced``);
* ``promote`` → the candidate becomes active (a normal ``promoted`` move);
  the bake window starts (state ``baking``);
* ``hold`` → stored on the canary; an event ``canary_held`` only when the
  reason changes (not one per look).

During the bake window, :func:`sandgate.policy.canary.analyse_bake` compares the
new active version with the previous one's rate during the canary: a
regression rolls back automatically (a normal ``rolled_back`` move, evidence
``automatic: true``, webhook); at the end of the window: ``canary_completed``.

A canary whose pointer moved by hand meanwhile (promote, rollback) is marked
``superseded``: the person's move wins.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sandgate.errors import Conflict, InvalidTransition, NotFound
from sandgate.policy.canary import CanaryConfig, Decision, VersionCounts, analyse, analyse_bake
from sandgate.store import canary as cs
from sandgate.store import versions
from sandgate.store.engine import Store

__all__ = ["ACTOR", "start", "abort", "status", "decide", "run_canaries", "config_of", "send_webhook"]

log = logging.getLogger("sandgate.delivery")

#: the actor of automatic canary decisions
ACTOR = "scheduler:canary"


def config_of(record: cs.CanaryRecord) -> CanaryConfig:
    c = record.config
    return CanaryConfig(
        steps=tuple(int(w) for w in c.get("steps", [10, 50])),
        min_calls=int(c.get("min_calls", 200)),
        alpha=float(c.get("alpha", 0.01)),
        max_latency_ratio=float(c.get("max_latency_ratio", 2.0)),
        latency_min_calls=int(c.get("latency_min_calls", 200)),
        latency_floor_ms=float(c.get("latency_floor_ms", 1.0)),
        bake_seconds=float(c.get("bake_seconds", 600.0)),
    )


def start(store: Store, *, name: str, number: int, actor: str, policy: Any, weight: int | None = None,
          reason: str | None = None, expected_generation: int | None = None, force: bool = False) -> cs.CanaryRecord:
    """Start a canary of ``name@number`` under ``policy``'s ``[promotion.canary]`` settings."""
    config = policy.promotion.canary_for(name)
    return cs.start_canary(store, name=name, number=number, actor=actor, config=config, policy=policy,
                           weight=weight, reason=reason, expected_generation=expected_generation, force=force)


def abort(store: Store, *, name: str, actor: str, reason: str) -> cs.CanaryRecord:
    """Drop the candidate of ``name`` now (a person's decision: ``canary_aborted``)."""
    return cs.drop_candidate(store, name=name, actor=actor, reason=reason, evidence={}, automatic=False)


def _baseline_during(store: Store, record: cs.CanaryRecord) -> VersionCounts:
    total = VersionCounts()
    for step in cs.step_counts(store, canary=record):
        total = total + step.baseline
    return total


def _bake_start(record: cs.CanaryRecord) -> tuple[int, datetime]:
    last = record.steps[-1]
    return int(last["generation"]), datetime.fromisoformat(last["started_at"])


def decide(store: Store, record: cs.CanaryRecord, *, now: datetime | None = None) -> Decision:
    """The decision for ``record`` now (nothing is applied)."""
    config = config_of(record)
    if record.state == "baking":
        generation, started = _bake_start(record)
        current = cs.version_counts(store, name=record.skill, number=record.candidate, since_generation=generation)
        elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
        return analyse_bake(config, current=current, previous=_baseline_during(store, record),
                            elapsed_seconds=elapsed)
    return analyse(config, cs.step_counts(store, canary=record))


def status(store: Store, *, name: str) -> dict[str, Any]:
    """What ``sandgate status NAME`` shows: pointer state, the canary, counts per version, the decision now."""
    skill = versions.get_skill(store, name=name)
    record = cs.get_canary(store, name=name)
    out: dict[str, Any] = {"skill": name, "active": skill.active_version, "generation": skill.generation,
                           "candidate": None, "weight": 0, "canary": None, "versions": {}, "decision": None}
    if record is None:
        if skill.active_version is not None:
            out["versions"][str(skill.active_version)] = cs.version_counts(
                store, name=name, number=skill.active_version).to_dict()
        return out
    routes = cs.canary_routes(store, names=[name])
    if name in routes:
        out["candidate"], out["weight"] = routes[name][0], routes[name][1]
    out["canary"] = record.to_dict()
    steps = cs.step_counts(store, canary=record)
    out["steps"] = [{"weight": s.weight, "candidate": s.candidate.to_dict(), "baseline": s.baseline.to_dict()}
                    for s in steps]
    out["versions"][str(record.baseline)] = _baseline_during(store, record).to_dict()
    cand = VersionCounts()
    for s in steps:
        cand = cand + s.candidate
    if record.state in ("baking", "completed") or record.steps[-1]["weight"] == 100:
        cand = cand + cs.version_counts(store, name=name, number=record.candidate,
                                        since_generation=int(record.steps[-1]["generation"]))
    out["versions"][str(record.candidate)] = cand.to_dict()
    out["consumers"] = cs.consumers(store, canary=record)
    if record.state in cs.ACTIVE_STATES:
        out["decision"] = decide(store, record).to_dict()
    else:
        out["decision"] = record.last_decision
    return out


def send_webhook(url: str, payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """POST ``payload`` to ``url``; the outcome as data (never raises)."""
    import httpx

    try:
        response = httpx.post(url, json=payload, timeout=httpx.Timeout(timeout), follow_redirects=False)
        ok = 200 <= response.status_code < 300
        if not ok:
            log.warning("canary webhook answered %d", response.status_code,
                        extra={"webhook": url, "status": response.status_code})
        return {"url": url, "status": response.status_code, "ok": ok}
    except httpx.HTTPError as exc:
        log.warning("canary webhook failed: %s", exc, extra={"webhook": url})
        return {"url": url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _rollback_payload(record: cs.CanaryRecord, decision: Decision, phase: str) -> dict[str, Any]:
    return {"event": "canary_rolled_back", "phase": phase, "skill": record.skill, "candidate": record.candidate,
            "baseline": record.baseline, "canary": record.id, "decision": decision.to_dict()}


def _apply(store: Store, record: cs.CanaryRecord, decision: Decision, *, webhook: str | None,
           webhook_timeout: float) -> dict[str, Any]:
    name, d = record.skill, decision.to_dict()
    d["evidence"]["consumers"] = cs.consumers(store, canary=record)  # who reported the counts
    out: dict[str, Any] = {"skill": name, "canary": record.id, "state": record.state, "action": decision.action,
                           "code": decision.code, "message": decision.message}
    evidence = {"decision": d}
    if record.state == "baking":
        if decision.action == "rollback":
            cs.bake_rollback(store, name=name, canary_id=record.id, actor=ACTOR,
                             reason=f"automatic rollback after full promotion: {decision.message}", evidence=evidence)
            if webhook:
                out["webhook"] = send_webhook(webhook, _rollback_payload(record, decision, "bake"),
                                              timeout=webhook_timeout)
        elif decision.action == "complete":
            cs.finish_canary(store, name=name, canary_id=record.id, state="completed", actor=ACTOR,
                             reason=decision.message, evidence=evidence)
        else:
            cs.record_decision(store, name=name, canary_id=record.id, decision=d, actor=ACTOR)
        return out
    if decision.action == "rollback":
        cs.drop_candidate(store, name=name, canary_id=record.id, actor=ACTOR,
                          reason=f"automatic canary rollback: {decision.message}", evidence=evidence, automatic=True,
                          expected_generation=record.generation)
        if webhook:
            out["webhook"] = send_webhook(webhook, _rollback_payload(record, decision, "canary"),
                                          timeout=webhook_timeout)
    elif decision.action == "advance":
        assert decision.next_weight is not None
        cs.set_weight(store, name=name, canary_id=record.id, weight=decision.next_weight, actor=ACTOR,
                      reason=decision.message, evidence=evidence, expected_generation=record.generation)
    elif decision.action == "promote":
        cs.promote_candidate(store, name=name, canary_id=record.id, actor=ACTOR,
                             reason=f"canary passed: {decision.message}", evidence=evidence,
                             expected_generation=record.generation)
    else:
        cs.record_decision(store, name=name, canary_id=record.id, decision=d, actor=ACTOR)
    return out


def _superseded(record: cs.CanaryRecord) -> bool:
    if record.state == "baking":
        return record.active != record.candidate
    return record.active != record.baseline or record.weight == 0


def run_canaries(store: Store, *, webhook: str | None = None, webhook_timeout: float = 5.0,
                 now: datetime | None = None) -> list[dict[str, Any]]:
    """One look at every running or baking canary; apply each decision (module docstring)."""
    results: list[dict[str, Any]] = []
    for record in cs.running_canaries(store):
        try:
            if _superseded(record):
                cs.finish_canary(store, name=record.skill, canary_id=record.id, state="superseded", actor=ACTOR,
                                 reason="the pointer was moved by hand during the canary", evidence={})
                results.append({"skill": record.skill, "canary": record.id, "action": "superseded"})
                continue
            decision = decide(store, record, now=now)
            result = _apply(store, record, decision, webhook=webhook, webhook_timeout=webhook_timeout)
        except (Conflict, InvalidTransition, NotFound) as exc:  # a person moved it meanwhile: next look
            log.info("canary decision not applied: %s", exc, extra={"skill": record.skill, "canary": record.id})
            results.append({"skill": record.skill, "canary": record.id, "action": "skipped", "error": str(exc)})
            continue
        if result["action"] != "hold":
            log.info("canary %s: %s", result["action"], result["message"],
                     extra={"skill": record.skill, "canary": record.id, "action": result["action"],
                            "code": result.get("code")})
        results.append(result)
    return results
