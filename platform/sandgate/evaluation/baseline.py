"""What the store knows about a skill's earlier versions, for the oracle's differential replay.

Reads only: the active version's stored bytes and every earlier version's
examples (data, never code). A version whose examples no longer parse adds
none. No store, or a skill not yet stored: an empty :class:`Baseline`.
"""

from __future__ import annotations

import tomllib
from typing import Any

from sandgate.errors import NotFound
from sandgate.evaluation.oracle import Baseline
from sandgate.examples import EXAMPLES_FILE, ExampleError, parse_examples, parse_examples_jsonl
from sandgate.store import versions
from sandgate.store.engine import Store

__all__ = ["load_baseline", "examples_inputs"]


def examples_inputs(files: dict[str, bytes]) -> list[tuple[list[Any], dict[str, Any]]]:
    """The ``(args, kwargs)`` of a stored version's examples (none when they do not parse)."""
    found = []
    try:
        manifest = tomllib.loads(files.get("skill.toml", b"").decode("utf-8-sig"))
        found += parse_examples(manifest.get("examples", []) or [], where="skill.toml")
    except (ExampleError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError, TypeError):
        pass
    if EXAMPLES_FILE in files:
        try:
            found += parse_examples_jsonl(files[EXAMPLES_FILE], where=EXAMPLES_FILE)
        except ExampleError:
            pass
    return [(e.args, e.kwargs) for e in found]


def load_baseline(store: Store, *, skill: str, content_hash: str | None = None) -> Baseline:
    """The active version (unless it is ``content_hash`` itself) and the earlier versions' inputs."""
    try:
        stored = versions.list_versions(store, name=skill)
    except NotFound:
        return Baseline()
    active = next((v for v in stored if v.active), None)
    inputs: list[tuple[list[Any], dict[str, Any]]] = []
    active_files = None
    for version in stored:
        if version.content_hash == content_hash:
            continue
        files = versions.get_version_files(store, name=skill, number=version.number)
        inputs += examples_inputs(files)
        if active is not None and version.number == active.number:
            active_files = files
    if active is None or active_files is None:
        return Baseline(history_inputs=tuple(inputs))
    return Baseline(active_version=active.number, active_files=active_files,
                    history_inputs=tuple(inputs))
