"""The API end to end: a real ``sandgate serve`` process, real HTTP, real PostgreSQL, real sandbox.

Submissions are queued by the server; ``sandgate worker --once`` runs them in
the real sandbox (``api_harness.run_worker``), or — where the test is about the
API, not the sandbox — ``api_harness.drain_queue`` with a fake evaluator.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.api_harness import (
    REPO,
    ApiServer,
    base_env,
    drain_queue,
    fake_evaluate,
    make_key,
    make_keys,
    run_worker,
    sandgate_argv,
    skill_files,
    sse_events,
)

pytest_plugins = ["tests.integration.conftest_store"]
pytestmark = [pytest.mark.postgres]

SKILLS = REPO / "examples" / "skills"


def _tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=directory.name,
                filter=lambda ti: None if "__pycache__" in ti.name else ti)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(pg_server, pg_template, tmp_path_factory):
    name = "api_lifecycle"
    url = pg_server.create_database(name, template=pg_template)
    home = tmp_path_factory.mktemp("api-lifecycle")
    tokens = make_keys(url, {r: r for r in ("reader", "submitter", "promoter", "admin")})
    server = ApiServer(url, home=home).start()
    try:
        yield type("World", (), {"url": url, "server": server, "tokens": tokens, "home": home})
    finally:
        server.stop()
        pg_server.drop_database(name)


def _wait_done(client: httpx.Client, evaluation_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(f"/v1/evaluations/{evaluation_id}").json()
        if data["status"] == "done" or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def test_full_lifecycle_over_http(world, docker_client, sandbox_image):
    s, t = world.server, world.tokens
    admin, promoter, submitter, reader = (s.client(t[r]) for r in ("admin", "promoter", "submitter", "reader"))
    start_id = reader.get("/v1/pointers").json()["last_event_id"]

    # 1. submit an archive (multipart): stored and queued, nothing evaluated yet
    r = submitter.post("/v1/skills/text_stats/versions",
                       files={"archive": ("text_stats.tar.gz", _tar_gz(SKILLS / "text_stats"),
                                          "application/gzip")})
    assert r.status_code == 202, r.text
    sub = r.json()
    assert sub["skill"] == "text_stats" and sub["version"] == 1 and sub["created"] is True
    assert sub["status"] == "queued" and sub["evaluation_id"]
    assert sub["links"]["evaluation"] == f"/v1/evaluations/{sub['evaluation_id']}"
    assert reader.get(f"/v1/evaluations/{sub['evaluation_id']}").json()["status"] == "queued"
    # the same content again: same version, same queued evaluation
    again = submitter.post("/v1/skills/text_stats/versions", content=_tar_gz(SKILLS / "text_stats"),
                           headers={"Content-Type": "application/gzip"})
    assert again.status_code == 202 and again.json()["version"] == 1 and not again.json()["created"]
    assert again.json()["evaluation_id"] == sub["evaluation_id"]

    # 2. a worker (`sandgate worker --once`) runs it in the real sandbox: passed,
    #    auto-promoted (the default policy's mode is auto)
    finished = run_worker(world.url, world.home)
    assert [f["verdict"] for f in finished] == ["passed"], finished
    ev = _wait_done(reader, sub["evaluation_id"])
    assert ev["verdict"] == "passed" and ev["report"]["tests"]["passed"] >= 1
    assert ev["promoted"]["to_version"] == 1 and ev["promoted"]["generation"] == 1
    assert reader.get("/v1/pointers").json()["pointers"]["text_stats"] == {"version": 1, "generation": 1}

    # 3. v2 as JSON (base64 exact bytes), v3 (bad) as a raw zip body
    import base64
    import zipfile

    files_v2 = {p.relative_to(SKILLS / "text_stats_v2").as_posix(): p.read_bytes()
                for p in (SKILLS / "text_stats_v2").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    r = submitter.post("/v1/skills/text_stats/versions", json={
        "files": {k: base64.b64encode(v).decode() for k, v in files_v2.items()},
        "encoding": "base64", "provenance": {"agent": "test", "run": 7}})
    assert r.status_code == 202 and r.json()["version"] == 2
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for p in (SKILLS / "text_stats_bad").rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                z.write(p, p.relative_to(SKILLS / "text_stats_bad").as_posix())
    r = submitter.post("/v1/skills/text_stats/versions", content=zbuf.getvalue(),
                       headers={"Content-Type": "application/zip"})
    assert r.status_code == 202 and r.json()["version"] == 3
    v3_eval = r.json()["evaluation_id"]
    finished = run_worker(world.url, world.home)
    assert sorted(f["verdict"] for f in finished) == ["failed", "passed"], finished
    assert _wait_done(reader, v3_eval)["verdict"] == "failed"
    skill = reader.get("/v1/skills/text_stats").json()
    assert skill["active_version"] == 2 and skill["latest_version"] == 3 and skill["generation"] == 2
    detail = reader.get("/v1/skills/text_stats/versions/2").json()
    assert detail["version"]["provenance"]["agent"] == "test"
    assert detail["version"]["provenance"]["key"] == "submitter"
    assert detail["evaluation"]["verdict"] == "passed"
    assert {f["path"] for f in detail["files"]} == set(files_v2)
    stored = reader.get("/v1/skills/text_stats/versions/2/files").json()
    got = {f["path"]: base64.b64decode(f["content_base64"]) for f in stored["files"]}
    from sandgate.submission import hash_files

    assert got == files_v2 and hash_files(got) == stored["content_hash"]

    # 4. pointer moves with role checks: the failed v3 is refused, forcing needs admin
    r = promoter.post("/v1/skills/text_stats/promote", json={"version": 3})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_passed"
    r = promoter.post("/v1/skills/text_stats/promote", json={"version": 3, "force": True, "reason": "x"})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    r = admin.post("/v1/skills/text_stats/promote", json={"version": 3, "force": True})
    assert r.status_code == 422 and r.json()["error"]["code"] == "reason_required"
    r = promoter.post("/v1/skills/text_stats/promote", json={"version": 1, "expected_generation": 7})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"

    # 5. a live watcher sees the rollback as it happens
    def do_rollback():
        r = promoter.post("/v1/skills/text_stats/rollback", json={"reason": "v2 misbehaves",
                                                                "expected_generation": 2})
        assert r.status_code == 200, r.text
        assert r.json() == {**r.json(), "action": "rolled_back", "from_version": 2, "to_version": 1,
                            "generation": 3}

    live = sse_events(reader, "/v1/watch", count=1, on_ready=do_rollback)
    assert live[0][0] == "rolled_back" and live[0][2]["actor"] == "key:promoter"
    assert live[0][2]["reason"] == "v2 misbehaves" and live[0][2]["after"]["version"] == 1

    # 6. yank, history, diff
    r = promoter.post("/v1/skills/text_stats/versions/2/yank", json={"reason": "leaks memory"})
    assert r.status_code == 200 and r.json()["version"]["yank_reason"] == "leaks memory"
    r = promoter.post("/v1/skills/text_stats/promote", json={"version": 2})
    assert r.status_code == 409 and r.json()["error"]["code"] == "yanked"
    r = promoter.post("/v1/skills/text_stats/versions/1/yank", json={"reason": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "yank_active"
    events = reader.get("/v1/skills/text_stats/history").json()
    actions = [(e["action"], e["version"], e["actor"]) for e in events]
    # the two evaluations of v2 and v3 finish in queue order; everything else is fixed
    assert [a for a in actions if a[0] != "evaluated"] == [
        ("submitted", 1, "key:submitter"), ("promoted", 1, "policy:default"),
        ("submitted", 2, "key:submitter"), ("submitted", 3, "key:submitter"),
        ("promoted", 2, "policy:default"), ("rolled_back", 1, "key:promoter"),
        ("yanked", 2, "key:promoter")]
    assert sorted(a for a in actions if a[0] == "evaluated") == [
        ("evaluated", 1, "policy:default"), ("evaluated", 2, "policy:default"),
        ("evaluated", 3, "policy:default")]
    assert actions.index(("evaluated", 1, "policy:default")) == 1
    diffs = reader.get("/v1/skills/text_stats/diff", params={"a": 1, "b": 2}).json()
    assert any(d["path"] == "text_stats.py" and d["change"] == "modified" and d["diff"] for d in diffs)

    # 7. the feed from before it all: every move and verdict in order; then resume mid-way
    wanted = [e for e in events if e["action"] != "submitted"]
    got = sse_events(reader, f"/v1/watch?after={start_id}", count=len(wanted))
    assert [(k, i) for k, i, _ in got] == [(e["action"], e["id"]) for e in wanted]
    middle = got[2][1]
    resumed = sse_events(reader, "/v1/watch", count=len(wanted) - 3,
                         headers={"Last-Event-ID": str(middle)})
    assert [i for _, i, _ in resumed] == [e["id"] for e in wanted[3:]]
    only_moves = sse_events(reader, f"/v1/watch?after={start_id}&actions=promoted,rolled_back"
                                    "&skills=text_stats", count=3)
    assert [k for k, _, _ in only_moves] == ["promoted", "promoted", "rolled_back"]

    # 8. every mutation above is in the access log with its request id and key
    lines = [ln for ln in s.log_lines() if ln.get("message") == "request"]
    submits = [ln for ln in lines if ln["route"] == "/v1/skills/{name}/versions" and ln["method"] == "POST"]
    assert submits and all(ln["key"] == "submitter" and ln["evaluation_id"] and ln["request_id"]
                           for ln in submits)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``sandgate`` command in a fresh process."""
    return subprocess.run(sandgate_argv(*args), env=env, cwd=str(REPO), capture_output=True,
                          text=True, timeout=120, check=False)


