"""Queue workers: claim queued evaluations with a lease, run them, store the verdict.

::

    from sandgate.store import open_store
    from sandgate.worker import Worker

    worker = Worker(open_store())            # concurrency from CPUs and memory
    worker.run_forever()                     # until SIGTERM/SIGINT (or worker.stop())
    worker.run_once()                        # tests: claim what fits now, run it, return outcomes

One evaluation, start to end
----------------------------

1. ``repository.claim_evaluation`` leases the next evaluation to this worker
   (owner ``<hostname>:<pid>:<random>``) for ``lease_seconds``.
2. A heartbeat thread per job extends the lease every ``lease_seconds / 3``.
   If the lease was lost (the worker stalled, another worker took the job
   over) the heartbeat kills this worker's sandbox for that evaluation and the
   result is discarded.
3. The version's exact stored bytes (``repository.get_version_files``) are
   validated again (``submission_from_files``) and must hash to the version's
   content hash; the policy is loaded **by the name it was queued under**.
4. ``lifecycle.run_evaluation`` runs it — the one code path of the embedded
   mode — inside ``repository.lease_scope(owner)``, which makes storing the
   report a compare-and-set on the lease: a job is completed exactly once.
5. Auto-promotion as in ``lifecycle.submit``: a passed verdict under a policy
   whose promotion mode for the skill is ``auto`` promotes (actor
   ``policy:<name>``), unless the version is already active.

Decisions
---------

* **Policy drift.** Only the policy's *name* and hash are queued, not its
  content. When the file changed between queueing and running, the worker
  evaluates under the policy's *current* content — the only one it can load —
  and the stored evaluation records the hash actually used (the queued hash
  stays in the ``evaluated`` event's evidence as ``queued_policy_hash``). So
  ``promote`` under the current policy finds it, and nothing claims a policy
  it was not run under. A policy that no longer loads ends the evaluation as
  verdict ``error`` (the operator's fault, never the skill's).
* **No promotion over a newer version.** Workers finish evaluations in any
  order; a passed ``v3`` is not auto-promoted when ``v4`` is already active
  (the result says why). The promotion is a compare-and-set on the generation
  read just before, so a concurrent move wins and is reported, never raised.
* **Graceful stop.** SIGTERM/SIGINT: stop claiming, let running jobs finish
  for up to ``drain_seconds``, then hand the rest back to the queue
  (``release_evaluation``: the attempt is not counted) and remove their
  sandboxes. A second signal skips the wait.
* **Crashes.** A worker killed with SIGKILL leaves a lease that lapses after
  ``lease_seconds``; another worker claims the job again (up to
  ``max_attempts`` claims, then verdict ``error``: "gave up after N
  attempts"). Its sandbox is removed by the next worker started on the same
  host (start-up reap), by any worker's periodic reap, or by the scheduler's
  orphan reaper: containers whose controller process (label
  ``sandgate.controller`` = ``host:pid``) is dead on this host. Live
  controllers' containers are never touched.

Default concurrency: ``min(1.5 × CPUs / policy.limits.cpus, MemAvailable /
policy.limits.memory_mb)``, at least 1 — memory is never oversubscribed; CPU
slightly is, because an evaluation spends part of its wall time in the engine
(create, start, collect, remove) rather than in its sandbox (measured in
``bench/bench_load.py``: 3 slots on 2 cores beat 2 by ~8%).

Logs are one JSON object per line (:func:`configure_logging`), with
``evaluation_id``, ``skill``, ``version`` and ``worker`` on every job line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sandgate.errors import (
    Conflict,
    SandgateError,
    StoreError,
    SubmissionError,
)
from sandgate.names import controller_id, owner_id
from sandgate.store import repository as repo
from sandgate.store.engine import Store
from sandgate.records import EvaluationRecord

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.report import EvaluationReport
    from sandgate.policy import Policy

__all__ = [
    "Worker",
    "JobOutcome",
    "JsonFormatter",
    "configure_logging",
    "default_concurrency",
    "controller_alive",
    "reap_dead_controllers",
]

log = logging.getLogger("sandgate.worker")

#: how often a running worker looks for containers of dead controllers on its host
REAP_INTERVAL_SECONDS = 60.0
#: back-off after the store failed to answer a claim
STORE_RETRY_SECONDS = 2.0


# --------------------------------------------------------------------------- logging

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and every ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", stream: Any = None) -> None:
    """Send the ``sandgate`` loggers to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("sandgate")
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    root.propagate = False


