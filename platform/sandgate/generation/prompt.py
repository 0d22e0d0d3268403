"""The prompts: the system prompt (format + sandbox rules + gates), the task, re-asks, repairs.

Every prompt is plain text built from data (the policy, the report); nothing
here does I/O. Feedback is trimmed so a long traceback cannot blow the
context window: per failing test the *tail* of its message (where pytest puts
the ``E`` lines), at most :data:`MAX_FAILURES` tests, :data:`MAX_FINDINGS`
findings and :data:`MAX_FEEDBACK_CHARS` in all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from sandgate.generation.parse import MAX_TEST_FILES, render_files
from sandgate.oracle_report import call_input

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.policy import Policy
    from sandgate.report import EvaluationReport

__all__ = [
    "system_prompt",
    "task_prompt",
    "reask_prompt",
    "repair_prompt",
    "first_messages",
    "repair_messages",
    "suggested_module",
    "format_lines",
    "MAX_FAILURES",
    "MAX_FINDINGS",
    "MAX_MESSAGE_CHARS",
    "MAX_FEEDBACK_CHARS",
]

MAX_FAILURES = 10
MAX_FINDINGS = 20
MAX_MESSAGE_CHARS = 1200
MAX_OUTPUT_CHARS = 1500
MAX_FEEDBACK_CHARS = 12_000

_TOOLCHAIN = {"pytest", "coverage", "sandgate", "packaging", "pluggy", "py", "pygments",
              "iniconfig", "semgrep"}


def suggested_module(name: str) -> str:
    """The module name to ask for: the skill name, unless it would shadow stdlib or the toolchain."""
    if name in sys.stdlib_module_names or name in _TOOLCHAIN or name.startswith("test"):
        return f"{name}_skill"
    return name


def system_prompt(policy: Policy) -> str:
    g, lim = policy.gates, policy.limits
    coverage = f"line coverage of the module of at least {g.min_line_coverage:g}%"
    mutation = ""
    if policy.mutation.max_mutants > 0 and (g.min_mutation_score > 0 or g.null_entrypoint_must_be_killed):
        mutation = ("\n- Mutation testing: small changes are made to your module (`<` → `<=`, `+` → `-`, "
                    "constants ±1, negated conditions, removed lines, the entrypoint returning None) "
                    "and your tests must fail for them"
                    + (f" (at least {g.min_mutation_score:g}% of them)" if g.min_mutation_score > 0 else "")
                    + ": assert exact results, boundaries and errors, not just that code runs.")
    if g.min_branch_coverage > 0:
        coverage += f" and branch coverage of at least {g.min_branch_coverage:g}%"
    blocked = ", ".join(g.blocked_severities) or "none"
    examples_gate = ""
    if g.contract_checks > 0:
        examples_gate = (f"; {g.contract_checks} generated inputs keep the contract (declared "
                         "return type, only declared exceptions, the same answer twice)")
    return f"""\
You write skills for sandgate. A skill is one small Python module plus its pytest tests. \
Before it may reach production, sandgate runs it in an isolated sandbox: a static scan \
(semgrep), then the tests with coverage. You must write both the module and tests that \
prove it works.

# Output format (strict, machine-parsed)

Reply with the files only, each introduced by a header line and followed by one fenced \
code block:

### FILE: skill.toml
```toml
name = "<the skill name you are given>"
description = "<one line>"
entrypoint = "<module>:<function>"
requirements = []

[[examples]]
args = [<positional arguments, as TOML values>]
expect = <the value the entrypoint returns for them>

[[examples]]
args = [<arguments that are invalid>]
raises = "ValueError"

[oracle]
raises = ["ValueError"]
```

### FILE: <module>.py
```python
<the complete module>
```

### FILE: tests/test_<module>.py
```python
<the complete tests>
```

