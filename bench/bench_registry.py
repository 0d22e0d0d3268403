"""Registry benchmark: how fast does a pointer move reach callers, and what does a call cost?

::

    python bench/bench_registry.py                 # temporary SQLite, 240 swaps, 50 ms polling
    python bench/bench_registry.py --quick         # CI smoke: 40 swaps, shorter timing loops
    python bench/bench_registry.py --postgres      # a throwaway PostgreSQL (tests/pg.py)
    python bench/bench_registry.py --url postgresql+psycopg://user@host/emptydb
    python bench/bench_registry.py --check         # exit 1 when a target is missed

(1) **Swap latency**: from the pointer move — ``promote``/``rollback`` returned,
so its transaction has committed — to the first call served by the new
version, at the registry's default poll interval. The moves alternate: a
promote of a never-seen version (fetch, verify, cache, import, check, swap)
and a rollback to the previous one (still loaded: a pure swap). Before each
move the benchmark sleeps a random fraction of the poll interval, so moves
land at random points of the poll cycle. The probe calls the skill every
``--probe`` seconds (default 0.2 ms: the latency resolution). Target: p99 <=
200 ms.

(2) **Call overhead**: ``registry.call(name, x)`` against a direct call of the
same function object (the floor), measured in the same run (best of several
timing loops, per call). Target: overhead <= 2 us.

``--load-threads K`` adds K threads calling the skill in a tight loop during
(1), to show what GIL contention in a CPU-bound consumer does to the watcher
(a Python thread like the others: every time it waits on I/O it queues for the
GIL again); ``--switch-interval`` changes ``sys.setswitchinterval`` to show
the remedy.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sandgate.registry import RegistryEvent, connect
from sandgate.registry.loader import content_hash
from sandgate.store import Store, open_store
from sandgate.store import repository as repo

NAME = "bench_swap"
POLICY = SimpleNamespace(name="bench", hash="sha256:bench-policy")
LATENCY_TARGET_MS = 200.0
OVERHEAD_TARGET_US = 2.0


def version_files(i: int) -> dict[str, bytes]:
    return {
        "bench_swap.py": f"TAG = {i}\n\ndef run(x=None):\n    return TAG\n".encode(),
        "skill.toml": b'name = "bench_swap"\nentrypoint = "bench_swap:run"\n',
        "tests/test_bench_swap.py": f"from bench_swap import run\n\ndef test_run():\n    assert run() == {i}\n".encode(),
    }


def seed(store: Store, count: int) -> list[int]:
    """``count`` passed versions; returns their numbers (tag i is version number i)."""
    numbers = []
    for i in range(1, count + 1):
        files = version_files(i)
        sub = SimpleNamespace(
            name=NAME,
            files=files,
            manifest={"name": NAME, "entrypoint": "bench_swap:run"},
            content_hash=content_hash(files),
        )
        v, _ = repo.create_version(store, submission=sub, actor="bench")
        repo.record_evaluation(
            store,
            name=NAME,
            number=v.number,
            report={"evaluation_id": f"bench-{i}", "verdict": "passed", "reasons": []},
            policy_name=POLICY.name,
            policy_hash=POLICY.hash,
        )
        numbers.append(v.number)
    return numbers


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure_swaps(store: Store, url: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    rnd = random.Random(args.seed)
    promotes = args.swaps // 2
    numbers = seed(store, promotes + 1)
    repo.promote(store, name=NAME, number=numbers[0], actor="bench", policy=POLICY)
    observed: dict[int, float] = {}

    def on_event(event: RegistryEvent) -> None:
        if event.kind in ("swapped", "rolled_back") and event.new is not None:
            observed[event.generation or 0] = time.monotonic()

    samples: dict[str, list[float]] = {"promote": [], "rollback": []}
    swap_seen: list[float] = []
    with connect(url, cache_dir=cache, poll_interval=args.poll_interval, on_event=on_event) as registry:
        call = registry.call
        assert call(NAME) == 1
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                call(NAME)

        load = [threading.Thread(target=spin, daemon=True) for _ in range(args.load_threads)]
        for t in load:
            t.start()
        try:
            for k in range(promotes):
                for kind in ("promote", "rollback"):
                    time.sleep(rnd.uniform(0, args.poll_interval))
                    if kind == "promote":
                        target = numbers[k + 1]
                        move = repo.promote(store, name=NAME, number=target, actor="bench", policy=POLICY)
                    else:
                        target = numbers[0]
                        move = repo.rollback(store, name=NAME, actor="bench", reason="bench")
                    t0 = time.monotonic()  # the move's transaction has committed
                    deadline = t0 + 10
                    while True:
                        start = time.monotonic()
                        if call(NAME) == target:
                            break
                        if start > deadline:
                            raise SystemExit(f"version {target} was not served within 10 s")
                        time.sleep(args.probe)
                    samples[kind].append((start - t0) * 1000)
                    if move.generation in observed:
                        swap_seen.append((observed[move.generation] - t0) * 1000)
        finally:
            stop.set()
            for t in load:
                t.join(5)
    return {"samples": samples, "swap_seen": swap_seen}


def measure_overhead(url: str, cache: Path, args: argparse.Namespace) -> dict[str, float]:
    with connect(url, cache_dir=cache, poll_interval=args.poll_interval) as registry:
        handle = registry.get(NAME)
        fn = handle.function
        env = {"r": registry, "fn": fn, "h": handle, "NAME": NAME}

        def per_call(stmt: str) -> float:
            timer = timeit.Timer(stmt, globals=env)
            return min(timer.timeit(args.calls) for _ in range(args.repeat)) / args.calls * 1e9

        direct = per_call("fn(1)")
        via_registry = per_call("r.call(NAME, 1)")
        via_handle = per_call("h.call(1)")
        handle.release()
    return {"direct_ns": direct, "registry_ns": via_registry, "handle_ns": via_handle}


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
    elif args.postgres:
        path = Path(__file__).resolve().parents[1] / "tests" / "pg.py"
        spec = importlib.util.spec_from_file_location("sandgate_tests_pg", path)
        assert spec and spec.loader
        pg = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pg)
        with pg.postgres_server() as server:
            yield server.create_database("bench")
    else:
        with tempfile.TemporaryDirectory(prefix="sandgate-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--swaps", type=int, default=240, help="pointer moves (half promote, half rollback)")
    p.add_argument("--poll-interval", type=float, default=0.05, help="registry poll interval (default: connect's)")
    p.add_argument("--probe", type=float, default=0.0002, help="seconds between probe calls (resolution)")
    p.add_argument("--load-threads", type=int, default=0, help="threads calling the skill in a tight loop")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval for the run (seconds; Python's default is 0.005)")
    p.add_argument("--calls", type=int, default=1_000_000, help="calls per timing loop (overhead)")
    p.add_argument("--repeat", type=int, default=7, help="timing loops (best is kept)")
    p.add_argument("--url", help="database URL (must be empty); default: a temporary SQLite file")
    p.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL (tests/pg.py)")
    p.add_argument("--quick", action="store_true", help="CI smoke: 40 swaps, shorter timing loops")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.swaps, args.calls, args.repeat = 40, 200_000, 5
    if args.swaps < 2:
        p.error("--swaps must be at least 2")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    with _database(args) as url, tempfile.TemporaryDirectory(prefix="sandgate-bench-cache-") as cache:
        store = open_store(url)
        try:
            if repo.list_skills(store, limit=1):
                print("error: the benchmark needs an empty database", file=sys.stderr)
                return 2
            where = url.split("@")[-1] if "@" in url else url
            print(f"store: {store.dialect} ({where}); poll interval {args.poll_interval * 1000:.0f} ms; "
                  f"probe every {args.probe * 1000:.1f} ms; {args.load_threads} load thread(s); "
              f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms")  # fmt: skip
            swaps = measure_swaps(store, url, args, Path(cache))
            overhead = measure_overhead(url, Path(cache), args)
        finally:
            store.close()

    ok = True
    samples = swaps["samples"]
    both = samples["promote"] + samples["rollback"]
    print(f"\n(1) pointer move committed -> first call served by the new version ({len(both)} swaps)")
    print(f"    {'':<30}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    rows = [
        ("promote (fresh load)", samples["promote"]),
        ("rollback (still loaded)", samples["rollback"]),
        ("all swaps", both),
        ("  (registry swap observed)", swaps["swap_seen"]),
    ]
    for label, values in rows:
        if values:
            print(f"    {label:<30}{len(values):>5}{pct(values, 50):>9.1f}{pct(values, 99):>9.1f}{max(values):>9.1f}")
    p99 = pct(both, 99)
    verdict = "ok" if p99 <= LATENCY_TARGET_MS else "MISSED"
    ok &= p99 <= LATENCY_TARGET_MS
    print(f"    target p99 <= {LATENCY_TARGET_MS:.0f} ms: {p99:.1f} ms  {verdict}")

    d, r, h = overhead["direct_ns"], overhead["registry_ns"], overhead["handle_ns"]
    extra_us = (r - d) / 1000
    print(f"\n(2) per-call cost (best of {args.repeat} x {args.calls:,} calls)")
    print(f"    direct call (floor)      {d:8.1f} ns")
    print(f"    registry.call(name, x)   {r:8.1f} ns   = floor + {r - d:.1f} ns  ({r / d:.2f}x the floor)")
    print(f"    handle.call(x)           {h:8.1f} ns   = floor + {h - d:.1f} ns  ({h / d:.2f}x the floor)")
    verdict = "ok" if extra_us <= OVERHEAD_TARGET_US else "MISSED"
    ok &= extra_us <= OVERHEAD_TARGET_US
    print(f"    target overhead <= {OVERHEAD_TARGET_US:.0f} us: {extra_us * 1000:.0f} ns  {verdict}")
    if args.json:
        print(json.dumps({
            "latency_ms": {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in samples.items() if v},
            "latency_all_ms": {"p50": pct(both, 50), "p99": p99, "n": len(both)},
            "overhead_ns": overhead,
            "python": sys.version.split()[0],
        }))  # fmt: skip
    if args.check and not ok:
        print("FAIL: a target was missed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
