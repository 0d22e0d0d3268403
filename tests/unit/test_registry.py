"""sandgate.registry against an in-memory backend: loading, isolation, swaps, cache, eviction."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import sandgate
from sandgate.errors import ConfigError, NotFound, SandgateError, StoreError
from sandgate.registry import (
    FetchedVersion,
    LoadFailed,
    Registry,
    RegistryEvent,
    VersionInfo,
    connect,
)
from sandgate.registry.loader import (
    VersionCache,
    content_hash,
    load_version,
    loaded_prefixes,
    unload_version,
)

# --------------------------------------------------------------------------- fakes


def skill(tag: str, *, module: str = "skill", body: str | None = None, **extra: str) -> dict[str, bytes]:
    """A file set whose ``run`` returns ``tag`` (or ``body`` as the module source)."""
    src = body if body is not None else f"TAG = {tag!r}\n\ndef run(*args, **kwargs):\n    return TAG\n"
    files = {
        f"{module}.py": src,
        "skill.toml": f'name = "x"\nentrypoint = "{module}:run"\n',
        f"tests/test_{module}.py": f"from {module} import run\n\ndef test_run():\n    assert run()\n",
        **extra,
    }
    return {path: text.encode() for path, text in files.items()}


class FakeBackend:
    """Versions and pointers in memory; records every fetch."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], FetchedVersion] = {}
        self.active: dict[str, tuple[int, int]] = {}
        self.fetches: list[tuple[str, int]] = []
        self.pointer_calls = 0
        self.fail: Exception | None = None
        self.closed = False
        #: override what fetch returns (to simulate a corrupt store)
        self.corrupt: dict[tuple[str, int], Mapping[str, bytes]] = {}

    def add(self, name: str, files: Mapping[str, bytes], entrypoint: str = "skill:run") -> int:
        number = 1 + max((n for (s, n) in self.versions if s == name), default=0)
        self.versions[name, number] = FetchedVersion(content_hash(files), entrypoint, dict(files))
        return number

    def move(self, name: str, number: int) -> None:
        generation = self.active.get(name, (0, 0))[1] + 1
        self.active[name] = (number, generation)

    def pointers(self, names: Any) -> dict[str, tuple[int, int]]:
        self.pointer_calls += 1
        if self.fail is not None:
            raise self.fail
        return {n: self.active[n] for n in names if n in self.active}

    def describe(self, name: str, number: int) -> VersionInfo:
        v = self.versions[name, number]
        return VersionInfo(v.content_hash, v.entrypoint)

    def fetch(self, name: str, number: int) -> FetchedVersion:
        self.fetches.append((name, number))
        v = self.versions[name, number]
        if (name, number) in self.corrupt:
            return v._replace(files=self.corrupt[name, number])
        return v

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def events() -> list[RegistryEvent]:
    return []


