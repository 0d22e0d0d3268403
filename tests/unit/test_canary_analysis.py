"""The canary analysis (sandgate.policy.canary): pure, so tested directly."""

from __future__ import annotations

import math
import random

import pytest

from sandgate.policy.canary import (
    CanaryConfig,
    StepCounts,
    VersionCounts,
    analyse,
    analyse_bake,
    bucket_bounds,
    bucket_of,
    error_test,
    next_weight,
    quantile,
)


def vc(calls: int, errors: int = 0, lat_ns: int = 1_000_000) -> VersionCounts:
    return VersionCounts(calls, errors, {"ValueError": errors} if errors else {},
                         {bucket_of(lat_ns): calls} if calls else {})


def test_buckets_cover_every_latency_within_an_eighth() -> None:
    rnd = random.Random(3)
    fixed = [0, 1, 2, 3, 7, 8, 9, 15, 16, 1000, 123_456, 10**9, 2**40 + 5]
    for ns in fixed + [rnd.randrange(1, 10**10) for _ in range(2000)]:
        low, high = bucket_bounds(bucket_of(ns))
        assert low <= ns < high, ns
        if ns >= 8:
            assert (high - low) / low <= 0.25


def test_buckets_are_monotonic() -> None:
    prev = -1
    for ns in range(0, 5000):
        b = bucket_of(ns)
        assert b >= prev
        prev = b


def test_quantile_of_a_histogram() -> None:
    hist = {bucket_of(1_000_000): 90, bucket_of(10_000_000): 10}
    assert quantile({}, 0.5) is None
    assert quantile(hist, 0.5) == pytest.approx(1_000_000, rel=0.15)
    assert quantile(hist, 0.95) == pytest.approx(10_000_000, rel=0.15)


def test_counts_refuse_more_errors_than_calls() -> None:
    with pytest.raises(ValueError, match="errors"):
        VersionCounts(3, 4)


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="increasing"):
        CanaryConfig(steps=(50, 10))
    with pytest.raises(ValueError, match="increasing"):
        CanaryConfig(steps=(0, 50))
    with pytest.raises(ValueError, match="alpha"):
        CanaryConfig(alpha=0.7)
    assert CanaryConfig(steps=(10, 50, 100)).steps == (10, 50)
    assert next_weight(CanaryConfig(steps=(10, 50)), 10) == 50
    assert next_weight(CanaryConfig(steps=(10, 50)), 50) == 100


def test_no_errors_no_evidence() -> None:
    t = error_test([StepCounts(10, vc(1000), vc(9000))], alpha=0.01)
    assert t.statistic == pytest.approx(1.0)
    assert not t.rejected


def test_candidate_errors_against_a_clean_baseline_reject() -> None:
    # 8 candidate errors in 100 calls, none in 900 baseline calls
    t = error_test([StepCounts(10, vc(100, 8), vc(900, 0))], alpha=0.01)
    assert t.rejected and t.statistic >= 100


def test_same_rates_do_not_reject() -> None:
    t = error_test([StepCounts(10, vc(1000, 10), vc(9000, 90))], alpha=0.01)
    assert not t.rejected
    assert t.statistic < 1.0


def test_a_better_candidate_is_never_rolled_back() -> None:
    t = error_test([StepCounts(50, vc(5000, 0), vc(5000, 200))], alpha=0.01)
    assert not t.rejected


def test_exposure_matters_errors_are_judged_against_the_weight() -> None:
    # 5 candidate errors of 10: at 50 % weight that is expected, at 10 % it is not
    at_half = error_test([StepCounts(50, vc(1000, 5), vc(1000, 5))], alpha=0.01)
    at_tenth = error_test([StepCounts(10, vc(100, 5), vc(900, 5))], alpha=0.01)
    assert at_half.statistic < 1 < at_tenth.statistic


def test_type_one_error_under_repeated_looks_is_bounded() -> None:
    """Look after every batch of an A/A canary with many errors: rejections stay under alpha."""
    rnd = random.Random(11)
    rejections = 0
    runs = 300
    for _ in range(runs):
        c = [0, 0]
        b = [0, 0]
        for _look in range(40):
            for _ in range(100):
                slot = c if rnd.random() < 0.2 else b
                slot[0] += 1
                slot[1] += rnd.random() < 0.05
            if error_test([StepCounts(20, VersionCounts(*c), VersionCounts(*b))], alpha=0.05).rejected:
                rejections += 1
                break
    assert rejections / runs <= 0.05


