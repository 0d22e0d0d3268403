"""Canary analysis: pure, no I/O. Counts in, a decision with its evidence out.

A canary runs a *candidate* version beside the *baseline* (the ``active``
version) at a traffic weight that goes up in steps (``10 → 50 → 100`` %). At
every look the scheduler hands :func:`analyse` the runtime counts of both
versions, per step, and gets back one :class:`Decision`:

=============  ===========================================================
``rollback``   the candidate's error rate is significantly above the
               baseline's (the sequential test below rejected), or its p95
               latency exceeds ``max_latency_ratio`` x the baseline's
``advance``    the current step saw ``min_calls`` candidate calls and the
               test did not reject: go to the next weight
``promote``    the same, at the last step below 100 %: the candidate becomes
               ``active`` for every call (the bake window starts)
``hold``       not enough calls yet (the evidence says how many are missing)
=============  ===========================================================

The error test (always valid under repeated looks)
--------------------------------------------------

Errors of each version are modelled as Poisson in its calls (rates
``λc``, ``λb``; for error rates well below 1 this is the binomial to within a
rounding). *Conditional on the total number of errors* in a step, the number
that hit the candidate is binomial with success probability

    q(ρ) = ρ·w / (ρ·w + 1 − w)

where ``w = nc / (nc + nb)`` is the candidate's share of the step's calls and
``ρ = λc / λb`` the rate ratio; ``ρ = 1`` (the null hypothesis: the candidate
is no worse) gives ``q = w``. For a fixed alternative ``ρ``, the likelihood
ratio ``LR_ρ = Π_steps (q(ρ)/w)^kc · ((1 − q(ρ))/(1 − w))^kb`` is, under the
null, a non-negative martingale with mean 1 (one factor per error, in arrival
order). The statistic is the *mixture* ``Λ = Σ_ρ π_ρ · LR_ρ`` over a grid of
ratios (:data:`RATIO_GRID`, equal weights) — an mSPRT with a discrete prior,
again a mean-1 martingale under the null. By Ville's inequality

    P(Λ ever reaches 1/α | null) ≤ α

however often it is looked at: the false-rollback rate of an A/A canary is at
most ``alpha`` (default 0.01) over the *whole* canary, not per look. The
mixture makes the test fast against a large regression (a 5 % vs 0.1 % error
rate crosses after a handful of candidate errors) and still sensitive to a
small one. Counting errors per step keeps the test valid when the weight
changes. It is an approximation in two stated ways: counts are aggregated per
step rather than ordered error by error (exact when the weight is constant
within a step, which it is), and the binomial-from-Poisson step (good while
error rates are small; a rate near 100 % only makes the test slower, never
looser against the candidate).

The error test is one-sided: it never rolls back a candidate for being
*better*, and it never "accepts" — advancing is the rule "enough calls and no
rejection", as in Argo Rollouts / Flagger analysis steps.

The latency limit
-----------------

A limit, not a test: once both versions have ``latency_min_calls`` calls in
the canary, the candidate's p95 (from the histogram, ±12.5 %, see
:func:`bucket_of`) over the baseline's p95 must stay at or below
``max_latency_ratio``. Repeated looks can trip a limit by chance; the
minimum count and a ratio well above 1 (default 2.0) keep that rare (the A/A
bench counts it among the false rollbacks). A candidate whose p95 is below
``latency_floor_ms`` (default 1 ms) is never rolled back for latency: for
skills that answer in microseconds the ratio of two p95s is timer noise and
scheduling jitter, not a regression a caller could notice.

The bake window
---------------

After full promotion nothing is left to compare against at the same time, so
:func:`analyse_bake` compares the new active version with the previous one's
rate *measured during the canary*: a one-sample mSPRT of ``k`` errors in
``n`` calls against ``λ0``, the previous version's rate taken at its upper
confidence bound (so a short baseline measurement errs against rolling back),
``LR_ρ = ρ^k · exp(−(ρ − 1)·λ0·n)`` mixed over the same grid. Crossing
``1/α`` rolls back automatically; the window ends after ``bake_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "RATIO_GRID",
    "CanaryConfig",
    "VersionCounts",
    "StepCounts",
    "ErrorTest",
    "Decision",
    "DecisionAction",
    "bucket_of",
    "bucket_bounds",
    "quantile",
    "error_test",
    "bake_test",
    "analyse",
    "analyse_bake",
    "next_weight",
]

#: alternatives of the mixture (candidate error rate / baseline error rate), equal prior weights
RATIO_GRID: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)

DecisionAction = Literal["advance", "promote", "rollback", "hold", "complete"]


# --------------------------------------------------------------------------- latency histogram


def bucket_of(ns: int) -> int:
    """The histogram bucket of a latency in nanoseconds: 4 buckets per power of two (±12.5 %).

    ``n = ns.bit_length()``; below 8 ns the bucket is ``n``; else
    ``(n << 2) | (the two bits after the leading one)``. The registry's hot
    path inlines exactly this arithmetic.
    """
    n = ns.bit_length()
    if n < 3:
        return n
    return (n << 2) | ((ns >> (n - 3)) & 3)


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """``[low, high)`` nanoseconds of a bucket made by :func:`bucket_of`."""
    if bucket < 3:
        return (0, 1) if bucket == 0 else (1 << (bucket - 1), 1 << bucket)
    n, sub = bucket >> 2, bucket & 3
    return (4 + sub) << (n - 3), (5 + sub) << (n - 3)


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in nanoseconds, the midpoint of its bucket; None when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            low, high = bucket_bounds(bucket)
            return (low + high) / 2
    low, high = bucket_bounds(max(histogram))  # pragma: no cover - rounding only
    return (low + high) / 2


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class VersionCounts:
    """What consumers reported for one version: calls, errors by type, a latency histogram."""

    calls: int = 0
    errors: int = 0
    error_types: Mapping[str, int] = field(default_factory=dict)
    #: :func:`bucket_of` bucket -> calls
    latency: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.calls < 0 or self.errors < 0 or self.errors > self.calls:
            raise ValueError(f"bad counts: {self.errors} errors in {self.calls} calls")

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def __add__(self, other: VersionCounts) -> VersionCounts:
        types = dict(self.error_types)
        for k, v in other.error_types.items():
            types[k] = types.get(k, 0) + v
        lat = dict(self.latency)
        for bucket, n in other.latency.items():
            lat[bucket] = lat.get(bucket, 0) + n
        return VersionCounts(self.calls + other.calls, self.errors + other.errors, types, lat)

    def to_dict(self) -> dict[str, Any]:
        p50, p95 = quantile(self.latency, 0.5), quantile(self.latency, 0.95)
        return {
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "error_types": dict(sorted(self.error_types.items())),
            "p50_ms": None if p50 is None else round(p50 / 1e6, 4),
            "p95_ms": None if p95 is None else round(p95 / 1e6, 4),
        }


@dataclass(frozen=True)
class StepCounts:
    """Counts of both versions while the candidate served ``weight`` % of calls."""

    weight: int
    candidate: VersionCounts
    baseline: VersionCounts


@dataclass(frozen=True)
class CanaryConfig:
    """The canary's parameters (``[promotion.canary]`` of the policy)."""

    #: candidate weights in percent, increasing; a final 100 is implied
    steps: tuple[int, ...] = (10, 50)
    #: candidate calls a step needs before it can advance
    min_calls: int = 200
    #: the false-rollback bound of the error test (over the whole canary)
    alpha: float = 0.01
    #: rollback when candidate p95 / baseline p95 exceeds this
    max_latency_ratio: float = 2.0
    #: calls each version needs before the latency limit applies
    latency_min_calls: int = 200
    #: the latency limit applies only once the candidate's p95 is at least this (milliseconds)
    latency_floor_ms: float = 1.0
    #: seconds the new active version is watched after full promotion (0: no bake)
    bake_seconds: float = 600.0

    def __post_init__(self) -> None:
        steps = tuple(s for s in self.steps if s != 100)
        if not steps or any(not 0 < s < 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"steps must be increasing percentages in 1..99 (then 100), got {list(self.steps)}")
        object.__setattr__(self, "steps", steps)
        if self.min_calls < 1:
            raise ValueError("min_calls must be >= 1")
        if not 0 < self.alpha < 0.5:
            raise ValueError("alpha must be in (0, 0.5)")
        if not self.max_latency_ratio > 1:
            raise ValueError("max_latency_ratio must be > 1")
        if not self.latency_floor_ms >= 0:
            raise ValueError("latency_floor_ms must be >= 0")


