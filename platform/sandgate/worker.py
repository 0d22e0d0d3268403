"""Queue workers: claim queued evaluations with a lease, run them, store the verdict.

::

    from sandgate.store import open_store
    from sandgate.worker import Worker

    worker = Worker(open_store())            # concurrency from CPUs and memory
    worker.run_forever()                     # until SIGTERM/SIGINT (or worker.stop())
    worker.run_once()                        # tests: claim what fits now, run it, return outcomes

One evaluation, start to end
----------------------------

1. ``evaluations.claim_evaluation`` leases the next evaluation to this worker
   (owner ``<host id>:<pid>:<random>``) for ``lease_seconds``.
2. A heartbeat thread per job extends the lease every ``lease_seconds / 3``.
   If the lease was lost (the worker stalled, another worker took the job
   over) the heartbeat kills this worker's sandbox for that evaluation and the
   result is discarded.
3. ``lifecycle.run_claimed(store, claimed, owner=...)`` does the rest, end to
   end: the policy is loaded **by the name it was queued under**; the
   version's exact stored bytes are validated again and must hash to the
   version's content hash; ``lifecycle.run_evaluation`` — the one code path of
   the embedded mode — runs it and stores the report as a compare-and-set on
   this worker's lease (a job is completed exactly once); then auto-promotion
   as in ``lifecycle.submit``: a passed verdict under a policy whose promotion
   mode for the skill is ``auto`` promotes (actor ``policy:<name>``), unless
   the version is already active.

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
* **Liveness.** While :meth:`Worker.run_forever` runs, a thread refreshes the
  worker's row in ``worker_beats`` every ``beat_seconds`` (5 s); a clean stop
  deletes it. ``/readyz`` and a waiting remote ``submit`` count the rows fresher
  than ``evaluations.WORKER_ALIVE_SECONDS`` to say "no worker is alive".
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
  controllers' containers are never touched. "This host" is the ``host_id``
  setting (default: the hostname, :func:`sandgate.names.host_id`): each worker
  host of a fleet (one Docker engine each) has its own.
* **The engine dies under a running job.** A report that is not ``passed`` or
  ``rejected`` while the Docker engine no longer answers a ping describes the
  engine, not the skill: it is not stored. The job goes back to the queue
  with its attempt counted (``release_evaluation(count_attempt=True)``; a job
  that keeps killing engines ends at ``max_attempts`` as verdict ``error``),
  so another host runs it; the outcome is ``requeued``. The worker then stops
  claiming until its engine answers again, and then removes its own stopped
  containers (the sandboxes and warm ones the dead engine left behind).

Default concurrency: ``min(1.5 × CPUs / policy.limits.cpus, MemAvailable /
policy.limits.memory_mb)``, at least 1 — memory is never oversubscribed; CPU
slightly is, because an evaluation spends part of its wall time in the engine
(create, start, collect, remove) rather than in its sandbox (measured in
``bench/bench_load.py``: 3 slots on 2 cores beat 2 by ~8%).

Logs are one JSON object per line (:mod:`sandgate.logs`), with
``evaluation_id``, ``skill``, ``version`` and ``worker`` on every job line.

Traces (:mod:`sandgate.tracing`, when configured): a claimed evaluation whose
row carries the submitter's ``traceparent`` continues that trace. Under the
submitter's span: ``sandgate.queue_wait`` (from queued to claimed) and
``sandgate.evaluation``, the job, whose children are ``sandgate.claim``,
``sandgate.evaluate`` (the phases and the gates), ``sandgate.finish`` and
``sandgate.promotion``. Its job log lines carry the same ``trace_id``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from sandgate import lifecycle, tracing
from sandgate.errors import ENGINE_LOST, Conflict, SandgateError
from sandgate.names import controller_alive, controller_id, owner_id
from sandgate.records import EvaluationRecord
from sandgate.report import gave_up
from sandgate.store import evaluations
from sandgate.store.engine import Store

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.policy import Policy

__all__ = [
    "Worker",
    "JobOutcome",
    "default_concurrency",
]

log = logging.getLogger("sandgate.worker")

#: how often a running worker looks for containers of dead controllers on its host
REAP_INTERVAL_SECONDS = 60.0
#: back-off after the store failed to answer a claim
STORE_RETRY_SECONDS = 2.0
#: how often a worker whose engine died asks it again before claiming
ENGINE_RETRY_SECONDS = 1.0


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


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What happened to one claimed evaluation."""

    evaluation_id: str
    skill: str
    version: int
    #: done: stored · lost: lease taken over, result discarded · released: handed back on
    #: shutdown · abandoned: the store failed; the lease will lapse and another worker retries ·
    #: requeued: the engine died under it; handed back (attempt counted) for another host
    status: Literal["done", "lost", "released", "abandoned", "requeued"]
    verdict: str | None = None
    attempt: int = 1
    #: the version number auto-promotion made active, if any
    promoted: int | None = None
    note: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


