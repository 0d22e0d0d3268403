"""A real ``sandgate serve`` process for the API tests, plus the helpers they share.

::

    server = ApiServer(db_url, home=tmp).start()      # python -m sandgate serve --port N
    server.url, server.stop(), server.kill(), server.log_lines()
    token = make_key(db_url, "alice", "admin")
    drain_queue(db_url)                                # the worker's job, in the test process

The server runs the real CLI (``sandgate serve``) as a subprocess on
127.0.0.1 and a free port. ``serve`` and ``keys`` are registered on the CLI by
the project lead; until they are, the launcher registers them itself (the same
``register(app)`` functions), so the command run is the same either way.

``run_worker`` runs ``sandgate worker --once`` (the worker engineer's command:
the real sandbox, auto-promotion) until the queue is empty.
``drain_queue`` runs queued evaluations the way a worker does (claim, rebuild
the submission from the stored bytes, ``lifecycle.run_evaluation``, then
auto-promotion when the policy says so) — in the test process, against the
same database. ``evaluate`` defaults to the real sandbox.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

#: ``python -c LAUNCHER serve ...`` is ``sandgate serve ...`` (with serve/keys registered)
LAUNCHER = (
    "import sandgate.cli as c\n"
    "from sandgate.cli import keys, serve, worker\n"
    "c._register()\n"
    "names = {cmd.name for cmd in c.app.registered_commands}"
    " | {g.name for g in c.app.registered_groups}\n"
    "if 'serve' not in names: serve.register(c.app)\n"
    "if 'keys' not in names: keys.register(c.app)\n"
    "if 'worker' not in names: worker.register(c.app)\n"
    "c.app()\n"
)


def sandgate_argv(*args: str) -> list[str]:
    """argv running the ``sandgate`` CLI in a fresh interpreter."""
    return [sys.executable, "-c", LAUNCHER, *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(db_url: str, home: Path, **extra: str | None) -> dict[str, str]:
    """The server's environment; an ``extra`` value of None removes the variable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SANDGATE_API_", "SANDGATE_URL", "SANDGATE_LLM_"))}
    env.update({
        "SANDGATE_DATABASE_URL": db_url,
        "SANDGATE_HOME": str(home),
        "SANDGATE_API_READY_REQUIRES_ENGINE": "false",
        "SANDGATE_API_WORKERS": "0",  # tests drain the queue themselves (see run_worker, drain_queue)
        "SANDGATE_API_WATCH_POLL_SECONDS": "0.1",
        "SANDGATE_API_WATCH_KEEPALIVE_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("SANDGATE_API_KEY", None)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class ApiServer:
    def __init__(self, db_url: str, *, home: Path, env: Mapping[str, str | None] | None = None) -> None:
        self.db_url = db_url
        self.home = home
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self.home.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115
            self.proc = subprocess.Popen(
                sandgate_argv("serve", "--port", str(self.port)),
                env=base_env(self.db_url, self.home, **self.extra_env),
                cwd=str(REPO), stdout=self._log_file, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            last = self.log_path.read_text(errors="replace")[-3000:]
            self.kill()
        raise RuntimeError(f"sandgate serve did not start:\n{last}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the process (SIGTERM: graceful); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        code = self.proc.returncode
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_size(self) -> int:
        """The log's length in bytes now: a mark for ``log_lines(since=…)``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, since: int = 0) -> list[dict[str, Any]]:
        """The log's JSON lines, from byte ``since`` on (a line cut by the mark, or still being written, is left
        out: a mark taken while a line was half written never shifts the count by one)."""
        with open(self.log_path, "rb") as fh:
            fh.seek(since)
            data = fh.read()
        out = []
        for line in data.decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kw)


def make_key(db_url: str, name: str, role: str, *, rate: float | None = None,
             burst: int | None = None) -> str:
    return make_keys(db_url, {name: role}, rate=rate, burst=burst)[name]


def make_keys(db_url: str, roles: Mapping[str, str], *, rate: float | None = None,
              burst: int | None = None) -> dict[str, str]:
    """``{name: token}`` for keys ``{name: role}`` (one store open for all)."""
    from sandgate.store import keys, open_store

    store = open_store(db_url)
    try:
        return {name: keys.create_key(store, name=name, role=role, actor="test",
                                      rate_per_second=rate, burst=burst)[1]
                for name, role in roles.items()}
    finally:
        store.close()


def drain_queue(db_url: str, *, evaluate: Callable[..., Any] | None = None,
                limit: int = 100) -> list[Any]:
    """Run every queued evaluation like a worker; the finished records."""
    from sandgate import lifecycle
    from sandgate.errors import Conflict, InvalidTransition
    from sandgate.report import gave_up
    from sandgate.store import evaluations, open_store, versions
    from sandgate.submission import submission_from_files

    store = open_store(db_url)
    done = []
    try:
        for _ in range(limit):
            ev = evaluations.claim_evaluation(store, give_up=gave_up)
            if ev is None:
                break
            files = versions.get_version_files(store, name=ev.skill, number=ev.version)
            submission = submission_from_files(files)
            policy = lifecycle.load_policy(ev.policy_name)
            finished = lifecycle.run_evaluation(store, evaluation_id=ev.id, submission=submission,
                                                policy=policy, evaluate=evaluate)
            done.append(finished)
            version = versions.get_version(store, name=ev.skill, number=ev.version)
            if (finished.verdict == "passed" and policy.promotion.mode_for(ev.skill) == "auto"
                    and not version.active and finished.policy_hash == policy.hash):
                try:
                    lifecycle.promote(store, name=ev.skill, number=ev.version,
                                      actor=lifecycle.policy_actor(policy),
                                      reason=f"auto-promotion: passed {policy.name}", policy=policy)
                except (Conflict, InvalidTransition):
                    pass
    finally:
        store.close()
    return done


def run_worker(db_url: str, home: Path, *, rounds: int = 20, timeout: float = 300) -> list[dict[str, Any]]:
    """``sandgate worker --once`` until nothing is queued; the outcomes it printed."""
    outcomes: list[dict[str, Any]] = []
    env = base_env(db_url, home)
    for _ in range(rounds):
        proc = subprocess.run(sandgate_argv("worker", "--once", "--log-level", "warning"), env=env,
                              cwd=str(REPO), capture_output=True, text=True, timeout=timeout,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outcomes.extend(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
        if not _queued(db_url):
            return outcomes
    raise AssertionError(f"the queue did not empty in {rounds} worker runs")


def _queued(db_url: str) -> int:
    from sandgate.service.embedded import evaluation_counts
    from sandgate.store import open_store

    store = open_store(db_url)
    try:
        return sum(n for (status, _), n in evaluation_counts(store).items()
                   if status in ("queued", "running"))
    finally:
        store.close()


def fake_evaluate(verdict: str = "passed") -> Callable[..., Any]:
    """An evaluator that runs nothing (for tests about the API, not the sandbox)."""
    from sandgate.report import EvaluationReport, Reason, ReasonCode, Verdict

    def evaluate(submission: Any, *, policy: Any, evaluation_id: str | None = None) -> Any:
        reasons = [] if verdict == "passed" else [
            Reason(code=ReasonCode.tests_failed, message="fake failure")]
        return EvaluationReport(evaluation_id=evaluation_id or "x", verdict=Verdict(verdict),
                                reasons=reasons, skill=submission.name,
                                content_hash=submission.content_hash, policy=policy.name,
                                policy_hash=policy.hash)

    return evaluate


def skill_files(name: str, body: str = "x") -> dict[str, str]:
    """A tiny valid skill as ``{path: text}`` (the content differs with ``body``)."""
    return {
        "skill.toml": f'name = "{name}"\ndescription = "test"\nentrypoint = "{name}:run"\n',
        f"{name}.py": f"def run(x):\n    return {body!r} + str(x)\n",
        f"tests/test_{name}.py": (f"from {name} import run\n\n\ndef test_run():\n"
                                  f"    assert run(1) == {body!r} + '1'\n"),
    }


def sse_events(client: httpx.Client, path: str, *, count: int, timeout: float = 20.0,
               headers: Mapping[str, str] | None = None,
               on_ready: Callable[[], None] | None = None) -> list[tuple[str, int | None, Any]]:
    """Read ``count`` events (``ready`` excluded) from an SSE endpoint, then disconnect.

    ``on_ready`` runs once the stream's ``ready`` event arrived (the watcher is subscribed).
    """
    from sandgate.client import _parse_sse

    out: list[tuple[str, int | None, Any]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, headers=dict(headers or {}),
                       timeout=httpx.Timeout(5.0, read=timeout)) as response:
        assert response.status_code == 200, response.read()
        for kind, event_id, data in _parse_sse(response.iter_lines()):
            if kind == "ready":
                if on_ready is not None:
                    on_ready()
                continue
            out.append((kind, event_id, data))
            if len(out) >= count or time.monotonic() > deadline:
                break
    return out
