"""``sandgate serve``: the REST API (``sandgate.api``) under uvicorn.

Binds ``127.0.0.1:8080`` by default (``--host``/``--port``, or
``SANDGATE_API_HOST``/``SANDGATE_API_PORT``): exposing it is a deliberate
choice (``--host 0.0.0.0`` in a container, behind TLS). The store is
``SANDGATE_DATABASE_URL`` (default: SQLite under ``SANDGATE_HOME``); it is
opened and migrated on the first request that needs it. Logs are JSON lines
on stderr. SIGTERM/SIGINT end open event streams and let requests finish
(``SANDGATE_API_GRACEFUL_SHUTDOWN_SECONDS``).

Evaluations: on SQLite (the default store) ``serve`` runs a queue worker in
the same process, so a submit is evaluated out of the box; ``--workers N``
(``SANDGATE_API_WORKERS``) sets its slots, ``--workers 0`` turns it off. On
PostgreSQL the default is 0: evaluations wait for ``sandgate worker``
processes (each with its own Docker engine), and ``/readyz`` says when none is
alive while evaluations are queued.

Exit codes: 0 stopped cleanly; 2 bad configuration or the port is taken.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from sandgate.errors import SandgateError

__all__ = ["register", "serve"]


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535,
                                             help="TCP port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0,
        help="Evaluation slots of the in-process worker; 0: none (default: auto on SQLite, 0 on PostgreSQL).",
    )] = None,
) -> None:
    """Run the HTTP API server (keys: `sandgate keys create`)."""
    import uvicorn

    from sandgate.api.app import create_app
    from sandgate.api.observability import configure_logging
    from sandgate.api.settings import ApiSettings
    from sandgate.config import get_settings

    try:
        settings = get_settings()
        api = ApiSettings.load()
    except SandgateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # pydantic ValidationError of Settings
        typer.echo(f"error: invalid configuration: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    from sandgate.names import set_host_id

    set_host_id(settings.host_id)  # validated by Settings: names this host in sandbox labels, lease owners
    host = host or api.host
    port = api.port if port is None else port
    configure_logging(api.log_level)
    from sandgate import tracing

    tracing.configure_from_settings(settings, service="sandgate-api")
    app = create_app(settings, api=api)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # configure_logging did it: JSON lines
        access_log=False,  # the API logs every request itself, with its request id
        proxy_headers=False,
        server_header=False,
        # uvicorn annotates int, but only hands the value to asyncio.wait_for, which takes float seconds
        timeout_graceful_shutdown=api.graceful_shutdown_seconds,  # type: ignore[arg-type]  # a float works
        lifespan="on",
    )
    server = _server_class()(config)
    slots = api.workers if workers is None else workers
    if slots is None:  # auto: evaluate out of the box on the embedded store only
        slots = -1 if settings.effective_database_url.startswith("sqlite") else 0
    background = _InProcessWorker(settings.effective_database_url, slots, api.graceful_shutdown_seconds)
    server.on_shutdown = background.stop
    try:
        background.start()
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (it logged why)
        if not server.started:
            typer.echo(f"error: cannot serve on {host}:{port} (the log above says why)", err=True)
            raise typer.Exit(2) from None
        raise
    except OSError as exc:
        typer.echo(f"error: cannot serve on {host}:{port}: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        background.stop()
        tracing.shutdown()  # the spans not yet exported


class _InProcessWorker:
    """``serve``'s own queue worker in a thread (slots: -1 auto-sized, 0 none)."""

    def __init__(self, url: str, slots: int, drain_seconds: float) -> None:
        self.url, self.slots, self.drain_seconds = url, slots, drain_seconds
        self.worker: Any = None
        self.thread: threading.Thread | None = None
        self.store: Any = None

    def start(self) -> None:
        import logging

        log = logging.getLogger("sandgate.serve")
        if self.slots == 0:
            log.info("no in-process worker: queued evaluations wait for `sandgate worker` "
                     "(GET /readyz says whether one is alive)")
            return
        from sandgate.store import open_store
        from sandgate.worker import Worker

        try:
            self.store = open_store(self.url)
            self.worker = Worker(self.store, concurrency=None if self.slots < 0 else self.slots,
                                 kind="serve", drain_seconds=self.drain_seconds)
        except Exception as exc:  # the API still answers (and /readyz says what is wrong)
            log.error("in-process worker not started: %s", exc)
            return
        log.info("in-process worker started", extra={"concurrency": self.worker.concurrency})
        self.thread = threading.Thread(target=self.worker.run_forever, name="sandgate-serve-worker", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.worker is None or self.thread is None:
            return
        worker, self.worker = self.worker, None
        worker.stop()
        self.thread.join(timeout=self.drain_seconds + 10)
        worker.close()
        self.store.close()


def _server_class() -> Any:
    """uvicorn's server, ending the event streams as soon as shutdown begins.

    uvicorn waits for open connections before the application's lifespan ends;
    an SSE stream never finishes on its own, so the hub is told at the signal.
    """
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        #: called once serving ended, before uvicorn re-raises the signal that stopped it
        on_shutdown: Any = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    if self.on_shutdown is not None:
                        self.on_shutdown()

        def handle_exit(self, sig: int, frame: Any) -> None:
            hub = _hub_of(self.config.app)
            if hub is not None:
                try:
                    asyncio.get_running_loop().create_task(hub.close_streams())
                except RuntimeError:
                    hub.closing = True
            super().handle_exit(sig, frame)

    return Server


def _hub_of(app: Any) -> Any:
    state = getattr(app, "state", None)
    return getattr(state, "hub", None)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve)