def test_analyse_holds_until_min_calls_then_advances_then_promotes() -> None:
    cfg = CanaryConfig(steps=(10, 50), min_calls=100)
    d = analyse(cfg, [StepCounts(10, vc(50), vc(450))])
    assert d.action == "hold" and d.code == "collecting" and "50/100" in d.message
    d = analyse(cfg, [StepCounts(10, vc(120), vc(1080))])
    assert d.action == "advance" and d.next_weight == 50
    d = analyse(cfg, [StepCounts(10, vc(120), vc(1080)), StepCounts(50, vc(100), vc(100))])
    assert d.action == "promote" and d.next_weight == 100
    ev = d.evidence
    assert ev["candidate"]["calls"] == 220 and ev["baseline"]["calls"] == 1180
    assert ev["error_test"]["threshold"] == 100 and ev["error_test"]["rejected"] is False


def test_analyse_rolls_back_on_errors_with_evidence() -> None:
    cfg = CanaryConfig(steps=(10, 50), min_calls=1000)
    d = analyse(cfg, [StepCounts(10, vc(200, 10, ), vc(1800, 2))])
    assert d.action == "rollback" and d.code == "error_rate"
    assert d.evidence["candidate"]["errors"] == 10
    assert d.evidence["candidate"]["error_types"] == {"ValueError": 10}
    assert d.evidence["error_test"]["rejected"] is True
    assert "significantly above" in d.message


def test_analyse_rolls_back_on_latency_only_with_enough_calls() -> None:
    cfg = CanaryConfig(steps=(10,), min_calls=100, latency_min_calls=100)
    slow = [StepCounts(10, vc(50, lat_ns=9_000_000), vc(450, lat_ns=1_000_000))]
    assert analyse(cfg, slow).action == "hold"
    slow = [StepCounts(10, vc(150, lat_ns=9_000_000), vc(1350, lat_ns=1_000_000))]
    d = analyse(cfg, slow)
    assert d.action == "rollback" and d.code == "latency"
    assert d.evidence["latency"]["p95_ratio"] > 2


def test_no_latency_rollback_below_the_floor() -> None:
    """Microsecond skills: a p95 ratio of two timer-resolution numbers is noise, not a regression."""
    cfg = CanaryConfig(steps=(10,), min_calls=100, latency_min_calls=100)
    tiny = [StepCounts(10, vc(150, lat_ns=2_000), vc(1350, lat_ns=200))]  # 10x, but 2 us
    d = analyse(cfg, tiny)
    assert d.action != "rollback" and d.evidence["latency"]["p95_ratio"] > 2
    assert d.evidence["latency"]["floor_ms"] == 1.0
    assert analyse(CanaryConfig(steps=(10,), min_calls=100, latency_min_calls=100, latency_floor_ms=0.0),
                   tiny).code == "latency"
    with pytest.raises(ValueError, match="latency_floor_ms"):
        CanaryConfig(latency_floor_ms=-1)


def test_bake_rolls_back_a_regression_and_completes_otherwise() -> None:
    cfg = CanaryConfig(bake_seconds=60)
    previous = vc(20_000, 20)  # 0.1 %
    d = analyse_bake(cfg, current=vc(2000, 40), previous=previous, elapsed_seconds=5)
    assert d.action == "rollback" and d.code == "bake_error_rate"
    d = analyse_bake(cfg, current=vc(2000, 2), previous=previous, elapsed_seconds=5)
    assert d.action == "hold" and d.code == "baking"
    d = analyse_bake(cfg, current=vc(2000, 2), previous=previous, elapsed_seconds=61)
    assert d.action == "complete"


def test_bake_without_a_baseline_measurement_never_rolls_back() -> None:
    d = analyse_bake(CanaryConfig(), current=vc(100, 100), previous=VersionCounts(), elapsed_seconds=1)
    assert d.action == "hold"
    assert math.isclose(d.evidence["error_test"]["statistic"], 1.0)