Format rules:
- The header is exactly `### FILE: <path>`, at the start of a line. Fences start at the \
start of a line. If a file contains a line starting with ``` fence it with ````.
- Allowed paths: `skill.toml`, exactly one top-level module `<module>.py`, and 1 to \
{MAX_TEST_FILES} test files `tests/test_<name>.py`. No other files: no conftest.py, no \
__init__.py, no README, no data files.
- Every file complete, every time. Never abbreviate ("...", "unchanged"). When asked to \
fix something, send all the files again.
- Text outside the blocks is ignored: leave it out.

# skill.toml (the manifest)
Keys: `name` (exactly the skill name given), `description` (one line), `entrypoint` \
(`module:function`, the main function), `requirements` (always `[]`), `[[examples]]` \
and `[oracle]`. No other keys.

# Examples (the oracle: sandgate calls your entrypoint itself and checks each answer)
- Declare at least {max(g.min_examples, 3)} `[[examples]]`: `args` (a list), optional \
`kwargs` (a table), and exactly one of `expect` (the returned value) or `raises` (the \
exception's type name). Values are JSON-like: numbers, strings, booleans, lists, tables \
(tuples come back as lists; TOML has no null). Optional `tolerance = 1e-9` for floats.
- sandgate calls the entrypoint in a fresh process (not under pytest) and compares the \
answer itself: an example whose answer differs fails the gate, whatever your tests say.
- Give the entrypoint full type hints (int, float, str, bool, None, list[T], \
dict[str, T], tuple[...], Optional[T], Literal[...]) and return plain JSON-like values: \
sandgate generates inputs from the hints and checks the return type, that only the \
exceptions in `[oracle] raises` are raised, and that the same input gives the same answer.

# Sandbox rules (a violation fails the gate)
- Python 3.11 standard library only. No third-party packages (the tests may import pytest).
- The module must not shadow a standard-library module name.
- No network of any kind (socket, urllib, http, asyncio connections).
- No subprocess, os.system, os.popen, os.fork, multiprocessing, signals, os.kill, \
os._exit; no sys.exit at import time or in tests.
- No eval, exec, compile, __import__, importlib, runpy, ctypes, pickle, marshal, \
timeit with strings, typing.get_type_hints, logging.config; never execute or import a data \
file.
- Files: no absolute paths, no `..`, nothing outside the working directory; tests that \
need files use pytest's `tmp_path` fixture; the module takes paths as arguments. Do not \
use system paths (/etc, /proc, /sys, /usr, ...) even as sample data, never write raw \
file descriptors (os.write/os.fdopen on numbers), and never name test-result files \
(.coverage, junit*.xml, coverage.json).
- Behave the same under test as in production: do not read os.environ to detect the test \
run, do not look at sys.argv, sys.modules, sys.path, builtins, atexit, coverage; no pytest \
hooks, no `pytest_plugins`, no conftest.py. Do not ask where the code runs: no sys.flags, \
hostname (socket.gethostname, platform.node, os.uname), os.getuid and friends, \
/.dockerenv, HOSTNAME/container variables; avoid os.cpu_count, resource, platform.*, \
isatty (take such values as parameters).
- pytest: use ONLY plain `assert`, `pytest.raises` (read only `.value`, `.type`, \
`.match()` of its result), `pytest.approx`, `pytest.warns`, `pytest.fail`/`skip`/`xfail`, \
`pytest.param`, `@pytest.fixture`, `@pytest.mark.parametrize` and other \
`pytest.mark.<marker>` (a skipif/xfail condition is a boolean expression, never a string), \
and the fixtures `tmp_path`, `monkeypatch`, `capsys`, `capfd`, `caplog`, `recwarn` and \
`request.param`. Nothing else of pytest: no pytest classes (Item, Function, Config...), \
no `request.config`/`request.node`/`request.session`, no `pytestconfig`, never _pytest, \
pluggy or coverage; do not override `run` in a unittest.TestCase.
- No reflection: no frames or code objects (inspect, gc, dis, traceback stack functions \
- traceback.format_exc() is fine -, sys._getframe or any sys._*, f_locals/f_back/tb_frame), \
no dunder attributes other than the data model (__dict__, __globals__, __code__, \
__subclasses__, __mro__, __bases__, __builtins__ are blocked; __name__, __class__, \
__init__ are fine), no private `_names` of other modules, no vars()/globals()/locals()/\
breakpoint(). getattr/setattr/delattr, monkeypatch.setattr, mock.patch and \
operator.attrgetter take literal names only; `.format()` only on a literal template (or a \
constant bound to one) - use f-strings.
- No sleeping or waiting on real time; tests must be deterministic and fast (the whole \
run is killed after {lim.timeout_seconds:g} seconds; memory {lim.memory_mb} MB).

# Gates (all must hold for the verdict "passed")
- Every test passes, and at least {max(g.min_tests, 1)} test(s) exist.
- {coverage[0].upper() + coverage[1:]}: test every branch, including error paths \
(`pytest.raises`) and edge cases.
- No static finding of a blocked severity ({blocked}).{mutation}
- Every `[[examples]]` call answers as declared{examples_gate}.

Tests import the module by name (`from <module> import <function>`); the module's \
directory is on the import path."""


def task_prompt(name: str, description: str, requirements: Sequence[str] = ()) -> str:
    module = suggested_module(name)
    lines = [
        f"Write the skill `{name}`.",
        "",
        f"Description: {description.strip()}",
    ]
    if requirements:
        lines += ["", "Requirements (each must hold, and be tested):"]
        lines += [f"- {r.strip()}" for r in requirements if r.strip()]
    lines += [
        "",
        f'In skill.toml, name = "{name}". Use the module `{module}.py` '
        f"(entrypoint `{module}:<function>`) and the tests `tests/test_{module}.py`.",
        "Reply with the files in the output format, nothing else.",
    ]
    return "\n".join(lines)


def first_messages(policy: Policy, name: str, description: str,
                   requirements: Sequence[str] = ()) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt(policy)},
        {"role": "user", "content": task_prompt(name, description, requirements)},
    ]


def reask_prompt(problems: Sequence[str], *, cut_off: bool = False) -> str:
    lines = ["Your reply could not be parsed:"]
    lines += [f"- {p}" for p in problems[:20]]
    if cut_off:
        lines.append("- it was cut off at the token limit: keep the module and tests shorter")
    lines += ["", "Reply again with all the files, each as `### FILE: <path>` followed by a "
              "fenced code block, and nothing else."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- repair feedback


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return "…" + text[-limit:]