@pytest.fixture
def make_registry(backend: FakeBackend, tmp_path: Path, events: list[RegistryEvent]) -> Iterator[Any]:
    made: list[Registry] = []

    def make(**kw: Any) -> Registry:
        kw.setdefault("watch", False)
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("on_event", events.append)
        r = connect(backend=kw.pop("backend", backend), **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(autouse=True)
def no_leftover_modules() -> Iterator[None]:
    before = set(loaded_prefixes())
    yield
    left = set(loaded_prefixes()) - before
    assert not left, f"versions left loaded: {left}"
    assert not [m for m in sys.modules if m.split(".")[0] in ("skill", "helper", "pkg", "mod_a")]


def kinds(events: list[RegistryEvent]) -> list[str]:
    return [e.kind for e in events]


# --------------------------------------------------------------------------- hashing


def test_content_hash_is_the_intake_formula() -> None:
    from sandgate.submission import hash_files

    files = skill("v1", extra="x") | {"data/a.json": b"{}", "z.py": b""}
    assert content_hash(files) == hash_files(files)


# --------------------------------------------------------------------------- loading


def _load(tmp_path: Path, files: Mapping[str, bytes], name: str = "greet", number: int = 1, ep: str = "skill:run"):
    h = content_hash(files)
    root, data, _ = VersionCache(tmp_path / "cache").materialize(h, lambda: files)
    return load_version(name=name, number=number, content_hash=h, entrypoint=ep, files=data, root=root)


def test_loads_from_bytes_under_a_versioned_name(tmp_path: Path) -> None:
    files = skill("v1")
    m = _load(tmp_path, files, number=7)
    try:
        hash8 = content_hash(files).split(":")[1][:8]
        assert m.package == f"sandgate_skills.greet.v7_{hash8}"
        assert m.module.__name__ == f"{m.package}.skill"
        assert sys.modules[m.module.__name__] is m.module
        assert m.module.__file__ == str(tmp_path / "cache" / content_hash(files).split(":")[1] / "skill.py")
        assert m.function() == "v1"
        assert "skill" not in sys.modules
        # no bytecode cache is written next to the verified files
        assert not list((tmp_path / "cache").rglob("__pycache__"))
    finally:
        unload_version(m)
    assert m.module.__name__ not in sys.modules
    assert m.package not in loaded_prefixes()


HELPER_SKILL = {
    "skill.py": (
        "import helper\n"
        "import pkg.mod_a as a\n"
        "from pkg import mod_a\n"
        "from helper import VALUE\n"
        "import json\n"
        "def run():\n"
        "    import helper as late\n"
        "    from pkg.sub import deep\n"
        "    return [helper.VALUE, VALUE, a.tag(), mod_a.tag(), late.VALUE, deep.DEEP, json.dumps(1),\n"
        "            __import__('helper').VALUE]\n"
    ),
    "helper.py": "VALUE = {tag!r}\n",
    "pkg/__init__.py": "",
    "pkg/mod_a.py": "from . import rel\nfrom .rel import R\ndef tag():\n    return rel.R + R\n",
    "pkg/rel.py": "R = {tag!r}\n",
    "pkg/sub/deep.py": "from ..rel import R\nDEEP = 'deep-' + R\n",
}


def helper_skill(tag: str) -> dict[str, bytes]:
    return {p: s.format(tag=tag).encode() for p, s in HELPER_SKILL.items()} | {
        "skill.toml": b'name = "x"\nentrypoint = "skill:run"\n'
    }


def test_imports_inside_a_skill_resolve_to_the_same_version(tmp_path: Path) -> None:
    m1 = _load(tmp_path, helper_skill("one"), number=1)
    m2 = _load(tmp_path, helper_skill("two"), number=2)
    try:
        assert m1.function() == ["one", "one", "oneone", "oneone", "one", "deep-one", "1", "one"]
        assert m2.function() == ["two", "two", "twotwo", "twotwo", "two", "deep-two", "1", "two"]
        assert sys.modules[f"{m1.package}.helper"].VALUE == "one"
        assert sys.modules[f"{m2.package}.helper"].VALUE == "two"
        assert sys.modules[f"{m2.package}.pkg.sub.deep"].DEEP == "deep-two"
        for top in ("helper", "pkg", "skill"):
            assert top not in sys.modules
    finally:
        unload_version(m1)
    # unloading one version leaves the other intact, lazy imports included
    try:
        assert m2.function()[0] == "two"
        assert not [k for k in sys.modules if k.startswith(m1.package)]
    finally:
        unload_version(m2)


def test_dotted_entrypoint_and_data_files(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": b"",
        "pkg/api.py": (
            b"from pathlib import Path\nfrom importlib.resources import files\n"
            b"def run():\n"
            b"    here = Path(__file__).parent.parent / 'data' / 'table.json'\n"
            b"    return here.read_text(), files(__package__).joinpath('__init__.py').is_file()\n"
        ),
        "data/table.json": b'{"a": 1}',
        "skill.toml": b'name = "x"\nentrypoint = "pkg.api:run"\n',
    }
    m = _load(tmp_path, files, ep="pkg.api:run")
    try:
        assert m.module.__name__ == f"{m.package}.pkg.api"
        assert m.function() == ('{"a": 1}', True)
    finally:
        unload_version(m)


def test_same_version_twice_in_one_process_gets_distinct_packages(tmp_path: Path) -> None:
    files = skill("v1")
    a, b = _load(tmp_path, files), _load(tmp_path, files)
    try:
        assert a.package != b.package and b.package == a.package + "_2"
        assert a.module is not b.module
    finally:
        unload_version(a)
        unload_version(b)


def test_a_module_outside_the_file_set_is_not_found(tmp_path: Path) -> None:
    files = skill("x", body="def run():\n    import skill.nothing\n")
    m = _load(tmp_path, files)
    try:
        # a stray file planted next to the verified ones is never imported
        (Path(m.module.__file__).parent / "planted.py").write_text("BOOM = 1\n")
        with pytest.raises(ModuleNotFoundError):
            __import__(f"{m.package}.planted")
        with pytest.raises(ModuleNotFoundError):
            m.function()
    finally:
        unload_version(m)


@pytest.mark.parametrize(
    ("files", "entrypoint", "code"),
    [
        (skill("x"), "skill:missing", "bad_entrypoint"),
        (skill("x", body="run = 42\n"), "skill:run", "bad_entrypoint"),
        (skill("x"), "nomodule:run", "bad_entrypoint"),
        (skill("x"), "not an entrypoint", "bad_entrypoint"),
        (skill("x", body="raise RuntimeError('broken at import')\n"), "skill:run", "import_failed"),
        (skill("x", body="import no_such_dependency_xyz\n"), "skill:run", "import_failed"),
        (skill("x", body="def run(:\n"), "skill:run", "import_failed"),
        (skill("x", body="import sys\nsys.exit(3)\n"), "skill:run", "import_failed"),
    ],
    ids=["missing", "not-callable", "no-module", "malformed", "raises", "bad-import", "syntax", "sys-exit"],
)
def test_bad_versions_are_refused_and_leave_nothing_behind(
    tmp_path: Path, files: dict[str, bytes], entrypoint: str, code: str
) -> None:
    before = set(sys.modules)
    with pytest.raises(LoadFailed) as info:
        _load(tmp_path, files, ep=entrypoint)
    assert info.value.code == code
    assert not info.value.retryable
    assert not [m for m in set(sys.modules) - before if m.startswith("sandgate_skills.greet.")]


# --------------------------------------------------------------------------- cache


def test_tampered_cache_entry_is_fetched_again(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent], tmp_path: Path
) -> None:
    files = skill("good")
    backend.move("greet", backend.add("greet", files))
    with make_registry() as r:
        assert r.call("greet") == "good"
    assert backend.fetches == [("greet", 1)]
    entry = tmp_path / "cache" / content_hash(files).split(":")[1]
    assert (entry / "skill.py").read_bytes() == files["skill.py"]

    # a fresh consumer uses the verified cache: no fetch
    with make_registry() as r:
        assert r.call("greet") == "good"
    assert backend.fetches == [("greet", 1)]

    for tamper in (
        lambda: (entry / "skill.py").write_text("def run(*a, **k):\n    return 'EVIL'\n"),
        lambda: (entry / "evil.py").write_text("X = 1\n"),
        lambda: (entry / "skill.toml").unlink(),
    ):
        tamper()
        with make_registry() as r:
            assert r.call("greet") == "good"
        assert (entry / "skill.py").read_bytes() == files["skill.py"]
        assert not (entry / "evil.py").exists() and (entry / "skill.toml").exists()
    assert len(backend.fetches) == 4
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_bytes_that_do_not_match_the_content_hash_are_refused(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]
) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    v2 = backend.add("greet", skill("v2"))
    backend.corrupt["greet", v2] = skill("EVIL")
    r = make_registry()
    assert r.call("greet") == "v1"
    backend.move("greet", v2)
    r.refresh()
    assert r.call("greet") == "v1"
    assert events[-1].kind == "load_failed" and events[-1].error.code == "integrity"


