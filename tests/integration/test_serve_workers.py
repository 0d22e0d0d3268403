"""Evaluations without silent waits, over real HTTP and through real ``sandgate`` processes.

* ``sandgate serve`` on SQLite evaluates out of the box (an in-process worker);
  ``--workers 0`` / ``SANDGATE_API_WORKERS=0`` turns it off; on PostgreSQL the
  default is no in-process worker.
* ``/readyz`` counts live workers (their ``worker_beats`` rows) and is not
  ready when evaluations are queued and none is alive.
* A remote ``submit`` that waits says within seconds that no worker is alive,
  instead of polling for ``--wait-timeout`` (600 s).

No Docker engine is needed: ``DOCKER_HOST`` points at a socket that does not
exist, so every evaluation ends quickly as verdict ``error`` — done by whichever
worker claimed it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.api_harness import REPO, ApiServer, base_env, free_port, make_key, sandgate_argv
from tests.integration.test_cli_user_errors import SANDGATE, SKILL, clean_env, one_error_line, run
from tests.integration.test_cli_waits import on_a_terminal

pytest_plugins = ["tests.integration.conftest_store"]


def _no_engine(tmp_path: Path) -> str:
    return f"unix://{tmp_path}/no-engine.sock"


def _remote_env(tmp_path: Path, server: ApiServer, token: str) -> dict[str, str]:
    return clean_env(tmp_path, SANDGATE_URL=server.url, SANDGATE_API_KEY=token)


def _readyz(server: ApiServer) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def _until(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_serve_on_sqlite_evaluates_out_of_the_box(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    token = make_key(url, "me", "admin")
    server = ApiServer(url, home=tmp_path / "home", env={
        "SANDGATE_API_WORKERS": None,  # the default: auto
        "SANDGATE_API_READY_CACHE_SECONDS": "0", "DOCKER_HOST": _no_engine(tmp_path)}).start()
    try:
        workers = _until(lambda: _readyz(server).json()["checks"]["workers"]["alive"] and
                         _readyz(server).json()["checks"]["workers"])
        assert workers["alive"] == 1 and workers["kinds"] == ["serve"] and workers["slots"] >= 1
        r = run(tmp_path, "submit", str(SKILL), env=_remote_env(tmp_path, server, token), timeout=120)
        # evaluated by serve's own worker (the engine is missing: verdict error, exit 2)
        assert r.returncode == 2 and "verdict: error" in r.stdout, r.stdout + r.stderr
        assert "no Docker engine answers" in r.stdout
        r = run(tmp_path, "versions", "text_stats", env=_remote_env(tmp_path, server, token))
        assert "│ error " in r.stdout, r.stdout
        assert _readyz(server).status_code == 200
        # on a terminal, a remote submit that waits shows the evaluation's status and the seconds
        (tmp_path / "again").mkdir()
        for f in SKILL.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                dest = tmp_path / "again" / f.relative_to(SKILL)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(f.read_bytes() + (b"\n# again\n" if f.name == "text_stats.py" else b""))
        code, seen = on_a_terminal([SANDGATE, "submit", str(tmp_path / "again")],
                                    _remote_env(tmp_path, server, token), tmp_path)
        assert code == 2 and "verdict: error" in seen, seen
        assert "\r\x1b[2Ksubmit again: " in seen and (
            "again: queued  " in seen or "again: running  " in seen or "again: done  " in seen), repr(seen)
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutdown
    lines = [line.get("message") for line in server.log_lines()]
    assert "in-process worker started" in lines and "worker stopped" in lines


def test_without_a_worker_readyz_and_a_waiting_submit_say_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    token = make_key(url, "me", "admin")
    server = ApiServer(url, home=tmp_path / "home", env={  # the harness sets SANDGATE_API_WORKERS=0
        "SANDGATE_API_READY_CACHE_SECONDS": "0"}).start()
    worker = None
    try:
        r = _readyz(server)
        workers = r.json()["checks"]["workers"]
        # nothing queued: ready, with a note
        assert r.status_code == 200 and workers["alive"] == 0 and "no worker is alive" in workers["note"]

        started = time.monotonic()
        r = run(tmp_path, "submit", str(SKILL), env=_remote_env(tmp_path, server, token), timeout=120)
        waited = time.monotonic() - started
        line = one_error_line(r)
        assert r.returncode == 2 and "is still queued" in line and "no worker is alive" in line, line
        assert "sandgate worker" in line and "600 s" not in line, line  # the id may hold the digits
        assert waited < 60, waited  # said early: never the 600 s --wait-timeout

        r = _readyz(server)
        workers = r.json()["checks"]["workers"]
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert not workers["ok"] and workers["queued"] == 1
        assert "no worker is alive and 1 evaluation(s) are queued" in workers["reason"]

        # a real worker starts: it is counted, runs the queued evaluation, and leaves on SIGTERM
        worker = subprocess.Popen(sandgate_argv("worker", "--log-level", "warning"), cwd=str(REPO),
                                  env=base_env(url, tmp_path / "home", DOCKER_HOST=_no_engine(tmp_path)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        body = _until(lambda: (lambda b: b if b["checks"]["workers"]["queued"] == 0
                               and b["checks"]["workers"]["running"] == 0 else None)(_readyz(server).json()))
        assert body and body["status"] == "ready" and body["checks"]["workers"]["alive"] == 1
        assert body["checks"]["workers"]["kinds"] == ["worker"]
        # the compose file's worker healthcheck
        check_env = base_env(url, tmp_path / "home")
        alive = subprocess.run(sandgate_argv("worker", "--check"), cwd=str(REPO), env=check_env,
                               capture_output=True, text=True, timeout=60)
        assert alive.returncode == 0 and "1 worker(s) alive on " in alive.stdout, alive.stdout + alive.stderr
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert _readyz(server).json()["checks"]["workers"]["alive"] == 0  # a clean stop removes its beat
        gone = subprocess.run(sandgate_argv("worker", "--check"), cwd=str(REPO), env=check_env,
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode == 1 and "no worker alive on " in gone.stderr, gone.stdout + gone.stderr
        r = run(tmp_path, "versions", "text_stats", env=_remote_env(tmp_path, server, token))
        assert "│ error " in r.stdout, r.stdout
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        server.stop()


def test_serve_workers_0_flag_turns_the_in_process_worker_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    port = free_port()
    env = base_env(url, tmp_path / "home", SANDGATE_API_WORKERS=None, SANDGATE_API_READY_CACHE_SECONDS="0")
    proc = subprocess.Popen(sandgate_argv("serve", "--port", str(port), "--workers", "0"), cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = _until(lambda: _try_json(f"http://127.0.0.1:{port}/readyz"))
        assert body and body["checks"]["workers"]["alive"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "no in-process worker" in out and "in-process worker started" not in out


def _try_json(address: str):  # type: ignore[no-untyped-def]
    try:
        return httpx.get(address, timeout=5).json()
    except httpx.TransportError:
        return None


@pytest.mark.postgres
def test_serve_on_postgresql_leaves_evaluation_to_workers(tmp_path: Path, pg_server, pg_template) -> None:  # type: ignore[no-untyped-def]
    url = pg_server.create_database("serve_workers", template=pg_template)
    server = ApiServer(url, home=tmp_path / "home", env={"SANDGATE_API_WORKERS": None}).start()
    try:
        body = _readyz(server).json()
        assert body["checks"]["workers"]["alive"] == 0 and body["status"] == "ready"
    finally:
        server.stop()
        pg_server.drop_database("serve_workers")
    assert any("no in-process worker" in str(line.get("message")) for line in server.log_lines())
