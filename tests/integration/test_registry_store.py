"""sandgate.registry on a real store (SQLite and PostgreSQL): swaps under load, bad versions, the consumer.

The hammer tests run 8 threads calling the skill in a loop while the pointer
moves in the store. Every call must succeed and return the old or the new
version's tag; once the swap has been observed (``refresh()`` returned, or the
watcher's poll installed it), no call that *starts* afterwards may return the
old tag.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandgate.errors import NotFound
from sandgate.registry import LoadFailed, Registry, RegistryEvent, connect
from sandgate.registry.loader import content_hash
from sandgate.store import Store, evaluations, pointers, versions
from tests.integration.conftest_store import make_policy, make_report

pytest_plugins = ["tests.integration.conftest_store"]

ROOT = Path(__file__).resolve().parents[2]
THREADS = 8
POLICY = make_policy()


def files_for(tag: str, body: str | None = None) -> dict[str, bytes]:
    module = body if body is not None else "import helper\n\ndef run(*args):\n    return helper.TAG\n"
    return {
        "greet.py": module.encode(),
        "helper.py": f"TAG = {tag!r}\n".encode(),
        "skill.toml": b'name = "greet"\nentrypoint = "greet:run"\n',
        "tests/test_greet.py": f"from greet import run\n\ndef test_run():\n    assert run() == {tag!r}\n".encode(),
    }


def add_version(store: Store, tag: str, *, body: str | None = None, passed: bool = True) -> int:
    files = files_for(tag, body)
    sub = SimpleNamespace(
        name="greet",
        files=files,
        manifest={"name": "greet", "entrypoint": "greet:run"},
        content_hash=content_hash(files),
    )
    version, _ = versions.create_version(store, submission=sub, actor="test")
    if passed:
        evaluations.record_evaluation(
            store,
            name="greet",
            number=version.number,
            report=make_report("passed", evaluation_id=f"greet-{tag}"),
            policy_name=POLICY.name,
            policy_hash=POLICY.hash,
        )
    return version.number


def promote(store: Store, number: int, *, force: bool = False) -> None:
    if force:
        pointers.promote(store, name="greet", number=number, actor="test", reason="forced in a test", force=True)
    else:
        pointers.promote(store, name="greet", number=number, actor="test", policy=POLICY)


def open_registry(store_url: str, tmp_path: Path, observe: str, events: list[RegistryEvent]) -> Registry:
    return connect(
        store_url,
        cache_dir=tmp_path / "cache",
        watch=observe == "poll",
        on_event=events.append,
    )


class Hammer:
    """THREADS threads calling ``greet`` in a loop, recording (phase at call start, result)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.phase = 0
        self.stop = threading.Event()
        self.results: Counter[tuple[int, Any]] = Counter()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(THREADS)]

    def _run(self) -> None:
        out: Counter[tuple[int, Any]] = Counter()
        call, stop = self.registry.call, self.stop
        while not stop.is_set():
            phase = self.phase
            try:
                out[phase, call("greet")] += 1
            except BaseException as exc:  # the assertion reports it
                self.errors.append(exc)
            time.sleep(0)  # let the thread moving the pointer have the GIL now and then
        with self.lock:
            self.results.update(out)

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)  # calls that start after the swap was observed
        self.stop.set()
        for t in self.threads:
            t.join(10)


def move_under_load(
    registry: Registry, observe: str, move: Any, old: str, new: str, new_number: int
) -> None:
    with Hammer(registry) as hammer:
        move()
        if observe == "refresh":
            registry.refresh()
        else:
            assert registry.wait_for("greet", new_number, timeout=10)
        hammer.phase = 1
    assert hammer.errors == []
    assert {r for _, r in hammer.results} <= {old, new}
    before = {r for p, r in hammer.results if p == 0}
    after = {r for p, r in hammer.results if p == 1}
    assert old in before and after == {new}, hammer.results


@pytest.mark.parametrize("observe", ["refresh", "poll"])
def test_promote_under_load(store: Store, store_url: str, tmp_path: Path, observe: str) -> None:
    promote(store, add_version(store, "v1"))
    v2 = add_version(store, "v2")
    events: list[RegistryEvent] = []
    with open_registry(store_url, tmp_path, observe, events) as registry:
        assert registry.call("greet") == "v1"
        move_under_load(registry, observe, lambda: promote(store, v2), "v1", "v2", v2)
        assert registry.get("greet").version == 2
    assert [(e.kind, e.old, e.new) for e in events] == [("loaded", None, 1), ("swapped", 1, 2)]


