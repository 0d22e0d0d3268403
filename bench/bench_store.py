"""Skill store benchmark: does lookup cost grow with the number of skills?

::

    python bench/bench_store.py                          # SQLite, 10000 skills x 20 versions
    python bench/bench_store.py --quick                  # CI smoke: 1000 x 5, fewer samples
    python bench/bench_store.py --postgres               # a throwaway PostgreSQL (tests/pg.py)
    python bench/bench_store.py --url postgresql+psycopg://user@host/emptydb
    python bench/bench_store.py --check                  # exit 1 if a lookup ratio exceeds --max-ratio

It seeds (bulk insert) 100 skills x M versions, measures, seeds up to N skills,
measures again, and prints for each operation the p50/p99 latency at both
sizes and the ratio large/small (target: about 1, at most ``--max-ratio``).
Each number is also given as a multiple of the floor measured in the same run:
a bare ``SELECT 1`` in a store transaction (session + round trip).

Every operation goes through the real repository functions. Each seeded skill
has M versions (each with one file, a passed evaluation and submitted/evaluated
events) and three promotions, so rollbacks have history to walk back.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import insert, text

from sandgate.store import Store, audit, open_store, pointers, versions
from sandgate.store.models import Evaluation, Event, Skill, Version, VersionFile

POLICY = SimpleNamespace(name="bench", hash="sha256:bench-policy")
SMALL = 100
BATCH = 5000


def _name(i: int) -> str:
    return f"skill_{i:07d}"


# --------------------------------------------------------------------------- seeding


class Seeder:
    """Bulk inserts with explicit ids (one transaction per batch), bypassing the repository."""

    def __init__(self, store: Store, versions: int) -> None:
        self.store = store
        self.m = versions
        self.next_skill = 1
        self.next_version = 1
        self.next_event = 1
        self.now = datetime.now(UTC)

    def seed(self, upto: int) -> float:
        t0 = time.perf_counter()
        with self.store.engine.connect() as conn:  # measurements in between added rows
            self.next_version = (conn.execute(text("SELECT max(id) FROM versions")).scalar() or 0) + 1
            self.next_event = (conn.execute(text("SELECT max(id) FROM events")).scalar() or 0) + 1
        while self.next_skill <= upto:
            last = min(upto, self.next_skill + max(1, BATCH // self.m) - 1)
            self._batch(self.next_skill, last)
            self.next_skill = last + 1
        if self.store.dialect == "postgresql":
            with self.store.engine.begin() as conn:
                for table, value in (
                    ("skills", self.next_skill),
                    ("versions", self.next_version),
                    ("events", self.next_event),
                ):
                    conn.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), :v)"), {"v": value}
                    )
                conn.execute(text("ANALYZE"))
        else:
            with self.store.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        return time.perf_counter() - t0

    def _batch(self, first: int, last: int) -> None:
        skills, versions, files, evaluations, events, pointers = [], [], [], [], [], []
        now, m = self.now, self.m
        for sid in range(first, last + 1):
            skills.append({"id": sid, "name": _name(sid), "created_at": now, "generation": 0})
            ids = {}
            for n in range(1, m + 1):
                vid = self.next_version
                self.next_version += 1
                ids[n] = vid
                body = f"def run(x):\n    return x + {sid * 1000 + n}\n".encode()
                versions.append(
                    {
                        "id": vid, "skill_id": sid, "number": n,
                        "content_hash": "sha256:" + hashlib.sha256(body).hexdigest(),
                        "manifest": {"name": _name(sid), "entrypoint": "skill:run"},
                        "file_count": 1, "total_bytes": len(body), "created_at": now,
                        "created_by": "bench", "status": "passed",
                    }
                )  # fmt: skip
                files.append(
                    {"version_id": vid, "path": "skill.py", "content": body,
                     "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
                )  # fmt: skip
                evaluations.append(
                    {"id": f"e{vid}", "version_id": vid, "policy_name": POLICY.name,
                     "policy_hash": POLICY.hash, "status": "done", "verdict": "passed",
                     "reasons": [], "report": {"verdict": "passed"}, "created_at": now,
                     "started_at": now, "finished_at": now}
                )  # fmt: skip
                for action in ("submitted", "evaluated"):
                    events.append(self._event(sid, vid, action, None, None, None))
            # three promotions: m-2 -> m-1 -> m (a stack to roll back through)
            back = None
            chain = [n for n in (m - 2, m - 1, m) if n >= 1]
            prev_number = None
            for g, n in enumerate(chain, start=1):
                ev = self._event(
                    sid, ids[n], "promoted",
                    {"version": prev_number, "generation": g - 1},
                    {"version": n, "generation": g}, back,
                )  # fmt: skip
                events.append(ev)
                back, prev_number = ev["id"], n
            pointers.append((sid, ids[chain[-1]], len(chain), back))
        with self.store.engine.begin() as conn:
            conn.execute(insert(Skill), skills)
            conn.execute(insert(Version), versions)
            conn.execute(insert(VersionFile), files)
            conn.execute(insert(Evaluation), evaluations)
            conn.execute(insert(Event), events)
            conn.execute(
                text(
                    "UPDATE skills SET active_version_id = :v, generation = :g, pointer_event_id = :e"
                    " WHERE id = :s"
                ),
                [{"s": s, "v": v, "g": g, "e": e} for s, v, g, e in pointers],
            )

    def _event(self, sid: int, vid: int, action: str, before: Any, after: Any, back: Any = None) -> dict[str, Any]:
        eid = self.next_event
        self.next_event += 1
        return {
            "id": eid, "skill_id": sid, "version_id": vid, "actor": "bench", "action": action,
            "reason": None, "before": before, "after": after, "evidence": {"forced": False},
            "back_event_id": back, "created_at": self.now,
        }  # fmt: skip


# --------------------------------------------------------------------------- measuring


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
    return p50, p99


def _measure(fn: Callable[[], Any], n: int, warmup: int = 20) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000.0)  # microseconds
    return _percentiles(out)


def _floor(store: Store) -> Callable[[], Any]:
    def select_one() -> Any:
        with store.read() as s:
            return s.execute(text("SELECT 1")).scalar()

    return select_one


def measure_stage(
    store: Store, population: int, m: int, lookups: int, moves: int, rnd: random.Random
) -> dict[str, tuple[float, float]]:
    res: dict[str, tuple[float, float]] = {}
    res["floor: SELECT 1"] = _measure(_floor(store), lookups)
    pick = lambda: _name(rnd.randint(1, population))  # noqa: E731
    res["get_version"] = _measure(lambda: versions.get_version(store, name=pick(), number=rnd.randint(1, m)), lookups)
    res["active_pointer (one skill)"] = _measure(lambda: pointers.active_pointer(store, name=pick()), lookups)
    res["list_versions (one skill)"] = _measure(lambda: versions.list_versions(store, name=pick()), lookups)
    res["get_skill"] = _measure(lambda: versions.get_skill(store, name=pick()), lookups)
    res["history (one skill)"] = _measure(lambda: audit.history(store, name=pick(), limit=20), lookups)

    # moves: on random skills, promote another passed version, then roll it back
    # (the first 10 pairs are warm-up and not counted)
    targets = [rnd.randint(1, population) for _ in range(moves // 2 + 10)]
    promote_t: list[float] = []
    rollback_t: list[float] = []
    for sid in targets:
        name = _name(sid)
        active, _ = pointers.active_pointer(store, name=name) or (None, 0)
        number = rnd.choice([n for n in range(1, m + 1) if n != active])
        t0 = time.perf_counter_ns()
        pointers.promote(store, name=name, number=number, actor="bench", reason="bench", policy=POLICY)
        promote_t.append((time.perf_counter_ns() - t0) / 1000.0)
        t0 = time.perf_counter_ns()
        pointers.rollback(store, name=name, actor="bench", reason="bench")
        rollback_t.append((time.perf_counter_ns() - t0) / 1000.0)
    res["promote"] = _percentiles(promote_t[10:] or promote_t)
    res["rollback"] = _percentiles(rollback_t[10:] or rollback_t)
    return res


LOOKUPS = ("get_version", "active_pointer (one skill)", "list_versions (one skill)", "get_skill", "history (one skill)")


def report(
    small: dict[str, tuple[float, float]], large: dict[str, tuple[float, float]], n: int, max_ratio: float
) -> bool:
    floor_small, floor_large = small["floor: SELECT 1"][0], large["floor: SELECT 1"][0]
    head = (
        f"{'operation':<28} {'p50@' + str(SMALL):>10} {'p50@' + str(n):>11} {'ratio':>6} "
        f"{'p99@' + str(n):>11} {'x floor':>8}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for op in small:
        (s50, _), (l50, l99) = small[op], large[op]
        ratio = l50 / s50 if s50 else float("nan")
        flag = ""
        if op in LOOKUPS or op in ("promote", "rollback"):
            flag = "ok" if ratio <= max_ratio else "GROWS"
            ok &= ratio <= max_ratio or op not in LOOKUPS
        print(f"{op:<28} {s50:>8.0f}us {l50:>9.0f}us {ratio:>6.2f} {l99:>9.0f}us {l50 / floor_large:>7.1f}x {flag}")
    print(f"(floor = bare SELECT 1 in a store transaction: {floor_small:.0f}us at {SMALL}, {floor_large:.0f}us at {n})")
    return ok


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
    p.add_argument("--skills", type=int, default=10_000, help="skills in the large stage")
    p.add_argument("--versions", type=int, default=20, help="versions per skill")
    p.add_argument("--lookups", type=int, default=1000, help="samples per lookup operation")
    p.add_argument("--moves", type=int, default=400, help="pointer moves per stage (half promote, half rollback)")
    p.add_argument("--url", help="database URL (must be empty); default: a temporary SQLite file")
    p.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL (tests/pg.py)")
    p.add_argument("--quick", action="store_true", help="CI smoke: 1000 skills x 5 versions, fewer samples")
    p.add_argument("--max-ratio", type=float, default=2.0)
    p.add_argument("--check", action="store_true", help="exit 1 when a lookup ratio exceeds --max-ratio")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.skills, args.versions, args.lookups, args.moves = 1000, 5, 300, 200
    if args.skills < SMALL:
        p.error(f"--skills must be at least {SMALL}")
    rnd = random.Random(args.seed)

    with _database(args) as url:
        store = open_store(url)
        try:
            if versions.list_skills(store, limit=1):
                print("error: the benchmark needs an empty database", file=sys.stderr)
                return 2
            seeder = Seeder(store, args.versions)
            print(f"store: {store.dialect} ({url.split('@')[-1] if '@' in url else url})")
            t = seeder.seed(SMALL)
            print(f"seeded {SMALL} skills x {args.versions} versions in {t:.1f}s")
            small = measure_stage(store, SMALL, args.versions, args.lookups, args.moves, rnd)
            t = seeder.seed(args.skills)
            print(f"seeded up to {args.skills} skills x {args.versions} versions in {t:.1f}s "
                  f"({args.skills * args.versions} versions)")  # fmt: skip
            large = measure_stage(store, args.skills, args.versions, args.lookups, args.moves, rnd)
        finally:
            store.close()
    print()
    ok = report(small, large, args.skills, args.max_ratio)
    if args.json:
        print(json.dumps({"small": small, "large": large, "skills": args.skills, "versions": args.versions}))
    if args.check and not ok:
        print(f"FAIL: a lookup grew more than {args.max_ratio}x from {SMALL} to {args.skills} skills")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