def format_lines(lines: Iterable[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5, 9"``."""
    ranges: list[str] = []
    items = sorted(set(lines))
    start: int | None = None
    prev = 0  # set with start, read only once start is set
    for n in items:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            ranges.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = n
    if start is not None:
        ranges.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(ranges)


MAX_SURVIVORS = 10


def mutation_feedback(report: EvaluationReport) -> list[str]:
    """Surviving mutants as concrete sentences: "your tests do not notice when line 12 ..."."""
    m = report.mutation
    if m is None or not m.ran or not m.survivors:
        return []
    score = f"{m.score:g}%" if m.score is not None else "no score"
    out = ["", f"Mutation testing: {score} of {m.run} small changes to your module were caught by "
               "your tests. Your tests do not notice when:"]
    for s in m.survivors[:MAX_SURVIVORS]:
        if s.operator == "null_entrypoint":
            out.append(f"- {s.file}: the entrypoint's whole body becomes `return None` "
                       "(assert on the values it returns)")
        elif s.operator == "raising_entrypoint":
            out.append(f"- {s.file}: the entrypoint's whole body becomes `raise NotImplementedError`")
        elif s.after == "pass":
            out.append(f"- {s.file} line {s.line} `{_tail(s.before, 160)}` is removed")
        else:
            out.append(f"- {s.file} line {s.line} `{_tail(s.before, 160)}` becomes "
                       f"`{_tail(s.after, 160)}`")
    if len(m.survivors) > MAX_SURVIVORS:
        out.append(f"- … and {len(m.survivors) - MAX_SURVIVORS} more")
    out.append("Add assertions on exact results (boundaries, error cases) that fail for each change.")
    return out


def repair_prompt(report: EvaluationReport, policy: Policy, *, attempt: int) -> str:
    """What went wrong in ``report``, concretely, and what to send back."""
    verdict = report.verdict.value
    what = {"rejected": "was rejected at intake (nothing ran)",
            "failed": "failed the gate"}.get(verdict, f"ended with verdict {verdict}")
    out = [f"Your submission (attempt {attempt}) {what}. Reasons:"]
    out += [f"- {r.code.value}: {_tail(r.message, 600)}" for r in report.reasons]

    failing = [c for c in report.tests.cases if c.outcome in ("failed", "error")]
    if failing:
        out += ["", "Failing tests:"]
        for case in failing[:MAX_FAILURES]:
            out.append(f"- {case.nodeid} ({case.outcome})")
            if case.message:
                out += ["  " + line for line in _tail(case.message, MAX_MESSAGE_CHARS).splitlines()]
        if len(failing) > MAX_FAILURES:
            out.append(f"- … and {len(failing) - MAX_FAILURES} more")

    out += _oracle_feedback(report)

    cov = report.coverage
    g = policy.gates
    if cov is not None and (cov.line_percent < g.min_line_coverage
                            or (g.min_branch_coverage > 0 and cov.branches
                                and cov.branch_percent < g.min_branch_coverage)):
        out += ["", f"Coverage: lines {cov.line_percent:.1f}% (needed {g.min_line_coverage:g}%)"
                + (f", branches {cov.branch_percent:.1f}% (needed {g.min_branch_coverage:g}%)"
                   if g.min_branch_coverage > 0 else "")
                + ". Lines never executed by the tests:"]
        gaps = [f for f in cov.files if f.missed_lines or f.missed_branches]
        for f in gaps:
            line = f"- {f.path}: lines {format_lines(f.missed_lines)}" if f.missed_lines else f"- {f.path}:"
            if f.missed_branches:
                line += f" ({f.missed_branches} branch(es) never taken)"
            out.append(line)
        out.append("Add tests that execute those lines (or remove code that is not needed).")

    out += mutation_feedback(report)

    if report.findings:
        out += ["", "Static findings (blocked severities: "
                f"{', '.join(g.blocked_severities) or 'none'}):"]
        for finding in report.findings[:MAX_FINDINGS]:
            out.append(f"- {finding.rule_id} ({finding.severity}) at {finding.path}:{finding.line}: "
                       f"{_tail(finding.message, 400)}")
        if len(report.findings) > MAX_FINDINGS:
            out.append(f"- … and {len(report.findings) - MAX_FINDINGS} more")

    codes = {r.code.value for r in report.reasons}
    if report.output and codes & {"crashed", "timeout", "memory_limit", "pids_limit",
                                   "output_limit", "tests_not_run", "no_tests"}:
        out += ["", "End of the captured output:", _tail(report.output, MAX_OUTPUT_CHARS)]

    text = "\n".join(out)
    if len(text) > MAX_FEEDBACK_CHARS:
        text = text[:MAX_FEEDBACK_CHARS] + "\n… (feedback trimmed)"
    return (text + "\n\nFix every problem and reply with all the files again (complete, in "
            "the output format).")


def _oracle_feedback(report: EvaluationReport) -> list[str]:
    """The oracle's failing calls: the answers sandgate got when it called the entrypoint."""
    oracle = report.oracle
    if oracle is None:
        return []
    out: list[str] = []
    failing = [*oracle.failures, *oracle.nondeterministic]
    if failing:
        out += ["", "Calls sandgate made to your entrypoint (outside the tests) that went wrong:"]
        for call in failing[:MAX_FAILURES]:
            out.append(f"- {call.source} {call.name}: f({_tail(call_input(call.args, call.kwargs), 300)}) "
                       f"expected {_tail(call.expected, 300)}, got {_tail(call.got, 300)}")
        if len(failing) > MAX_FAILURES:
            out.append(f"- … and {len(failing) - MAX_FAILURES} more")
        out.append("Fix the module (or an example that is itself wrong); the examples are checked "
                   "by calling the module directly, not through your tests.")
    if oracle.contract_unsupported:
        out += ["", f"Contract checks could not run: {oracle.contract_unsupported}. "
                "Give every parameter and the return value a type hint from the supported set."]
    undeclared = [c for c in oracle.behaviour_changes if not c.declared]
    if undeclared:
        out += ["", f"Answers that differ from the active version {oracle.active_version} "
                "(declare intended ones under [[oracle.changes]] with args and reason):"]
        for change in undeclared[:MAX_FAILURES]:
            out.append(f"- f({_tail(call_input(change.args, change.kwargs), 300)}): was "
                       f"{_tail(change.active, 200)}, now {_tail(change.candidate, 200)}")
    return out


def repair_messages(policy: Policy, name: str, description: str, requirements: Sequence[str],
                    previous_files: Mapping[str, str] | None, feedback: str) -> list[dict[str, str]]:
    """System + task + the previous submission (re-rendered canonically) + the feedback.

    Only the last attempt is shown, so the context stays bounded whatever the
    number of attempts.
    """
    messages = first_messages(policy, name, description, requirements)
    if previous_files:
        messages.append({"role": "assistant", "content": render_files(previous_files)})
    messages.append({"role": "user", "content": feedback})
    return messages