# --------------------------------------------------------------------------- the tests


@dataclass(frozen=True)
class ErrorTest:
    """The mixture likelihood ratio and its threshold."""

    statistic: float
    threshold: float
    log_lr: Mapping[float, float]

    @property
    def rejected(self) -> bool:
        return self.statistic >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        best = max(self.log_lr, key=self.log_lr.__getitem__) if self.log_lr else None
        return {
            "test": "mSPRT (conditional binomial, mixture over rate ratios)",
            "statistic": _finite(self.statistic),
            "log_statistic": _finite(math.log(self.statistic)) if self.statistic > 0 else None,
            "threshold": self.threshold,
            "rejected": self.rejected,
            "best_ratio": best,
            "ratio_grid": list(self.log_lr),
        }


def _finite(x: float) -> float:
    return round(x, 6) if math.isfinite(x) else 1e308


def _mix(log_lrs: Mapping[float, float]) -> float:
    top = max(log_lrs.values())
    if top > 700:
        return math.inf
    return sum(math.exp(v) for v in log_lrs.values()) / len(log_lrs)


def error_test(steps: Sequence[StepCounts], *, alpha: float, grid: Sequence[float] = RATIO_GRID) -> ErrorTest:
    """The always-valid test of "candidate error rate > baseline's" (module docstring)."""
    log_lr = dict.fromkeys(grid, 0.0)
    for step in steps:
        nc, nb = step.candidate.calls, step.baseline.calls
        kc, kb = step.candidate.errors, step.baseline.errors
        if nc == 0 or nb == 0 or kc + kb == 0:
            continue  # no comparison possible in this step (or nothing happened)
        w = nc / (nc + nb)
        for rho in grid:
            q = rho * w / (rho * w + 1 - w)
            log_lr[rho] += kc * math.log(q / w) + kb * math.log((1 - q) / (1 - w))
    return ErrorTest(statistic=_mix(log_lr), threshold=1 / alpha, log_lr=log_lr)


