"""A throwaway PostgreSQL server for one test session.

::

    with postgres_server() as pg:
        pg.create_database("t1", template="sandgate_template")
        url = pg.url("t1")      # postgresql+psycopg://postgres@127.0.0.1:PORT/t1

The server binaries come from Debian's ``postgresql`` package
(``/usr/lib/postgresql/<major>/bin``; ``tests/ensure_postgres.sh`` installs it).
When they are missing this raises :class:`PostgresUnavailable` with what to
install — the store tests turn that into a failure, never a skip.

The cluster lives in a fresh temporary directory (data, socket, log), listens
on a free 127.0.0.1 port only, trusts local connections, and runs with
``fsync=off``: it is for tests, and it is removed on exit. As root, ``initdb``
and the server run as the ``postgres`` OS user (``runuser``), since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PostgresUnavailable", "PostgresServer", "find_bindir", "postgres_server"]

#: how long initdb / server start / stop may take (seconds)
INITDB_TIMEOUT = 120
START_TIMEOUT = 60
STOP_TIMEOUT = 30

INSTALL_HINT = (
    "the store tests need PostgreSQL server binaries (initdb, pg_ctl): install them with "
    "`apt-get install -y postgresql` (Debian/Ubuntu; or run tests/ensure_postgres.sh)"
)


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl (or one on PATH)."""

    def major(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresUnavailable(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path, root: Path, port: int, user: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.port = port
        self.user = user  # OS user the server runs as (None: the current one)
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"

    # -- commands --------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return [*prefix, *args]

    def _run(self, *args: str, timeout: float) -> None:
        proc = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n{log}"
            )

    def initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "-A", "trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            timeout=INITDB_TIMEOUT,
        )  # fmt: skip

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {self.sockets}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
            ]
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.log),
            "-o", options,
            "-w", "-t", str(START_TIMEOUT),
            "start",
            timeout=START_TIMEOUT + 10,
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                timeout=STOP_TIMEOUT,
            )  # fmt: skip

    # -- databases -------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
            autocommit=True, connect_timeout=10,
        )  # fmt: skip

    def create_database(self, name: str, *, template: str | None = None) -> str:
        sql = f'CREATE DATABASE "{name}"'
        if template:
            # FILE_COPY: a straight file copy, much faster than WAL_LOG for small test DBs
            sql += f' TEMPLATE "{template}" STRATEGY FILE_COPY'
        with self.admin() as conn:
            conn.execute(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start(bindir: Path) -> PostgresServer:
    root = Path(tempfile.mkdtemp(prefix="sandgate-pg-"))
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            shutil.chown(root, user=user, group=None)
        except LookupError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(
                f"running as root but there is no 'postgres' OS user to run the server: {INSTALL_HINT}"
            ) from exc
    server = PostgresServer(bindir, root, _free_port(), user)
    try:
        (root / "sockets").mkdir()
        if user:
            shutil.chown(root / "sockets", user=user)
        server.initdb()
        last: Exception | None = None
        for _ in range(3):  # the free port may be taken between probe and bind
            try:
                server.start()
                break
            except PostgresUnavailable as exc:
                last = exc
                server.port = _free_port()
        else:
            raise last  # type: ignore[misc]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                server.admin().close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway server, yield it, stop it and remove every file."""
    server = _start(find_bindir())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
