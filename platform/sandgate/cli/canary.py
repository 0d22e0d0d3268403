"""Canary commands: ``sandgate status NAME``, ``sandgate abort NAME`` (``promote N --canary W`` is in store.py).

Thin like the store commands: one call of the :class:`~sandgate.service.SkillService`
(embedded over the settings' store, or remote with ``SANDGATE_URL``), then formatting.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sandgate.cli.common import errors
from sandgate.cli.store import ActorOpt, JsonOpt, _console, _echo_json, _lit, _service

__all__ = ["register", "start"]


def start(
    ctx: typer.Context,
    *,
    name: str,
    number: int,
    weight: int,
    reason: str | None,
    force: bool,
    policy: str | None,
    expected_generation: int | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """``sandgate promote NAME N --canary W``: the version becomes the candidate at W % of calls."""
    with errors(), _service(ctx) as service:
        record = service.start_canary(
            name,
            number,
            weight=weight,
            actor=actor,
            reason=reason,
            policy=policy,
            expected_generation=expected_generation,
            force=force,
        )
    if as_json:
        _echo_json(record.to_dict())
        return
    steps = ", ".join(str(w) for w in record.config.get("steps", [])) + ", 100"
    _console().print(
        f"{name}@{record.candidate}: canary at {record.weight} % beside "
        f"{name}@{record.baseline} (generation {record.generation}; steps {steps} %, "
        f"min {record.config.get('min_calls')} calls per step"
        f"{', fallback on' if record.config.get('fallback') else ''})"
    )


def status(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    as_json: JsonOpt = False,
) -> None:
    """Versions, weights, calls, error rates, latency, and the current canary decision with its reason."""
    with errors(), _service(ctx) as service:
        data = service.canary_status(name)
    if as_json:
        _echo_json(data)
        return
    _print_status(data)


def _fmt(counts: dict[str, Any]) -> str:
    p50, p95 = counts.get("p50_ms"), counts.get("p95_ms")
    lat = f"p50 {p50:.3f} ms, p95 {p95:.3f} ms" if p50 is not None and p95 is not None else "no latency yet"
    # error type names and consumer names come from the consumers: printed literally, never as markup
    types = ", ".join(f"{_lit(k)} {v}" for k, v in (counts.get("error_types") or {}).items())
    return (
        f"{counts['calls']} calls, {counts['errors']} errors ({counts['error_rate']:.4%})"
        f"{' [' + types + ']' if types else ''}; {lat}"
    )


def _print_status(data: dict[str, Any]) -> None:
    out = _console()
    name = data["skill"]
    canary = data.get("canary")
    weight = data.get("weight") or 0
    active = data.get("active")
    line = f"{name}: active {name}@{active}" if active is not None else f"{name}: nothing active"
    if data.get("candidate") is not None:
        line += f" ({100 - weight} %), candidate {name}@{data['candidate']} ({weight} %)"
    out.print(f"{line}; generation {data.get('generation')}")
    if canary is None:
        out.print("no canary so far")
        for number, counts in data.get("versions", {}).items():
            out.print(f"  {name}@{number}: {_fmt(counts)}")
        return
    out.print(
        f"canary {canary['id']}: {name}@{canary['candidate']} vs {name}@{canary['baseline']}, "
        f"state {canary['state']}, steps " + " → ".join(str(s["weight"]) for s in canary["steps"]) + " %"
    )
    for number, counts in data.get("versions", {}).items():
        role = "candidate" if int(number) == canary["candidate"] else "baseline"
        out.print(f"  {name}@{number} ({role}): {_fmt(counts)}")
    reporters = data.get("consumers") or {}
    if reporters:
        out.print("reported by: " + ", ".join(f"{_lit(c)} ({n} calls)" for c, n in reporters.items()))
    decision = data.get("decision")
    if decision:
        test = (decision.get("evidence") or {}).get("error_test") or {}
        stat = ""
        if test and decision["action"] != "rollback":  # a rollback's message already names it
            stat = f"; error test statistic {test['statistic']:.3g} (rolls back at {test['threshold']:g})"
        out.print(f"decision: {decision['action']} ({decision['code']}): {_lit(decision['message'])}{stat}")


def abort(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Skill name.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the event).")],
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drop the candidate of a running canary: every call goes to the active version again."""
    with errors(), _service(ctx) as service:
        record = service.abort_canary(name, actor=actor, reason=reason)
    if as_json:
        _echo_json(record.to_dict())
        return
    _console().print(
        f"{name}@{record.candidate}: canary aborted; {name}@{record.active} serves every call "
        f"(generation {record.generation})"
    )


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("abort")(abort)
