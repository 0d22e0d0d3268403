"""Periodic jobs, and the one place APScheduler is wired.

::

    from sandgate.scheduler import build_scheduler, recover_leases, reap_orphans, apply_retention, rescan_active

    scheduler = build_scheduler(store)        # an APScheduler 3 BackgroundScheduler, not started
    scheduler.start(); ...; scheduler.shutdown()
    run_scheduler(store)                      # blocking, until SIGTERM/SIGINT (``sandgate scheduler``)

Every job is a plain function that tests (and ``sandgate scheduler --once``)
call directly; the scheduler only decides *when*.

=====================  ====================================================================
job                    what it does
=====================  ====================================================================
``recover_leases``     running evaluations whose lease lapsed go back to the queue; at the
                       attempt limit they end as verdict ``error`` ("gave up after N
                       attempts"). Running evaluations with no lease (embedded runs) that
                       started more than ``stale_running_seconds`` ago are requeued too.
``reap_orphans``       removes sandbox containers (label ``sandgate.managed``) whose
                       controller process on this host is dead, and those older than the
                       longest policy timeout + kill grace + ``reap_grace_seconds`` whose
                       evaluation is not running under their controller's lease. Another
                       host's live sandboxes are only ever removed by the age rule.
``apply_retention``    after ``retention_days``: deletes old, non-latest evaluations and
                       drops the captured ``output`` of the old ones kept — only for
                       versions that are not and never were active (``promoted`` /
                       ``rolled_back`` events name those). Versions, files and events are
                       never touched.
``rescan_active``      re-runs the static phase (semgrep, the *current* rules; no submitted
                       code runs) on every active version. Blocked findings (the policy's
                       ``blocked_severities``) → a ``flagged`` event with the findings, the
                       rules' fingerprint and the sandbox facts; with ``rescan_action =
                       "quarantine"`` the skill is also rolled back in the same transaction.
``run_canaries``       one look at every running canary (:mod:`sandgate.delivery`): the
                       sequential test on the consumers' runtime counts decides advance,
                       promote fully, roll back automatically (+ the optional webhook) or
                       hold; each decision is one event with its evidence.
=====================  ====================================================================

Settings (environment only, ``SANDGATE_SCHEDULER_*``; see :class:`SchedulerSettings`):
intervals of each job, ``retention_days``, ``max_attempts``, ``rescan_action``.

Decisions
---------

* **Quarantine = rollback, not yank.** A new rule can be a false positive; a
  rollback is reversible (a human promotes the version again), a yank is not.
  The ``flagged`` event and the rollback's evidence point at each other. When
  there is nothing to roll back to (the first version), the flag is still
  written and says so; the pointer never goes empty.
* **Re-scan policy.** The configured policy (``Settings.policy``) decides what
  is blocked. ``rescan_action`` is read from the policy when it carries one
  (``policy.rescan_action``), else from ``SANDGATE_SCHEDULER_RESCAN_ACTION``
  (default ``flag``).
* **No repeated flags.** A flag carries a fingerprint of its findings; the same
  findings on the same version are not flagged again by the next re-scan.
* **One scheduler at a time.** On PostgreSQL each store-wide job runs under a
  session advisory lock (``pg_try_advisory_lock``): with a scheduler on every
  host, each run of a job happens once. The orphan reaper is per host (each
  host has its own Docker engine) and takes no lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import signal
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import func, select

from sandgate import delivery
from sandgate.config import EnvSettings, get_settings
from sandgate.errors import NotFound, SandgateError
from sandgate.evaluation import evaluate, rules_files
from sandgate.names import controller_alive
from sandgate.policy import load_policy
from sandgate.report import gave_up
from sandgate.store import evaluations, pointers, versions
from sandgate.store.engine import Store
from sandgate.submission import submission_from_files

if TYPE_CHECKING:  # pragma: no cover
    from apscheduler.schedulers.background import BackgroundScheduler

    from sandgate.config import Settings
    from sandgate.policy import Policy

__all__ = [
    "SchedulerSettings",
    "JOBS",
    "recover_leases",
    "reap_orphans",
    "apply_retention",
    "rescan_active",
    "run_canaries",
    "rules_fingerprint",
    "max_policy_timeout",
    "build_scheduler",
    "run_jobs_once",
    "run_scheduler",
]

log = logging.getLogger("sandgate.scheduler")

RESCAN_ACTOR = "scheduler:rescan"


class SchedulerSettings(EnvSettings):
    """``SANDGATE_SCHEDULER_*`` environment variables (not ``sandgate.toml``: its
    :class:`~sandgate.config.Settings` refuses unknown keys). :meth:`load` refuses
    a misspelt one."""

    model_config = SettingsConfigDict(env_prefix="SANDGATE_SCHEDULER_", extra="forbid")
    area = "scheduler"

    #: seconds between runs of lease recovery
    lease_recovery_seconds: float = Field(default=15.0, gt=0)
    #: seconds between runs of the orphan reaper
    reap_seconds: float = Field(default=60.0, gt=0)
    #: seconds between runs of retention
    retention_seconds: float = Field(default=3600.0, gt=0)
    #: seconds between re-scans of active versions with the current rules
    rescan_seconds: float = Field(default=86400.0, gt=0)
    #: claims of one evaluation before it ends as verdict ``error``
    max_attempts: int = Field(default=evaluations.DEFAULT_MAX_ATTEMPTS, ge=1)
    #: a running evaluation with no lease older than this is requeued
    stale_running_seconds: float = Field(default=3600.0, gt=0)
    #: extra age, beyond the longest policy timeout + kill grace, before an orphan is reaped
    reap_grace_seconds: float = Field(default=60.0, ge=0)
    #: evaluations of never-active versions older than this are pruned
    retention_days: float = Field(default=30.0, gt=0)
    #: what a re-scan does with an active version whose findings are now blocked
    rescan_action: Literal["flag", "quarantine"] = "flag"
    # -- canary (sandgate.delivery) --
    #: seconds between two looks at the running canaries
    canary_seconds: float = Field(default=5.0, gt=0)
    #: POSTed a JSON body on every automatic rollback (None: no webhook)
    canary_webhook: str | None = None
    #: timeout of one webhook call (seconds)
    canary_webhook_timeout_seconds: float = Field(default=5.0, gt=0)


# --------------------------------------------------------------------------- one scheduler at a time


@contextmanager
def _exclusive(store: Store, job: str) -> Iterator[bool]:
    """PostgreSQL: a session advisory lock per job (yields False when another holds it)."""
    if store.dialect != "postgresql":
        yield True
        return
    key = 0x5A6E_D000_0000_0000 | zlib.crc32(job.encode())
    with store.engine.connect() as conn:
        got = bool(conn.scalar(select(func.pg_try_advisory_lock(key))))
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.scalar(select(func.pg_advisory_unlock(key)))
                conn.commit()


# --------------------------------------------------------------------------- jobs


def recover_leases(
    store: Store,
    *,
    max_attempts: int = evaluations.DEFAULT_MAX_ATTEMPTS,
    stale_running_seconds: float | None = 3600.0,
) -> dict[str, list[str]]:
    """Requeue lapsed leases, give up at ``max_attempts`` (see the module docstring)."""
    with _exclusive(store, "recover_leases") as mine:
        if not mine:
            return {"requeued": [], "gave_up": []}
        out = evaluations.recover_leases(
            store, give_up=gave_up, max_attempts=max_attempts, stale_seconds=stale_running_seconds
        )
    for eid in out["requeued"]:
        log.info("lease lapsed: requeued", extra={"evaluation_id": eid})
    for eid in out["gave_up"]:
        log.warning("gave up after %d attempts", max_attempts, extra={"evaluation_id": eid})
    return out


def max_policy_timeout(policies_dir: Path) -> float:
    """The longest ``limits.timeout_seconds`` of the policies in ``policies_dir`` (60 if none load)."""
    longest = 0.0
    for path in sorted(Path(policies_dir).glob("*.toml")):
        try:
            longest = max(longest, float(load_policy(path).limits.timeout_seconds))
        except SandgateError:
            continue
    return longest or 60.0


def reap_orphans(
    store: Store,
    *,
    client: Any = None,
    settings: Settings | None = None,
    grace_seconds: float = 60.0,
    labels: tuple[str, ...] = (),
    now: float | None = None,
) -> list[str]:
    """Remove orphaned sandboxes on this host's engine; return their container ids.

    An orphan is a container labelled ``sandgate.managed=true`` whose
    controller process on this host is dead, or that is older than the longest
    policy timeout + kill grace + ``grace_seconds`` while its evaluation is not
    running under its controller's lease (finished, requeued, re-claimed by
    another worker, or unknown to this store). ``labels`` narrows the search.
    """
    settings = settings or get_settings()
    # the Docker adapter: loaded when a reap runs, not when the scheduler module is imported
    from sandgate.sandbox import connect, reaper

    if client is None:
        client = connect(settings)
    max_age = max_policy_timeout(settings.policies_dir) + settings.sandbox_kill_grace + grace_seconds

    def held(sandbox: reaper.Sandbox) -> bool:
        """Its evaluation is running under its controller's lease."""
        try:
            ev = (
                evaluations.get_evaluation(store, evaluation_id=sandbox.evaluation_id)
                if sandbox.evaluation_id
                else None
            )
        except NotFound:
            ev = None
        return (
            ev is not None
            and ev.status == "running"
            and sandbox.controller is not None
            and (ev.lease_owner or "").startswith(sandbox.controller + ":")
        )

    reaped = reaper.reap(
        client, alive=controller_alive, max_age=max_age, held=held, labels=labels, now=now
    )
    for r in reaped:
        log.info(
            "removed an orphaned sandbox: %s",
            r.why,
            extra={"container": r.sandbox.container_id[:12], "evaluation_id": r.sandbox.evaluation_id,
                   "controller": r.sandbox.controller},
        )
    return [cid for r in reaped for cid in r.removed]


