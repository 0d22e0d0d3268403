"""Fair share benchmark: how long does one key's submission wait while another key floods the queue?

::

    python bench/bench_fairshare.py                 # SQLite in a temporary directory
    python bench/bench_fairshare.py --postgres      # a throwaway PostgreSQL (tests/pg.py)
    python bench/bench_fairshare.py --check         # exit 1 if the fair p95 exceeds --max-slots

Key ``flood`` keeps 1,000 evaluations queued (topped up before every probe); key ``probe``
then submits one evaluation, and the time from its being queued to a worker slot claiming
it (``started_at - created_at``, the store's timestamps) is its wait. The wait is printed
in *evaluation slots*: the median duration of the evaluations run in the same phase.
The same probes run twice in one process: with the
fair claim (``claim_evaluation``, what workers do) and with the FIFO claim of the whole
queue (``fair=False``), the baseline.

Real parts: the store (versions stored and evaluations queued by the same calls an API
submit makes: ``versions.create_version`` + ``evaluations.begin_evaluation(start=False,
tenant=...)``), claims, leases and finishes (``finish_evaluation`` as the lease owner),
``--slots`` claiming threads each with its own store connection. The evaluation itself is
a stand-in: each slot holds its claimed evaluation for ``--duration`` seconds (queue
fairness depends only on how long a slot is held, and a real sandbox evaluation would make
the FIFO baseline take hours: 1,000 × ~2 s / slots).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from sandgate.report import EvaluationReport, Verdict, gave_up  # noqa: E402
from sandgate.store import evaluations, open_store, versions  # noqa: E402
from sandgate.store.engine import Store  # noqa: E402
from sandgate.store.models import Evaluation  # noqa: E402

FLOOD, PROBE = "key:flood", "key:probe"
POLICY = SimpleNamespace(name="default", hash="sha256:bench-policy")


def _submission(name: str, i: int) -> Any:
    files = {f"{name}.py": f"def run(x):\n    return x + {i}\n".encode()}
    return SimpleNamespace(name=name, files=files, manifest={"name": name},
                           content_hash="sha256:" + hashlib.sha256(files[f"{name}.py"]).hexdigest())


class Phase:
    """One run of the scenario with one claim order."""

    def __init__(self, store: Store, url: str, *, fair: bool, slots: int, duration: float,
                 flood: int, tag: str) -> None:
        self.store, self.url, self.fair, self.slots, self.duration = store, url, fair, slots, duration
        self.flood, self.tag = flood, tag
        self._stop = threading.Event()
        self._n = 0
        self.durations: list[float] = []
        self._lock = threading.Lock()

    def submit(self, tenant: str, name: str) -> str:
        self._n += 1
        v, _ = versions.create_version(self.store, submission=_submission(name, self._n), actor=tenant)
        ev, _ = evaluations.begin_evaluation(self.store, name=name, number=v.number, policy_name=POLICY.name,
                                             policy_hash=POLICY.hash, start=False, tenant=tenant)
        return ev.id

    def queued(self, tenant: str) -> int:
        from sqlalchemy import func, select

        with self.store.read() as s:
            return int(s.scalar(select(func.count()).select_from(Evaluation)
                                .where(Evaluation.status == "queued", Evaluation.tenant == tenant)) or 0)

    def top_up(self) -> None:
        for _ in range(self.flood - self.queued(FLOOD)):
            self.submit(FLOOD, f"flood_{self.tag}")

    def _slot(self, n: int) -> None:
        store = open_store(self.url)
        owner = f"bench:{os.getpid()}:{self.tag}{n}"
        try:
            while not self._stop.is_set():
                ev = evaluations.claim_evaluation(store, give_up=gave_up, owner=owner, fair=self.fair)
                if ev is None:
                    time.sleep(0.005)
                    continue
                t0 = time.perf_counter()
                time.sleep(self.duration)  # the stand-in evaluation: the slot is held
                evaluations.finish_evaluation(
                    store, evaluation_id=ev.id, owner=owner,
                    report=EvaluationReport(evaluation_id=ev.id, verdict=Verdict.passed))
                with self._lock:
                    self.durations.append(time.perf_counter() - t0)
        finally:
            store.close()

    def queue_wait(self, evaluation_id: str) -> float | None:
        """Seconds from queued to claimed (the store's own timestamps), None while still queued."""
        ev = evaluations.get_evaluation(self.store, evaluation_id=evaluation_id)
        if ev.status == "queued" or ev.started_at is None:
            return None
        return (ev.started_at - ev.created_at).total_seconds()

    def run(self, probes: int, timeout: float) -> list[float]:
        self.top_up()
        threads = [threading.Thread(target=self._slot, args=(n,), daemon=True) for n in range(self.slots)]
        for t in threads:
            t.start()
        waits: list[float] = []
        try:
            for _ in range(probes):
                self.top_up()
                t0 = time.perf_counter()
                eid = self.submit(PROBE, f"probe_{self.tag}")
                while (wait := self.queue_wait(eid)) is None:
                    if time.perf_counter() - t0 > timeout:
                        raise SystemExit(f"{self.tag}: the probe waited more than {timeout:g} s")
                    time.sleep(0.002)
                waits.append(wait)
        finally:
            self._stop.set()
            for t in threads:
                t.join(30)
        return waits


def p95(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """``(fair url, fifo url)``: two fresh databases."""
    if args.postgres:
        path = Path(__file__).resolve().parents[1] / "tests" / "pg.py"
        spec = importlib.util.spec_from_file_location("sandgate_tests_pg", path)
        assert spec is not None and spec.loader is not None
        pg = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pg)
        with pg.postgres_server() as server:
            yield server.create_database("bench_fair"), server.create_database("bench_fifo")
        return
    with tempfile.TemporaryDirectory(prefix="sandgate-bench-fairshare-") as tmp:
        yield f"sqlite:///{tmp}/fair.db", f"sqlite:///{tmp}/fifo.db"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL (tests/pg.py)")
    p.add_argument("--flood", type=int, default=1000, help="evaluations the flooding key keeps queued")
    p.add_argument("--slots", type=int, default=2, help="worker slots (claiming threads)")
    p.add_argument("--duration", type=float, default=0.05, help="seconds a slot holds one evaluation")
    p.add_argument("--probes", type=int, default=20, help="probe submissions with the fair claim")
    p.add_argument("--fifo-probes", type=int, default=2, help="probe submissions with the FIFO claim")
    p.add_argument("--max-slots", type=float, default=2.0, help="--check: the fair p95 ceiling, in slots")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    t_start = time.perf_counter()
    with database(args) as (fair_url, fifo_url):
        results = {}
        for tag, url, fair, probes in (("fair", fair_url, True, args.probes),
                                       ("fifo", fifo_url, False, args.fifo_probes)):
            store = open_store(url)
            try:
                phase = Phase(store, url, fair=fair, slots=args.slots, duration=args.duration,
                              flood=args.flood, tag=tag)
                waits = phase.run(probes, timeout=max(60.0, 4 * args.flood * args.duration))
            finally:
                store.close()
            slot = statistics.median(phase.durations)
            results[tag] = (waits, slot)
            print(f"{tag:>4}: {len(waits)} probes, evaluation slot (median duration) {slot * 1000:.1f} ms, "
                  f"wait p50 {statistics.median(waits) / slot:.2f} slots, p95 {p95(waits) / slot:.2f} slots "
                  f"(max {max(waits) / slot:.2f}; {len(phase.durations)} evaluations ran)", flush=True)
    fair_p95 = p95(results["fair"][0]) / results["fair"][1]
    fifo_p95 = p95(results["fifo"][0]) / results["fifo"][1]
    backend = "postgresql" if args.postgres else "sqlite"
    print(f"\none key floods {args.flood} queued, another submits one; {args.slots} slots, {backend}:")
    print(f"  fair claim p95 wait: {fair_p95:.2f} evaluation slots")
    print(f"  FIFO baseline p95:   {fifo_p95:.2f} evaluation slots  (FIFO / fair = {fifo_p95 / fair_p95:.0f}x)")
    print(f"  (ideal FIFO: {args.flood} / {args.slots} = {args.flood / args.slots:.0f} slots; "
          f"loadavg {open('/proc/loadavg').read().split()[0]}; {time.perf_counter() - t_start:.0f} s)")
    if args.check and fair_p95 > args.max_slots:
        print(f"FAIL: the fair p95 {fair_p95:.2f} slots exceeds {args.max_slots:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
