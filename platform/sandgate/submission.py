"""Intake: validate, normalise and hash a submission before anything runs.

A *submission* is a skill directory, a ``.tar.gz``/``.tgz``/``.tar`` or a
``.zip`` (:func:`load_submission`), or an in-memory file set
(:func:`submission_from_files`, used by the HTTP API). Every source goes
through the same rules and becomes the same canonical :class:`Submission`.
Nothing submitted is ever imported, compiled or executed here: Python sources
are only given to :func:`ast.parse`.

Rules (a violation raises :class:`~sandgate.errors.SubmissionError` naming the
file and the problem; code ``invalid_submission`` unless noted):

Reading
    Archives are read member by member (never ``extractall``), in bounded
    chunks, and abandoned the moment a cap is exceeded, so a decompression bomb
    is never fully inflated. Only regular files are accepted: symlinks, hard
    links, devices, FIFOs and sparse files are refused; directory entries are
    skipped. Caps (:class:`IntakeLimits`): archive size on disk, member count,
    file count, per-file size (declared *and* actual), total unpacked size, and
    the compression ratio of file content (overall, and per zip member). Tar
    headers and padding, which compress extremely well in any honest archive,
    are not in that ratio but may only grow by a fixed allowance per member,
    so a bomb hidden in a pax or long-name header is stopped after a few KiB.
    Zip members must not be encrypted, must be stored or deflated, and must
    hold exactly the size they declare; names are taken as stored (zipfile
    would cut them at a NUL). A leading ``./`` on member names is dropped. A
    directory is walked without following symlinks (a symlink is refused);
    ``__pycache__`` directories there are skipped, never read: they are the
    interpreter's cache, not part of the submission. A single top-level
    directory holding ``skill.toml`` (``text_stats/skill.toml``, ...) is
    stripped, so both archive layouts work.
Paths
    Relative, ``/``-separated, no empty, ``.`` or ``..`` components, no
    backslash, no NUL, control, bidirectional-control (U+202A-U+202E,
    U+2066-U+2069, U+200E/F, U+061C) or other invisible formatting characters,
    valid UTF-8, at most ``max_depth`` components. Names are normalised to NFC;
    two names that are equal after NFC normalisation or case-folding are
    refused (they would be one file on some file systems), as is a name that
    is both a file and a directory.
Allowed files
    ``*.py`` (``max_py_bytes``), ``skill.toml``, ``requirements.lock``, ``README``/``README.md``/
    ``.txt``/``.rst`` and data files ``.txt .json .jsonl .csv .md .toml .yaml .yml``
    (``max_data_bytes``). Forbidden anywhere: ``conftest.py``, ``pytest.ini``,
    ``tox.ini``, ``setup.cfg``, ``setup.py``, ``pyproject.toml``,
    ``.coveragerc``, ``.semgrepignore``, ``sitecustomize.py``,
    ``usercustomize.py``, ``*.pth``, any hidden file or directory,
    ``__pycache__`` and ``*.pyc``. Everything else is refused.
Modules
    A top-level module or package (a top-level ``.py`` file, or the first
    directory of a nested one) must not shadow the test toolchain (``pytest``,
    ``coverage``, ``sandgate``, ...) or any standard-library module.
Sources
    Every ``.py`` file is UTF-8 (an encoding declaration other than UTF-8 is
    refused), contains no bidirectional control character ("Trojan Source"),
    and parses with :func:`ast.parse`; a parse failure has code
    ``syntax_error`` and names the file and line. Nothing CPython reads
    differently from the text the static scan matches is accepted: line
    endings are LF or CRLF throughout (no lone CR, no mix), no control
    character other than TAB/LF/CR (no form feed, vertical tab, NUL, DEL, C1
    controls, U+2028/U+2029, no BOM except at the very start), and no
    identifier whose NFKC normalisation (what the parser uses) differs from
    its text (``import ｓubprocess``).
Manifest
    ``skill.toml`` at the top level, valid TOML, validated by :class:`Manifest`
    (unknown keys and wrong types refused, one line per problem). The
    entrypoint's module file must be in the submission. Requirements are names
    with version specifiers only (no URL, VCS, local path, index option or
    marker); they are locked here against the package allowlist
    (:mod:`sandgate.deps`) and the lock becomes the file ``requirements.lock``
    of the submission *before* hashing, so the content hash covers the exact
    dependencies. A file set that already carries ``requirements.lock`` (a
    stored version, a resubmitted export) is checked instead: sandgate's format,
    generated for exactly these requirements, every pin on the allowlist and in
    range. (``available_packages``, when given, checks the requirements against
    a fixed set instead of locking them.)
    ``[[examples]]`` and a top-level ``examples.jsonl`` must be valid examples
    (:mod:`sandgate.examples`: JSON values, exactly one of ``expect``/``raises``),
    at most 1000 in all; ``[oracle]`` is validated by
    :class:`sandgate.examples.OracleManifest`.
Tests
    At least one file must match the test pattern: by default
    ``tests/**/test_*.py`` (``tests/test_*.py`` and deeper) and top-level
    ``test_*.py``; the manifest's ``tests`` (a directory, a file or a glob)
    replaces it. Whether tests are actually *collected* is the evaluation's
    business (reason ``no_tests``).

Content hash
    ``"sha256:" + hex(sha256(...))`` over the canonical file set: for each file
    in sorted path order (paths are NFC, ``/``-separated, UTF-8 encoded)::

        path.encode("utf-8") + b"\\0" + len(data).to_bytes(8, "big") + data

    The same content gives the same hash whatever the archive format, member
    order or mtimes; any changed byte or name changes it (:func:`hash_files`).
"""

from __future__ import annotations

