"""``sandgate worker`` and ``sandgate scheduler``: thin, over :mod:`sandgate.worker` and
:mod:`sandgate.scheduler`.

Both log JSON lines on stderr (evaluation ids on every job line). The store is
``SANDGATE_DATABASE_URL`` (default: the embedded SQLite under ``.sandgate/``).

Exit codes: 0 ok; 2 the store or the engine could not be opened. ``worker
--once`` exits 0 when every claimed evaluation was stored (whatever its
verdict), 2 when one was lost or abandoned.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sandgate.cli.common import fail
from sandgate.errors import SandgateError

__all__ = ["register"]

LogLevelOpt = Annotated[
    str, typer.Option("--log-level", help="debug | info | warning | error (JSON lines on stderr).")
]


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker_cmd(
        concurrency: Annotated[
            int | None,
            typer.Option("--concurrency", "-c", min=1,
                         help="Evaluations at once (default: CPUs and memory at the policy's limits)."),
        ] = None,
        once: Annotated[
            bool, typer.Option("--once", help="Claim what fits now, run it, print outcomes, exit.")
        ] = False,
        lease_seconds: Annotated[
            float, typer.Option("--lease-seconds", min=0.5, help="Lease per job, renewed every third.")
        ] = 30.0,
        poll_interval: Annotated[
            float, typer.Option("--poll-interval", min=0.05, help="Seconds between polls when idle.")
        ] = 0.5,
        max_attempts: Annotated[
            int, typer.Option("--max-attempts", min=1, help="Claims of one evaluation before verdict error.")
        ] = 3,
        drain_seconds: Annotated[
            float, typer.Option("--drain-seconds", min=0,
                                help="On SIGTERM, wait this long for running jobs before releasing them.")
        ] = 25.0,
        with_scheduler: Annotated[
            bool, typer.Option("--with-scheduler", help="Also run the periodic jobs in this process.")
        ] = False,
        log_level: LogLevelOpt = "info",
        check: Annotated[
            bool, typer.Option("--check", help="Healthcheck: exit 0 if a worker on this host is alive "
                                               "(its heartbeat is fresh), else 1. Starts no worker.")
        ] = False,
    ) -> None:
        """Run queued evaluations (until SIGTERM/SIGINT, or once with --once)."""
        from sandgate.logs import configure_logging
        from sandgate.store import open_store
        from sandgate.worker import Worker

        _use_host_id()
        if check:
            _check_alive()
            return
        configure_logging(log_level)
        from sandgate import tracing
        from sandgate.config import get_settings

        try:
            tracing.configure_from_settings(get_settings(), service="sandgate-worker")
            store = open_store()
            worker = Worker(
                store,
                concurrency=concurrency,
                lease_seconds=lease_seconds,
                poll_interval=poll_interval,
                max_attempts=max_attempts,
                drain_seconds=drain_seconds,
            )
        except SandgateError as exc:
            fail(exc)
        try:
            if once:
                outcomes = worker.run_once()
                worker.close()
                for outcome in outcomes:
                    typer.echo(json.dumps(outcome.to_dict()))
                if any(o.status != "done" for o in outcomes):
                    raise typer.Exit(2)
                return
            scheduler = None
            if with_scheduler:
                from sandgate.scheduler import build_scheduler

                scheduler = build_scheduler(store)
                scheduler.start()
            try:
                worker.run_forever()
            finally:
                if scheduler is not None:
                    scheduler.shutdown(wait=False)
        finally:
            store.close()
            tracing.shutdown()  # the spans not yet exported

    @app.command("scheduler")
    def scheduler_cmd(
        once: Annotated[
            bool, typer.Option("--once", help="Run the jobs once now, print what they did, exit.")
        ] = False,
        job: Annotated[
            list[str] | None,
            typer.Option("--job", "-j",
                         help="Only this job (repeatable): recover_leases, reap_orphans, "
                              "apply_retention, rescan_active."),
        ] = None,
        log_level: LogLevelOpt = "info",
    ) -> None:
        """Periodic jobs: lease recovery, orphan sandboxes, retention, re-scan of active versions."""
        from sandgate.logs import configure_logging
        from sandgate.scheduler import JOBS, run_jobs_once, run_scheduler
        from sandgate.store import open_store

        configure_logging(log_level)
        unknown = [j for j in job or [] if j not in JOBS]
        if unknown:
            typer.echo(f"error: unknown job {unknown[0]!r} (jobs: {', '.join(JOBS)})", err=True)
            raise typer.Exit(2)
        _use_host_id()
        try:
            store = open_store()
        except SandgateError as exc:
            fail(exc)
        try:
            if once:
                typer.echo(json.dumps(run_jobs_once(store, jobs=job or None), default=str))
                return
            if job:
                typer.echo("error: --job only goes with --once", err=True)
                raise typer.Exit(2)
            run_scheduler(store)
        finally:
            store.close()


def _use_host_id() -> None:
    """Name this host in sandbox labels and lease owners by the ``host_id`` setting (default: hostname)."""
    from sandgate.config import get_settings
    from sandgate.names import set_host_id

    try:
        set_host_id(get_settings().host_id)
    except SandgateError as exc:
        fail(exc)


def _check_alive() -> None:
    """``worker --check``: one line on stdout, exit 0 when a worker on this host beats, else 1."""
    from sandgate.names import host_id
    from sandgate.store import evaluations, open_store

    host = host_id()  # a worker's owner id is host:pid:random (sandgate.names.owner_id)
    try:
        store = open_store()
        try:
            live = evaluations.worker_liveness(store, host=host)
        finally:
            store.close()
    except SandgateError as exc:
        fail(exc)
    if live["alive"] == 0:
        typer.echo(f"no worker alive on {host} (no heartbeat in {evaluations.WORKER_ALIVE_SECONDS:g} s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{live['alive']} worker(s) alive on {host}, {live['slots']} slot(s); "
               f"{live['queued']} queued, {live['running']} running")