def test_unwritable_cache_still_loads_from_verified_memory(
    backend: FakeBackend, make_registry: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    backend.move("greet", backend.add("greet", skill("v1")))
    r = make_registry(cache_dir=blocker / "cache")
    assert r.call("greet") == "v1"


# --------------------------------------------------------------------------- swaps


def test_failed_import_keeps_the_old_version(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]
) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    bad = backend.add("greet", skill("bad", body="raise ImportError('nope')\n"))
    good = backend.add("greet", skill("v3"))
    r = make_registry()
    assert r.call("greet") == "v1"

    backend.move("greet", bad)
    new = r.refresh()
    assert kinds(new) == ["load_failed"]
    assert (new[0].old, new[0].new, new[0].error.code) == (1, bad, "import_failed")
    assert isinstance(new[0].error.__cause__, ImportError)
    assert r.call("greet") == "v1" and r.version("greet") == 1
    # not retried at the same generation
    assert r.refresh() == []
    fetched = len(backend.fetches)
    r.refresh()
    assert len(backend.fetches) == fetched

    backend.move("greet", good)
    assert kinds(r.refresh()) == ["swapped"]
    assert r.call("greet") == "v3"
    assert kinds(events) == ["loaded", "load_failed", "swapped"]


def test_first_load_failure_raises_load_failed(backend: FakeBackend, make_registry: Any) -> None:
    backend.move("greet", backend.add("greet", skill("x", body="1/0\n")))
    r = make_registry()
    for _ in range(2):  # the second answer comes from memory (no retry at this generation)
        with pytest.raises(LoadFailed, match="ZeroDivisionError"):
            r.call("greet")
    assert len(backend.fetches) == 1


