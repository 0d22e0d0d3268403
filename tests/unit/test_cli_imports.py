"""The CLI's start-up budget, pinned as import sets (never as timings: bench/bench_cli.py measures those).

Each command runs in a fresh interpreter and reports ``sys.modules`` at its
end. Registering every command loads typer and sandgate's CLI modules only;
``--help`` and a usage error are rendered by click (the app's ``rich_markup_mode``
is None: no rich) and load nothing of the platform; a read in remote mode loads the standard library's HTTP
(sandgate.wire's PlainClient: no httpx) and no database layer, no settings
machinery and no lifecycle; a read of the embedded store loads
the store with the standard library's sqlite3 (no SQLAlchemy: sandgate.service.lite)
and neither the lifecycle, the policies, the sandbox nor the report models.
A module that creeps into one of these paths fails here with its name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.loopback import serve

#: run sandgate's main() with argv, then write the modules loaded (sorted) as JSON to the file argv[1]
RUN = (
    "import json, sys\n"
    "out, sys.argv = sys.argv[1], ['sandgate', *sys.argv[2:]]\n"
    "from sandgate.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "else:\n"
    "    code = 0\n"
    "with open(out, 'w') as f:\n"
    "    json.dump({'code': code, 'modules': sorted(k for k, m in sys.modules.items() if m is not None)}, f)\n"
)

#: third-party packages no short command needs (their roots)
HEAVY = {"sqlalchemy", "alembic", "psycopg", "docker", "httpx", "httpcore", "fastapi", "starlette", "uvicorn",
         "apscheduler", "mcp", "pydantic_settings", "opentelemetry"}
#: sandgate modules only a write, an evaluation or the server needs
PLATFORM = {"sandgate.lifecycle", "sandgate.evaluation", "sandgate.sandbox", "sandgate.policy", "sandgate.report",
            "sandgate.oracle_report", "sandgate.submission", "sandgate.delivery", "sandgate.api", "sandgate.worker",
            "sandgate.scheduler", "sandgate.generation", "sandgate.mcp", "sandgate.registry"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDGATE_")}
    env.update({"SANDGATE_HOME": str(tmp_path / "home"), "DOCKER_HOST": "unix:///nonexistent/docker.sock",
                "COLUMNS": "100"})
    env.update(extra)
    return env


def run_cli(tmp_path: Path, *args: str, **env: str) -> tuple[int, set[str], str]:
    """(exit code, modules loaded, stdout) of ``sandgate ARGS`` in a fresh interpreter."""
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", RUN, str(out), *args], env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=120, check=False)
    assert out.exists(), f"sandgate {' '.join(args)} did not finish: {done.stderr[-2000:]}"
    result = json.loads(out.read_text())
    return result["code"] or 0, set(result["modules"]), done.stdout


def _under(modules: set[str], prefixes: set[str]) -> list[str]:
    """The modules that are one of ``prefixes`` or inside one (``sqlalchemy.orm`` is under ``sqlalchemy``)."""
    return sorted(m for m in modules if m in prefixes or m.split(".")[0] in prefixes
                  or any(m.startswith(p + ".") for p in prefixes))


def test_registering_every_command_loads_typer_and_the_cli_only(tmp_path: Path) -> None:
    code = ("import json, sys, sandgate.cli as c\nc._register()\n"
            "names = sorted(cmd.name or cmd.callback.__name__ for cmd in c.app.registered_commands)\n"
            "print(json.dumps({'commands': names, 'modules': sorted(sys.modules)}))")
    done = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120, check=True)
    result = json.loads(done.stdout)
    assert {"skills", "versions", "show", "history", "submit", "evaluate"} <= set(result["commands"])
    modules = set(result["modules"])
    assert _under(modules, HEAVY | PLATFORM | {"rich", "pydantic", "pydantic_core", "asyncio", "logging"}) == []
    sandgate = {m for m in modules if m.split(".")[0] == "sandgate"}
    assert sandgate - {m for m in sandgate if m.startswith("sandgate.cli")} == {
        "sandgate", "sandgate.errors"}, "the CLI's modules import nothing of the platform at module level"


def test_help_loads_no_platform_and_no_pydantic(tmp_path: Path) -> None:
    code, modules, out = run_cli(tmp_path, "--help")
    assert code == 0
    assert "Examples:" in out and "skills" in out and "--version" in out  # the epilog, commands, options
    assert _under(modules, HEAVY | PLATFORM | {"pydantic", "pydantic_core", "rich"}) == []
    assert "sandgate.config" not in modules and "sandgate.service" not in modules
    # each command's first sentence is there whole (click alone would cut it at the width, with "...")
    words = " ".join(out.split())
    assert "evaluate each attempt in the sandbox, repair, submit." in words
    assert "or a canary with --canary." in words


def test_a_usage_error_loads_no_rich(tmp_path: Path) -> None:
    code, modules, out = run_cli(tmp_path, "skills", "--bogus")
    assert code == 2
    assert _under(modules, HEAVY | PLATFORM | {"rich"}) == []


def test_version_loads_no_platform(tmp_path: Path) -> None:
    code, modules, out = run_cli(tmp_path, "--version")
    assert code == 0 and out.startswith("sandgate ")
    assert _under(modules, HEAVY | PLATFORM | {"rich"}) == []


def test_a_misspelt_variable_is_refused_without_the_settings_machinery(tmp_path: Path) -> None:
    code, modules, _ = run_cli(tmp_path, "skills", SANDGATE_HOEM="x")
    assert code == 2
    assert _under(modules, HEAVY | PLATFORM | {"sandgate.config", "sandgate.service"}) == []


class _Api(BaseHTTPRequestHandler):
    """Just enough of ``sandgate serve`` for the read commands: canned JSON answers."""

    answers: dict[str, object] = {
        "/v1/skills": [{"name": "greet", "active_version": 1, "latest_version": 1, "generation": 1,
                        "created_at": "2026-01-02T03:04:05+00:00"}],
        "/v1/skills/greet/versions": [],
        "/v1/skills/greet/history": [],
    }

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        body = self.answers.get(self.path.split("?", 1)[0])
        payload = json.dumps(body if body is not None else {"error": {"code": "not_found", "message": "no"}})
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def api_url() -> Iterator[str]:
    with serve(_Api) as url:
        yield url


@pytest.mark.parametrize("args", [("skills",), ("versions", "greet"), ("history", "greet")])
def test_a_remote_read_loads_the_standard_librarys_http_and_no_database_layer(tmp_path: Path, api_url: str,
                                                                              args: tuple[str, ...]) -> None:
    code, modules, out = run_cli(tmp_path, *args, SANDGATE_URL=api_url, SANDGATE_API_KEY="sg_test")
    assert code == 0, out
    if args == ("skills",):
        assert "greet" in out
    assert {"sandgate.wire", "sandgate.service.remote", "http.client"} <= modules  # it did go over HTTP
    assert _under(modules, HEAVY | PLATFORM | {"sandgate.client", "trio", "anyio", "sandgate.store",
                                               "sandgate.config", "sandgate.service.embedded"}) == []


def test_a_remote_write_still_takes_the_full_client(tmp_path: Path, api_url: str) -> None:
    code, modules, _ = run_cli(tmp_path, "rollback", "greet", SANDGATE_URL=api_url, SANDGATE_API_KEY="sg_test")
    assert code != 0  # the fake API answers 404 to the POST
    assert {"sandgate.client", "httpx"} <= modules
    assert _under(modules, {"sqlalchemy", "sandgate.store", "sandgate.service.embedded"}) == []


@pytest.fixture()
def store_home(tmp_path: Path) -> Path:
    """An empty, migrated SQLite store under ``tmp_path/home``."""
    from sandgate.store import open_store

    home = tmp_path / "home"
    home.mkdir()
    open_store(f"sqlite:///{home / 'sandgate.db'}", create=True).close()
    return home


@pytest.mark.parametrize("args", [("skills",), ("versions", "greet"), ("history", "greet"), ("show", "greet")])
def test_an_embedded_read_loads_sqlite3_and_no_database_layer(tmp_path: Path, store_home: Path,
                                                              args: tuple[str, ...]) -> None:
    code, modules, out = run_cli(tmp_path, *args)
    assert code == (0 if args == ("skills",) else 1), out  # greet is not there: refused
    assert "sandgate.service.lite" in modules and "sqlite3" in modules  # it did read the store
    # SANDGATE_HOME alone names the store: not even the settings machinery (sandgate.environ.plain_store_url)
    assert _under(modules, HEAVY | PLATFORM | {"pydantic", "pydantic_core", "sandgate.config", "sandgate.store",
                                                "sandgate.service.embedded", "sandgate.client"}) == []


@pytest.mark.parametrize("setting", ["variable", "file"])
def test_an_embedded_read_with_other_settings_validates_them_first(tmp_path: Path, store_home: Path,
                                                                   setting: str) -> None:
    """Another setting set (a variable, or a settings file): the settings are loaded, so a bad value is
    refused as every other command refuses it, and a good one still reads through sqlite3."""
    config = tmp_path / "sandgate.toml"
    extra = {"SANDGATE_POOL_SIZE": "two"} if setting == "variable" else {"SANDGATE_CONFIG": str(config)}
    config.write_text('pool_size = "two"\n')
    code, modules, _ = run_cli(tmp_path, "skills", **extra)
    assert code == 2 and "pydantic_settings" in modules  # ConfigError: exit 2
    good = {"SANDGATE_POOL_SIZE": "2"} if setting == "variable" else {"SANDGATE_CONFIG": str(config)}
    config.write_text("pool_size = 2\n")
    code, modules, _ = run_cli(tmp_path, "skills", **good)
    assert code == 0 and "pydantic_settings" in modules and "sandgate.service.lite" in modules
    assert _under(modules, {"sqlalchemy", "sandgate.store", "sandgate.service.embedded"}) == []


def test_an_embedded_read_of_no_store_takes_the_full_path(tmp_path: Path) -> None:
    """No store file: the SQLAlchemy store says so (its message; the sqlite3 reader only reads what exists)."""
    code, modules, _ = run_cli(tmp_path, "skills")
    assert code != 0
    assert "sandgate.store" in modules
    assert _under(modules, (HEAVY - {"sqlalchemy", "pydantic_settings"}) | PLATFORM) == []


def test_each_command_is_registered_by_the_module_the_table_names() -> None:
    """``sandgate NAME`` imports only COMMAND_MODULES[NAME]: the table must say where every command lives."""
    import importlib

    import typer

    from sandgate import cli

    found: dict[str, str] = {}
    for module in cli._MODULES:
        app = typer.Typer()
        importlib.import_module(f"sandgate.cli.{module}").register(app)
        names = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
        names += [g.name or "" for g in app.registered_groups]
        for name in names:
            assert name not in found, f"{name} is registered by both {found[name]} and {module}"
            found[name] = module
    assert found == cli.COMMAND_MODULES


@pytest.mark.parametrize(("argv", "command"), [
    (["skills"], "skills"), (["-v", "versions", "x"], "versions"), (["--verbose", "show", "--json", "x"], "show"),
    (["--help"], None), ([], None), (["--json"], None), (["nosuch"], "nosuch"),
])
def test_the_command_is_found_after_the_apps_own_options(argv: list[str], command: str | None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from sandgate.cli import _command_in

    assert _command_in(argv) == command
    monkeypatch.setenv("_SANDGATE_COMPLETE", "complete_bash")  # completing: every command is registered
    assert _command_in(argv) is None


def test_an_unknown_command_still_gets_the_suggestions_of_all(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "sandgate", "skils"], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "skils" in done.stderr and "skills" in done.stderr  # "No such command 'skils'. Did you mean 'skills'?"
