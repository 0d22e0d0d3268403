"""Warm pool: evaluate() with and without a pool, against a floor measured in the same run.

floor: the ``bench_evaluate`` floor — a bare ``docker run`` under the same hardening,
same image, same payload on stdin, doing the same work (semgrep's native scan with
the platform's rules, pytest under branch coverage, a JSON coverage report), no harness.
cold: ``sandgate.evaluation.evaluate()`` end to end with no pool in the process.
pool: the same call with a warm pool running in the process (what a worker does):
its sandbox was started, and its test runner imported the toolchain, before the
evaluation asked for it. The mutation phase is off in both (the floor does no such work).

Runs are interleaved (floor, cold, pool, ...) so drift hits all three alike; the
pool refills in the background while the other two run, as it would between jobs.
Prints p50/p95 of each and the ratios pool/floor (targets: p50 <= 0.5, p95 <= 0.7)
and cold/floor.

    python bench/bench_pool.py [--runs 20] [--skill examples/skills/text_stats] [--runtime runc|runsc]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floor_script() -> str:
    spec = importlib.util.spec_from_file_location("bench_evaluate", ROOT / "bench" / "bench_evaluate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.FLOOR_SCRIPT)


FLOOR_SCRIPT = _floor_script()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--skill", type=Path, default=ROOT / "examples" / "skills" / "text_stats")
    parser.add_argument("--runtime", default="runc", choices=["runc", "runsc"])
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args()

    from sandgate.config import get_settings
    from sandgate.evaluation import evaluate, rules_files
    from sandgate.policy import effective_limits, load_policy, parse_policy
    from sandgate.sandbox import connect, make_payload, run_sandbox
    from sandgate.sandbox import pool as warm_pools
    from sandgate.sandbox.engine import shared_client
    from sandgate.sandbox.runner import harness_args
    from sandgate.submission import load_submission

    settings = get_settings()
    base = load_policy(settings.policy)
    data = base.model_dump(mode="json", exclude={"name"})
    data["limits"]["runtime"] = args.runtime
    data["mutation"]["max_mutants"] = 0  # not in the floor; see bench_mutation.py
    data["gates"]["min_mutation_score"] = 0.0
    policy = parse_policy(data, name=f"bench-{args.runtime}")
    submission = load_submission(args.skill)
    client = connect(settings)

    files = {f"skill/{p}": b for p, b in submission.files.items()}
    files.update({f"rules/{n}": b for n, b in rules_files(settings.policies_dir / "semgrep").items()})
    files["config.json"] = json.dumps({"tests": submission.test_files()}).encode()
    payload = make_payload(files)

    def floor_once() -> float:
        t = time.perf_counter()
        run = run_sandbox(client, image=settings.image, payload=payload, limits=policy.limits,
                          entrypoint=["python3", "-I", "-c", FLOOR_SCRIPT])
        elapsed = time.perf_counter() - t
        assert run.harness is not None
        out = json.loads(run.harness["stdout"].strip().splitlines()[-1])
        assert out["scan_rc"] == 0 and out["pytest_rc"] == 0 and out["cov_rc"] == 0, out
        return elapsed

    phases: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}

    def evaluate_once(expect_warm: bool) -> float:
        t = time.perf_counter()
        report = evaluate(submission, policy=policy, settings=settings)
        elapsed = time.perf_counter() - t
        assert report.verdict.value == "passed", report.reasons
        warm = report.timings.get("sandbox_create") == 0.0
        assert warm == expect_warm, f"expected a {'warm' if expect_warm else 'cold'} sandbox: {report.timings}"
        for key, value in report.timings.items():
            phases[warm].setdefault(key, []).append(value)
        return elapsed

    limits = effective_limits(policy.limits, getattr(submission.manifest, "sandbox", None))
    floor_once(), evaluate_once(False)  # warm the page cache and the engine
    manager = warm_pools.PoolManager(size=args.pool_size, max_age=settings.pool_max_age)
    # the pool evaluate() takes from: same image, limits and harness arguments (no mutation phase:
    # the harness starts no mutation server)
    pool = manager.pool(shared_client(settings), image=settings.image, limits=limits,
                        harness_argv=harness_args(mutation=policy.mutation.max_mutants > 0))
    assert pool is not None

    def pool_once() -> float:
        deadline = time.monotonic() + 30
        while not pool.idle() and time.monotonic() < deadline:  # the refill is behind: not what we measure
            time.sleep(0.05)
        warm_pools._current = manager
        try:
            return evaluate_once(True)
        finally:
            warm_pools._current = None

    floors: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    try:
        pool_once()
        for _ in range(args.runs):
            floors.append(floor_once())
            cold.append(evaluate_once(False))
            warm.append(pool_once())
    finally:
        manager.close()

    print(f"skill: {submission.name} ({len(submission.files)} files), runtime {args.runtime}, "
          f"{args.runs} runs each, pool size {args.pool_size}")
    for label, values in (("floor (bare hardened docker run, same work)", floors),
                          ("evaluate() without pool", cold), ("evaluate() with warm pool", warm)):
        print(f"{label:<45} p50 {pct(values, 50):.3f}s  p95 {pct(values, 95):.3f}s  min {min(values):.3f}s")
    for label, values, target in (("pool/floor", warm, (0.5, 0.7)), ("cold/floor", cold, None)):
        p50 = pct(values, 50) / pct(floors, 50)
        p95 = pct(values, 95) / pct(floors, 95)
        goal = f"  (target p50 <= {target[0]}, p95 <= {target[1]})" if target else ""
        print(f"ratio {label}: p50 {p50:.3f}  p95 {p95:.3f}{goal}")
    for warm_run, label in ((False, "without pool"), (True, "with pool")):
        print(f"per-phase medians {label}: " + ", ".join(
            f"{k} {statistics.median(v):.3f}s" for k, v in sorted(phases[warm_run].items())))
    print(f"pool stats: {pool.stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
