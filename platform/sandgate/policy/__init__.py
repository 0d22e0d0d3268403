"""Policy: gates and decisions. A core that does no I/O except loading the policy file.

::

    load_policy("default")            -> Policy        (policies/default.toml)
    effective_limits(limits, request) -> Limits        (only ever tighter)
    decide(report, policy)            -> (Verdict, [Reason])   pure and total
    policy.promotion.mode_for(skill)  -> "auto" | "manual"

The precedence and the judgement calls of :func:`decide` are written down in
:mod:`sandgate.policy.gates`; those of :func:`effective_limits` in
:mod:`sandgate.policy.limits`.
"""

from __future__ import annotations

from sandgate.policy.gates import decide
from sandgate.policy.limits import effective_limits
from sandgate.policy.model import (
    SEVERITIES,
    Gates,
    Limits,
    Mutation,
    Policy,
    Promotion,
    load_policy,
    parse_policy,
)

__all__ = [
    "Policy",
    "Gates",
    "Limits",
    "Mutation",
    "Promotion",
    "SEVERITIES",
    "load_policy",
    "parse_policy",
    "decide",
    "effective_limits",
]
