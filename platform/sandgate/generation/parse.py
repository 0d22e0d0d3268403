"""The strict output format of a generated skill, and its parser.

Format
    The reply holds one block per file. A block is a header line, exactly
    ``### FILE: <path>`` (the path may be wrapped in backticks), then,
    after optional blank lines, a fenced code block: an opening fence of three
    or more backticks (or tildes) with an optional info string (``python``,
    ``toml``), the file's content verbatim, and a closing fence of the same
    character at least as long. Fences start at the beginning of the line. A
    file that itself contains a line starting with three backticks is fenced
    with four.

Allowed paths
    ``skill.toml``; exactly one top-level module ``<identifier>.py`` (not
    ``test_*``, ``conftest``, ``__init__``, ``setup``, ...); one to
    :data:`MAX_TEST_FILES` test files ``tests/test_<identifier>.py``. Nothing
    else: no ``conftest.py``, no ``__init__.py``, no data files.

Strictness (decided)
    * Prose outside the blocks is tolerated and ignored (models add a sentence
      before or after; it never becomes a file). It is returned as
      ``ignored_text`` for the record.
    * A fenced block *without* a header, a header without a block, a header
      that is almost right (``## FILE:``, ``**FILE: x**``, ``### File: x``), an
      unterminated block, a duplicate path, a path outside the allowlist, an
      empty file, or a missing ``skill.toml`` / module / test file is
      malformed: :class:`MalformedOutput` lists *every* problem found, so one
      re-ask can fix them all.
    * Content is not judged here (TOML, Python syntax, the entrypoint, the
      name): intake (:func:`sandgate.submission.submission_from_files`) does
      that, and its refusal is fed back to the model as an attempt's result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sandgate.generation.errors import MalformedOutput

__all__ = ["ParsedOutput", "parse_output", "render_files", "MAX_TEST_FILES", "MAX_REPLY_CHARS",
           "allowed_path_problem"]

MAX_TEST_FILES = 5
#: a reply longer than this is refused before parsing
MAX_REPLY_CHARS = 1_000_000

_HEADER = re.compile(r"^### FILE: *(?P<path>`[^`]+`|\S.*?) *$")
#: lines that try to be a header and miss (case, level, decoration)
_NEAR_HEADER = re.compile(r"^\s*(?:#+|\*\*|__)?\s*\**\s*file\s*\**\s*:", re.IGNORECASE)
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")
_TEST = re.compile(r"^tests/test_[A-Za-z0-9_]+\.py$")
_RESERVED_MODULES = frozenset({"conftest", "__init__", "__main__", "setup", "sitecustomize",
                               "usercustomize"})
_FORMAT = "'### FILE: <path>' followed by a fenced code block"


@dataclass(frozen=True)
class ParsedOutput:
    #: path -> text, in the order given; every text ends with a newline
    files: dict[str, str]
    module: str
    tests: list[str]
    #: prose outside the blocks (ignored), trimmed
    ignored_text: str = ""
    notes: list[str] = field(default_factory=list)

    def as_bytes(self) -> dict[str, bytes]:
        return {path: text.encode("utf-8") for path, text in self.files.items()}


def allowed_path_problem(path: str) -> str | None:
    """Why ``path`` may not appear in a generated skill, or None."""
    if path == "skill.toml":
        return None
    if _TEST.match(path):
        return None
    if "/" not in path and _MODULE.match(path):
        stem = path[:-3]
        if stem.startswith("test_") or stem == "test":
            return (f"{path!r}: a top-level test_*.py would be collected as a test; "
                    "tests go in tests/test_<name>.py")
        if stem in _RESERVED_MODULES:
            return f"{path!r} is not allowed (reserved name)"
        return None
    return (f"{path!r} is not an allowed path: only skill.toml, one top-level <module>.py "
            "and tests/test_<name>.py")


def parse_output(text: str, *, finish_reason: str | None = None) -> ParsedOutput:
    """Parse a model reply into files; :class:`MalformedOutput` listing every problem."""
    cut_off = finish_reason == "length"
    if len(text) > MAX_REPLY_CHARS:
        raise MalformedOutput([f"the reply is longer than {MAX_REPLY_CHARS} characters"])
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    problems: list[str] = []
    files: dict[str, str] = {}
    ignored: list[str] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        header = _HEADER.match(line)
        fence = _FENCE.match(line.rstrip())
        if header:
            path = header.group("path").strip("`").strip()
            j = i + 1
            while j < n and not lines[j].strip():
                j += 1
            opening = _FENCE.match(lines[j].rstrip()) if j < n else None
            if opening is None:
                problems.append(f"line {i + 1}: the header for {path!r} is not followed by a "
                                "fenced code block")
                i += 1
                continue
            body, end = _block(lines, j, opening.group("fence"))
            if end is None:
                problems.append(f"line {j + 1}: the code block of {path!r} is not closed"
                                + (" (the reply was cut off at the token limit)" if cut_off else ""))
                break
            problem = allowed_path_problem(path)
            if problem:
                problems.append(problem)
            elif path in files:
                problems.append(f"{path!r} appears twice")
            elif not "\n".join(body).strip():
                problems.append(f"{path!r} is empty")
            else:
                content = "\n".join(body)
                files[path] = content if content.endswith("\n") else content + "\n"
            i = end + 1
            continue
        if fence:
            body, end = _block(lines, i, fence.group("fence"))
            problems.append(f"line {i + 1}: a code block without a '### FILE: <path>' header "
                            "(every block must be introduced by one)")
            if end is None:
                break
            i = end + 1
            continue
        if _NEAR_HEADER.match(line):
            problems.append(f"line {i + 1}: {line.strip()[:80]!r} is not a valid header; "
                            "write exactly '### FILE: <path>'")
        elif line.strip():
            ignored.append(line)
        i += 1

    modules = [p for p in files if p != "skill.toml" and not p.startswith("tests/")]
    tests = [p for p in files if p.startswith("tests/")]
    if not files and not problems:
        raise MalformedOutput([f"no files found: the reply must contain {_FORMAT} for "
                               "skill.toml, the module and its tests"
                               + (" (the reply was cut off at the token limit)" if cut_off else "")])
    if "skill.toml" not in files and not any("'skill.toml'" in p for p in problems):
        problems.append("skill.toml is missing")
    if not modules:
        problems.append("the module file (<module>.py) is missing")
    elif len(modules) > 1:
        problems.append(f"exactly one module file is allowed, got {', '.join(modules)}")
    if not tests:
        problems.append("no test file (tests/test_<name>.py)")
    elif len(tests) > MAX_TEST_FILES:
        problems.append(f"at most {MAX_TEST_FILES} test files are allowed, got {len(tests)}")
    if problems:
        if cut_off and not any("cut off" in p for p in problems):
            problems.append("the reply was cut off at the token limit: write shorter code and tests")
        raise MalformedOutput(problems)
    ignored_text = "\n".join(ignored).strip()
    return ParsedOutput(files=files, module=modules[0], tests=tests,
                        ignored_text=ignored_text[:2000])


def _block(lines: list[str], start: int, fence: str) -> tuple[list[str], int | None]:
    """The lines inside the block opened at ``start`` and the closing line's index (or None)."""
    char, width = fence[0], len(fence)
    close = re.compile(rf"^{re.escape(char)}{{{width},}}\s*$")
    for k in range(start + 1, len(lines)):
        if close.match(lines[k]):
            return lines[start + 1:k], k
    return lines[start + 1:], None


def render_files(files: Mapping[str, str | bytes]) -> str:
    """Files in the output format (used to show the model its previous submission)."""
    parts = []
    for path, data in files.items():
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        lang = "toml" if path.endswith(".toml") else "python"
        longest = max((len(m.group(0)) for m in re.finditer(r"^`{3,}", text, re.MULTILINE)),
                      default=0)
        fence = "`" * max(3, longest + 1)
        body = text if text.endswith("\n") else text + "\n"
        parts.append(f"### FILE: {path}\n{fence}{lang}\n{body}{fence}\n")
    return "\n".join(parts)
