"""``McpSettings``: SANDGATE_MCP_* variables, the command's options over them, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandgate.errors import ConfigError
from sandgate.mcp.settings import McpSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SANDGATE_MCP_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = McpSettings.load()
    assert (s.transport, s.skills, s.call_timeout_seconds) == ("stdio", [], 30.0)
    assert (s.host, s.port, s.path, s.token, s.log_level) == ("127.0.0.1", 8765, "/mcp", None, "warning")


def test_environment_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDGATE_MCP_SKILLS", " text_stats, csv_summary ,,text_stats")
    monkeypatch.setenv("SANDGATE_MCP_CALL_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("SANDGATE_MCP_LOG_LEVEL", "INFO")
    s = McpSettings.load()
    assert s.skills == ["csv_summary", "text_stats"] and s.call_timeout_seconds == 2.5 and s.log_level == "info"
    # the command's options win; repeated --skill values may be comma-separated too
    s = McpSettings.load(skills=["a,b", "c"], call_timeout_seconds=1)
    assert s.skills == ["a", "b", "c"] and s.call_timeout_seconds == 1


def test_misspelt_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDGATE_MCP_SKILL", "greet")
    with pytest.raises(ConfigError, match="SANDGATE_MCP_SKILL;.*SANDGATE_MCP_SKILLS"):
        McpSettings.load()


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"skills": ["Greet"]}, r"SANDGATE_MCP_SKILLS: .*not skill names .*'Greet'"),
        ({"call_timeout_seconds": 0}, "SANDGATE_MCP_CALL_TIMEOUT_SECONDS"),
        ({"transport": "sse"}, "SANDGATE_MCP_TRANSPORT"),
        ({"path": "mcp"}, r"SANDGATE_MCP_PATH: must start with '/'"),
        ({"port": 70000}, "SANDGATE_MCP_PORT"),
        ({"transport": "http", "host": "0.0.0.0"}, "0.0.0.0 is not a loopback address: set a token"),
        ({"transport": "http", "host": "0.0.0.0", "token": "  "}, "not a loopback address"),
    ],
)
def test_bad_values_are_config_errors(given: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        McpSettings.load(**given)


def test_exposed_host_with_a_token_is_fine() -> None:
    s = McpSettings.load(transport="http", host="0.0.0.0", token=" t0ken ")
    assert s.token == "t0ken"
    # stdio binds nothing: the host does not matter there
    assert McpSettings.load(host="0.0.0.0").transport == "stdio"


def test_the_sdk_loads_only_for_sandgate_mcp() -> None:
    """`import sandgate`, the client and every other command's start-up do not pay for the MCP SDK."""
    code = (
        "import sys, sandgate, sandgate.client; from sandgate.cli import _register; _register(); "
        "print(sorted(m for m in ('mcp', 'mcp_types', 'sandgate.mcp', 'sandgate.mcp.settings') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, sandgate.mcp; print('mcp' in sys.modules, 'sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]  # the store loads for a local catalog only
