"""Loading one skill version into this process from verified bytes.

Two pieces, both usable on their own (the unit tests drive them directly):

:class:`VersionCache`
    An on-disk cache of version file sets, one directory per content hash
    (``<cache_dir>/<sha256 hex>/``). Entries are written atomically (a
    ``.tmp-*`` directory, then one ``rename``) and *verified on every use*: the
    cached files are read back, the content hash is recomputed over them (the
    same formula as :func:`sandgate.submission.hash_files`; a missing, extra,
    changed or renamed file changes it) and compared with the version's hash.
    A mismatch is logged and the entry is fetched again and replaced. Bytes
    that come from the backend are checked the same way before they are
    written or used, so a corrupt store cannot slip code past the hash either.

:func:`load_version`
    Imports the version under a unique, versioned package name::

        sandgate_skills.<skill>.v<number>_<hash8>            the version package
        sandgate_skills.<skill>.v<number>_<hash8>.text_stats the skill's module

    Module isolation (why two versions of one skill never see each other):

    * every module of a version lives under that version's own package, so
      ``sys.modules`` never holds two versions under one name;
    * a meta-path finder (:class:`_SkillFinder`, installed once, first on
      ``sys.meta_path``) answers only for ``sandgate_skills.*`` and serves
      each version's modules *from the verified bytes kept in memory* — not
      from the files on disk, and never from bytecode caches (none is read or
      written) — so what runs is exactly what was hashed. A name under a
      version package that is not in the version's file set is a
      ``ModuleNotFoundError``; no other finder gets to look;
    * the skill's absolute imports of its own top-level modules (``import
      helper``, ``from pkg import mod`` — as the sandbox ran them, with the
      skill directory first on ``sys.path``) are rewritten to that version's
      package by a per-version ``__import__`` placed in the ``__builtins__``
      of every module of the version. Python looks ``__import__`` up in the
      builtins of the *executing* frame, so this covers module-level imports,
      imports inside functions at call time, and ``__import__(...)`` calls,
      without touching the process-wide ``builtins.__import__``. Relative
      imports (``from . import x``) resolve natively (``__package__`` is the
      version package). Names that are not the skill's own go to the normal
      import system unchanged.

    Restrictions (documented, not worked around): ``importlib.import_module``
    with a skill's *top-level* name (``import_module("helper")``) bypasses
    ``__import__`` and is not redirected (use an ``import`` statement, a
    relative import, or ``import_module(".helper", __package__)``); a version
    sees a copy of ``builtins`` taken when it was loaded; objects pickled by a
    skill name its versioned module and unpickle only while that version is
    loaded; data files are read from the (verified-at-load) cache directory,
    e.g. ``Path(__file__).parent / "data.json"``.

    :func:`unload_version` drops every ``sys.modules`` entry of a version and
    its finder registration. Objects still referenced elsewhere stay valid
    (Python frees them when the last reference goes).
"""

from __future__ import annotations

import builtins
import errno
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sandgate import deps
from sandgate.errors import LoadFailed
from sandgate.names import SKILL_NAME, content_hash

__all__ = [
    "ROOT_PACKAGE",
    "LoadFailed",
    "VersionCache",
    "LoadedModule",
    "content_hash",
    "load_version",
    "unload_version",
    "loaded_prefixes",
]

log = logging.getLogger("sandgate.registry")

#: the top-level package every loaded skill version lives under
ROOT_PACKAGE = "sandgate_skills"

_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENTRYPOINT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
#: a cache entry larger than this is treated as tampered (skills are capped far lower at intake)
MAX_CACHE_ENTRY_BYTES = 64 * 1024 * 1024
#: how many times a cache write retries when another process races it
_WRITE_ATTEMPTS = 3


# --------------------------------------------------------------------------- hashing


def _hash_hex(expected: str) -> str:
    match = _HASH.match(expected or "")
    if match is None:
        raise LoadFailed(f"unsupported content hash {expected!r} (expected sha256:<64 hex>)", code="integrity")
    return match.group(1)


def _check_path(path: str) -> None:
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in parts)
        or any(p.startswith(".") for p in parts)
    ):
        raise LoadFailed(f"refusing unsafe file path {path!r} in a stored version", code="integrity")


def verify_files(files: Mapping[str, bytes], expected: str, *, what: str) -> None:
    """Raise :class:`LoadFailed` (code ``integrity``) unless ``files`` hash to ``expected``."""
    _hash_hex(expected)
    for path in files:
        _check_path(path)
    actual = content_hash(files)
    if actual != expected:
        raise LoadFailed(
            f"{what}: files hash to {actual[:19]}…, the version's content hash is {expected[:19]}…",
            code="integrity",
        )


# --------------------------------------------------------------------------- cache