def apply_retention(
    store: Store, *, days: float = 30.0, now: datetime | None = None
) -> dict[str, int]:
    """Prune evaluations of never-active versions finished more than ``days`` ago."""
    before = (now or datetime.now(UTC)) - timedelta(days=days)
    with _exclusive(store, "apply_retention") as mine:
        if not mine:
            return {"deleted": 0, "outputs_dropped": 0}
        out = evaluations.prune_evaluations(store, before=before)
    log.info("retention applied", extra={"before": before.isoformat(), **out})
    return out


def rules_fingerprint(rules: dict[str, bytes]) -> str:
    """``sha256:`` of the rule files (names and bytes): which rules a scan used."""
    digest = hashlib.sha256()
    for name in sorted(rules):
        digest.update(name.encode() + b"\0" + hashlib.sha256(rules[name]).digest())
    return "sha256:" + digest.hexdigest()


def _findings_fingerprint(findings: list[dict[str, Any]]) -> str:
    keys = sorted({(f["rule_id"], f["path"], int(f["line"]), f["severity"]) for f in findings})
    return "sha256:" + hashlib.sha256(json.dumps(keys).encode()).hexdigest()


def _static_evaluate(submission: Any, *, policy: Any, settings: Any) -> Any:
    return evaluate(submission, policy=policy, settings=settings, phases=("static",))


