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