# --------------------------------------------------------------------------- sizing, identity


def _available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: sandbox slots per CPU's worth of sandbox quota. Measured (bench/bench_load.py, 2 cores):
#: each evaluation spends ~15-20% of its wall time outside its sandbox's CPU quota
#: (container create/start/collect/remove, the engine's fsyncs), so slots = CPUs leaves
#: the machine ~86% busy; 1.5x fills the gaps (~+8% throughput). Memory stays a hard bound.
CPU_OVERSUBSCRIPTION = 1.5


def default_concurrency(policy: Policy | None = None) -> int:
    """``min(1.5 × CPUs / cpus per sandbox, available memory / memory per sandbox)``, at least 1."""
    cpus_each, memory_each = 1.0, 512 * 1024 * 1024
    if policy is not None:
        cpus_each = float(policy.limits.cpus)
        memory_each = int(policy.limits.memory_mb) * 1024 * 1024
    by_cpu = round(_cpu_count() * CPU_OVERSUBSCRIPTION / max(cpus_each, 0.01))
    available = _available_memory_bytes()
    by_memory = available // memory_each if available else by_cpu
    return max(1, min(by_cpu, int(by_memory)))


# --------------------------------------------------------------------------- dead controllers


def _process_start_epoch(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # pragma: no cover - e.g. hidepid: cannot tell, assume alive
        return 0.0
    try:
        fields = stat[stat.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of the whole line
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (ValueError, IndexError, StopIteration, OSError):  # pragma: no cover
        return 0.0


def controller_alive(label: str | None, created_epoch: float | None = None) -> bool | None:
    """Is the controller ``host:pid`` that started a container still running?

    True / False for controllers on this host; None when it is another host's
    (or the label is missing or malformed): not ours to judge. A process with
    that pid that started after the container was created is a reused pid:
    the controller is dead.
    """
    if not label or ":" not in label:
        return None
    host, _, pid_text = label.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    if pid == os.getpid():
        return True
    started = _process_start_epoch(pid)
    if started is None:
        return False
    if created_epoch is not None and started > created_epoch + 2.0:
        return False  # the pid was reused after the container was created
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")  # a zombie's controller is gone


def reap_dead_controllers(client: Any, *, labels: Iterable[str] = ()) -> list[str]:
    """Remove sandboxes whose controller process on this host is dead; return their ids.

    ``labels`` narrows the search (``key=value`` filters, e.g. in tests).
    Containers of live controllers, and of other hosts, are never touched.
    """
    from sandgate.sandbox.runner import CONTROLLER_LABEL, EVALUATION_LABEL, MANAGED_LABEL, reap

    filters = {"label": [f"{MANAGED_LABEL}=true", *labels]}
    removed: list[str] = []
    for c in client.api.containers(all=True, filters=filters):
        container_labels = c.get("Labels") or {}
        controller = container_labels.get(CONTROLLER_LABEL)
        if controller_alive(controller, c.get("Created")) is not False:
            continue
        evaluation = container_labels.get(EVALUATION_LABEL)
        ids = reap(client, evaluation_id=evaluation, controller=controller) if evaluation else []
        if not ids:
            from sandgate.sandbox.runner import _remove

            _remove(client.api, c["Id"])
            ids = [c["Id"]]
        removed.extend(ids)
        log.info(
            "removed a sandbox of a dead controller",
            extra={"container": c["Id"][:12], "controller": controller, "evaluation_id": evaluation},
        )
    return removed


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What happened to one claimed evaluation."""

    evaluation_id: str
    skill: str
    version: int
    #: done: stored · lost: lease taken over, result discarded · released: handed back on
    #: shutdown · abandoned: the store failed; the lease will lapse and another worker retries
    status: Literal["done", "lost", "released", "abandoned"]
    verdict: str | None = None
    attempt: int = 1
    #: the version number auto-promotion made active, if any
    promoted: int | None = None
    note: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(eq=False)
class _Job:
    claimed: EvaluationRecord
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    future: Future[JobOutcome] | None = None

    @property
    def id(self) -> str:
        return self.claimed.id

    def log_extra(self, owner: str, **more: Any) -> dict[str, Any]:
        c = self.claimed
        return {"evaluation_id": c.id, "skill": c.skill, "version": c.version, "worker": owner,
                "attempt": c.attempts, **more}


EvaluateFn = Callable[..., "EvaluationReport"]


class Worker:
    """A pool of evaluation slots fed from the store's queue (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int | None = None,
        lease_seconds: float = repo.DEFAULT_LEASE_SECONDS,
        poll_interval: float = 0.5,
        owner: str | None = None,
        evaluate: EvaluateFn | None = None,
        max_attempts: int = repo.DEFAULT_MAX_ATTEMPTS,
        drain_seconds: float = 25.0,
        load_policy: Callable[[str], Policy] | None = None,
        reap_interval: float = REAP_INTERVAL_SECONDS,
        docker_client: Any = None,
    ) -> None:
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self.store = store
        self.lease_seconds = float(lease_seconds)
        self.poll_interval = float(poll_interval)
        self.owner = owner or owner_id()
        self.max_attempts = int(max_attempts)
        self.drain_seconds = float(drain_seconds)
        self.reap_interval = float(reap_interval)
        self._evaluate = evaluate
        self._load_policy_fn = load_policy
        if concurrency is None:
            try:
                concurrency = default_concurrency(self._load_policy(None))
            except SandgateError:
                concurrency = default_concurrency(None)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = int(concurrency)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sandgate-job")
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._wake = threading.Event()
        self._client = docker_client
        self._client_lock = threading.Lock()
        self._last_reap = 0.0
        self._extra = {"worker": self.owner}

    # ------------------------------------------------------------------ public

    def run_forever(self) -> None:
        """Claim and run evaluations until :meth:`stop` or SIGTERM/SIGINT; then drain."""
        restore = self._install_signal_handlers()
        log.info(
            "worker started",
            extra={**self._extra, "concurrency": self.concurrency, "lease_seconds": self.lease_seconds},
        )
        try:
            self.reap_dead_controllers()
            while not self._stop.is_set():
                if time.monotonic() - self._last_reap > self.reap_interval:
                    self.reap_dead_controllers()
                if self._free_slots() > 0:
                    claimed = self._claim()
                    if claimed is not None:
                        self._start(claimed)
                        continue
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        finally:
            self._drain()
            restore()
            log.info("worker stopped", extra=self._extra)

    def run_once(self, *, max_jobs: int | None = None) -> list[JobOutcome]:
        """Claim what fits now (up to ``concurrency`` or ``max_jobs``), run it, wait, return."""
        limit = self.concurrency if max_jobs is None else max(0, max_jobs)
        jobs = []
        for _ in range(limit):
            claimed = self._claim()
            if claimed is None:
                break
            jobs.append(self._start(claimed))
        return [job.future.result() for job in jobs if job.future is not None]

    def stop(self) -> None:
        """Stop claiming; :meth:`run_forever` drains and returns. Twice: skip the drain wait."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    @property
    def running(self) -> list[str]:
        """Ids of the evaluations this worker is running now."""
        with self._lock:
            return list(self._jobs)

    def reap_dead_controllers(self) -> list[str]:
        """Start-up and periodic clean-up of sandboxes whose controller died on this host."""
        self._last_reap = time.monotonic()
        client = self._docker()
        if client is None:
            return []
        try:
            return reap_dead_controllers(client)
        except Exception as exc:  # the engine is flaky: evaluations will say so; keep working
            log.warning("reaping dead controllers' sandboxes failed: %s", exc, extra=self._extra)
            return []

    # ------------------------------------------------------------------ claiming

    def _free_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._jobs)

    def _claim(self) -> EvaluationRecord | None:
        try:
            return repo.claim_evaluation(
                self.store,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                max_attempts=self.max_attempts,
            )
        except Exception as exc:  # the store is down or busy: back off, never die
            log.warning("claim failed: %s", exc, extra=self._extra)
            self._stop.wait(STORE_RETRY_SECONDS)
            return None

    def _start(self, claimed: EvaluationRecord) -> _Job:
        job = _Job(claimed)
        with self._lock:
            mine = self._jobs.get(job.id)
            if mine is None:
                self._jobs[job.id] = job
        if mine is not None:
            # our own job, still running, whose lease lapsed while this process stalled:
            # the claim renewed the lease to us; let the running copy finish it
            log.warning("re-claimed our own running job after a stall", extra=mine.log_extra(self.owner))
            return mine
        log.info("claimed", extra=job.log_extra(self.owner, reclaimed=claimed.attempts > 1))
        if claimed.attempts > 1:
            # a lapsed lease: if its worker died on this host, its sandbox is still there
            self.reap_dead_controllers()
        threading.Thread(
            target=self._heartbeat, args=(job,), name=f"sandgate-hb-{job.id[:8]}", daemon=True
        ).start()
        job.future = self._pool.submit(self._run, job)
        return job

    # ------------------------------------------------------------------ one job

    def _heartbeat(self, job: _Job) -> None:
        interval = max(0.1, self.lease_seconds / 3.0)
        while not job.done.wait(interval):
            try:
                repo.heartbeat(
                    self.store,
                    evaluation_id=job.id,
                    owner=self.owner,
                    lease_seconds=self.lease_seconds,
                )
            except Conflict as exc:
                if job.done.is_set() or job.released.is_set():
                    return
                job.lost.set()
                log.warning("lease lost; stopping the sandbox: %s", exc, extra=job.log_extra(self.owner))
                self._kill_sandbox(job.id)
                return
            except Exception as exc:  # store unreachable: keep trying until the lease tells
                log.warning("heartbeat failed: %s", exc, extra=job.log_extra(self.owner))

    def _run(self, job: _Job) -> JobOutcome:
        c = job.claimed
        base = {"evaluation_id": c.id, "skill": c.skill, "version": c.version, "attempt": c.attempts}
        try:
            with repo.lease_scope(self.owner):
                record, promoted, note = self._evaluate_claimed(job)
            outcome = JobOutcome(**base, status="done", verdict=record.verdict, promoted=promoted,
                                 note=note, seconds=round(time.monotonic() - job.started, 3))
            log.info(
                "evaluated",
                extra=job.log_extra(self.owner, verdict=record.verdict, seconds=outcome.seconds,
                                    reasons=[r.get("code") for r in record.reasons],
                                    promoted=promoted, note=note),
            )
        except Conflict as exc:
            status = "released" if job.released.is_set() else "lost"
            outcome = JobOutcome(**base, status=status, note=str(exc),
                                 seconds=round(time.monotonic() - job.started, 3))
            log.warning("result discarded (%s): %s", status, exc, extra=job.log_extra(self.owner))
        except Exception as exc:
            # the store (or a bug) failed: leave the lease to lapse, another claim retries
            outcome = JobOutcome(**base, status="abandoned", note=f"{type(exc).__name__}: {exc}",
                                 seconds=round(time.monotonic() - job.started, 3))
            log.exception("evaluation abandoned", extra=job.log_extra(self.owner))
        finally:
            job.done.set()
            with self._lock:
                self._jobs.pop(job.id, None)
            self._wake.set()
        return outcome

    def _evaluate_claimed(self, job: _Job) -> tuple[EvaluationRecord, int | None, str | None]:
        from sandgate import lifecycle

        c = job.claimed
        try:
            policy = self._load_policy(c.policy_name)
        except SandgateError as exc:
            report = _report(c, "error", "infrastructure", f"policy {c.policy_name!r} cannot be loaded: {exc}")
            return repo.finish_evaluation(self.store, evaluation_id=c.id, report=report), None, None
        if policy.hash != c.policy_hash:
            log.info(
                "policy changed since queued: evaluating under its current content",
                extra=job.log_extra(self.owner, queued_policy_hash=c.policy_hash, policy_hash=policy.hash),
            )
        try:
            submission = self._load_submission(c)
        except SubmissionError as exc:
            report = _report(c, "rejected", _reason_code(exc.code), str(exc), policy=policy)
            return repo.finish_evaluation(self.store, evaluation_id=c.id, report=report), None, None
        except StoreError as exc:
            report = _report(c, "error", "infrastructure", str(exc), policy=policy)
            return repo.finish_evaluation(self.store, evaluation_id=c.id, report=report), None, None
        record = lifecycle.run_evaluation(
            self.store, evaluation_id=c.id, submission=submission, policy=policy, evaluate=self._evaluate
        )
        move, note = lifecycle.auto_promote(self.store, evaluation=record, policy=policy)
        return record, (move.to_version if move is not None else None), note

    def _load_submission(self, c: EvaluationRecord) -> Any:
        from sandgate.submission import submission_from_files

        version = repo.get_version(self.store, name=c.skill, number=c.version)
        files = repo.get_version_files(self.store, name=c.skill, number=c.version)
        submission = submission_from_files(files)
        if submission.content_hash != version.content_hash:
            raise StoreError(
                f"{version.ref}: the stored bytes hash to {submission.content_hash}, "
                f"not the version's {version.content_hash}"
            )
        return submission

    def _load_policy(self, name: str | None) -> Policy:
        if self._load_policy_fn is not None and name is not None:
            return self._load_policy_fn(name)
        from sandgate import lifecycle

        return lifecycle.load_policy(name)

    # ------------------------------------------------------------------ sandboxes

    def _docker(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    from sandgate.sandbox import connect

                    self._client = connect()
                except SandgateError as exc:
                    log.warning("no Docker engine for clean-up: %s", exc, extra=self._extra)
                    return None
            return self._client

    def _kill_sandbox(self, evaluation_id: str) -> None:
        """Remove this process's sandbox of ``evaluation_id`` (never another controller's)."""
        client = self._docker()
        if client is None:
            return
        try:
            from sandgate.sandbox.runner import reap

            reap(client, evaluation_id=evaluation_id, controller=controller_id())
        except Exception as exc:
            log.warning("could not remove the sandbox: %s", exc,
                        extra={**self._extra, "evaluation_id": evaluation_id})

    # ------------------------------------------------------------------ stopping

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while self.running and time.monotonic() < deadline and not self._abort.is_set():
            self._abort.wait(0.1)
        with self._lock:
            left = list(self._jobs.values())
        for job in left:
            job.released.set()
            try:
                released = repo.release_evaluation(self.store, evaluation_id=job.id, owner=self.owner)
            except Exception as exc:
                released = False
                log.warning("release failed (the lease will lapse): %s", exc, extra=job.log_extra(self.owner))
            log.info("released on shutdown", extra=job.log_extra(self.owner, released=released))
            self._kill_sandbox(job.id)
        self._pool.shutdown(wait=True)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name, extra=self._extra)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


# --------------------------------------------------------------------------- helpers


def _reason_code(code: str) -> str:
    from sandgate.report import ReasonCode

    return code if code in ReasonCode.__members__ else ReasonCode.invalid_submission.value


def _report(
    c: EvaluationRecord, verdict: str, code: str, message: str, *, policy: Any = None
) -> EvaluationReport:
    """A report for an evaluation that could not even start (policy or stored bytes unusable)."""
    from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict

    return EvaluationReport(
        evaluation_id=c.id,
        verdict=Verdict(verdict),
        reasons=[Reason(code=ReasonCode(code), message=message)],
        skill=c.skill,
        policy=c.policy_name,
        policy_hash=policy.hash if policy is not None else c.policy_hash,
    )
