"""Skill versions in a real SQLite store for the MCP tests (forced promotion: no Docker needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sandgate.names import content_hash
from sandgate.store import Store, open_store, pointers, versions

GREET_V1 = '''
def run(name: str, excited: bool = False) -> str:
    """Greets."""
    return ("v1 hello " + name) + ("!" if excited else "")
'''
GREET_V2 = '''
import time

def run(name: str, excited: bool = False, delay: float = 0.0) -> str:
    time.sleep(delay)
    return ("v2 hello " + name) + ("!" if excited else "")
'''


def skill_files(name: str, code: str, description: str = "A test skill") -> dict[str, bytes]:
    toml = f'name = "{name}"\nentrypoint = "{name}:run"\n'
    return {
        f"{name}.py": code.encode(),
        "skill.toml": toml.encode(),
        f"tests/test_{name}.py": b"def test_nothing():\n    assert True\n",
    }


def add(store: Store, name: str, code: str, *, description: str = "A test skill", promote: bool = True) -> int:
    files = skill_files(name, code, description)
    sub = SimpleNamespace(
        name=name,
        files=files,
        manifest={"name": name, "entrypoint": f"{name}:run", "description": description},
        content_hash=content_hash(files),
    )
    v, _ = versions.create_version(store, submission=sub, actor="test")
    if promote:
        pointers.promote(store, name=name, number=v.number, actor="test", reason="forced in a test", force=True)
    return v.number


def rollback(store: Store, name: str) -> None:
    pointers.rollback(store, name=name, actor="test", reason="test rollback")


def yank(store: Store, name: str, number: int) -> None:
    pointers.yank(store, name=name, number=number, actor="test", reason="test yank", rollback=True)


def new_store(tmp_path: Path) -> tuple[Store, str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    return open_store(url), url
