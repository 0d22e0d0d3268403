"""The CLI as a new user meets it, through a real ``sandgate`` subprocess.

Every mistake ends in one line on stderr that names what was wrong (the file,
the key, the variable, the address) with the documented exit code, and no
Python traceback; read commands never create a store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANDGATE = str(Path(sys.executable).with_name("sandgate"))
SKILL = ROOT / "examples" / "skills" / "text_stats"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDGATE_")}
    env.update({"COLUMNS": "200", "SANDGATE_CONFIG": str(tmp_path / "sandgate.toml")}, **extra)
    return env


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SANDGATE, *args], cwd=tmp_path, env=env or clean_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_a_misspelt_variable_is_refused_with_the_name_it_meant(tmp_path: Path) -> None:
    r = run(tmp_path, "skills", env=clean_env(tmp_path, SANDGATE_DATABSE_URL="sqlite:////tmp/x.db"))
    assert r.returncode == 2
    line = one_error_line(r)
    assert "SANDGATE_DATABSE_URL" in line and "did you mean SANDGATE_DATABASE_URL?" in line
    # the variables of an area stay that area's to check, and known ones pass
    r = run(tmp_path, "--version", env=clean_env(tmp_path, SANDGATE_ACTOR="me", SANDGATE_LLM_MODEL="m"))
    assert r.returncode == 0 and r.stdout.startswith("sandgate ")


def test_a_malformed_settings_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "sandgate.toml"
    cfg.write_text("policy = [\n")
    r = run(tmp_path, "skills")
    assert r.returncode == 2 and str(cfg) in one_error_line(r) and "not valid TOML" in r.stderr

    cfg.write_text('polcy = "strict"\n')
    line = one_error_line(run(tmp_path, "skills"))
    assert "unknown key 'polcy'" in line and str(cfg) in line and "policy" in line
    assert "https://" not in line  # no pydantic error URL

    cfg.write_text("docker_api_timeout = \"soon\"\n")
    line = one_error_line(run(tmp_path, "doctor"))
    assert "docker_api_timeout" in line and str(cfg) in line

    cfg.unlink()
    line = one_error_line(run(tmp_path, "doctor", env=clean_env(tmp_path, SANDGATE_SANDBOX_KILL_GRACE="x")))
    assert "SANDGATE_SANDBOX_KILL_GRACE" in line


def test_a_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "passwd"
    not_a_dir.write_text("root:x:0:0\n")
    for command in (["skills"], ["submit", str(SKILL), "--no-wait"], ["evaluate", str(SKILL)]):
        r = run(tmp_path, *command, env=clean_env(tmp_path, SANDGATE_HOME=str(not_a_dir)))
        assert r.returncode == 2, command
        assert f"SANDGATE_HOME={not_a_dir} exists and is not a directory" in one_error_line(r)
    assert not_a_dir.read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("command", [
    ["skills"], ["versions", "text_stats"], ["show", "text_stats"], ["history", "text_stats"],
    ["diff", "text_stats", "1", "2"], ["rollback", "text_stats", "--reason", "r"], ["keys", "list"],
])
def test_read_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    r = run(tmp_path, *command)
    assert r.returncode == 2
    line = one_error_line(r)
    assert f"no store at {tmp_path / '.sandgate' / 'sandgate.db'}" in line and "SANDGATE_HOME" in line
    assert not (tmp_path / ".sandgate").exists()


def test_an_explicit_store_in_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    db = tmp_path / "no" / "such" / "dir" / "x.db"
    env = clean_env(tmp_path, SANDGATE_DATABASE_URL=f"sqlite:///{db}")
    r = run(tmp_path, "submit", str(SKILL), "--no-wait", env=env)
    assert r.returncode == 2
    assert f"the directory {db.parent} does not exist" in one_error_line(r)
    assert not (tmp_path / "no").exists()
    # the first API key is a write: it creates the store it names (here in an existing directory)
    env = clean_env(tmp_path, SANDGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}")
    r = run(tmp_path, "keys", "create", "ci-bot", "--role", "submitter", env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "keys.db").exists()


def test_commands_that_cannot_work_remotely_say_so(tmp_path: Path) -> None:
    env = clean_env(tmp_path, SANDGATE_URL="http://127.0.0.1:9", SANDGATE_API_KEY="sg_x")
    for command in (["keys", "create", "ci-bot", "--role", "submitter"], ["keys", "list"],
                    ["keys", "revoke", "ci-bot"]):
        r = run(tmp_path, *command, env=env)
        assert r.returncode == 2, command
        line = one_error_line(r)
        assert "SANDGATE_URL=http://127.0.0.1:9" in line and "server's host" in line
        assert r.stdout == ""  # no token printed for a key nobody will accept
    r = run(tmp_path, "generate", "slug", "--description", "d",
            env={**env, "SANDGATE_LLM_BASE_URL": "http://127.0.0.1:9/v1", "SANDGATE_LLM_MODEL": "m"})
    assert r.returncode == 2 and "--no-submit" in one_error_line(r)
    assert not (tmp_path / ".sandgate").exists()


def test_an_unreachable_engine_names_the_address_it_tried(tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    env = clean_env(tmp_path, DOCKER_HOST=f"unix://{sock}")
    r = run(tmp_path, "doctor", "--json", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = run(tmp_path, "evaluate", str(SKILL), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    out = " ".join((r.stdout + r.stderr).split())
    assert f"no Docker engine answers at unix://{sock} (DOCKER_HOST): No such file or directory" in out
    assert "engine.sh" in out and "docs.docker.com" in out
    assert "Connection aborted" not in out and "FileNotFoundError" not in out


def test_interrupt_and_unexpected_errors_are_one_line(tmp_path: Path) -> None:
    code = ("import sandgate.cli as cli\n"
            "def boom():\n    raise {exc}\n"
            "cli._register = boom\ncli.main()\n")
    env = clean_env(tmp_path)
    r = subprocess.run([sys.executable, "-c", code.format(exc="KeyboardInterrupt")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted"
    r = subprocess.run([sys.executable, "-c", code.format(exc="RuntimeError('a bug')")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert one_error_line(r) == "error: RuntimeError: a bug (set SANDGATE_TRACEBACK=1 for the traceback)"
    r = subprocess.run([sys.executable, "-c", code.format(exc="RuntimeError('a bug')")],
                       env={**env, "SANDGATE_TRACEBACK": "1"}, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr and "RuntimeError: a bug" in r.stderr


def test_conventions_version_flags_examples_and_where(tmp_path: Path) -> None:
    r = run(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("sandgate 0.")
    r = run(tmp_path, "--help")
    assert r.returncode == 0
    assert "Examples:" in r.stdout and "sandgate submit examples/skills/text_stats" in r.stdout
    assert "--install-completion" in r.stdout
    r = run(tmp_path, "skills", "--help")
    assert "--json" in r.stdout and "<bool>" not in r.stdout
    # --verbose says which store a command uses; doctor reports it without creating it
    r = run(tmp_path, "-v", "doctor", "--json", env=clean_env(
        tmp_path, SANDGATE_DATABASE_URL="postgresql+psycopg://sg:s3cret@127.0.0.1:1/sg"))
    assert "store: postgresql+psycopg://sg:***@127.0.0.1:1/sg (SANDGATE_DATABASE_URL)" in r.stderr
    assert "s3cret" not in r.stdout + r.stderr
    r = run(tmp_path, "doctor", "--json")
    assert '"name": "store"' in r.stdout and "does not exist yet" in r.stdout
    assert not (tmp_path / ".sandgate").exists()
