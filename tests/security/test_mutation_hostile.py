"""Hostile tests against the mutation gate, in the real sandbox, under the default gates.

The outcome of a mutant is reported by the process that runs the mutated
submitted code, so a test can always *claim* a kill: fail whenever it believes
it runs under a mutant. Tests whose assertions check nothing then look like
they kill every mutant. What stops that:

- every mutant and a *control* (the unmutated skill, at a random position among
  the first mutants, with the tests a mutant chosen at random selects) run the
  same way, in a forked child with a fresh tree and emptied scratch directories:
  a test that fails whenever it is not in the dynamic phase (process tree, no
  coverage tracer, plain asserts, a marker left behind) or whenever a test that
  covers no line did not run before it (per-line selection) fails the control,
  and then no kill counts (``mutation_score_below_threshold``, "the unmutated
  skill did not pass"); a closing control after the last mutant catches tests
  that start failing later in the phase;
- the mutated source is imported through an import hook with a genuine
  ``SourceFileLoader``: the file on disk, ``inspect.getsource`` and the
  loader's type are those of the unmutated module.

What remains: telling the mutant from the control by the code itself
(``f.__code__``, ``__loader__``/``__spec__`` internals, ``sys.meta_path``),
which is reflection the static rules flag; or by its behaviour, which is what a
real test does. Each case below is weak tests (``is not None``) plus one
detection; each must end ``failed``. The static rules would already stop most
of these detections (frames, ``inspect``, ``importlib``, environment probes): the
policy here reports findings without blocking on them, so what is tested is the
mutation phase itself; the shipped default policy fails them as well.
"""

from __future__ import annotations

import pytest

from sandgate.evaluation import evaluate
from sandgate.policy import load_policy, parse_policy
from sandgate.report import ReasonCode, Verdict
from sandgate.submission import submission_from_files
from tests.integration.test_mutation import MANIFEST, MODULE  # the clamp skill

pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftovers")

WEAK = '''
def test_clamp():
    {detect}
    assert clamp(5, 0, 10) is not None
    assert clamp(-5, 0, 10) is not None
    assert clamp(50, 0, 10) is not None
    with pytest.raises(ValueError):
        clamp(1, 2, 1)
'''
HEADER = "import pytest\n\nfrom clamp import clamp\n"

DETECTIONS = {
    # a marker left by the dynamic phase: a later run fails
    "rerun_marker": (
        "import os\n",
        "for d in ('/tmp', '/work', '/dev/shm', '/tmp/home'):\n"
        "        marker = os.path.join(d, '.seen')\n"
        "        if os.path.exists(marker):\n"
        "            assert False, 'ran before'\n"
        "        try:\n"
        "            open(marker, 'w').close()\n"
        "        except OSError:\n"
        "            pass",
    ),
    # the dynamic phase's test process is a child of PID 1; a mutant's is not
    "phase_probe": ("import os\n", "assert os.getppid() == 1"),
    # the coverage tracer of the dynamic phase is not installed in a mutant's process
    "tracer_probe": ("import sys\n", "assert sys.gettrace() is not None"),
    # assertion rewriting: a mutant's process runs plain asserts (a caught failed assert is
    # already a vacuous test: the phase never starts)
    "rewrite_probe": (
        "",
        "try:\n"
        "        assert [1] == [2]\n"
        "    except AssertionError as exc:\n"
        "        rewritten = 'At index 0' in str(exc)\n"
        "    assert rewritten",
    ),
    # per-line selection: a test that covers no line of the module is never selected for a
    # mutant; a detector fails whenever that test did not run before it in the same process
    "selection_probe": ("", "assert CANARY, 'the canary test did not run first'"),
    # the module file's bytes as they were submitted
    "source_hash": (
        "import hashlib, pathlib\n",
        "text = pathlib.Path('clamp.py').read_bytes()\n"
        "    assert hashlib.sha256(text).hexdigest() == EXPECTED",
    ),
    # the source inspect shows
    "getsource": ("import inspect\n", "assert 'return value' in inspect.getsource(clamp)\n"
                  "    assert 'value <= low' not in inspect.getsource(clamp)"),
    # the loader a normal import gives
    "loader_type": (
        "import importlib.machinery, importlib.util\n",
        "spec = importlib.util.find_spec('clamp')\n"
        "    assert type(spec.loader) is importlib.machinery.SourceFileLoader\n"
        "    assert spec.loader.get_data(spec.origin) == open(spec.origin, 'rb').read()",
    ),
}


CANARY = '''
CANARY = []


def test_a_canary():
    CANARY.append(1)
    assert CANARY == [1]
'''


def hostile(detection: str):
    imports, check = DETECTIONS[detection]
    import hashlib

    tests = imports + HEADER + f"EXPECTED = {hashlib.sha256(MODULE).hexdigest()!r}\n" + \
        (CANARY if detection == "selection_probe" else "") + WEAK.format(detect=check)
    return submission_from_files({"skill.toml": MANIFEST, "clamp.py": MODULE,
                                  "tests/test_clamp.py": tests.encode()})