class VersionCache:
    """Version file sets on disk, keyed by content hash, verified before every use."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def path_for(self, expected_hash: str) -> Path:
        return self.root / _hash_hex(expected_hash)

    def read(self, expected_hash: str) -> dict[str, bytes] | None:
        """The cached files if the entry exists and verifies; None otherwise (a bad entry is logged)."""
        path = self.path_for(expected_hash)
        if not path.is_dir():
            return None
        files = _read_tree(path)
        if files is None:
            log.warning("registry cache entry %s is not a plain file tree: fetching it again", path)
            return None
        try:
            verify_files(files, expected_hash, what=f"cache entry {path}")
        except LoadFailed as exc:
            log.warning("%s: fetching it again", exc)
            return None
        return files

    def write(self, expected_hash: str, files: Mapping[str, bytes]) -> Path:
        """Write a verified file set atomically (temp dir + rename); replace a bad entry."""
        verify_files(files, expected_hash, what="files to cache")
        final = self.path_for(expected_hash)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            for rel, data in files.items():
                target = tmp.joinpath(*rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as fh:
                    fh.write(data)
            for _attempt in range(_WRITE_ATTEMPTS):
                try:
                    os.rename(tmp, final)
                    return final
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                # someone is there: a concurrent writer (good entry) or a bad entry
                existing = _read_tree(final)
                if existing is not None and content_hash(existing) == expected_hash:
                    return final
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                try:
                    os.rename(final, trash)
                except FileNotFoundError:
                    pass
                shutil.rmtree(trash, ignore_errors=True)
            raise OSError(f"could not place cache entry {final}: concurrent writers kept colliding")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def materialize(
        self, expected_hash: str, fetch: Callable[[], Mapping[str, bytes]]
    ) -> tuple[Path, dict[str, bytes], bool]:
        """``(directory, verified files, fetched?)``: from the cache, else from ``fetch()``.

        Fetched bytes are verified against ``expected_hash`` before anything
        else. A cache directory that cannot be written is not fatal: the
        version is still loaded from the verified bytes in memory (logged).
        """
        path = self.path_for(expected_hash)
        cached = self.read(expected_hash)
        if cached is not None:
            return path, cached, False
        files = {str(p): bytes(b) for p, b in fetch().items()}
        verify_files(files, expected_hash, what="files from the backend")
        try:
            path = self.write(expected_hash, files)
        except OSError as exc:
            log.warning("cannot write registry cache entry %s (%s): loading from memory", path, exc)
        return path, files, True


def _read_tree(root: Path) -> dict[str, bytes] | None:
    """Every regular file under ``root`` by ``/``-separated relative path; None if anything is odd."""
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                return None
        for f in filenames:
            full = os.path.join(dirpath, f)
            try:
                st = os.lstat(full)
            except OSError:
                return None
            if not stat.S_ISREG(st.st_mode):
                return None
            total += st.st_size
            if total > MAX_CACHE_ENTRY_BYTES:
                return None
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                with open(full, "rb") as fh:
                    files[rel] = fh.read()
            except OSError:
                return None
    return files


# --------------------------------------------------------------------------- import machinery


@dataclass(eq=False)
class _VersionSource:
    """One loaded version as the finder sees it."""

    prefix: str
    root: Path
    files: dict[str, bytes]
    #: directories of the file set (``pkg``, ``pkg/sub``), for packages without ``__init__.py``
    dirs: frozenset[str]
    #: the skill's own top-level module and package names
    toplevel: frozenset[str]
    builtins: dict[str, Any]


_SOURCES: dict[str, _VersionSource] = {}
_SOURCES_LOCK = threading.Lock()


def loaded_prefixes() -> list[str]:
    """Package names of every version loaded in this process (for tests and tools)."""
    with _SOURCES_LOCK:
        return sorted(_SOURCES)


class _ContainerLoader(importlib.abc.Loader):
    """``sandgate_skills`` and ``sandgate_skills.<skill>``: empty packages."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        return None


_CONTAINER = _ContainerLoader()