def _rate_upper(errors: int, calls: int, z: float = 2.0) -> float:
    """An upper confidence bound of a Poisson rate (Wilson-like; never 0)."""
    if calls <= 0:
        return math.inf
    k = errors
    return ((math.sqrt(k + 1) + z / 2) ** 2) / calls


def bake_test(
    current: VersionCounts, previous: VersionCounts, *, alpha: float, grid: Sequence[float] = RATIO_GRID
) -> tuple[ErrorTest, float]:
    """One-sample mSPRT of the current version's errors against the previous version's rate."""
    lam0 = _rate_upper(previous.errors, previous.calls)
    log_lr = dict.fromkeys(grid, 0.0)
    if math.isfinite(lam0) and current.calls:
        for rho in grid:
            log_lr[rho] = current.errors * math.log(rho) - (rho - 1) * lam0 * current.calls
    return ErrorTest(statistic=_mix(log_lr), threshold=1 / alpha, log_lr=log_lr), lam0


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """What to do now, why (``code``, ``message``), and the evidence behind it."""

    action: DecisionAction
    code: str
    message: str
    weight: int
    next_weight: int | None
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "code": self.code,
            "message": self.message,
            "weight": self.weight,
            "next_weight": self.next_weight,
            "evidence": self.evidence,
        }


def next_weight(config: CanaryConfig, weight: int) -> int:
    """The weight after ``weight`` (100 after the last step)."""
    for s in config.steps:
        if s > weight:
            return s
    return 100


def _total(counts: Sequence[VersionCounts]) -> VersionCounts:
    out = VersionCounts()
    for c in counts:
        out = out + c
    return out