class _JobIds(TypedDict):
    """The fields of a :class:`JobOutcome` that name the job."""

    evaluation_id: str
    skill: str
    version: int
    attempt: int


@dataclass(eq=False)
class _Job:
    claimed: EvaluationRecord
    started: float = field(default_factory=time.monotonic)
    #: the job's span (``sandgate.evaluation``) while traces are on
    span: Any = None
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


class Worker:
    """A pool of evaluation slots fed from the store's queue (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int | None = None,
        lease_seconds: float = evaluations.DEFAULT_LEASE_SECONDS,
        poll_interval: float = 0.5,
        owner: str | None = None,
        evaluate: lifecycle.EvaluateFn | None = None,
        max_attempts: int = evaluations.DEFAULT_MAX_ATTEMPTS,
        drain_seconds: float = 25.0,
        load_policy: lifecycle.PolicyLoader | None = None,
        reap_interval: float = REAP_INTERVAL_SECONDS,
        docker_client: Any = None,
        kind: str = "worker",
        beat_seconds: float = evaluations.WORKER_BEAT_SECONDS,
        warm_pool: bool | None = None,
        check_engine: bool | None = None,
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
        #: run a warm pool of sandboxes in this process (default: when evaluations are real)
        self.warm_pool = evaluate is None if warm_pool is None else bool(warm_pool)
        #: a non-passed report while the engine does not answer is requeued, not stored
        #: (default: when evaluations are real)
        self.check_engine = evaluate is None if check_engine is None else bool(check_engine)
        #: set when a job found the engine dead: no claims until it answers again
        self._engine_down = threading.Event()
        self._engine_asked = 0.0
        #: loads the policy an evaluation was queued under, by name
        self._policy_loader: lifecycle.PolicyLoader = load_policy or lifecycle.load_policy
        if concurrency is None:
            try:
                concurrency = default_concurrency(self._policy_loader(None))
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
        #: when the last claim began (epoch ns): the start of the claimed job's spans
        self._claim_began = 0
        #: ``worker`` or ``serve``: recorded with the liveness beat (``/readyz`` reads it)
        self.kind = kind
        self.beat_seconds = float(beat_seconds)
        self._beats_done = threading.Event()

    # ------------------------------------------------------------------ public

    def run_forever(self) -> None:
        """Claim and run evaluations until :meth:`stop` or SIGTERM/SIGINT; then drain."""
        restore = self._install_signal_handlers()
        log.info(
            "worker started",
            extra={**self._extra, "concurrency": self.concurrency, "lease_seconds": self.lease_seconds},
        )
        beats = threading.Thread(target=self._beat, name="sandgate-worker-beat", daemon=True)
        beats.start()
        try:
            self.reap_dead_controllers()
            self._start_warm_pool()
            while not self._stop.is_set():
                if time.monotonic() - self._last_reap > self.reap_interval:
                    self.reap_dead_controllers()
                if self._engine_down.is_set() and not self._engine_back():
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
                    continue
                if self._free_slots() > 0:
                    claimed = self._claim()
                    if claimed is not None:
                        self._start(claimed)
                        continue
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        finally:
            self._drain()
            self._beats_done.set()
            beats.join(timeout=5)
            try:
                evaluations.worker_gone(self.store, owner=self.owner)
            except Exception as exc:  # the row goes stale on its own
                log.warning("could not remove the liveness record: %s", exc, extra=self._extra)
            self._stop_warm_pool()
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
            from sandgate.sandbox import reaper  # the Docker adapter: loaded with the engine

            reaped = reaper.reap(client, alive=controller_alive)
        except Exception as exc:  # the engine is flaky: evaluations will say so; keep working
            log.warning("reaping dead controllers' sandboxes failed: %s", exc, extra=self._extra)
            return []
        for r in reaped:
            log.info(
                "removed a sandbox of a dead controller",
                extra={"container": r.sandbox.container_id[:12], "controller": r.sandbox.controller,
                       "evaluation_id": r.sandbox.evaluation_id},
            )
        return [cid for r in reaped for cid in r.removed]

    # ------------------------------------------------------------------ claiming

    def _free_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._jobs)

    def _claim(self) -> EvaluationRecord | None:
        self._claim_began = time.time_ns()
        try:
            return evaluations.claim_evaluation(
                self.store,
                give_up=gave_up,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                max_attempts=self.max_attempts,
            )
        except Exception as exc:  # the store is down or busy: back off, never die
            log.warning("claim failed: %s", exc, extra=self._extra)
            self._stop.wait(STORE_RETRY_SECONDS)
            return None

    def _trace(self, job: _Job) -> None:
        """The job's spans: it continues the trace of the span that queued it (its traceparent).
        A row queued while traces were off starts a trace of its own (no queue-wait span: its
        seconds are an attribute of the job's span)."""
        c, claimed_at = job.claimed, time.time_ns()
        ids: dict[str, Any] = {"sandgate.evaluation_id": c.id, "sandgate.skill": c.skill,
                               "sandgate.version": c.version, "sandgate.attempt": c.attempts,
                               "sandgate.worker": self.owner}
        began = self._claim_began or claimed_at
        queued_at = int(c.created_at.timestamp() * 1e9)
        waited = round(max(0, claimed_at - queued_at) / 1e9, 4)
        parent = tracing.valid_traceparent(c.traceparent)
        if parent is not None:
            tracing.record_span("sandgate.queue_wait", min(queued_at, began), claimed_at,
                                {**ids, "sandgate.queue_wait_seconds": waited}, parent=parent)
        job.span = tracing.start_span(
            "sandgate.evaluation", {**ids, "sandgate.policy": c.policy_name, "sandgate.queue_wait_seconds": waited},
            parent=parent, start_ns=began, kind="consumer")
        tracing.record_span("sandgate.claim", began, claimed_at, ids, parent=job.span)

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
        if tracing.enabled():
            self._trace(job)
        with tracing.use_span(job.span, end=False):
            log.info("claimed", extra=job.log_extra(self.owner, reclaimed=claimed.attempts > 1))
        if claimed.attempts > 1:
            # a lapsed lease: if its worker died on this host, its sandbox is still there
            self.reap_dead_controllers()
        threading.Thread(
            target=self._heartbeat, args=(job,), name=f"sandgate-hb-{job.id[:8]}", daemon=True
        ).start()
        job.future = self._pool.submit(self._run, job)
        return job

    def _beat(self) -> None:
        """The worker's liveness record (``worker_beats``), every ``beat_seconds`` until stopped."""
        first = True
        while True:
            try:
                evaluations.worker_beat(self.store, owner=self.owner, concurrency=self.concurrency,
                                        kind=self.kind, first=first)
                first = False
            except Exception as exc:  # the store is down: claims fail too, and say so
                log.warning("liveness beat failed: %s", exc, extra=self._extra)
            if self._beats_done.wait(self.beat_seconds):
                return

    # ------------------------------------------------------------------ one job

    def _heartbeat(self, job: _Job) -> None:
        with tracing.use_span(job.span, end=False):  # its log lines carry the job's trace_id
            self._heartbeats(job)

    def _heartbeats(self, job: _Job) -> None:
        interval = max(0.1, self.lease_seconds / 3.0)
        while not job.done.wait(interval):
            try:
                evaluations.heartbeat(
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
        with tracing.use_span(job.span):
            outcome = self._run_job(job)
            if job.span is not None:
                job.span.set_attribute("sandgate.status", outcome.status)
                if outcome.verdict is not None:
                    job.span.set_attribute("sandgate.verdict", outcome.verdict)
            return outcome

    def _run_job(self, job: _Job) -> JobOutcome:
        c = job.claimed
        base: _JobIds = {"evaluation_id": c.id, "skill": c.skill, "version": c.version, "attempt": c.attempts}
        # only an engine that answered when the job began can be lost during it; with no engine
        # at all the evaluation ends as its own `error` ("no Docker engine answers"), as before
        lost_engine_requeues = self.check_engine and self._engine_answers()
        try:
            run = lifecycle.run_claimed(
                self.store, c, owner=self.owner, evaluate=self._evaluate, policy_loader=self._policy_loader,
                requeue_if=self._engine_lost if lost_engine_requeues else None,
            )
            record, note = run.evaluation, run.note
            promoted = run.promoted.to_version if run.promoted is not None else None
            if run.policy_hash is not None and run.policy_hash != c.policy_hash:
                log.info(
                    "policy changed since queued: evaluated under its current content",
                    extra=job.log_extra(self.owner, queued_policy_hash=c.policy_hash, policy_hash=run.policy_hash),
                )
            outcome = JobOutcome(**base, status="done", verdict=record.verdict, promoted=promoted,
                                 note=note, seconds=round(time.monotonic() - job.started, 3))
            log.info(
                "evaluated",
                extra=job.log_extra(self.owner, verdict=record.verdict, seconds=outcome.seconds,
                                    reasons=[r.get("code") for r in record.reasons],
                                    promoted=promoted, note=note),
            )
        except lifecycle.Requeue as exc:
            outcome = self._requeue(job, base, str(exc))
        except Conflict as exc:
            status: Literal["released", "lost"] = "released" if job.released.is_set() else "lost"
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

    # ------------------------------------------------------------------ the engine died

    def _engine_answers(self) -> bool:
        client = self._docker()
        if client is None:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False

    def _engine_lost(self, report: Any) -> str | None:
        """``requeue_if`` of a real evaluation: the engine died if it no longer answers, or if
        the run says it went away under the sandbox (``EngineLost``: back already, restarted)."""
        verdict = getattr(report, "verdict", None)
        if getattr(verdict, "value", verdict) in ("passed", "rejected"):
            return None
        if self._engine_answers():
            for reason in getattr(report, "reasons", None) or []:
                # only the controller writes ``infrastructure`` reasons, and only EngineLost
                # starts one with ENGINE_LOST: no text of the skill's can ask for a requeue
                message = str(getattr(reason, "message", "") or "")
                if getattr(reason, "code", None) == "infrastructure" and message.startswith(ENGINE_LOST):
                    return message
            return None
        self._engine_down.set()
        return "the Docker engine stopped answering during the run"

    def _requeue(self, job: _Job, base: _JobIds, why: str) -> JobOutcome:
        try:
            released = evaluations.release_evaluation(self.store, evaluation_id=job.id, owner=self.owner,
                                                      count_attempt=True)
        except Exception as exc:  # the lease lapses instead; another worker claims it
            released = False
            log.warning("requeue failed (the lease will lapse): %s", exc, extra=job.log_extra(self.owner))
        log.warning("requeued: %s", why, extra=job.log_extra(self.owner, released=released))
        return JobOutcome(**base, status="requeued", note=why, seconds=round(time.monotonic() - job.started, 3))

    def _engine_back(self) -> bool:
        """While the engine is down: ask it (every ``ENGINE_RETRY_SECONDS``); once back, clean up."""
        now = time.monotonic()
        if now - self._engine_asked < ENGINE_RETRY_SECONDS:
            return False
        self._engine_asked = now
        if not self._engine_answers():
            return False
        self._engine_down.clear()
        client = self._docker()
        try:
            from sandgate.sandbox import reaper

            removed = reaper.remove_stopped(client, controller=controller_id())
        except Exception as exc:
            log.warning("removing the dead engine's leftovers failed: %s", exc, extra=self._extra)
            removed = []
        log.info("the Docker engine answers again", extra={**self._extra, "removed": len(removed)})
        return True

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

    def _start_warm_pool(self) -> None:
        """Start this process's warm pool and fill it for the default policy's limits."""
        if not self.warm_pool:
            return
        try:
            from sandgate.sandbox import pool as warm_pools
            from sandgate.sandbox.runner import harness_args

            policy = self._policy_loader(None)
            warm_pools.start(policy.limits, default_size=self.concurrency + 1,
                             harness_argv=harness_args(mutation=policy.mutation.max_mutants > 0))
        except Exception as exc:  # no pool is slower, not wrong: evaluations start cold sandboxes
            log.warning("no warm pool: %s", exc, extra=self._extra)

    def _stop_warm_pool(self) -> None:
        if not self.warm_pool:
            return
        from sandgate.sandbox import pool as warm_pools

        try:
            warm_pools.disable()
        except Exception as exc:
            log.warning("draining the warm pool failed (the reaper will finish): %s", exc, extra=self._extra)

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
                released = evaluations.release_evaluation(self.store, evaluation_id=job.id, owner=self.owner)
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