class _SkillLoader(importlib.abc.InspectLoader):
    """Executes a version's modules from its verified in-memory bytes."""

    def __init__(self, source: _VersionSource) -> None:
        self.source = source

    def _rel(self, fullname: str) -> tuple[str | None, bool]:
        """``(file path or None, is_package)`` of a module under the version package."""
        src = self.source
        if fullname == src.prefix:
            return None, True
        rel = fullname[len(src.prefix) + 1 :].replace(".", "/")
        if rel + ".py" in src.files:
            return rel + ".py", False
        if rel + "/__init__.py" in src.files:
            return rel + "/__init__.py", True
        if rel in src.dirs:
            return None, True
        raise ImportError(f"{fullname} is not part of this skill version", name=fullname)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self.source.builtins
        code = self.get_code(module.__name__)
        if code is not None:
            exec(code, module.__dict__)  # noqa: S102 - this is the registry's job

    def is_package(self, fullname: str) -> bool:
        return self._rel(fullname)[1]

    def get_source(self, fullname: str) -> str | None:
        rel, _ = self._rel(fullname)
        if rel is None:
            return None
        return importlib.util.decode_source(self.source.files[rel])

    def get_code(self, fullname: str) -> Any:
        rel, _ = self._rel(fullname)
        if rel is None:
            return None
        origin = str(self.source.root.joinpath(*rel.split("/")))
        return compile(self.source.files[rel], origin, "exec", dont_inherit=True)

    def get_resource_reader(self, fullname: str) -> Any:
        from importlib.resources.readers import FileReader

        rel, is_pkg = self._rel(fullname)
        if not is_pkg:
            return None
        pkg_dir = self.source.root if fullname == self.source.prefix else self.source.root.joinpath(
            *fullname[len(self.source.prefix) + 1 :].split(".")
        )
        # typeshed asks for a FileLoader; FileReader reads only its ``path``
        return FileReader(_PathHolder(str(pkg_dir / "__init__.py")))  # type: ignore[arg-type]  # .path is all it reads


@dataclass
class _PathHolder:
    path: str


class _SkillFinder(importlib.abc.MetaPathFinder):
    """Answers for ``sandgate_skills.*`` only; every other name is passed on at once."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(ROOT_PACKAGE):
            return None
        parts = fullname.split(".", 3)
        if parts[0] != ROOT_PACKAGE:
            return None
        if len(parts) <= 2:
            spec = importlib.machinery.ModuleSpec(fullname, _CONTAINER, is_package=True)
            spec.submodule_search_locations = []
            return spec
        prefix = ".".join(parts[:3])
        with _SOURCES_LOCK:
            src = _SOURCES.get(prefix)
        if src is None:
            raise ModuleNotFoundError(f"No module named {fullname!r} (skill version not loaded)", name=fullname)
        loader = _SkillLoader(src)
        if len(parts) == 3:
            spec = importlib.machinery.ModuleSpec(fullname, loader, is_package=True)
            spec.submodule_search_locations = [str(src.root)]
            return spec
        try:
            rel, is_pkg = loader._rel(fullname)
        except ImportError:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname) from None
        rel_dir = fullname[len(prefix) + 1 :].replace(".", "/")
        if rel is None:  # a directory without __init__.py
            spec = importlib.machinery.ModuleSpec(fullname, loader, is_package=True)
            spec.submodule_search_locations = [str(src.root.joinpath(*rel_dir.split("/")))]
            return spec
        location = str(src.root.joinpath(*rel.split("/")))
        return importlib.util.spec_from_file_location(
            fullname,
            location,
            loader=loader,
            submodule_search_locations=[str(Path(location).parent)] if is_pkg else None,
        )


_FINDER = _SkillFinder()


def _install_finder() -> None:
    if not any(isinstance(f, _SkillFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


def _make_import(prefix: str, toplevel: frozenset[str]) -> Callable[..., ModuleType]:
    real_import = builtins.__import__
    modules = sys.modules

    def skill_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> ModuleType:
        if level == 0 and name.partition(".")[0] in toplevel:
            module = real_import(f"{prefix}.{name}", globals, locals, fromlist, 0)
            if fromlist:
                return module
            # ``import helper.sub`` binds ``helper``: this version's ``helper``
            return modules[f"{prefix}.{name.partition('.')[0]}"]
        return real_import(name, globals, locals, fromlist, level)

    skill_import.__qualname__ = skill_import.__name__ = "__import__"
    return skill_import


def _toplevel(files: Mapping[str, bytes]) -> tuple[frozenset[str], frozenset[str]]:
    names: set[str] = set()
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        if len(parts) == 1:
            if path.endswith(".py") and _IDENT.match(path[:-3]) and path != "__init__.py":
                names.add(path[:-3])
        elif _IDENT.match(parts[0]):
            names.add(parts[0])
    return frozenset(names), frozenset(dirs)


# --------------------------------------------------------------------------- load / unload


@dataclass(eq=False)
class LoadedModule:
    """A version imported and checked: its entrypoint and where it lives."""

    name: str
    number: int
    content_hash: str
    entrypoint: str
    #: the version package (``sandgate_skills.<skill>.v<N>_<hash8>``)
    package: str
    #: the entrypoint's module object
    module: ModuleType
    function: Callable[..., Any]
    is_async: bool
    source: _VersionSource


def _reserve_prefix(name: str, number: int, expected_hash: str, source_args: dict[str, Any]) -> _VersionSource:
    base = f"{ROOT_PACKAGE}.{name}.v{number}_{_hash_hex(expected_hash)[:8]}"
    with _SOURCES_LOCK:
        prefix, k = base, 1
        # the same version loaded by two registries in one process: _2, _3, ...
        while prefix in _SOURCES or prefix in sys.modules:
            k += 1
            prefix = f"{base}_{k}"
        toplevel = source_args["toplevel"]
        skill_builtins = dict(builtins.__dict__)
        skill_builtins["__import__"] = _make_import(prefix, toplevel)
        src = _VersionSource(prefix=prefix, builtins=skill_builtins, **source_args)
        _SOURCES[prefix] = src
    return src


def _check_dependencies(ref: str, files: Mapping[str, bytes]) -> None:
    """The version's ``requirements.lock`` must be installed here, exactly (``sandgate deps install``)."""
    lock_bytes = files.get(deps.LOCK_NAME)
    if lock_bytes is None:
        return
    try:
        lock = deps.parse_lock(lock_bytes)
    except (deps.DepsError, UnicodeDecodeError) as exc:
        raise LoadFailed(f"{ref}: {exc}", code="bad_lock") from exc
    missing = deps.missing_packages(lock)
    if missing:
        raise LoadFailed(
            f"{ref}: this environment does not have the version's locked packages: {', '.join(missing)} "
            f"(install them with `sandgate deps install {ref}`)", code="missing_packages")