def test_not_found(backend: FakeBackend, make_registry: Any) -> None:
    backend.add("greet", skill("v1"))  # stored, never promoted
    r = make_registry()
    with pytest.raises(NotFound, match="no active version"):
        r.call("greet")
    with pytest.raises(NotFound):
        r.get("nope")
    with pytest.raises(NotFound, match="not a skill name"):
        r.call("../etc")
    calls = backend.pointer_calls
    with pytest.raises(NotFound):  # known missing: answered from the snapshot
        r.call("greet")
    assert backend.pointer_calls == calls
    backend.move("greet", 1)
    r.refresh()
    assert r.call("greet") == "v1"


def test_rollback_to_a_still_loaded_version_is_a_pure_swap(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]
) -> None:
    v1 = backend.add("greet", skill("v1"))
    v2 = backend.add("greet", skill("v2"))
    backend.move("greet", v1)
    r = make_registry()
    first = r.get("greet")
    backend.move("greet", v2)
    r.refresh()
    backend.move("greet", v1)
    fetches = len(backend.fetches)
    assert kinds(r.refresh()) == ["rolled_back"]
    assert len(backend.fetches) == fetches
    again = r.get("greet")
    assert again.version == 1 and again.function is first.function
    assert r.loaded("greet") == [1, 2]
    first.release()
    again.release()


def test_handles_are_pinned(backend: FakeBackend, make_registry: Any) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    v2 = backend.add("greet", skill("v2"))
    r = make_registry(max_loaded=0)
    h = r.get("greet")
    assert (h.name, h.version, h.ref) == ("greet", 1, "greet@1")
    assert h.content_hash == backend.versions["greet", 1].content_hash
    backend.move("greet", v2)
    r.refresh()
    assert r.call("greet") == "v2"
    assert h.call() == "v1"
    assert r.loaded("greet") == [2, 1]  # pinned: not evicted despite max_loaded=0
    h.release()
    with pytest.raises(SandgateError, match="released"):
        h.call()
    r.refresh()
    assert r.loaded("greet") == [2]
    # dropping the last reference releases the pin too
    backend.move("greet", backend.add("greet", skill("v3")))
    r.refresh()
    h2 = r.get("greet")
    assert h2.version == 3
    backend.move("greet", 2)
    r.refresh()
    assert r.loaded("greet") == [2, 3]
    del h2
    r.refresh()
    assert r.loaded("greet") == [2]