class _InProcess:
    """The store commands via typer's runner in this process (much faster than a process each)."""

    def __init__(self, env: dict[str, str | None]) -> None:
        import typer
        from typer.testing import CliRunner

        from sandgate.cli import store as store_cli

        self.app = typer.Typer(pretty_exceptions_enable=False)
        store_cli.register(self.app)
        self.runner = CliRunner()
        self.env = env

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        from sandgate.config import get_settings

        get_settings.cache_clear()
        try:
            r = self.runner.invoke(self.app, list(args), env=self.env)
        finally:
            get_settings.cache_clear()
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def test_remote_cli_matches_embedded(world, tmp_path):
    s = world.server
    embedded_env = base_env(world.url, world.home / "cli-home", COLUMNS="200",
                            SANDGATE_ACTOR="cli:test")
    remote_env = {**embedded_env, "SANDGATE_URL": s.url, "SANDGATE_API_KEY": world.tokens["admin"],
                  # proof that remote mode never opens a store
                  "SANDGATE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    remote_env.pop("SANDGATE_ACTOR")
    embedded = _InProcess({"SANDGATE_DATABASE_URL": world.url, "SANDGATE_URL": None,
                           "SANDGATE_API_KEY": None, "SANDGATE_ACTOR": "cli:test", "COLUMNS": "200"})
    remote = _InProcess({"SANDGATE_DATABASE_URL": remote_env["SANDGATE_DATABASE_URL"],
                         "SANDGATE_URL": s.url, "SANDGATE_API_KEY": world.tokens["admin"],
                         "SANDGATE_ACTOR": None, "COLUMNS": "200"})

    # submit through the remote CLI (queued), run the queue, two more versions
    src = tmp_path / "src"
    for i, body in enumerate(("one", "two", "three"), start=1):
        d = src / body / "echo_words"
        d.mkdir(parents=True)
        for rel, text in skill_files("echo_words", body).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        r = remote("submit", str(d), "--no-wait")
        assert r.returncode == 0, r.stderr
        assert f"echo_words@{i}  (new version" in r.stdout and "queued under policy default" in r.stdout
        drain_queue(world.url, evaluate=fake_evaluate("passed"))
    # --wait polls until a worker is done: resubmitting v3's content is answered at once
    r = remote("submit", str(src / "three" / "echo_words"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "passed" and not json.loads(r.stdout)["created"]

    # the real command, in its own process, both ways
    a, b = _cli(embedded_env, "versions", "echo_words"), _cli(remote_env, "versions", "echo_words")
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout) and a.returncode == 0, (a.stderr, b.stderr)
    assert "echo_words@" not in a.stdout and "key:admin" in a.stdout

    for args in (("skills",), ("versions", "echo_words"), ("history", "echo_words"),
                 ("show", "echo_words"), ("show", "echo_words@1", "--json"),
                 ("diff", "echo_words", "1", "3"), ("versions", "echo_words", "--json"),
                 ("skills", "--json"), ("history", "echo_words", "--json")):
        a, b = embedded(*args), remote(*args)
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout), (args, a.stderr, b.stderr)
        assert a.returncode == 0

    def norm(text: str) -> str:
        return re.sub(r"event \d+", "event N", text)

    # pointer moves: the same command through either path prints the same line
    a = embedded("rollback", "echo_words")
    b = embedded("promote", "echo_words", "3")
    c = remote("rollback", "echo_words")
    d = remote("promote", "echo_words", "3")
    assert all(p.returncode == 0 for p in (a, b, c, d)), (a.stderr, b.stderr, c.stderr, d.stderr)
    assert norm(a.stdout).replace("generation 4", "generation 6") == norm(c.stdout)
    assert norm(b.stdout).replace("generation 5", "generation 7") == norm(d.stdout)
    assert "rolled back echo_words: active echo_words@3 -> echo_words@2" in c.stdout
    history = json.loads(remote("history", "echo_words", "--json").stdout)
    assert [e["actor"] for e in history[-4:]] == ["cli:test", "cli:test", "key:admin", "key:admin"]

    # refusals: the same exit code and message both ways
    for args in (("promote", "echo_words", "3"), ("rollback", "nope"), ("versions", "nope"),
                 ("promote", "echo_words", "9")):
        a, b = embedded(*args), remote(*args)
        assert a.returncode == b.returncode == 1, (args, a.stderr, b.stderr)
        assert a.stderr == b.stderr and a.stderr.startswith("error: ")
    r = remote("promote", "echo_words", "2", "--actor", "mallory")
    assert r.returncode == 2 and "--actor" in r.stderr
    bad = _InProcess({**remote.env, "SANDGATE_API_KEY": "sg_000000000000_" + "A" * 43})
    r = bad("skills")
    assert r.returncode == 2 and "invalid or revoked API key" in r.stderr


def test_restart_loses_nothing_queued(pg_server, pg_template, tmp_path):
    """Submissions answered 202 survive a SIGKILL of the server mid-burst and a restart."""
    name = "api_restart"
    url = pg_server.create_database(name, template=pg_template)
    token = make_key(url, "bot", "submitter", rate=1000, burst=1000)
    server = ApiServer(url, home=tmp_path / "a").start()
    accepted: list[dict] = []
    try:
        def submit(i: int) -> dict | None:
            try:
                with server.client(token) as c:
                    r = c.post("/v1/skills/burst/versions", json={"files": skill_files("burst", f"v{i}")})
            except httpx.TransportError:
                return None  # the server died under this request: no promise was made
            return r.json() if r.status_code == 202 else None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(submit, i) for i in range(24)]
            while sum(f.done() for f in futures) < 8:
                time.sleep(0.01)
            server.stop(signal.SIGKILL)
            accepted = [r for f in futures if (r := f.result()) is not None]
        assert len(accepted) >= 8

        server = ApiServer(url, home=tmp_path / "b").start()
        with server.client(token) as c:
            for sub in accepted:
                ev = c.get(f"/v1/evaluations/{sub['evaluation_id']}")
                assert ev.status_code == 200 and ev.json()["status"] == "queued"
            versions = c.get("/v1/skills/burst/versions").json()
            assert {v["number"] for v in versions} >= {s["version"] for s in accepted}
            assert sorted(v["number"] for v in versions) == list(range(1, len(versions) + 1))
            # a worker (any time later) finishes every one of them
            done = drain_queue(url, evaluate=fake_evaluate("passed"))
            assert {d.id for d in done} >= {s["evaluation_id"] for s in accepted}
            for sub in accepted:
                assert c.get(f"/v1/evaluations/{sub['evaluation_id']}").json()["verdict"] == "passed"
        # a graceful stop: uvicorn finishes, then re-raises the signal
        assert server.stop() in (0, -signal.SIGTERM)
        assert any(ln.get("message", "").startswith("Finished server process")
                   for ln in server.log_lines())
    finally:
        server.stop()
        pg_server.drop_database(name)


def test_submit_refusals_are_4xx_with_reasons(world):
    c = world.server.client(world.tokens["submitter"])
    bad = skill_files("broken", "x")
    bad["broken.py"] = "def run(:\n"
    r = c.post("/v1/skills/broken/versions", json={"files": bad})
    assert r.status_code == 422 and r.json()["error"]["code"] == "syntax_error"
    assert "broken.py" in r.json()["error"]["message"]
    r = c.post("/v1/skills/other/versions", json={"files": skill_files("broken", "x")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "name_mismatch"
    r = c.post("/v1/skills/broken/versions", content=b"\x1f\x8b not really gzip",
               headers={"Content-Type": "application/gzip"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_submission"
    r = c.post("/v1/skills/broken/versions", json={"files": skill_files("broken", "x"), "policy": "strict"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_policy"
    r = c.post("/v1/skills/broken/versions", files={"wrong": ("a", b"x")})
    assert r.status_code == 422 and "archive" in r.json()["error"]["message"]