def analyse(config: CanaryConfig, steps: Sequence[StepCounts]) -> Decision:
    """The decision at a look. ``steps``: every step so far, oldest first; the last is the current one."""
    if not steps:
        raise ValueError("analyse needs at least the current step")
    current = steps[-1]
    weight = current.weight
    cand = _total([s.candidate for s in steps])
    base = _total([s.baseline for s in steps])
    test = error_test(steps, alpha=config.alpha)
    p95c, p95b = quantile(cand.latency, 0.95), quantile(base.latency, 0.95)
    latency_ratio = p95c / p95b if p95c is not None and p95b else None
    evidence: dict[str, Any] = {
        "weight": weight,
        "candidate": cand.to_dict(),
        "baseline": base.to_dict(),
        "step": {"weight": weight, "candidate_calls": current.candidate.calls,
                 "baseline_calls": current.baseline.calls, "min_calls": config.min_calls},
        "error_test": test.to_dict(),
        "latency": {"p95_ratio": None if latency_ratio is None else round(latency_ratio, 4),
                    "max_ratio": config.max_latency_ratio, "min_calls": config.latency_min_calls,
                    "floor_ms": config.latency_floor_ms},
        "steps": [s.weight for s in steps],
    }
    nxt = next_weight(config, weight)
    if test.rejected:
        return Decision(
            "rollback", "error_rate",
            f"candidate error rate {cand.error_rate:.4%} ({cand.errors}/{cand.calls}) is significantly above "
            f"the baseline's {base.error_rate:.4%} ({base.errors}/{base.calls}): mSPRT statistic "
            f"{test.statistic:.3g} >= {test.threshold:g} (alpha {config.alpha:g})",
            weight, None, evidence,
        )
    enough_latency = (cand.calls >= config.latency_min_calls and base.calls >= config.latency_min_calls
                      and p95c is not None and p95c >= config.latency_floor_ms * 1e6)
    if latency_ratio is not None and enough_latency and latency_ratio > config.max_latency_ratio:
        assert p95c is not None and p95b is not None  # a ratio needs both
        return Decision(
            "rollback", "latency",
            f"candidate p95 latency {p95c / 1e6:.3f} ms is {latency_ratio:.2f}x the baseline's "
            f"{p95b / 1e6:.3f} ms (limit {config.max_latency_ratio:g}x)",
            weight, None, evidence,
        )
    if current.candidate.calls < config.min_calls:
        missing = config.min_calls - current.candidate.calls
        return Decision(
            "hold", "collecting",
            f"step {weight} %: {current.candidate.calls}/{config.min_calls} candidate calls "
            f"({missing} more needed); no significant difference so far",
            weight, nxt, evidence,
        )
    if nxt >= 100:
        return Decision(
            "promote", "passed_steps",
            f"all steps passed ({', '.join(str(s.weight) for s in steps)} %): candidate error rate "
            f"{cand.error_rate:.4%} vs baseline {base.error_rate:.4%}, no significant difference",
            weight, 100, evidence,
        )
    return Decision(
        "advance", "step_passed",
        f"step {weight} % passed with {current.candidate.calls} candidate calls "
        f"(error rate {cand.error_rate:.4%} vs {base.error_rate:.4%}): on to {nxt} %",
        weight, nxt, evidence,
    )


def analyse_bake(
    config: CanaryConfig, *, current: VersionCounts, previous: VersionCounts, elapsed_seconds: float
) -> Decision:
    """During the bake window: ``rollback`` on a significant regression, ``complete`` when it ends, else ``hold``."""
    test, lam0 = bake_test(current, previous, alpha=config.alpha)
    evidence = {
        "weight": 100,
        "current": current.to_dict(),
        "previous": previous.to_dict(),
        "previous_rate_upper": None if not math.isfinite(lam0) else round(lam0, 6),
        "error_test": {**test.to_dict(), "test": "mSPRT (one-sample Poisson, mixture over rate ratios)"},
        "bake": {"elapsed_seconds": round(elapsed_seconds, 3), "bake_seconds": config.bake_seconds},
    }
    if test.rejected:
        return Decision(
            "rollback", "bake_error_rate",
            f"after full promotion the error rate {current.error_rate:.4%} ({current.errors}/{current.calls}) "
            f"is significantly above the previous version's {previous.error_rate:.4%} "
            f"({previous.errors}/{previous.calls}): mSPRT statistic {test.statistic:.3g} >= {test.threshold:g}",
            100, None, evidence,
        )
    if elapsed_seconds >= config.bake_seconds:
        return Decision(
            "complete", "baked",
            f"bake window of {config.bake_seconds:g} s over with {current.calls} calls, error rate "
            f"{current.error_rate:.4%}: no significant regression",
            100, None, evidence,
        )
    return Decision(
        "hold", "baking",
        f"baking: {elapsed_seconds:.0f}/{config.bake_seconds:g} s, {current.calls} calls, error rate "
        f"{current.error_rate:.4%}",
        100, None, evidence,
    )