def load_version(
    *,
    name: str,
    number: int,
    content_hash: str,
    entrypoint: str,
    files: Mapping[str, bytes],
    root: str | Path,
) -> LoadedModule:
    """Import a version (already verified) as a fresh versioned package and check its entrypoint.

    Raises :class:`LoadFailed` (not retryable) when the entrypoint is malformed,
    its module is not in the file set, importing raises (anything, including
    ``SystemExit``), or the function is missing or not callable. Nothing of a
    failed load stays in ``sys.modules``.
    """
    ref = f"{name}@{number}"
    match = _ENTRYPOINT.match(entrypoint or "")
    if match is None:
        raise LoadFailed(f"{ref}: entrypoint {entrypoint!r} is not 'module:function'", code="bad_entrypoint")
    module_name, function_name = match.group(1), match.group(2)
    if not SKILL_NAME.match(name):
        raise LoadFailed(f"{name!r} is not a skill name", code="bad_name")
    _check_dependencies(ref, files)
    toplevel, dirs = _toplevel(files)
    _install_finder()
    src = _reserve_prefix(
        name,
        number,
        content_hash,
        {"root": Path(root), "files": dict(files), "dirs": dirs, "toplevel": toplevel},
    )
    try:
        if module_name.split(".")[0] not in toplevel:
            raise LoadFailed(
                f"{ref}: entrypoint module {module_name!r} is not in the version's files",
                code="bad_entrypoint",
            )
        try:
            module = importlib.import_module(f"{src.prefix}.{module_name}")
        except (Exception, SystemExit) as exc:
            raise LoadFailed(
                f"{ref}: importing {module_name} failed: {type(exc).__name__}: {exc}", code="import_failed"
            ) from exc
        try:
            function = getattr(module, function_name)
        except AttributeError:
            raise LoadFailed(
                f"{ref}: entrypoint {entrypoint!r}: module {module_name} has no {function_name!r}",
                code="bad_entrypoint",
            ) from None
        if not callable(function):
            raise LoadFailed(
                f"{ref}: entrypoint {entrypoint!r} is a {type(function).__name__}, not callable",
                code="bad_entrypoint",
            )
    except BaseException:
        unload_version(src)
        raise
    return LoadedModule(
        name=name,
        number=number,
        content_hash=content_hash,
        entrypoint=entrypoint,
        package=src.prefix,
        module=module,
        function=function,
        is_async=inspect.iscoroutinefunction(function),
        source=src,
    )


def unload_version(source: _VersionSource | LoadedModule) -> None:
    """Forget a version: its finder registration and every ``sys.modules`` entry under it."""
    src = source.source if isinstance(source, LoadedModule) else source
    with _SOURCES_LOCK:
        if _SOURCES.get(src.prefix) is src:
            del _SOURCES[src.prefix]
    dotted = src.prefix + "."
    for key in list(sys.modules):
        if key == src.prefix or key.startswith(dotted):
            sys.modules.pop(key, None)
    parent_name, _, leaf = src.prefix.rpartition(".")
    parent = sys.modules.get(parent_name)
    if parent is not None and getattr(parent, leaf, None) is not None:
        try:
            delattr(parent, leaf)
        except AttributeError:  # pragma: no cover - raced with another unload
            pass
