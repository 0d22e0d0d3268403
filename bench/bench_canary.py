"""Canary analysis benchmark: a simulation of canaries, no containers, no store.

::

    python bench/bench_canary.py                 # 200 A/A canaries + 200 bad candidates
    python bench/bench_canary.py --check         # exit 1 when false rollbacks > 1 %
    python bench/bench_canary.py --canaries 1000 --seed 7

Every simulated canary runs through :func:`sandgate.policy.canary.analyse`
exactly as the scheduler does: traffic arrives in batches of ``--batch`` calls
(one look after each batch), each call goes to the candidate with the step's
weight, fails with its version's error rate, and gets a latency drawn from
the same log-normal for both versions (histogrammed with ``bucket_of``).

(1) A/A: both versions fail at ``--base-rate`` (0.1 %). A rollback is a false
    rollback (error test or latency limit). Target: at most 1 %.
(2) A bad candidate: 5 % vs 0.1 %, starting at 10 % weight. Prints the
    median and p95 of calls until the automatic rollback (all calls, and the
    candidate's share), and how many bad candidates were ever promoted.

Floor: the calls a fixed-sample test would need. For (2), a one-shot
two-proportion z-test at the same alpha and 80 % power needs the number of
candidate calls printed as "fixed-sample n"; the ratio shows what always-valid
monitoring costs (or saves, when the effect is large).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from sandgate.policy.canary import CanaryConfig, StepCounts, VersionCounts, analyse, bucket_of  # noqa: E402


def simulate(config: CanaryConfig, *, cand_rate: float, base_rate: float, batch: int, rnd: random.Random,
             max_calls: int, latency_mu: float = math.log(2e5), latency_sigma: float = 0.5) -> dict:
    """One canary until it is rolled back, promoted, or runs out of ``max_calls``."""
    weight = config.steps[0]
    steps: list[list] = [[weight, [0, 0, {}], [0, 0, {}]]]  # weight, [calls, errors, hist] x2
    total = cand_calls = 0
    while total < max_calls:
        cur = steps[-1]
        for _ in range(batch):
            is_cand = rnd.random() * 100 < weight
            slot = cur[1] if is_cand else cur[2]
            slot[0] += 1
            if rnd.random() < (cand_rate if is_cand else base_rate):
                slot[1] += 1
            b = bucket_of(int(rnd.lognormvariate(latency_mu, latency_sigma)))
            slot[2][b] = slot[2].get(b, 0) + 1
        total += batch
        counts = [StepCounts(w, VersionCounts(c[0], c[1], {}, c[2]), VersionCounts(b[0], b[1], {}, b[2]))
                  for w, c, b in steps]
        decision = analyse(config, counts)
        cand_calls = sum(c.candidate.calls for c in counts)
        if decision.action == "rollback":
            return {"outcome": "rollback", "code": decision.code, "calls": total, "candidate_calls": cand_calls}
        if decision.action == "promote":
            return {"outcome": "promote", "calls": total, "candidate_calls": cand_calls}
        if decision.action == "advance":
            weight = decision.next_weight
            steps.append([weight, [0, 0, {}], [0, 0, {}]])
    return {"outcome": "timeout", "calls": total, "candidate_calls": cand_calls}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def fixed_sample_n(p1: float, p0: float, alpha: float, power: float = 0.8) -> float:
    """Candidate calls for a one-sided two-proportion z-test with a 9:1 baseline (the 10 % step)."""
    from statistics import NormalDist

    za, zb = NormalDist().inv_cdf(1 - alpha), NormalDist().inv_cdf(power)
    k = 9.0  # baseline calls per candidate call at 10 %
    var = p1 * (1 - p1) + p0 * (1 - p0) / k
    return (za + zb) ** 2 * var / (p1 - p0) ** 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--canaries", type=int, default=200)
    p.add_argument("--batch", type=int, default=50, help="calls between two looks")
    p.add_argument("--base-rate", type=float, default=0.001)
    p.add_argument("--bad-rate", type=float, default=0.05)
    p.add_argument("--min-calls", type=int, default=200)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--steps", default="10,50")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    # latency floor 0: the simulated latencies (~0.2 ms) stay under the latency limit's test in the A/A run
    config = CanaryConfig(steps=tuple(int(s) for s in args.steps.split(",")), min_calls=args.min_calls,
                          alpha=args.alpha, latency_floor_ms=0.0)
    rnd = random.Random(args.seed)
    print(f"config: steps {list(config.steps)} then 100 %, min {config.min_calls} candidate calls per step, "
          f"alpha {config.alpha}, latency limit {config.max_latency_ratio}x p95; a look every {args.batch} calls")

    aa = [simulate(config, cand_rate=args.base_rate, base_rate=args.base_rate, batch=args.batch, rnd=rnd,
                   max_calls=200_000) for _ in range(args.canaries)]
    false = [r for r in aa if r["outcome"] == "rollback"]
    promoted = [r for r in aa if r["outcome"] == "promote"]
    share = len(false) / len(aa)
    print(f"\n(1) A/A, both versions {args.base_rate:.2%} errors: {len(aa)} canaries")
    print(f"    false rollbacks      {len(false):>4}  ({share:.2%}; error test "
          f"{sum(r['code'] == 'error_rate' for r in false)}, latency {sum(r['code'] == 'latency' for r in false)})")
    print(f"    promoted             {len(promoted):>4}  (median {statistics.median(r['calls'] for r in promoted):.0f} "
          f"calls to full promotion)" if promoted else "    promoted                0")
    ok = share <= 0.01
    print(f"    target false rollbacks <= 1 %: {share:.2%}  {'ok' if ok else 'MISSED'}")

    bad = [simulate(config, cand_rate=args.bad_rate, base_rate=args.base_rate, batch=args.batch, rnd=rnd,
                    max_calls=200_000) for _ in range(args.canaries)]
    rolled = [r for r in bad if r["outcome"] == "rollback"]
    calls = [r["calls"] for r in rolled]
    cand = [r["candidate_calls"] for r in rolled]
    print(f"\n(2) bad candidate {args.bad_rate:.1%} vs baseline {args.base_rate:.1%}, from {config.steps[0]} % weight: "
          f"{len(bad)} canaries")
    print(f"    rolled back          {len(rolled):>4}   promoted {sum(r['outcome'] == 'promote' for r in bad)}")
    if rolled:
        n_fixed = fixed_sample_n(args.bad_rate, args.base_rate, args.alpha)
        print(f"    calls until rollback      median {statistics.median(calls):>7.0f}   p95 {pct(calls, 95):>7.0f}")
        print(f"    candidate calls of those  median {statistics.median(cand):>7.0f}   p95 {pct(cand, 95):>7.0f}")
        print(f"    floor: fixed-sample n (one-shot z-test, alpha {args.alpha}, power 0.8) = {n_fixed:.0f} "
              f"candidate calls; median ratio {statistics.median(cand) / n_fixed:.2f}x")
    ok &= len(rolled) == len(bad)
    if args.check and not ok:
        print("FAIL: a target was missed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
