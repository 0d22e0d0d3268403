"""A fleet losing a host: 3 Docker engines × one worker each on one PostgreSQL, one host killed mid-run.

What it does, in one run (tests/fleet.py starts the engines: separate
``dockerd``/containerd on this machine, the sandbox image loaded into each,
a worker per engine with ``SANDGATE_HOST_ID=fleet-<i>``):

0. **Warm-up** (not counted): two evaluations per host, so no run pays for a
   fresh engine's cold caches.
1. **Healthy.** ``--submissions`` distinct submissions (20 skills × N versions
   of the example ``text_stats``) are queued, the workers started, and the time
   from the workers' start to the last verdict measured.
2. **Host lost.** The same on a fresh database; when a third of the
   evaluations are done and host ``fleet-0`` runs one, the whole host is
   killed with SIGKILL (worker, engine, containerd, shims, sandboxes). Its
   evaluations are claimed again by the others once their lease
   (``--lease-seconds``) lapses. Then the host comes back (engine, a new
   worker): its start-up reap must remove what the dead engine left.
3. **Report.** Throughput of both runs (evaluations/minute) and their ratio
   (host lost ÷ healthy: with one of three hosts gone after a third, ~0.75 is
   the ideal, less the lease wait), ``evaluated`` events per evaluation (each
   must be exactly 1), verdicts (no ``failed``, no ``error``), the killed
   host's leftovers before and after its restart, and containers left on any
   engine at the end (must be 0). Exit 1 when a check fails.

::

    python bench/bench_fleet.py              # 3 hosts × 200 submissions (needs root, Docker, PostgreSQL)
    python bench/bench_fleet.py --quick      # 3 hosts × 30 submissions
    python bench/bench_fleet.py --hosts 2 --submissions 60 --lease-seconds 5
    python bench/bench_fleet.py --policy default   # with the mutation phase

The default policy ``fleet`` is ``default`` without the mutation phase: what is
measured is who runs the evaluations, and the mutation phase's controls time
out on a starved machine (a ``failed`` that says nothing about the fleet).

Timings on a shared machine are noisy: compare the two runs of one invocation,
and read them next to the load average it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "platform"))

SKILL = ROOT / "examples" / "skills" / "text_stats"
SKILLS = 20


def submissions(n: int, salt: str) -> list[Any]:
    from sandgate.submission import submission_from_files

    base = {str(p.relative_to(SKILL)): p.read_bytes() for p in sorted(SKILL.rglob("*")) if p.is_file()}
    out = []
    for i in range(n):
        files = dict(base)
        name = f"fleet_{i % SKILLS:02d}"
        files["skill.toml"] = files["skill.toml"].replace(b'name = "text_stats"', f'name = "{name}"'.encode())
        files["text_stats.py"] = files["text_stats.py"] + f"\n# fleet variant {salt} {i}\n".encode()
        out.append(submission_from_files(files))
    return out


def evaluated_counts(store: Any) -> Counter[str]:
    from sandgate.errors import NotFound
    from sandgate.store import audit

    counts: Counter[str] = Counter()
    for k in range(SKILLS):
        try:
            events = audit.history(store, name=f"fleet_{k:02d}")
        except NotFound:  # fewer submissions than skills
            continue
        for e in events:
            if e.action == "evaluated":
                counts[e.evidence["evaluation_id"]] += 1
    return counts


def one_run(fleet: Any, url: str, n: int, *, kill: bool, timeout: float, salt: str = "") -> dict[str, Any]:
    from sandgate import lifecycle
    from sandgate.store import evaluations, open_store
    from tests.fleet import managed_containers

    for host in fleet.hosts:
        host.database_url = url
    store = open_store(url)
    policy = fleet.policy
    ids = [lifecycle.submit(store, submission=s, policy=policy, actor="bench", wait=False).evaluation.id
           for s in submissions(n, salt or ("lost" if kill else "healthy"))]
    victim = fleet.hosts[0]
    started = time.monotonic()
    for host in fleet.hosts:
        host.start_worker("--log-level", "warning")
    killed_at, dead = None, None
    deadline = started + timeout
    records: list[Any] = []
    while time.monotonic() < deadline:
        records = [evaluations.get_evaluation(store, evaluation_id=e) for e in ids]
        done = sum(r.status == "done" for r in records)
        if done == n:
            break
        if kill and killed_at is None and done >= n // 3 and any(
                r.status == "running" and victim.owns(r.lease_owner) for r in records):
            dead = victim.controller
            victim.kill()
            killed_at = time.monotonic() - started
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    verdicts = Counter(str(r.verdict) for r in records)
    counts = evaluated_counts(store)
    once = all(counts.get(e, 0) == 1 for e in ids) and set(counts) <= set(ids)
    result: dict[str, Any] = {
        "kill": kill, "submissions": n, "done": sum(r.status == "done" for r in records),
        "seconds": round(elapsed, 1), "per_minute": round(n / elapsed * 60, 2) if elapsed else None,
        "verdicts": dict(verdicts), "exactly_once": once,
        "evaluated_events": dict(Counter(counts.get(e, 0) for e in ids)),
        "reclaimed": sum(r.attempts > 1 for r in records),
        "finished_by": dict(Counter(next((h.host_id for h in fleet.hosts if h.owns(r.lease_owner)), "?")
                                    for r in records)),
    }
    if kill:
        result["killed_at_seconds"] = round(killed_at, 1) if killed_at is not None else None
        victim.start_engine()
        left = managed_containers(victim.client())
        result["victim_leftovers_before_restart"] = len(left)
        result["victim_leftovers_of_dead_worker"] = sum(c["Labels"].get("sandgate.controller") == dead for c in left)
        victim.start_worker("--log-level", "warning")
        reap_deadline = time.monotonic() + 60
        while time.monotonic() < reap_deadline and any(
                c["Labels"].get("sandgate.controller") == dead for c in managed_containers(victim.client())):
            time.sleep(0.2)
        result["victim_leftovers_after_restart"] = sum(
            c["Labels"].get("sandgate.controller") == dead for c in managed_containers(victim.client()))
    result["worker_exit_codes"] = [host.stop_worker() for host in fleet.hosts]
    result["leftovers"] = fleet.leftovers()
    store.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="30 submissions per run")
    parser.add_argument("--concurrency", type=int, default=1, help="slots per worker (default 1)")
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--policy", default="fleet", help="fleet (default without the mutation phase: "
                        "the most load-sensitive part, which this bench does not measure) or any policy name")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args()
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (one is killed)")
    n = 30 if args.quick else args.submissions
    if os.geteuid() != 0:
        print("bench_fleet starts Docker engines: run it as root", file=sys.stderr)
        return 2

    import shutil
    import tempfile

    from sandgate.config import Settings
    from sandgate.policy.model import load_policy
    from sandgate.store import open_store
    from tests import pg
    from tests.fleet import Fleet, fleet_policy

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    worker = ["--concurrency", str(args.concurrency), "--poll-interval", "0.1",
              "--lease-seconds", str(args.lease_seconds)]
    print(f"bench_fleet: {args.hosts} hosts × {n} submissions, lease {args.lease_seconds:g}s, "
          f"image {Settings().image}; load average {' '.join(load_before)}", flush=True)
    policies = fleet_policy(Path(tempfile.mkdtemp(prefix="fleet-policies-")))
    with pg.postgres_server() as server:
        template = server.create_database("fleet_template")
        open_store(template).close()
        t = time.monotonic()
        with Fleet(args.hosts, database_url="", worker_args=worker, start_workers=False) as fleet:
            print(f"engines up, image loaded in {time.monotonic() - t:.1f}s; policy {args.policy}", flush=True)
            for host in fleet.hosts:
                host.env["SANDGATE_POLICIES_DIR"] = str(policies)
            fleet.policy = load_policy(args.policy, policies_dir=policies)
            # warm-up, not counted: each fresh engine's first sandboxes pay for cold caches
            url = server.create_database("fleet_warmup", template="fleet_template")
            warm = one_run(fleet, url, 2 * args.hosts, kill=False, timeout=args.timeout, salt="warmup")
            print(f"warm-up: {warm['done']}/{warm['submissions']} in {warm['seconds']}s", flush=True)
            runs = []
            for kill in (False, True):
                url = server.create_database(f"fleet_{'lost' if kill else 'healthy'}", template="fleet_template")
                run = one_run(fleet, url, n, kill=kill, timeout=args.timeout)
                runs.append(run)
                print(json.dumps(run), flush=True)
    shutil.rmtree(policies, ignore_errors=True)
    healthy, lost = runs
    ratio = (lost["per_minute"] / healthy["per_minute"]) if healthy["per_minute"] and lost["per_minute"] else 0.0
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    # a third at h hosts, two thirds at h - 1: 1 / (1/3 + 2/3 · h/(h-1))
    ideal = 1 / (1 / 3 + 2 / 3 * args.hosts / (args.hosts - 1))
    checks = {
        "all done": healthy["done"] == n and lost["done"] == n,
        "each evaluated exactly once": healthy["exactly_once"] and lost["exactly_once"],
        "no failed/error verdict": set(healthy["verdicts"]) | set(lost["verdicts"]) <= {"passed"},
        "a host was killed mid-run": lost.get("killed_at_seconds") is not None,
        "the dead host left containers": lost.get("victim_leftovers_of_dead_worker", 0) > 0,
        "its restart reaped them": lost.get("victim_leftovers_after_restart") == 0,
        "0 containers left anywhere": all(v == 0 for r in runs for v in r["leftovers"].values()),
    }
    print(f"healthy: {healthy['per_minute']} evaluations/min ({healthy['seconds']}s); host lost at "
          f"{lost.get('killed_at_seconds')}s: {lost['per_minute']} evaluations/min ({lost['seconds']}s); "
          f"ratio lost/healthy = {ratio:.2f} (ideal {ideal:.2f} before the lease wait)")
    print(f"reclaimed after the lease: {lost['reclaimed']}; finished by: {lost['finished_by']}")
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    if args.json:
        print(json.dumps({"runs": runs, "ratio": round(ratio, 3), "checks": checks,
                          "load_before": load_before, "load_after": load_after}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