import ast
import codecs
import gzip
import io
import keyword
import os
import re
import stat
import struct
import sys
import tarfile
import tokenize
import tomllib
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, NamedTuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandgate import deps
from sandgate.errors import SubmissionError
from sandgate.examples import (
    EXAMPLES_FILE,
    MAX_EXAMPLES,
    Example,
    ExampleError,
    OracleManifest,
    parse_examples,
    parse_examples_jsonl,
)
from sandgate.limits import LimitsRequest
from sandgate.names import SKILL_NAME, SKILL_NAME_RULE
from sandgate.names import content_hash as _content_hash
from sandgate.pysource import parse as parse_source

__all__ = [
    "MANIFEST_NAME",
    "DEFAULT_TEST_PATTERNS",
    "IntakeLimits",
    "SandboxRequest",
    "Manifest",
    "Submission",
    "load_submission",
    "submission_from_files",
    "hash_files",
]

KiB = 1024
MiB = 1024 * KiB

MANIFEST_NAME = "skill.toml"
#: where tests are looked for when the manifest does not say (``**``: any depth, including none)
DEFAULT_TEST_PATTERNS: tuple[str, ...] = ("tests/**/test_*.py", "test_*.py")
_DEFAULT_TESTS_TEXT = "tests/test_*.py or test_*.py"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRYPOINT = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT})$")

_DATA_SUFFIXES = frozenset({".txt", ".json", ".jsonl", ".csv", ".md", ".toml", ".yaml", ".yml"})
_README_NAMES = frozenset({"readme", "readme.md", "readme.txt", "readme.rst"})

_RUNNER_CONFIG = "test-runner configuration is the platform's, never the submission's"
#: case-folded file or directory name -> why it is refused
_FORBIDDEN_NAMES: dict[str, str] = {
    "conftest.py": "pytest would load it as a plugin before any test runs",
    "pytest.ini": _RUNNER_CONFIG,
    "tox.ini": _RUNNER_CONFIG,
    "setup.cfg": _RUNNER_CONFIG,
    "pyproject.toml": _RUNNER_CONFIG,
    "setup.py": "packaging scripts are not part of a skill",
    ".coveragerc": "coverage configuration is the platform's (it could exclude code from "
                   "measurement)",
    ".semgrepignore": "it would hide code from the static scan",
    "sitecustomize.py": "Python imports it automatically at interpreter start-up",
    "usercustomize.py": "Python imports it automatically at interpreter start-up",
    "__pycache__": "compiled bytecode is not allowed: only scanned source runs",
}
_BYTECODE_SUFFIXES = (".pyc", ".pyo")

#: top-level names the sandbox's toolchain imports; a submission must not shadow them
_TOOLCHAIN_MODULES = frozenset({
    "pytest", "_pytest", "py", "pluggy", "coverage", "semgrep", "sandgate",
    "sandgate_harness", "iniconfig", "packaging", "pygments", "pytest_timeout",
})

_BIDI_CONTROLS = frozenset(
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
)
_UTF8_ENCODINGS = frozenset({"utf-8", "utf-8-sig", "ascii"})
#: characters CPython and a scanner may read differently: C0 controls other than TAB/LF/CR
#: (form feed and vertical tab included: CPython resets indentation at a form feed; NUL is
#: left to ast.parse, which refuses it as a syntax error), DEL, C1 controls (NEL U+0085
#: among them), the Unicode line/paragraph separators, and a BOM anywhere but at the start
_ODD_CHARACTERS = frozenset(
    chr(c) for c in (*range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0),
                     0x2028, 0x2029)
)
#: any character the per-line checks of :func:`_check_source` refuse (or a BOM, allowed only
#: as the first character)
_SUSPECT_CHARACTER = re.compile(
    "[" + "".join(re.escape(ch) for ch in sorted(_ODD_CHARACTERS | _BIDI_CONTROLS | {"\ufeff"})) + "]")
_MAX_COMPONENT_BYTES = 255
_CHUNK = 64 * KiB
#: per tar member: header, a possible pax/long-name header, and block padding
_TAR_MEMBER_OVERHEAD = 3 * KiB
#: read-ahead and the end-of-archive record, on top of the per-member allowance
_TAR_SLACK = 64 * KiB

_ZIP_ENCRYPTED = 0x1 | 0x40  # traditional and strong encryption flags
_ZIP_UTF8 = 0x800
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
#: a central-directory record is 46 bytes plus name, extra and comment
_ZIP_CD_BYTES_PER_MEMBER = 1 * KiB


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class IntakeLimits:
    """Caps enforced while a submission is read. Tests and policies may tighten them."""

    #: regular files in the submission
    max_files: int = 200
    #: path components of a file (``a/b/c.py`` is 3)
    max_depth: int = 8
    #: per ``.py`` file
    max_py_bytes: int = 1 * MiB
    #: per data file (``skill.toml``, README, ``.json``, ...)
    max_data_bytes: int = 256 * KiB
    #: all files, unpacked
    max_total_bytes: int = 5 * MiB
    #: an archive file on disk
    max_archive_bytes: int = 8 * MiB
    #: archive members of any kind, directories included
    max_members: int = 1000
    #: unpacked:packed, overall and per zip member
    max_ratio: float = 100.0
    #: below this many unpacked bytes the ratio is not checked (tiny files compress well)
    ratio_grace_bytes: int = 64 * KiB

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"IntakeLimits.{f.name} must be positive")


# --------------------------------------------------------------------------- manifest


#: ``[sandbox]`` in ``skill.toml`` (:data:`sandgate.limits.LimitsRequest`)
SandboxRequest = LimitsRequest


