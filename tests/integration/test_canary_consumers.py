"""The canary end to end with real parts: real evaluations in the sandbox (Docker), real consumer
processes as the traffic, the real APScheduler job deciding, SQLite and PostgreSQL.

v1 is good. v2's tests pass (the gates promote it, under ``mode = "canary"``), but it raises on
inputs of more than three words, which its tests never try. With ``fallback = true``:

* the canary starts by itself at 10 %, the consumers' counts show the candidate's errors, and the
  scheduler rolls it back automatically, with the counts, rates and statistic in the event;
* the consumers see zero failures (each failed candidate call was answered by v1);
* after the rollback no consumer gets an answer from v2 beyond its poll latency;
* ``sandgate history`` shows the automatic rollback with its evidence;
* a consumer killed with ``kill -9`` mid-run loses at most its unsent counts; the store is intact.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from sandgate import lifecycle
from sandgate.policy import load_policy
from sandgate.scheduler import SchedulerSettings, build_scheduler
from sandgate.store import (
    Store,
    audit,
    pointers,
)
from sandgate.store import canary as cs

pytest_plugins = ["tests.integration.conftest_store"]

ROOT = Path(__file__).resolve().parents[2]
SKILL = "shout"
POLICY_TOML = """
description = "canary test policy"
[promotion]
mode = "canary"
[promotion.canary]
steps = [10, 50]
min_calls = 2000
bake_seconds = 0
[promotion.canary.skills.shout]
fallback = true
"""
V1 = '''"""Upper-case a text."""


def run(text: str) -> dict:
    upper = text.upper()
    return {"version": 1, "upper": upper}
'''
V2 = '''"""Upper-case a text, and count its words."""


def run(text: str) -> dict:
    words = text.split()
    count = len(words)
    upper = text.upper()
    lower = text.lower()
    if count > 3:
        raise ValueError("more than three words")
    return {"version": 2, "upper": upper, "lower": lower, "words": count}
'''
TESTS = '''from shout import run


def test_run():
    assert run("ab c")["upper"] == "AB C"


def test_short():
    assert run("x")["upper"] == "X"


def test_every_field_up_to_three_words():  # strong enough for the mutation gate; never tries four words
    answer = run("Ab c D")
    if "words" in answer:
        assert answer == {"version": 2, "upper": "AB C D", "lower": "ab c d", "words": 3}
        assert run("")["words"] == 0
    else:
        assert answer == {"version": 1, "upper": "AB C D"}
'''
CONSUMER = textwrap.dedent('''
    import json, os, random, sys, time
    import sandgate

    url, name, stop_file, out_file, cache = sys.argv[1:6]
    registry = sandgate.connect(url, cache_dir=cache, poll_interval=0.05, report_interval=0.2)
    inputs = ["a b", "one two three", "this input has five words", "x", "four words right here"]
    calls = failures = 0
    errors, last = [], {}
    rnd = random.Random(os.getpid())
    while not os.path.exists(stop_file):
        text = rnd.choice(inputs)
        try:
            answer = registry.call(name, text)
            last[answer["version"]] = time.time()
        except Exception as exc:
            failures += 1
            errors.append(repr(exc)[:200])
        calls += 1
        if calls % 200 == 0:
            print(json.dumps({"calls": calls, "t": time.time()}), flush=True)
        time.sleep(0.0005)
    registry.close()
    with open(out_file, "w") as f:
        json.dump({"calls": calls, "failures": failures, "errors": errors[:5], "last": last,
                   "stats": registry.runtime_stats()}, f)
''')


def write_skill(path: Path, body: str) -> Path:
    (path / "tests").mkdir(parents=True)
    (path / "skill.toml").write_text(f'name = "{SKILL}"\ndescription = "shout"\nentrypoint = "shout:run"\n')
    (path / "shout.py").write_text(body)
    (path / "tests" / "test_shout.py").write_text(TESTS)
    return path


def start_consumer(store_url: str, tmp: Path, i: int) -> tuple[subprocess.Popen[str], Path, Path]:
    # one script per consumer: rewriting a shared one truncates it under an interpreter still
    # reading it, which then runs an empty program and exits 0 without a word
    script = tmp / f"consumer-{i}.py"
    script.write_text(CONSUMER)
    stop, out = tmp / f"stop-{i}", tmp / f"out-{i}.json"
    proc = subprocess.Popen([sys.executable, str(script), store_url, SKILL, str(stop), str(out),
                             str(tmp / f"cache-{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "SANDGATE_HOME": str(tmp / "home")})
    return proc, stop, out


def wait_for(predicate: Any, timeout: float, what: str, explain: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {explain()}" if explain else ""))


class Recorded(logging.Handler):
    """The scheduler's log, kept to explain a decision that never came."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += " | " + logging.Formatter().formatException(record.exc_info).splitlines()[-1]
        self.lines.append(text)


