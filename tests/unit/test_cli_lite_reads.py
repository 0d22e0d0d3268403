"""The embedded read commands over stdlib sqlite3 (sandgate.service.lite) print exactly what the
SQLAlchemy path prints, errors included, on one real SQLite store."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sandgate.config import get_settings
from sandgate.service import lite
from sandgate.store.migrate import scripted_head
from tests.unit.test_store_cli import env, run  # noqa: F401 - the store CLI's fixture and runner

READS = [
    ("skills",), ("skills", "--json"),
    ("versions", "greet"), ("versions", "greet", "--json"), ("versions", "other"),
    ("show", "greet"), ("show", "greet", "--json"), ("show", "greet@1"), ("show", "greet@2", "--json"),
    ("show", "other"), ("history", "greet"), ("history", "greet", "--json"), ("history", "greet", "--limit", "2"),
    # refused: the same message and exit code on both paths
    ("versions", "nosuch"), ("show", "nosuch"), ("show", "greet@9"), ("history", "nosuch"),
]


def _populate(env: Any) -> None:
    assert run("submit", str(env.skill("greet", "v1"))).exit_code == 0
    assert run("promote", "greet", "1", "--reason", "ship it").exit_code == 0
    env.evaluator.verdict = "failed"
    assert run("submit", str(env.skill("greet", "v2"))).exit_code == 1
    env.evaluator.verdict = "passed"
    assert run("submit", str(env.skill("greet", "v3"))).exit_code == 0
    assert run("promote", "greet", "3", "--reason", "better").exit_code == 0
    assert run("rollback", "greet", "--reason", "oops").exit_code == 0
    assert run("yank", "greet", "3", "--reason", "broken\nreally").exit_code == 0
    assert run("submit", str(env.skill("other", "o1"))).exit_code == 0


def _both(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    used: list[bool] = []
    real = lite.open_reader

    def spy(url: str) -> Any:
        reader = real(url)
        used.append(reader is not None)
        return reader

    monkeypatch.setattr(lite, "open_reader", spy)
    fast = run(*args)
    assert used == [True], f"{args}: the sqlite3 path was not taken"
    monkeypatch.setattr(lite, "open_reader", lambda url: None)
    full = run(*args)
    monkeypatch.setattr(lite, "open_reader", real)
    return (fast.exit_code, fast.stdout, fast.stderr), (full.exit_code, full.stdout, full.stderr)


def test_every_read_prints_the_same_on_both_paths(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _populate(env)
    for args in READS:
        fast, full = _both(args, monkeypatch)
        assert fast == full, f"sandgate {' '.join(args)}: the sqlite3 path differs"
    # and the outputs say something (a comparison of two empty answers proves nothing)
    fast, _ = _both(("history", "greet", "--json"), monkeypatch)
    assert '"rolled_back"' in fast[1] and '"yanked"' in fast[1]
    fast, _ = _both(("show", "greet@9"), monkeypatch)
    assert fast[0] != 0 and "greet@9 does not exist (latest is greet@3)" in fast[2]


def test_no_store_and_an_old_schema_take_the_full_path(env: Any, tmp_path: Path) -> None:
    url = get_settings().effective_database_url
    assert lite.open_reader(url) is None  # nothing submitted yet: the full path says "no store"
    r = run("skills")
    assert r.exit_code != 0 and "no store at" in r.stderr
    _populate(env)
    reader = lite.open_reader(url)
    assert reader is not None
    reader.close()
    db = Path(url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    assert lite.open_reader(url) is None  # not at head: the full path migrates first
    assert lite.open_reader("postgresql+psycopg://u@127.0.0.1/x") is None
    assert lite.open_reader("sqlite:///:memory:") is None


def test_the_readers_head_is_the_stores() -> None:
    assert lite.scripted_head() == scripted_head()


def test_the_reader_never_writes(env: Any) -> None:
    _populate(env)
    reader = lite.open_reader(get_settings().effective_database_url)
    assert reader is not None
    with reader, pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._conn.execute("DELETE FROM skills")


PLAIN_CASES = {
    "nothing set": ({}, True),
    "a home": ({"SANDGATE_HOME": "{tmp}/h"}, True),
    "a relative home": ({"SANDGATE_HOME": "rel/h"}, True),
    "a database url": ({"SANDGATE_DATABASE_URL": "sqlite:////x/y.db"}, True),
    "both": ({"SANDGATE_HOME": "{tmp}/h", "SANDGATE_DATABASE_URL": "postgresql://u@h/db"}, True),
    "an empty database url": ({"SANDGATE_DATABASE_URL": ""}, False),
    "a blank home": ({"SANDGATE_HOME": " "}, False),
    "a lower-case name": ({"sandgate_home": "{tmp}/h"}, False),
    "another setting": ({"SANDGATE_POOL_SIZE": "2"}, False),
    "the free-text settings": ({"SANDGATE_IMAGE": "", "SANDGATE_POLICY": "strict"}, True),
    "a settings file": ({"SANDGATE_CONFIG": "{tmp}/sandgate.toml"}, False),
    "a sandgate.toml here": ({}, False),
    "a home that is a file": ({"SANDGATE_HOME": "{tmp}/file"}, False),
    "an unrelated variable": ({"SANDGATE_URL": "", "SANDGATE_API_KEY": "k"}, True),
}


@pytest.mark.parametrize("case", PLAIN_CASES)
def test_the_plain_store_url_is_the_settings_url_or_defers_to_them(case: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The read commands' shortcut names the store exactly as the settings would, or answers None (the
    settings are loaded); it never names another store."""
    from sandgate.config import Settings
    from sandgate.environ import plain_store_url

    variables, decides = PLAIN_CASES[case]
    (tmp_path / "sandgate.toml").write_text('home = "elsewhere"\n')
    (tmp_path / "file").write_text("not a directory\n")
    for key in [k for k in os.environ if k.upper().startswith("SANDGATE_")]:
        monkeypatch.delenv(key)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(tmp_path if case == "a sandgate.toml here" else here)
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in variables.items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    url = plain_store_url()
    assert (url is not None) == decides, url
    if url is not None:
        assert url == Settings().effective_database_url


def test_the_free_text_settings_accept_any_value() -> None:
    """What plain_store_url skips validating cannot be invalid: any text is a valid value of those fields."""
    from sandgate.config import Settings
    from sandgate.environ import FREE_TEXT_VARIABLES

    for variable in FREE_TEXT_VARIABLES:
        field = variable.removeprefix("SANDGATE_").lower()
        info = Settings.model_fields[field]
        assert info.annotation is str and not info.metadata, (field, info)
        for value in ("", " ", "x" * 300, "[/]\n\x00"):
            assert getattr(Settings(**{field: value}), field) == value