def test_max_loaded_evicts_oldest_idle_never_in_flight(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]
) -> None:
    gate, entered = threading.Event(), threading.Event()
    blocking = "def run(*a, **k):\n    if a:\n        a[0].set(); a[1].wait(10)\n    return 'v1'\n"
    backend.move("greet", backend.add("greet", skill("v1", body=blocking)))
    numbers = [backend.add("greet", skill(f"v{i}")) for i in range(2, 7)]
    r = make_registry(max_loaded=1)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(r.call("greet", entered, gate)))
    t.start()
    assert entered.wait(5)
    for n in numbers[:4]:
        backend.move("greet", n)
        r.refresh()
    # v1 is still running: it stays loaded (and counts against the limit); idle ones go
    assert r.loaded("greet") == [5, 1]
    assert [e.old for e in events if e.kind == "unloaded"] == [2, 3, 4]
    v1 = [p for p in loaded_prefixes() if p.startswith("sandgate_skills.greet.v1_")]
    assert v1 and v1[0] in sys.modules
    gate.set()
    t.join(5)
    assert result == ["v1"]  # finished on the version it started on
    backend.move("greet", numbers[4])
    r.refresh()
    assert r.loaded("greet") == [6, 5]  # now idle, v1 is the oldest: evicted
    assert v1[0] not in loaded_prefixes() and v1[0] not in sys.modules


def test_eviction_handshake_with_a_caller_entering() -> None:
    from sandgate.registry.core import _Loaded

    class M:
        name, number, content_hash, entrypoint, is_async = "g", 1, "sha256:" + "0" * 64, "s:r", False
        function = staticmethod(lambda: 1)
        source = None

    v = _Loaded(M())  # type: ignore[arg-type]
    v.inflight.append(None)  # a caller got in first: the evictor backs off
    assert not v.try_unload()
    assert not v.unloading and not v.unloaded
    v.inflight.pop()
    v.pins.append(None)
    assert not v.try_unload()


def test_calls_keep_flowing_while_versions_swap_and_evict(backend: FakeBackend, make_registry: Any) -> None:
    numbers = [backend.add("greet", skill(f"v{i}")) for i in range(1, 7)]
    backend.move("greet", numbers[0])
    r = make_registry(max_loaded=0)
    r.call("greet")
    stop, errors, seen = threading.Event(), [], set()

    def hammer() -> None:
        while not stop.is_set():
            try:
                seen.add(r.call("greet"))
            except Exception as exc:  # pragma: no cover - the assertion reports it
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        for n in numbers:
            backend.move("greet", n)
            r.refresh()
    stop.set()
    for t in threads:
        t.join(5)
    assert errors == []
    assert seen <= {f"v{i}" for i in range(1, 7)} and len(seen) > 1


def test_watcher_follows_the_pointer(backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    v2 = backend.add("greet", skill("v2"))
    r = make_registry(watch=True, poll_interval=0.01)
    assert r.call("greet") == "v1"
    backend.move("greet", v2)
    assert r.wait_for("greet", 2, timeout=5)
    assert r.call("greet") == "v2"
    assert r.snapshot() == {"greet": (2, 2)}


def test_backend_failure_keeps_serving_and_is_reported(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]
) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    r = make_registry(watch=True, poll_interval=0.01)
    assert r.call("greet") == "v1"
    backend.fail = StoreError("database is gone")
    deadline = time.monotonic() + 5
    while "backend_error" not in kinds(events) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "backend_error" in kinds(events)
    assert kinds(events).count("backend_error") == 1  # once per streak
    assert r.call("greet") == "v1"
    with pytest.raises(StoreError):
        r.refresh()
    backend.fail = None
    backend.move("greet", backend.add("greet", skill("v2")))
    assert r.wait_for("greet", 2, timeout=10)


def test_on_event_errors_are_swallowed(backend: FakeBackend, make_registry: Any) -> None:
    def boom(event: RegistryEvent) -> None:
        raise RuntimeError("callback bug")

    backend.move("greet", backend.add("greet", skill("v1")))
    r = make_registry(on_event=boom)
    assert r.call("greet") == "v1"


def test_acall_sync_and_async(backend: FakeBackend, make_registry: Any) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    backend.move(
        "agreet",
        backend.add(
            "agreet",
            skill("a", body="import asyncio\nasync def run(x):\n    await asyncio.sleep(0)\n    return x * 2\n"),
        ),
    )
    r = make_registry()

    async def main() -> list[Any]:
        return await asyncio.gather(r.acall("greet"), r.acall("agreet", 21), r.get("agreet").acall(1))

    assert asyncio.run(main()) == ["v1", 42, 2]
    with pytest.raises(TypeError, match="acall"):
        r.call("agreet", 1)