def rescan_active(
    store: Store,
    *,
    settings: Settings | None = None,
    policy: Policy | None = None,
    action: Literal["flag", "quarantine"] | None = None,
    evaluate: Callable[..., Any] | None = None,
    names: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Static-phase re-scan of every active version with the current rules.

    Returns one entry per active version: ``{"skill", "version", "status"}``,
    status ``clean`` | ``flagged`` | ``already_flagged`` | ``quarantined`` |
    ``error``, plus ``findings`` / ``event_id`` / ``note``. ``evaluate`` is the
    collaborator that runs the scan: ``evaluate(submission, policy=, settings=)`` → report
    (default: the static phase in a real sandbox).
    """
    settings = settings or get_settings()
    policy = policy or load_policy(settings.policy, policies_dir=settings.policies_dir)
    action = action or getattr(policy, "rescan_action", None) or SchedulerSettings.load().rescan_action
    run = evaluate or _static_evaluate
    blocked_severities = set(policy.gates.blocked_severities)
    rules_hash = rules_fingerprint(rules_files(Path(settings.policies_dir) / "semgrep"))
    results: list[dict[str, Any]] = []
    with _exclusive(store, "rescan_active") as mine:
        if not mine:
            return results
        for name, (number, _generation) in sorted(pointers.active_pointers(store, names=names).items()):
            entry: dict[str, Any] = {"skill": name, "version": number}
            extra = {"skill": name, "version": number}
            try:
                files = versions.get_version_files(store, name=name, number=number)
                report = run(submission_from_files(files), policy=policy, settings=settings)
            except Exception as exc:
                entry |= {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
                log.warning("re-scan failed: %s", exc, extra=extra)
                results.append(entry)
                continue
            infra = [r for r in report.reasons if r.code.value == "infrastructure"]
            if infra:
                entry |= {"status": "error", "note": infra[0].message}
                log.warning("re-scan failed: %s", infra[0].message, extra=extra)
                results.append(entry)
                continue
            blocked = [
                f.model_dump(mode="json") for f in report.findings if f.severity in blocked_severities
            ]
            entry["findings"] = blocked
            if not blocked:
                entry["status"] = "clean"
                results.append(entry)
                continue
            rule_ids = sorted({f["rule_id"] for f in blocked})
            reason = (
                f"re-scan with the current rules: {len(blocked)} blocked finding"
                f"{'s' if len(blocked) != 1 else ''} ({', '.join(rule_ids)})"
            )
            evidence = {
                "fingerprint": _findings_fingerprint(blocked),
                "findings": blocked,
                "rules_fingerprint": rules_hash,
                "policy": policy.name,
                "policy_hash": policy.hash,
                "blocked_severities": sorted(blocked_severities),
                "action": action,
                "sandbox": report.sandbox.model_dump(mode="json") if report.sandbox else None,
                "scan_id": report.evaluation_id,
            }
            flag = pointers.flag_version(
                store,
                name=name,
                number=number,
                actor=RESCAN_ACTOR,
                reason=reason,
                evidence=evidence,
                quarantine=action == "quarantine",
            )
            if flag is None:
                entry["status"] = "already_flagged"
            else:
                entry |= {
                    "status": "quarantined" if flag.rollback else "flagged",
                    "event_id": flag.event_id,
                    "rolled_back_to": flag.rollback.to_version if flag.rollback else None,
                    "note": flag.note,
                }
                log.warning(
                    "active version flagged: %s", reason,
                    extra={**extra, "event_id": flag.event_id,
                           "rolled_back_to": entry["rolled_back_to"], "note": flag.note},
                )
            results.append(entry)
    return results


# --------------------------------------------------------------------------- wiring

#: job name → (interval setting, runner(store, scheduler settings, sandgate settings))
JOBS: dict[str, tuple[str, Callable[[Store, SchedulerSettings, Any], Any]]] = {
    "recover_leases": (
        "lease_recovery_seconds",
        lambda store, ss, _s: recover_leases(
            store, max_attempts=ss.max_attempts, stale_running_seconds=ss.stale_running_seconds
        ),
    ),
    "reap_orphans": (
        "reap_seconds",
        lambda store, ss, s: reap_orphans(store, settings=s, grace_seconds=ss.reap_grace_seconds),
    ),
    "apply_retention": (
        "retention_seconds",
        lambda store, ss, _s: apply_retention(store, days=ss.retention_days),
    ),
    "rescan_active": (
        "rescan_seconds",
        lambda store, ss, s: rescan_active(store, settings=s, action=ss.rescan_action),
    ),
    "run_canaries": (
        "canary_seconds",
        lambda store, ss, _s: run_canaries(
            store, webhook=ss.canary_webhook, webhook_timeout=ss.canary_webhook_timeout_seconds
        ),
    ),
}


def run_canaries(store: Store, *, webhook: str | None = None, webhook_timeout: float = 5.0) -> list[dict[str, Any]]:
    """One look at every running canary (:func:`sandgate.delivery.run_canaries`), one scheduler at a time."""
    with _exclusive(store, "run_canaries") as mine:
        if not mine:
            return []
        return delivery.run_canaries(store, webhook=webhook, webhook_timeout=webhook_timeout)


def _guarded(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def job() -> Any:
        try:
            return fn()
        except Exception:  # a failing job is logged and retried next interval, never fatal
            log.exception("scheduled job %s failed", name, extra={"job": name})
            return None

    job.__name__ = name
    return job


def build_scheduler(
    store: Store,
    *,
    scheduler_settings: SchedulerSettings | None = None,
    settings: Settings | None = None,
    jobs: list[str] | None = None,
) -> BackgroundScheduler:
    """An APScheduler ``BackgroundScheduler`` with the jobs at their intervals (not started).

    Each job runs at most once at a time (``max_instances=1``), missed runs
    are coalesced, and the first run happens right after start.
    """
    # APScheduler is loaded only by the process that runs the scheduler
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    ss = scheduler_settings or SchedulerSettings.load()
    s = settings or get_settings()
    scheduler = BackgroundScheduler(timezone=UTC)
    start = datetime.now(UTC) + timedelta(seconds=1)
    for name in jobs or list(JOBS):
        interval_key, runner = JOBS[name]
        scheduler.add_job(
            _guarded(name, functools.partial(runner, store, ss, s)),
            IntervalTrigger(seconds=float(getattr(ss, interval_key)), timezone=UTC),
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=start,
        )
    return scheduler


def run_jobs_once(
    store: Store,
    *,
    jobs: list[str] | None = None,
    scheduler_settings: SchedulerSettings | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run each job once now, in order (``sandgate scheduler --once``)."""
    ss = scheduler_settings or SchedulerSettings.load()
    s = settings or get_settings()
    return {name: _guarded(name, functools.partial(JOBS[name][1], store, ss, s))() for name in jobs or list(JOBS)}


def run_scheduler(
    store: Store,
    *,
    scheduler_settings: SchedulerSettings | None = None,
    settings: Settings | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the scheduler until SIGTERM/SIGINT (or ``stop`` is set)."""
    stop = stop or threading.Event()
    scheduler = build_scheduler(store, scheduler_settings=scheduler_settings, settings=settings)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    scheduler.start()
    log.info("scheduler started", extra={"jobs": [j.id for j in scheduler.get_jobs()]})
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        for sig, old in previous.items():
            signal.signal(sig, old)
        log.info("scheduler stopped")