class Manifest(BaseModel):
    """``skill.toml``. TOML has real types, so nothing is coerced (``name = 1`` is an error)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    description: str = ""
    #: ``module:function`` or ``pkg.mod:function``
    entrypoint: str
    #: PEP 508 requirements (names, extras, specifiers), locked at intake against policies/packages.toml
    requirements: list[str] = Field(default_factory=list)
    #: a tests directory, a test file or a glob (``**`` spans directories); default: see module doc
    tests: str | None = None
    sandbox: LimitsRequest | None = None
    #: ``[[examples]]``: calls with known answers for the oracle (validated by
    #: :mod:`sandgate.examples` at intake)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    #: ``[oracle]``: allowed exceptions, JSON Schema, intended behaviour changes
    oracle: OracleManifest | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not SKILL_NAME.match(value):
            raise ValueError(f"{value!r} is not a skill name: {SKILL_NAME_RULE}")
        return value

    @field_validator("entrypoint")
    @classmethod
    def _check_entrypoint(cls, value: str) -> str:
        match = _ENTRYPOINT.match(value)
        parts = re.split(r"[.:]", value)
        if match is None or any(keyword.iskeyword(p) for p in parts):
            raise ValueError(
                f"{value!r} is not 'module:function' (e.g. 'text_stats:analyse' or "
                "'pkg.mod:function', Python identifiers only)"
            )
        return value

    @field_validator("requirements")
    @classmethod
    def _check_requirements(cls, value: list[str]) -> list[str]:
        for text in value:
            _parse_requirement(text)
        return value

    @field_validator("tests")
    @classmethod
    def _check_tests(cls, value: str | None) -> str | None:
        if value is None:
            return None
        trimmed = value[:-1] if value.endswith("/") else value
        problem = _path_problem(trimmed) if trimmed else "is empty"
        if problem:
            raise ValueError(f"{value!r} {problem}")
        return trimmed

    @property
    def module(self) -> str:
        """The entrypoint's module (``pkg.mod``)."""
        return self.entrypoint.partition(":")[0]

    @property
    def function(self) -> str:
        """The entrypoint's function name."""
        return self.entrypoint.partition(":")[2]


def _parse_requirement(text: str) -> Requirement:
    problem = deps.requirement_problem(text)
    if problem:
        raise ValueError(f"{text!r}: {problem}")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"{text!r} is not a valid PEP 508 requirement ({first})") from exc
    if req.url:
        raise ValueError(f"{text!r}: direct references ('name @ URL') are not allowed")
    if req.marker is not None:
        raise ValueError(f"{text!r}: environment markers are not supported")
    return req


# --------------------------------------------------------------------------- submission


@dataclass(frozen=True)
class Submission:
    """A validated, canonical submission. Build it with :func:`load_submission`."""

    manifest: Manifest
    #: sorted by path; NFC names with ``/`` separators; the exact bytes received
    files: Mapping[str, bytes]
    #: ``sha256:<hex>`` of :attr:`files` (see the module docstring)
    content_hash: str

    def __hash__(self) -> int:
        return hash(self.content_hash)

    @property
    def name(self) -> str:
        return self.manifest.name

    def test_files(self) -> list[str]:
        """The test files (sorted), by the manifest's ``tests`` or the default pattern."""
        return _match_tests(self.files, self.manifest.tests)

    def examples(self) -> list[Example]:
        """The declared examples: ``[[examples]]`` in the manifest, then ``examples.jsonl``."""
        found = parse_examples(self.manifest.examples, where=f"{MANIFEST_NAME} [[examples]]")
        if EXAMPLES_FILE in self.files:
            found += parse_examples_jsonl(self.files[EXAMPLES_FILE], where=EXAMPLES_FILE)
        return found

    @property
    def lock(self) -> bytes | None:
        """``requirements.lock`` (generated at intake from the requirements), or None."""
        return self.files.get(deps.LOCK_NAME)

    def module_files(self) -> list[str]:
        """The ``.py`` files that are not tests (sorted)."""
        tests = set(self.test_files())
        return sorted(p for p in self.files if p.endswith(".py") and p not in tests)


def hash_files(files: Mapping[str, bytes]) -> str:
    """The content hash of a canonical file set (:func:`sandgate.names.content_hash`)."""
    return _content_hash(files)


def load_submission(
    path: str | Path,
    *,
    limits: IntakeLimits | None = None,
    available_packages: Mapping[str, str] | None = None,
    lock: bool = True,
) -> Submission:
    """Read and validate a skill directory, ``.tar.gz``/``.tgz``/``.tar`` or ``.zip``.

    Raises :class:`SubmissionError` for anything invalid; nothing submitted runs.
    ``lock=False`` checks the requirements' form but does not lock them (a remote
    client: the controller locks, against its own allowlist).
    """
    limits = limits or IntakeLimits()
    root = Path(path)
    try:
        st = os.stat(root)
    except FileNotFoundError as exc:
        raise SubmissionError(f"{root}: no such file or directory") from exc
    except OSError as exc:
        raise SubmissionError(f"{root}: cannot be read ({exc.strerror})") from exc
    collector = _Collector(limits)
    if stat.S_ISDIR(st.st_mode):
        _read_directory(root, collector)
    elif stat.S_ISREG(st.st_mode):
        _read_archive(root, collector)
    else:
        raise SubmissionError(f"{root}: not a directory or an archive file")
    return _build(collector.files, limits, available_packages, lock)


