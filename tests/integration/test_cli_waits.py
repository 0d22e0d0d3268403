"""Long and failed commands as a user meets them, through a real ``sandgate`` subprocess.

A submit that ended ``error`` shows ``error`` in ``sandgate versions`` (the
stored status stays ``pending``: an infrastructure error is not the skill's
fault); long commands show progress on a terminal and nothing extra when piped.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_cli_user_errors import SKILL, clean_env, run


def test_a_submit_that_ended_in_error_shows_error_in_versions(tmp_path: Path) -> None:
    # no engine answers: the evaluation ends as verdict error (exit 2), fast and without Docker
    env = clean_env(tmp_path, SANDGATE_HOME=str(tmp_path / "home"), DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    r = run(tmp_path, "submit", str(SKILL), env=env)
    assert r.returncode == 2 and "verdict: error" in r.stdout, r.stdout + r.stderr
    r = run(tmp_path, "versions", "text_stats", env=env)
    assert r.returncode == 0
    row = next(line for line in r.stdout.splitlines() if "│ 1 " in line)
    assert "│ error " in row and "pending" not in row, r.stdout
    r = run(tmp_path, "versions", "text_stats", "--json", env=env)
    (v,) = json.loads(r.stdout)
    assert v["status"] == "pending" and v["latest_verdict"] == "error"  # stored status unchanged


def on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` with stdin/stdout/stderr on a pseudo-terminal; its exit code and everything it wrote."""
    import os
    import pty
    import select
    import subprocess
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=cwd,
                            close_fds=True)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), out.decode(errors="replace")


def test_progress_shows_on_a_terminal_and_not_when_piped(tmp_path: Path) -> None:
    from tests.integration.test_cli_user_errors import SANDGATE

    env = clean_env(tmp_path, SANDGATE_HOME=str(tmp_path / "home"), DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    piped = run(tmp_path, "submit", str(SKILL), env=env)
    assert piped.returncode == 2 and piped.stderr == ""  # piped: nothing but the result on stdout
    assert "\r" not in piped.stdout and "\x1b[2K" not in piped.stdout

    code, seen = on_a_terminal([SANDGATE, "submit", str(SKILL)], env, tmp_path)
    assert code == 2 and "verdict: error" in seen
    # the progress line (phase, elapsed), rewritten in place, then erased before the result
    assert "\r\x1b[2Ksubmit text_stats: starting  0 s" in seen, repr(seen)
    assert "\r\x1b[2Ksubmit text_stats: sandbox  " in seen, repr(seen)
    assert seen.index("\r\x1b[2Ksubmit text_stats") < seen.index("verdict: error")

    code, seen = on_a_terminal([SANDGATE, "evaluate", str(SKILL)], env, tmp_path)
    assert code == 2 and "evaluate text_stats: intake  " in seen and "evaluate text_stats: sandbox  " in seen
