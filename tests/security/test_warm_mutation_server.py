"""The warm mutation server against the skill, in the real sandbox.

The harness starts the mutation server before the payload arrives (it imports
pytest and warms up, then waits for its job), so it is alive while the dynamic
phase runs submitted code. What must hold:

- nothing the dynamic phase started reaches the mutation phase: the end-of-tests
  kill stops everyone, kills all but the server, and only then continues it —
  also against a process that keeps forking to dodge a kill by pid;
- a skill that kills (or stops) every process it can, the server included, gets
  the same mutation phase from a cold server, and the same verdict;
- the server is ready before any submitted code runs.

Only a warm pool's sandbox prepares the server ahead (a worker always evaluates in
one), so every evaluation here takes a pool sandbox, as a worker's does. Each case
reads ``mutation_warm`` (1.0 when the warm server ran the phase) from the report's
timings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandgate.config import Settings
from sandgate.evaluation import evaluate
from sandgate.policy import effective_limits, load_policy, parse_policy
from sandgate.report import Verdict
from sandgate.sandbox import pool as warm_pools
from sandgate.sandbox.engine import shared_client
from sandgate.submission import submission_from_files
from tests.integration.test_pool import manager, warm_pool, was_warm  # noqa: F401 - manager: a fixture
from tests.security.test_mutation_hostile import MANIFEST, MODULE

pytestmark = pytest.mark.usefixtures("sandbox_image", "pooled")


@pytest.fixture
def pooled(no_leftovers, manager) -> Iterator[warm_pools.PoolManager]:
    """``test_pool``'s manager installed as this process's pool (what a worker runs), set up after
    the leftover check and so drained before it."""
    yield manager


def evaluate_pooled(submission):
    """``evaluate`` in a sandbox of the pool, once it is full (its harness has prepared)."""
    manager = warm_pools.current()
    assert manager is not None, "the pooled fixture installs the pool"
    warm_pool(manager, shared_client(Settings()), effective_limits(policy().limits, None))
    report = evaluate(submission, policy=policy())
    assert was_warm(report), "expected a pool sandbox"
    return report


GOOD = '''import sys

import pytest

from clamp import clamp
{extra}

@pytest.mark.parametrize(("value", "expected"), [(-1, 0), (0, 0), (5, 5), (10, 10), (11, 10)])
def test_clamp(value, expected):
    {check}
    assert clamp(value, 0, 10) == expected


def test_bounds_checked():
    {check}
    with pytest.raises(ValueError, match="must not exceed"):
        clamp(1, 2, 1)
    assert clamp(3, 3, 3) == 3


def test_zz_last():
    if sys.gettrace() is not None:  # the dynamic phase (its coverage tracer), not a mutant's run
        {last}
    assert clamp(2, 0, 1) == 1
'''

# A daemon that dodges a kill by pid: it forks, and the parent exits, every millisecond,
# touching a heartbeat file in /tmp as it goes. Started by the last test of the dynamic
# phase only (the last tests below act in the dynamic phase only: the mutation phase's
# runs carry no coverage tracer); every test of the mutation phase fails if the heartbeat
# is fresh (so the control would fail, and the phase with it) — unless it is dead.
DAEMON = '''
import os
import time

BEAT = "/tmp/.daemon-beat"


def start_daemon():
    if os.fork() == 0:
        os.setsid()
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if os.fork():
                os._exit(0)
            try:
                with open(BEAT, "w") as handle:
                    handle.write(str(time.time()))
            except OSError:
                pass
            time.sleep(0.001)
        os._exit(0)
    time.sleep(0.05)


def daemon_alive():
    time.sleep(0.02)
    try:
        return time.time() - float(open(BEAT).read() or 0) < 0.5
    except (OSError, ValueError):
        return False
'''

KILL_ALL = '''
import os
import signal


def kill_everyone(sig):
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, os.getpid()):
            try:
                os.kill(int(name), sig)
            except OSError:
                pass
'''


def policy():
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"]["timeout_seconds"] = 40
    data["mutation"]["stop_when_decided"] = False
    data["gates"]["blocked_severities"] = []  # the phase itself is under test, not the rules
    return parse_policy(data, name="warm-mutation-server")


_HONEST: list = []


def honest():
    """The honest run's mutation summary (computed once)."""
    if not _HONEST:
        _HONEST.append(run())
    return _HONEST[0]


def same_phase(report) -> None:
    m, h = report.mutation, honest().mutation
    assert m is not None and h is not None and m.problem is None, m
    assert (m.run, m.total, m.killed, m.survived, m.score) == (h.run, h.total, h.killed, h.survived, h.score)


def run(extra: str = "", check: str = "pass", last: str = "pass"):
    tests = GOOD.format(extra=extra, check=check, last=last).encode()
    submission = submission_from_files({"skill.toml": MANIFEST, "clamp.py": MODULE,
                                        "tests/test_clamp.py": tests})
    return evaluate_pooled(submission)


def test_honest_tests_run_the_mutation_phase_on_the_warm_server() -> None:
    report = honest()
    assert report.verdict is Verdict.passed, report.reasons
    assert report.timings["mutation_warm"] == 1.0
    assert report.mutation is not None and report.mutation.run == report.mutation.total > 0


def test_a_forking_daemon_from_the_dynamic_phase_does_not_reach_the_mutation_phase() -> None:
    report = run(extra=DAEMON, check="assert not daemon_alive(), 'the daemon survived'",
                 last="start_daemon()")
    assert report.verdict is Verdict.passed, report.reasons
    assert report.timings["mutation_warm"] == 1.0  # the server was spared, the daemon was not
    same_phase(report)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_skill_that_kills_the_warm_server_gets_a_cold_one_and_the_same_verdict(sig: str) -> None:
    report = run(extra=KILL_ALL, last=f"kill_everyone(signal.{sig})")
    assert report.verdict is Verdict.passed, report.reasons
    assert report.timings["mutation_warm"] == 0.0
    same_phase(report)


def test_a_skill_that_stops_every_process_does_not_stop_the_phase() -> None:
    report = run(extra=KILL_ALL, last="kill_everyone(signal.SIGSTOP)")
    assert report.verdict is Verdict.passed, report.reasons
    assert report.timings["mutation_warm"] == 1.0  # continued after everyone else was killed
    same_phase(report)


def test_weak_tests_still_fail_when_the_warm_server_is_killed() -> None:
    weak = '''import os
import signal
import sys

from clamp import clamp


def test_clamp():
    assert clamp(5, 0, 10) is not None
    assert clamp(-5, 0, 10) is not None
    assert clamp(50, 0, 10) is not None
    try:
        clamp(1, 2, 1)
    except ValueError:
        assert True
    for name in os.listdir("/proc") if sys.gettrace() is not None else []:
        if name.isdigit() and int(name) not in (1, os.getpid()):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
'''
    submission = submission_from_files({"skill.toml": MANIFEST, "clamp.py": MODULE,
                                        "tests/test_clamp.py": weak.encode()})
    report = evaluate_pooled(submission)
    assert report.verdict is Verdict.failed, report.reasons
    assert report.timings["mutation_warm"] == 0.0
    assert any(r.code.value == "mutation_score_below_threshold" for r in report.reasons), report.reasons