@pytest.mark.parametrize("observe", ["refresh", "poll"])
def test_rollback_under_load(store: Store, store_url: str, tmp_path: Path, observe: str) -> None:
    promote(store, add_version(store, "v1"))
    v2 = add_version(store, "v2")
    promote(store, v2)
    events: list[RegistryEvent] = []
    with open_registry(store_url, tmp_path, observe, events) as registry:
        assert registry.call("greet") == "v2"
        move_under_load(
            registry, observe, lambda: pointers.rollback(store, name="greet", actor="test", reason="t"), "v2", "v1", 1
        )
    assert [(e.kind, e.old, e.new) for e in events] == [("loaded", None, 2), ("rolled_back", 2, 1)]


def test_a_version_that_fails_to_import_does_not_replace_a_working_one(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    promote(store, add_version(store, "v1"))
    bad = add_version(store, "bad", body="import helper\nraise RuntimeError('broken at import')\n", passed=False)
    good = add_version(store, "v3")
    events: list[RegistryEvent] = []
    with open_registry(store_url, tmp_path, "poll", events) as registry:
        assert registry.call("greet") == "v1"
        with Hammer(registry) as hammer:
            promote(store, bad, force=True)  # the store refuses it without force
            deadline = time.monotonic() + 10
            while not any(e.kind == "load_failed" for e in events) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert hammer.errors == [] and {r for _, r in hammer.results} == {"v1"}
        failed = [e for e in events if e.kind == "load_failed"]
        assert len(failed) == 1 and (failed[0].old, failed[0].new) == (1, bad)
        assert isinstance(failed[0].error, LoadFailed) and "broken at import" in str(failed[0].error)
        assert registry.version("greet") == 1

        # rolling the store back to the version still serving: nothing to swap
        pointers.rollback(store, name="greet", actor="test", reason="bad import")
        registry.refresh()
        assert registry.snapshot()["greet"][0] == 1
        promote(store, good)
        assert registry.wait_for("greet", good, timeout=10)
        assert registry.call("greet") == "v3"
    # a fresh consumer has nothing to fall back on: the bad version is an error, not a silent old one
    promote(store, bad, force=True)
    with open_registry(store_url, tmp_path, "refresh", []) as fresh, pytest.raises(LoadFailed):
        fresh.call("greet")


def test_not_found_on_a_real_store(store: Store, store_url: str, tmp_path: Path) -> None:
    add_version(store, "v1")  # stored, never promoted
    with open_registry(store_url, tmp_path, "refresh", []) as registry:
        with pytest.raises(NotFound, match="no active version"):
            registry.call("greet")
        with pytest.raises(NotFound):
            registry.call("unknown_skill")
        promote(store, 1)
        registry.refresh()
        assert registry.call("greet") == "v1"


def test_a_consumer_can_start_before_the_store_exists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'store.db'}"
    with connect(url, cache_dir=tmp_path / "cache", watch=False) as registry:
        with pytest.raises(NotFound):
            registry.call("greet")
    assert (tmp_path / "fresh" / "store.db").exists()


def test_consumer_example_prints_the_version_of_every_call(tmp_path: Path, sqlite_template: Path) -> None:
    from sandgate.store import open_store
    from sandgate.submission import load_submission

    db = tmp_path / "store.db"
    db.write_bytes(sqlite_template.read_bytes())
    url = f"sqlite:///{db}"
    with open_store(url) as store:
        for path in ("text_stats", "text_stats_v2"):
            sub = load_submission(ROOT / "examples" / "skills" / path)
            v, _ = versions.create_version(store, submission=sub, actor="test")
            pointers.promote(store, name="text_stats", number=v.number, actor="test", reason="test", force=True)
    env = {**os.environ, "SANDGATE_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "consumer.py"), "text_stats", "--db", url,
         "--calls", "3", "--interval", "0", "--args", "The cat saw the dog. It ran.", "2"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith("text_stats@2 -> {"), line
        assert '"sentences": 2' in line and '"top_words": [["the", 2], ["cat", 1]]' in line
    assert "# text_stats@2: loaded" in proc.stderr