def default_policy(*, blocked: bool = False, stop_when_decided: bool = False):
    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["limits"]["timeout_seconds"] = 40
    data["mutation"]["max_mutants"] = 100  # every mutant of this small module
    data["mutation"]["stop_when_decided"] = stop_when_decided
    if not blocked:
        data["gates"]["blocked_severities"] = []
    return parse_policy(data, name="hostile-mutation")


def test_the_weak_tests_alone_fail_the_gate() -> None:
    report = evaluate(hostile("getsource"), policy=default_policy())
    assert report.tests.passed == 1 and report.coverage.line_percent == 100.0
    assert report.verdict is Verdict.failed
    assert ReasonCode.mutation_score_below_threshold in {r.code for r in report.reasons}


@pytest.mark.parametrize("detection", ["rerun_marker", "source_hash", "getsource", "loader_type"])
def test_detection_that_cannot_see_the_mutant_leaves_the_weak_tests_exposed(detection: str) -> None:
    report = evaluate(hostile(detection), policy=default_policy())
    assert report.tests.failed == 0 and report.tests.passed == 1, report.tests  # dynamic phase fine
    m = report.mutation
    assert m.ran and m.problem is None, m
    assert m.survived >= 5 and m.score < 50, m  # the detection never fired
    assert report.verdict is Verdict.failed
    assert ReasonCode.mutation_score_below_threshold in {r.code for r in report.reasons}


@pytest.mark.parametrize("detection", ["phase_probe", "tracer_probe", "selection_probe"])
@pytest.mark.parametrize("stop_when_decided", [False, True])
def test_phase_detection_fails_the_control_and_no_kill_counts(detection: str, stop_when_decided: bool) -> None:
    report = evaluate(hostile(detection), policy=default_policy(stop_when_decided=stop_when_decided))
    assert report.tests.failed == 0 and report.tests.passed >= 1, report.tests  # fine in the dynamic phase
    m = report.mutation
    assert m.problem and "unmutated skill did not pass" in m.problem
    assert report.verdict is Verdict.failed
    reason = next(r for r in report.reasons if r.code is ReasonCode.mutation_score_below_threshold)
    assert "did not complete" in reason.message


@pytest.mark.parametrize("detection", sorted(DETECTIONS))
def test_the_shipped_default_policy_fails_every_detection(detection: str) -> None:
    policy = default_policy(blocked=True, stop_when_decided=True)
    report = evaluate(hostile(detection), policy=policy)
    assert report.verdict is Verdict.failed, report.reasons



# Runs that count themselves: the dynamic phase (coverage tracer on) leaves a counter in a
# directory it makes read-only, which an emptying that ignores errors cannot remove; every run
# of the mutation phase then knows its position. Run 0 is always the null entrypoint; the
# control is at 1, 2 or 3; the closing controls come after the last mutant. So: fail (a
# "kill") at every position but 1-3 and those after the last mutant, and the weak tests score
# (N-2)/N with every control survived (checked: before the scratch directories were unlocked
# and checked empty after each reset, this scored 92.3%: 12 killed, 1 survived).
COUNTER = """
import os
import sys

KEEP = '/tmp/keep'
MUTANTS = {mutants}


def position():
    if sys.gettrace() is not None:  # the dynamic phase
        os.makedirs(KEEP, exist_ok=True)
        with open(os.path.join(KEEP, 'n'), 'w') as handle:
            handle.write('0')
        os.chmod(KEEP, 0o555)
        return None
    try:
        with open(os.path.join(KEEP, 'n')) as handle:
            n = int(handle.read() or 0)
        with open(os.path.join(KEEP, 'n'), 'w') as handle:
            handle.write(str(n + 1))
    except (OSError, ValueError):
        return None
    return n
"""
DETECT_BY_POSITION = ("n = position()\n"
                      "    assert n is None or n in (1, 2, 3) or n > MUTANTS, 'a kill'")


def test_no_state_survives_from_one_run_of_the_mutation_phase_to_the_next() -> None:
    honest = evaluate(hostile("getsource"), policy=default_policy())
    mutants = honest.mutation.total
    assert mutants >= 8, honest.mutation
    tests = HEADER + COUNTER.format(mutants=mutants) + WEAK.format(detect=DETECT_BY_POSITION)
    report = evaluate(submission_from_files({"skill.toml": MANIFEST, "clamp.py": MODULE,
                                             "tests/test_clamp.py": tests.encode()}),
                      policy=default_policy())
    assert report.tests.failed == 0 and report.tests.passed == 1, report.tests
    m = report.mutation
    assert m.ran and m.problem is None, m
    assert m.survived >= 5 and m.score < 50, m  # every run started without the counter
    assert report.verdict is Verdict.failed
    assert ReasonCode.mutation_score_below_threshold in {r.code for r in report.reasons}