def test_a_bad_candidate_is_rolled_back_by_itself_and_consumers_never_fail(
        store: Store, store_url: str, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "canarytest.toml").write_text(POLICY_TOML)
    policy = load_policy("canarytest", policies_dir=policies)
    good = lifecycle.submit(store, submission=lifecycle.load_submission(write_skill(tmp_path / "v1", V1)),
                            policy=policy, actor="test")
    assert good.verdict == "passed", good.to_dict()
    assert good.promoted is not None  # the first version: nothing to compare with, promoted normally

    consumers = [start_consumer(store_url, tmp_path, i) for i in range(3)]
    scheduler = build_scheduler(store, scheduler_settings=SchedulerSettings(canary_seconds=0.3),
                                jobs=["run_canaries"])
    recorded = Recorded()
    watched = [logging.getLogger(n) for n in ("sandgate", "apscheduler")]
    for logger in watched:
        logger.addHandler(recorded)
    scheduler.start()
    try:
        victim = consumers[2][0]
        wait_for(lambda: victim.stdout.readline(), 60, "the consumers to start calling")
        bad = lifecycle.submit(store, submission=lifecycle.load_submission(write_skill(tmp_path / "v2", V2)),
                               policy=policy, actor="test")
        assert bad.verdict == "passed", bad.to_dict()  # its tests pass: the gates cannot see the bug
        assert bad.promoted is None and bad.promotion_note.startswith("canary started: shout@2 at 10 %")

        # kill -9 one consumer mid-run, while its counts are being sent
        lines: list[dict[str, Any]] = []
        for _ in range(5):
            lines.append(json.loads(victim.stdout.readline()))
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait(10)
        for line in victim.stdout.read().splitlines():  # everything it printed up to its death
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass  # a line cut by the kill

        def why() -> str:
            record = cs.get_canary(store, name=SKILL)
            return (f"canary {record and record.state} {record and record.last_decision}; "
                    f"the consumers' exit codes {[p.poll() for p, _, _ in consumers[:2]]}; "
                    f"log tail {recorded.lines[-15:]}")

        # a decision needs a few hundred candidate calls (about 10 s here); 150 s is for a loaded machine
        record = wait_for(lambda: (c := cs.get_canary(store, name=SKILL)) and c.state != "running" and c, 150,
                          "the scheduler to decide", why)
        assert record.state == "rolled_back", record
        rollback_event = [e for e in audit.history(store, name=SKILL) if e.action == "canary_rolled_back"][-1]
        rolled_back_at = rollback_event.created_at.timestamp()
        time.sleep(1.5)  # the consumers keep calling after the rollback
    finally:
        scheduler.shutdown(wait=True)
        for logger in watched:
            logger.removeHandler(recorded)
        for _, stop, _ in consumers[:2]:
            stop.write_text("")
    results = []
    for proc, _, out in consumers[:2]:
        assert proc.wait(60) == 0, proc.stderr.read()[-3000:]
        assert out.exists(), proc.stderr.read()[-3000:]
        results.append(json.loads(out.read_text()))

    # the automatic rollback and its evidence
    assert rollback_event.actor == "scheduler:canary"
    decision = rollback_event.evidence["decision"]
    ev = decision["evidence"]
    assert decision["action"] == "rollback" and decision["code"] == "error_rate"
    assert ev["candidate"]["errors"] > 0 and ev["candidate"]["error_types"] == {"ValueError": ev["candidate"]["errors"]}
    assert ev["baseline"]["errors"] == 0 and ev["baseline"]["calls"] > ev["candidate"]["calls"]
    assert ev["error_test"]["rejected"] and ev["error_test"]["statistic"] >= ev["error_test"]["threshold"]
    assert pointers.active_pointer(store, name=SKILL)[0] == 1

    # fallback: the consumers never saw a failure, and v2 really answered some calls
    for r in results:
        assert r["failures"] == 0, r["errors"]
        assert r["calls"] > 500
        assert "2" in r["last"], r  # the candidate served some calls (its good inputs)
        # no answer from v2 after the rollback beyond the poll latency (0.05 s poll, 1 s bound)
        assert r["last"]["2"] <= rolled_back_at + 1.0, (r["last"], rolled_back_at)
        assert r["last"]["1"] > rolled_back_at + 0.5

    # `sandgate history` shows it, with the evidence
    env = {**os.environ, "SANDGATE_DATABASE_URL": store_url, "SANDGATE_HOME": str(tmp_path / "home")}
    env.pop("SANDGATE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "sandgate", "history", SKILL, "--json"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(proc.stdout)
    actions = [e["action"] for e in events]
    assert "canary_started" in actions and actions[-1] == "canary_rolled_back"
    assert events[-1]["evidence"]["decision"]["evidence"]["error_test"]["rejected"] is True
    proc = subprocess.run([sys.executable, "-m", "sandgate", "status", SKILL], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "state rolled_back" in proc.stdout and "error_rate" in proc.stdout

    # kill -9: the store is intact, and the killed consumer lost at most what it had not sent
    if store.dialect == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    from sqlalchemy import func, select

    from sandgate.store.models import RuntimeCount

    with store.read() as s:
        stored = s.scalar(select(func.coalesce(func.sum(RuntimeCount.calls), 0))
                          .where(RuntimeCount.consumer.like(f"%:{victim.pid}:%")))
    made = lines[-1]["calls"] + 199  # at most this many calls were made before the kill
    sent_for_sure = max([ln["calls"] for ln in lines if ln["t"] <= killed_at - 1.5] or [0])
    assert sent_for_sure <= stored <= made, (sent_for_sure, stored, made)