def submission_from_files(
    files: Mapping[str, bytes],
    *,
    limits: IntakeLimits | None = None,
    available_packages: Mapping[str, str] | None = None,
    lock: bool = True,
) -> Submission:
    """Validate an in-memory file set (``{relative path: bytes}``) like :func:`load_submission`."""
    limits = limits or IntakeLimits()
    collector = _Collector(limits)
    for raw, data in files.items():
        if not isinstance(raw, str):
            raise TypeError(f"file names must be str, got {type(raw).__name__}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"file contents must be bytes, got {type(data).__name__} for {raw!r}")
        slot = collector.admit(raw)
        content = bytes(data)
        collector.check_size(slot, len(content))
        collector.add(slot, content)
    return _build(collector.files, limits, available_packages, lock)


# --------------------------------------------------------------------------- names


def _size(n: float) -> str:
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{int(n // scale)} {unit}"
    return f"{int(n)} bytes"


def _char_problem(ch: str) -> str | None:
    code = ord(ch)
    if ch == "\0":
        return "contains a NUL character"
    if 0xD800 <= code <= 0xDFFF:
        return "is not valid UTF-8"
    if ch in _BIDI_CONTROLS:
        return (f"contains the bidirectional control character U+{code:04X}, "
                "which can disguise a file name")
    category = unicodedata.category(ch)
    if category == "Cc":
        return f"contains the control character U+{code:04X}"
    if category in ("Cf", "Zl", "Zp"):
        return f"contains the invisible formatting character U+{code:04X}"
    return None


def _path_problem(name: str) -> str | None:
    """What is wrong with a relative path's syntax, or None."""
    if not name:
        return "is empty"
    for ch in name:
        problem = _char_problem(ch)
        if problem:
            return problem
    if "\\" in name:
        return "contains a backslash (use '/' as the separator)"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if name.endswith("/"):
        return "ends with '/'"
    for part in name.split("/"):
        if part == "":
            return "has an empty path component ('//')"
        if part == "..":
            return "has a '..' component (path traversal)"
        if part == ".":
            return "has a '.' component"
        if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            return f"has a component longer than {_MAX_COMPONENT_BYTES} bytes"
    return None


def _normalise_path(raw: str) -> str:
    """The NFC form of a safe relative path, or :class:`SubmissionError`."""
    problem = _path_problem(raw)
    normal = unicodedata.normalize("NFC", raw) if problem is None else raw
    if problem is None and normal != raw:
        problem = _path_problem(normal)
    if problem:
        raise SubmissionError(f"file name {raw!r} {problem}", path=raw)
    return normal


class _Slot(NamedTuple):
    path: str
    cap: int
    kind: str


def _classify(path: str, limits: IntakeLimits) -> _Slot:
    """Apply the forbidden list and the allowlist; the file's size cap."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        why = _FORBIDDEN_NAMES.get(part.casefold())
        if why:
            raise SubmissionError(f"{path!r}: {part!r} is not allowed: {why}", path=path)
        if part.startswith("."):
            what = "files" if last else "directories"
            raise SubmissionError(f"{path!r}: hidden {what} are not allowed ({part!r})", path=path)
    name = parts[-1]
    folded = name.casefold()
    if folded.endswith(".pth"):
        raise SubmissionError(
            f"{path!r}: .pth files are not allowed: site .pth files run code at interpreter "
            "start-up",
            path=path,
        )
    if folded.endswith(_BYTECODE_SUFFIXES):
        raise SubmissionError(f"{path!r}: {_FORBIDDEN_NAMES['__pycache__']}", path=path)
    if name.endswith(".py"):
        return _Slot(path, limits.max_py_bytes, "Python files")
    if name == deps.LOCK_NAME:  # checked in _build: top level only, sandgate's own format
        return _Slot(path, limits.max_data_bytes, "data files")
    suffix = os.path.splitext(name)[1]
    if folded in _README_NAMES or suffix in _DATA_SUFFIXES:
        return _Slot(path, limits.max_data_bytes, "data files")
    raise SubmissionError(
        f"{path!r}: file type not allowed; a skill holds Python sources (.py), skill.toml, "
        f"a README and small data files ({' '.join(sorted(_DATA_SUFFIXES))})",
        path=path,
    )


class _Collector:
    """The file set as it arrives: names, counts and sizes checked before any byte is kept."""

    def __init__(self, limits: IntakeLimits) -> None:
        self.limits = limits
        self.files: dict[str, bytes] = {}
        self.total = 0
        self._raw: dict[str, str] = {}  # NFC path -> name as received
        self._folded: dict[str, tuple[str, bool]] = {}  # folded path or dir -> (path, is_dir)

    def admit(self, raw: str) -> _Slot:
        """Check a name before its content is read; the slot to read it into."""
        path = _normalise_path(raw)
        depth = path.count("/") + 1
        if depth > self.limits.max_depth + 1:  # one extra level: a strippable top directory
            raise SubmissionError(
                f"{path!r} is nested {depth} levels deep; the limit is {self.limits.max_depth}",
                path=path,
            )
        slot = _classify(path, self.limits)
        if len(self._raw) >= self.limits.max_files:
            raise SubmissionError(f"the submission has more than {self.limits.max_files} files")
        self._register(raw, path)
        return slot

    def _register(self, raw: str, path: str) -> None:
        first = self._raw.get(path)
        if first is not None:
            if first == raw:
                raise SubmissionError(f"{path!r} appears twice in the submission", path=path)
            raise SubmissionError(
                f"file names {first!r} and {raw!r} collide after Unicode NFC normalisation",
                path=path,
            )
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub, is_dir = "/".join(parts[:i]), i < len(parts)
            key = unicodedata.normalize("NFC", sub.casefold())
            seen = self._folded.setdefault(key, (sub, is_dir))
            if seen[0] != sub:
                raise SubmissionError(
                    f"file names {seen[0]!r} and {sub!r} collide after case-folding "
                    "(one file on a case-insensitive file system)",
                    path=path,
                )
            if seen[1] != is_dir:
                raise SubmissionError(f"{sub!r} is both a file and a directory", path=path)
        self._raw[path] = raw

    def check_size(self, slot: _Slot, size: int, *, declared: bool = False) -> None:
        """Per-file and total caps for ``size`` bytes of ``slot`` (read so far, or declared)."""
        verb = "declares" if declared else "has"
        if size > slot.cap:
            raise SubmissionError(
                f"{slot.path!r} {verb} more than {_size(slot.cap)}, the limit for {slot.kind}",
                path=slot.path,
            )
        if self.total + size > self.limits.max_total_bytes:
            raise SubmissionError(
                f"the submission is larger than {_size(self.limits.max_total_bytes)} unpacked "
                f"(at {slot.path!r})",
                path=slot.path,
            )

    def add(self, slot: _Slot, data: bytes) -> None:
        self.check_size(slot, len(data))
        self.total += len(data)
        self.files[slot.path] = data


def _read_capped(
    stream: IO[bytes], slot: _Slot, collector: _Collector,
    on_chunk: Callable[[int], None] | None = None,
) -> bytes:
    """Read ``stream`` in chunks, stopping as soon as a cap is exceeded."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        collector.check_size(slot, size)
        if on_chunk is not None:
            on_chunk(len(chunk))
        chunks.append(chunk)


def _check_ratio(unpacked: int, packed: int, limits: IntakeLimits, what: str) -> None:
    if unpacked > limits.ratio_grace_bytes and unpacked > limits.max_ratio * max(packed, 1):
        raise SubmissionError(
            f"{what} has a compression ratio above {limits.max_ratio:g}:1 "
            "(a decompression bomb?); refused before unpacking it"
        )


def _strip_dot_prefix(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


# --------------------------------------------------------------------------- directory


def _open_regular(path: str | Path) -> IO[bytes]:
    """Open a regular file without following a symlink and without blocking on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot be read ({exc.strerror})") from exc
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise SubmissionError(f"{path}: not a regular file")
    return handle


def _read_directory(root: Path, collector: _Collector) -> None:
    limits = collector.limits
    visited = 0

    def walk(directory: str, rel: str, depth: int) -> None:
        nonlocal visited
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            visited += 1
            if visited > limits.max_members:
                raise SubmissionError(f"the directory has more than {limits.max_members} entries")
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                raise SubmissionError(
                    f"{name!r} is a symbolic link; links are not followed, submit the file itself",
                    path=name,
                )
            if entry.is_dir(follow_symlinks=False):
                if entry.name == "__pycache__":
                    continue  # the interpreter's cache: never read, never submitted
                if depth + 1 > limits.max_depth:
                    raise SubmissionError(
                        f"directory {name!r} is nested deeper than {limits.max_depth} levels",
                        path=name,
                    )
                walk(entry.path, name, depth + 1)
            elif entry.is_file(follow_symlinks=False):
                slot = collector.admit(name)
                with _open_regular(entry.path) as handle:
                    collector.check_size(slot, os.fstat(handle.fileno()).st_size, declared=True)
                    collector.add(slot, _read_capped(handle, slot, collector))
            else:
                raise SubmissionError(
                    f"{name!r} is not a regular file (a device, FIFO or socket)", path=name
                )

    try:
        walk(str(root), "", 0)
    except SubmissionError:
        raise
    except OSError as exc:
        raise SubmissionError(f"{root}: cannot be read ({exc})") from exc


# --------------------------------------------------------------------------- archives


def _read_archive(path: Path, collector: _Collector) -> None:
    limits = collector.limits
    with _open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limits.max_archive_bytes:
            raise SubmissionError(
                f"{path.name}: the archive is larger than {_size(limits.max_archive_bytes)}"
            )
        head = handle.read(512)
        handle.seek(0)
        if head[:2] == b"\x1f\x8b":
            _read_tar(handle, collector, compressed=True)
        elif head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            _read_zip(handle, size, collector)
        elif head[257:262] == b"ustar":
            _read_tar(handle, collector, compressed=False)
        else:
            raise SubmissionError(
                f"{path.name}: not a supported submission (expected a skill directory, "
                ".tar.gz/.tgz, .tar or .zip)"
            )


class _CountingReader:
    """Counts the packed bytes consumed from the archive file."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


class _TarStream:
    """The unpacked tar stream, read in bounded chunks.

    What is not file content (headers, pax records, padding, skipped entries)
    may only grow by a fixed allowance per member, so a bomb hidden in a header
    is stopped after a few KiB. File content is capped per file and in total by
    the caller, and its ratio to the packed bytes consumed is checked as it is
    read (:meth:`content_read`); tar headers are not counted in that ratio
    because they compress extremely well in any honest archive.
    """

    def __init__(self, source: Any, packed: _CountingReader, limits: IntakeLimits) -> None:
        self.source = source
        self.packed = packed
        self.limits = limits
        self.unpacked = 0
        self.members = 0
        self.declared = 0  # sizes of the regular files admitted so far
        self.content = 0

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        data: bytes = self.source.read(_CHUNK if n is None or n < 0 else min(n, _CHUNK))
        self.unpacked += len(data)
        allowance = self.declared + (self.members + 2) * _TAR_MEMBER_OVERHEAD + _TAR_SLACK
        if self.unpacked > allowance:
            raise SubmissionError(
                "the archive's headers and padding unpack to far more than its files "
                "(a decompression bomb?); refused before unpacking it"
            )
        return data

    def content_read(self, n: int) -> None:
        self.content += n
        _check_ratio(self.content, self.packed.count, self.limits, "the archive")


def _tar_type_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    if not member.isreg():
        return f"of unsupported type {member.type!r}"
    return None


def _read_tar(handle: IO[bytes], collector: _Collector, *, compressed: bool) -> None:
    limits = collector.limits
    packed = _CountingReader(handle)
    source: Any = packed
    if compressed:
        # typeshed's fileobj must also seek(), which GzipFile needs only to rewind; reading forward never does
        source = gzip.GzipFile(fileobj=packed, mode="rb")  # type: ignore[call-overload]  # read() is all it uses
    stream = _TarStream(source, packed, limits)
    try:
        # typeshed's fileobj must also write/tell/seek/close; stream mode "r|" only reads it
        with tarfile.open(fileobj=stream, mode="r|",  # type: ignore[call-overload]  # read() is all "r|" uses
                          encoding="utf-8", errors="surrogateescape") as tar:
            for member in tar:
                stream.members += 1
                if stream.members > limits.max_members:
                    raise SubmissionError(f"the archive has more than {limits.max_members} members")
                if member.isdir():
                    continue
                problem = _tar_type_problem(member)
                if problem:
                    raise SubmissionError(
                        f"archive member {member.name!r} is {problem}; only regular files "
                        "are accepted", path=member.name,
                    )
                slot = collector.admit(_strip_dot_prefix(member.name))
                collector.check_size(slot, member.size, declared=True)
                stream.declared += member.size
                content = tar.extractfile(member)
                assert content is not None  # a regular file always has a stream
                data = _read_capped(content, slot, collector, on_chunk=stream.content_read)
                if len(data) != member.size:
                    raise SubmissionError(
                        f"archive member {slot.path!r} is truncated", path=slot.path
                    )
                collector.add(slot, data)
    except SubmissionError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as exc:
        raise SubmissionError(f"the archive is corrupt or not a tar archive: {exc}") from exc


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member name as stored (NUL included), decoded as UTF-8."""
    name = info.orig_filename
    if info.flag_bits & _ZIP_UTF8:
        return name
    try:
        raw = name.encode("cp437")  # how zipfile decoded a name without the UTF-8 flag
    except UnicodeEncodeError:
        return name
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmissionError(
            f"archive member name {name!r} is not valid UTF-8", path=name
        ) from exc


def _zip_directory_size(handle: IO[bytes], size: int) -> tuple[int, int] | None:
    """(members, central directory bytes) from the end record, read before zipfile parses it."""
    tail_len = min(size, 22 + 0xFFFF)
    handle.seek(size - tail_len)
    tail = handle.read(tail_len)
    pos = len(tail) - 22
    if tail[pos:pos + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        return None
    members, cd_size = struct.unpack("<10xH L", tail[pos:pos + 16])
    if (members == 0xFFFF or cd_size == 0xFFFFFFFF) and pos >= 20:
        locator = tail[pos - 20:pos]
        if locator[:4] == b"PK\x06\x07":
            (offset,) = struct.unpack("<8xQ", locator[:16])
            handle.seek(offset)
            record = handle.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                members, cd_size = struct.unpack("<32xQQ", record[:48])
    return members, cd_size


def _zip_member_problem(info: zipfile.ZipInfo, name: str) -> str | None:
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link; only regular files are accepted"
    if kind and kind != stat.S_IFREG:
        return "is a device, FIFO or socket; only regular files are accepted"
    if info.flag_bits & _ZIP_ENCRYPTED:
        return "is encrypted; submit an unencrypted archive"
    if info.compress_type not in _ZIP_METHODS:
        return (f"uses compression method {info.compress_type}; only stored and deflated "
                "members are accepted")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        return (f"is stored uncompressed but declares {info.file_size} bytes "
                f"and holds {info.compress_size}")
    return None


def _read_zip(handle: IO[bytes], size: int, collector: _Collector) -> None:
    limits = collector.limits
    directory = _zip_directory_size(handle, size)
    if directory is not None:
        members, cd_size = directory
        if members > limits.max_members or cd_size > limits.max_members * _ZIP_CD_BYTES_PER_MEMBER:
            raise SubmissionError(f"the archive has more than {limits.max_members} members")
    handle.seek(0)
    unpacked = 0

    def count(n: int) -> None:
        nonlocal unpacked
        unpacked += n
        _check_ratio(unpacked, size, limits, "the archive")

    try:
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
            if len(infos) > limits.max_members:
                raise SubmissionError(f"the archive has more than {limits.max_members} members")
            for info in infos:
                name = _zip_name(info)
                if name.endswith("/") or stat.S_ISDIR(info.external_attr >> 16):
                    if info.file_size:
                        raise SubmissionError(
                            f"archive member {name!r} is a directory with content", path=name
                        )
                    continue
                problem = _zip_member_problem(info, name)
                if problem:
                    raise SubmissionError(f"archive member {name!r} {problem}", path=name)
                slot = collector.admit(_strip_dot_prefix(name))
                collector.check_size(slot, info.file_size, declared=True)
                _check_ratio(info.file_size, info.compress_size, limits, f"member {slot.path!r}")
                with archive.open(info) as stream:
                    data = _read_capped(stream, slot, collector, on_chunk=count)
                if len(data) != info.file_size:
                    raise SubmissionError(
                        f"archive member {slot.path!r} declares {info.file_size} bytes "
                        f"but holds {len(data)}", path=slot.path,
                    )
                collector.add(slot, data)
    except SubmissionError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            ValueError, NotImplementedError, RuntimeError) as exc:
        raise SubmissionError(f"the zip archive is corrupt: {exc}") from exc


# --------------------------------------------------------------------------- the file set


def _strip_top_directory(files: dict[str, bytes]) -> dict[str, bytes]:
    """``text_stats/skill.toml, text_stats/...`` -> ``skill.toml, ...``."""
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) != 1:
        return files
    top = tops.pop()
    if f"{top}/{MANIFEST_NAME}" not in files:
        return files
    return {path[len(top) + 1:]: data for path, data in files.items()}


def _check_depth(files: Iterable[str], limits: IntakeLimits) -> None:
    for path in files:
        depth = path.count("/") + 1
        if depth > limits.max_depth:
            raise SubmissionError(
                f"{path!r} is nested {depth} levels deep; the limit is {limits.max_depth}",
                path=path,
            )


def _check_shadowing(files: Iterable[str]) -> None:
    tops: dict[str, str] = {}
    for path in sorted(files):
        if path.endswith(".py"):
            top = path.split("/", 1)[0] if "/" in path else path[:-3]
            tops.setdefault(top, path)
    for top, path in sorted(tops.items()):
        if top in _TOOLCHAIN_MODULES:
            raise SubmissionError(
                f"{path!r} would shadow the module {top!r} of the test toolchain", path=path
            )
        if top in sys.stdlib_module_names:
            raise SubmissionError(
                f"{path!r} would shadow the standard-library module {top!r}", path=path
            )


def _pydantic_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            lines.append(f"missing required key {loc!r}")
        elif err["type"] == "value_error":
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            lines.append(f"{loc}: {err['msg']} (got {got})")
    return lines


def _parse_manifest(files: Mapping[str, bytes]) -> Manifest:
    raw = files.get(MANIFEST_NAME)
    if raw is None:
        raise SubmissionError(
            f"{MANIFEST_NAME} is missing: the manifest must be at the top level of the submission",
            path=MANIFEST_NAME,
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{MANIFEST_NAME} is not valid UTF-8", path=MANIFEST_NAME) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SubmissionError(
            f"{MANIFEST_NAME} is not valid TOML: {exc}", path=MANIFEST_NAME
        ) from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {line}" for line in _pydantic_lines(exc))
        raise SubmissionError(
            f"{MANIFEST_NAME} is invalid:\n{problems}", path=MANIFEST_NAME
        ) from exc


def _check_entrypoint(manifest: Manifest, files: Mapping[str, bytes], tests: list[str]) -> None:
    base = manifest.module.replace(".", "/")
    candidates = (f"{base}.py", f"{base}/__init__.py")
    found = next((c for c in candidates if c in files), None)
    if found is None:
        raise SubmissionError(
            f"entrypoint {manifest.entrypoint!r}: module file {candidates[0]} "
            f"(or {candidates[1]}) is not in the submission",
            path=MANIFEST_NAME,
        )
    if found in tests:
        raise SubmissionError(
            f"entrypoint {manifest.entrypoint!r}: {found} is a test file, not a module",
            path=MANIFEST_NAME,
        )


def _imported_names(tree: ast.AST, package: list[str]) -> list[tuple[str, int]]:
    """Dotted names a module imports (``from a import b`` gives ``a`` and ``a.b``),
    relative imports resolved against ``package``; constant importlib/__import__ calls too."""
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.level and node.level - 1 > len(package):
                continue
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if mod:
                names.append((mod, node.lineno))
            names.extend((f"{mod}.{a.name}" if mod else a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.append((node.args[0].value, node.lineno))
    return names


def _check_test_imports(trees: Mapping[str, ast.AST], tests: list[str]) -> None:
    """Test files hold tests only: a module of the skill that imports one is refused.

    Test files are not measured by coverage, so an implementation placed in a
    ``test_*.py`` file and imported by the module would escape measurement.
    """
    test_names = {}
    for path in tests:
        dotted = path[: -len(".py")].replace("/", ".")
        test_names[dotted] = path
    for path, tree in sorted(trees.items()):
        package = path[: -len(".py")].split("/")[:-1]
        for name, line in _imported_names(tree, package):
            for dotted, test_path in test_names.items():
                if name == dotted or dotted.endswith("." + name) or name.startswith(dotted + "."):
                    raise SubmissionError(
                        f"{path}:{line} imports the test file {test_path}: test files may only "
                        f"hold tests (they are not measured); put the implementation in a module",
                        path=path,
                    )


def _check_requirements(
    manifest: Manifest, files: dict[str, bytes], available: Mapping[str, str] | None, resolve: bool = True
) -> None:
    """Lock the requirements (``requirements.lock`` is added to ``files``), or check the lock
    the files carry (a stored version, a resubmission): see :mod:`sandgate.deps`."""
    stray = sorted(p for p in files if p.endswith("/" + deps.LOCK_NAME))
    if stray:
        raise SubmissionError(f"{stray[0]!r}: {deps.LOCK_NAME} belongs at the top level", path=stray[0])
    lock = files.get(deps.LOCK_NAME)
    if not manifest.requirements:
        if lock is not None:
            raise SubmissionError(f"{deps.LOCK_NAME} without requirements in {MANIFEST_NAME}",
                                  path=deps.LOCK_NAME)
        return
    if available is not None and lock is None:
        _check_available(manifest, available)
        return
    if not resolve and lock is None:
        return
    try:
        if lock is not None:
            deps.check_lock(lock, manifest.requirements, deps.load_allowlist())
        else:
            files[deps.LOCK_NAME] = deps.lock_requirements(manifest.requirements).encode()
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{deps.LOCK_NAME}: not UTF-8", path=deps.LOCK_NAME) from exc
    except deps.DepsError as exc:
        raise SubmissionError(str(exc), path=MANIFEST_NAME) from exc


def _check_available(manifest: Manifest, available: Mapping[str, str]) -> None:
    versions = {canonicalize_name(name): version for name, version in available.items()}
    for text in manifest.requirements:
        req = _parse_requirement(text)
        version = versions.get(canonicalize_name(req.name))
        if version is None:
            raise SubmissionError(
                f"requirement {text!r} is not available in the sandbox image", path=MANIFEST_NAME
            )
        try:
            satisfied = req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            satisfied = False
        if not satisfied:
            raise SubmissionError(
                f"requirement {text!r} is not satisfied: the sandbox image provides "
                f"{req.name} {version}",
                path=MANIFEST_NAME,
            )


def _check_source(path: str, data: bytes) -> ast.AST:
    """UTF-8, no bidi controls, parses; returns the tree. ``ast.parse`` only: nothing is
    compiled to code or run."""
    try:
        declared = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
        encoding = codecs.lookup(declared).name
    except (SyntaxError, LookupError) as exc:
        raise SubmissionError(f"{path}, line 1: {exc}", code="syntax_error", path=path) from exc
    if encoding not in _UTF8_ENCODINGS:
        raise SubmissionError(
            f"{path}: declares the source encoding {declared!r}; only UTF-8 sources are accepted",
            path=path,
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SubmissionError(
            f"{path}, line {line}: not valid UTF-8", code="syntax_error", path=path
        ) from exc
    _check_line_endings(path, text)
    # one scan of the whole text finds whether any line needs the per-character look (a BOM
    # the decoder left at the very start is allowed there, as the look allows it)
    if _SUSPECT_CHARACTER.search(text, 1 if text.startswith("\ufeff") else 0) is not None:
        _check_characters(path, text)
    try:
        tree = parse_source(data, filename=path)
        _check_identifiers(path, text)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "line ?"
        raise SubmissionError(
            f"{path}, {where}: {exc.msg}", code="syntax_error", path=path
        ) from exc
    except (RecursionError, MemoryError) as exc:  # the parser's own nesting limits
        raise SubmissionError(
            f"{path}: cannot be parsed: nested too deeply", code="syntax_error", path=path
        ) from exc
    except ValueError as exc:  # pragma: no cover - older Pythons: NUL bytes
        raise SubmissionError(f"{path}: {exc}", code="syntax_error", path=path) from exc
    return tree


def _check_characters(path: str, text: str) -> None:
    """No character the interpreter and a scanner could read differently, no bidi control:
    the line and the character named (called only when :data:`_SUSPECT_CHARACTER` matches)."""
    for lineno, line_text in enumerate(text.split("\n"), start=1):
        odd = next((ch for ch in line_text if ch in _ODD_CHARACTERS or
                    (ch == "\ufeff" and (lineno, line_text.index(ch)) != (1, 0))), None)
        if odd is not None:
            raise SubmissionError(
                f"{path}, line {lineno}: contains the character U+{ord(odd):04X} "
                f"({unicodedata.name(odd, 'a control character')}); the interpreter and the "
                "static scanner could read the source differently. Write it as an escape "
                "sequence inside a string literal instead",
                path=path,
            )
        bidi = next((ch for ch in line_text if ch in _BIDI_CONTROLS), None)
        if bidi is not None:
            raise SubmissionError(
                f"{path}, line {lineno}: contains the bidirectional control character "
                f"U+{ord(bidi):04X} (\"Trojan Source\": the code shown differs from the code run)",
                path=path,
            )


def _check_line_endings(path: str, text: str) -> None:
    """LF or CRLF throughout: a lone CR ends a line for CPython but not for every scanner."""
    lone_cr = re.search(r"\r(?!\n)", text)
    if lone_cr:
        line = text.count("\n", 0, lone_cr.start()) + 1
        raise SubmissionError(
            f"{path}, line {line}: a carriage return (CR) that is not part of a CRLF line "
            "ending; use LF (or CRLF) line endings only", path=path,
        )
    crlf = text.count("\r\n")
    if crlf and crlf != text.count("\n"):
        first_lf = re.search(r"(?<!\r)\n", text)
        line = text.count("\n", 0, first_lf.start()) + 1 if first_lf else 1
        raise SubmissionError(
            f"{path}, line {line}: mixes LF and CRLF line endings; use one kind throughout",
            path=path,
        )


def _check_identifiers(path: str, text: str) -> None:
    """No identifier that CPython reads as another name (it NFKC-normalises identifiers:
    ``ｓubprocess`` *is* ``subprocess`` to the interpreter, not to a pattern)."""
    if text.isascii():  # every identifier is ASCII, and NFKC leaves ASCII as it is
        return
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text.removeprefix("\ufeff")).readline):
            if tok.type == tokenize.NAME and not tok.string.isascii():
                normal = unicodedata.normalize("NFKC", tok.string)
                if normal != tok.string:
                    raise SubmissionError(
                        f"{path}, line {tok.start[0]}: the identifier {tok.string!r} is read by "
                        f"Python as {normal!r} (NFKC normalisation); write {normal!r}",
                        path=path,
                    )
    except (tokenize.TokenError, IndentationError):  # pragma: no cover - ast.parse accepted it
        return


def _test_patterns(tests: str | None) -> tuple[str, ...]:
    if tests is None:
        return DEFAULT_TEST_PATTERNS
    if any(ch in tests for ch in "*?[") or tests.endswith(".py"):
        return (tests,)
    return (f"{tests}/**/test_*.py",)


def _match_parts(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    if not parts or not fnmatchcase(parts[0], pattern[0]):
        return False
    return _match_parts(pattern[1:], parts[1:])


def _match_tests(files: Iterable[str], tests: str | None) -> list[str]:
    patterns = [p.split("/") for p in _test_patterns(tests)]
    return sorted(
        path for path in files
        if path.endswith(".py") and any(_match_parts(p, path.split("/")) for p in patterns)
    )


def _build(
    files: dict[str, bytes], limits: IntakeLimits, available: Mapping[str, str] | None, lock: bool = True
) -> Submission:
    if not files:
        raise SubmissionError("the submission is empty")
    files = _strip_top_directory(files)
    _check_depth(files, limits)
    _check_shadowing(files)
    manifest = _parse_manifest(files)
    tests = _match_tests(files, manifest.tests)
    _check_entrypoint(manifest, files, tests)
    _check_requirements(manifest, files, available, lock)
    if not tests:
        wanted = _DEFAULT_TESTS_TEXT if manifest.tests is None else f"tests = {manifest.tests!r}"
        raise SubmissionError(f"no test files ({wanted})", path=MANIFEST_NAME)
    trees = {}  # every module's tree (the source check parsed it), for the test-import check
    for path in sorted(files):
        if path.endswith(".py"):
            tree = _check_source(path, files[path])
            if path not in tests:
                trees[path] = tree
    _check_test_imports(trees, tests)
    canonical = dict(sorted(files.items()))
    submission = Submission(
        manifest=manifest,
        files=MappingProxyType(canonical),
        content_hash=hash_files(canonical),
    )
    _check_examples(submission)
    return submission


def _check_examples(submission: Submission) -> None:
    """``[[examples]]`` and ``examples.jsonl`` are valid (the oracle phase sends them as-is)."""
    try:
        found = submission.examples()
    except ExampleError as exc:
        where = EXAMPLES_FILE if str(exc).startswith(EXAMPLES_FILE) else MANIFEST_NAME
        raise SubmissionError(f"invalid example: {exc}", path=where) from exc
    if len(found) > MAX_EXAMPLES:
        raise SubmissionError(
            f"{len(found)} examples declared; at most {MAX_EXAMPLES}", path=MANIFEST_NAME)