def test_close(backend: FakeBackend, make_registry: Any) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    r = make_registry(watch=True)
    h = r.get("greet")
    r.call("greet")
    r.close()
    assert backend.closed
    with pytest.raises(SandgateError, match="closed"):
        r.call("greet")
    with pytest.raises(SandgateError, match="closed"):
        r.refresh()
    assert h.call() == "v1"  # a live handle keeps its version until released
    pinned = [p for p in loaded_prefixes() if p.startswith("sandgate_skills.greet.v1_")]
    assert len(pinned) == 1
    h.release()
    assert pinned[0] not in loaded_prefixes()
    r.close()  # idempotent


def test_skills_are_loaded_at_connect(backend: FakeBackend, make_registry: Any) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    r = make_registry(skills=["greet"])
    assert r.version("greet") == 1
    fetches = list(backend.fetches)
    assert r.call("greet") == "v1" and backend.fetches == fetches
    with pytest.raises(NotFound):
        make_registry(skills=["nope"])


def test_connect_refuses_http_without_a_key_and_bad_arguments(
    backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDGATE_API_KEY", raising=False)
    for url in ("http://controller:8000", "HTTPS://controller"):
        with pytest.raises(ConfigError, match="API key is needed") as info:
            connect(url)
        assert info.value.code == "unauthorized"
    with pytest.raises(ConfigError):
        connect("sqlite://", backend=backend)
    with pytest.raises(ValueError):
        connect(backend=backend, cache_dir=tmp_path, poll_interval=0)
    from sandgate.registry import HttpBackend

    with pytest.raises(ConfigError):
        HttpBackend("http://controller")


def test_top_level_connect_is_the_registry_connect() -> None:
    assert sandgate.connect is connect


def test_calls_do_not_touch_the_backend(backend: FakeBackend, make_registry: Any) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    r = make_registry()
    r.call("greet")
    polls, fetches = backend.pointer_calls, len(backend.fetches)
    for _ in range(1000):
        r.call("greet")
        r.get("greet").call()
    assert (backend.pointer_calls, len(backend.fetches)) == (polls, fetches)


def test_an_abandoned_registry_stops_its_watcher(backend: FakeBackend, tmp_path: Path) -> None:
    import gc

    r = connect(backend=backend, cache_dir=tmp_path, poll_interval=0.01)
    thread = r._thread
    assert thread is not None and thread.is_alive()
    del r
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_event_lines() -> None:
    err = LoadFailed("greet@3: importing greet failed: boom")
    assert str(RegistryEvent("loaded", "greet", None, 1)) == "greet@1: loaded"
    assert str(RegistryEvent("swapped", "greet", 1, 2)) == "greet: swapped 1 -> 2"
    assert str(RegistryEvent("rolled_back", "greet", 2, 1)) == "greet: rolled_back 2 -> 1"
    assert str(RegistryEvent("load_failed", "greet", 2, 3, err)) == (
        "greet@3: load failed (greet@2 keeps serving): greet@3: importing greet failed: boom"
    )
    assert str(RegistryEvent("unloaded", "greet", 1, None)) == "greet@1: unloaded"


def test_a_fetch_failure_is_retried_on_the_next_poll(
    backend: FakeBackend, make_registry: Any, events: list[RegistryEvent]
) -> None:
    backend.move("greet", backend.add("greet", skill("v1")))
    v2 = backend.add("greet", skill("v2"))
    r = make_registry()
    assert r.call("greet") == "v1"
    real_fetch, failures = backend.fetch, [StoreError("connection reset"), KeyError("bug")]

    def flaky(name: str, number: int) -> FetchedVersion:
        if failures:
            raise failures.pop(0)
        return real_fetch(name, number)

    backend.fetch = flaky  # type: ignore[method-assign]
    backend.move("greet", v2)
    first = r.refresh()
    assert kinds(first) == ["load_failed"] and first[0].error.retryable
    assert first[0].error.code == "fetch_failed" and "connection reset" in str(first[0].error)
    assert r.refresh() == []  # failed again, reported once per pointer
    assert r.call("greet") == "v1"
    assert kinds(r.refresh()) == ["swapped"]
    assert r.call("greet") == "v2"
