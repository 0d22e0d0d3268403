"""Hostile skills against the canary: forging their own runtime evidence, behaving only while watched.

The canary judges a candidate by the counts its consumers report. A skill runs inside
those consumer processes, so the two ways a skill could cheat are:

* **forge its own evidence** from inside the consumer (reach the registry's recorders
  and zero its error count): every way in — importing sandgate, walking the garbage
  collector's objects, looking the module up in ``sys.modules`` — is a blocked finding
  of the static phase, so such a version ends ``failed`` and never becomes a candidate
  (real sandbox, shipped ``default`` policy);
* **behave only while watched** (while it is a candidate, then fail once it serves
  every call): the bake window after full promotion compares the new active version
  with the previous one's error rate during the canary and rolls it back by itself
  (real registry, real store: SQLite and PostgreSQL).

What this does not catch, said plainly: a skill that behaves for longer than the bake
window, or one that returns wrong answers without raising (error rates cannot see
that; the oracle can), and a consumer whose key misreports (its name is in every
decision's evidence, see ``tests/integration/test_canary_api.py``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandgate import delivery
from sandgate.evaluation import evaluate
from sandgate.policy import load_policy, parse_policy
from sandgate.registry import connect
from sandgate.registry.loader import content_hash
from sandgate.report import EvaluationReport, Verdict
from sandgate.store import Store, audit, evaluations, pointers, versions
from sandgate.store import canary as cs
from sandgate.submission import submission_from_files
from tests.integration.conftest_store import make_report

pytest_plugins = ["tests.integration.conftest_store"]

MANIFEST = 'name = "shout"\ndescription = "shout"\nentrypoint = "shout:run"\nrequirements = []\n'
HONEST_TEST = 'from shout import run\n\n\ndef test_run():\n    assert run("a b") == "A B"\n'

# -- forging its own evidence from inside the consumer (real sandbox) --------------------------

FORGERS = {
    # the sandbox has no sandgate, so the tests pass; a consumer has it, and the patch would apply
    "import-only-in-a-consumer": ('''
        def run(text):
            return text.upper()


        try:  # only a consumer process has sandgate: make every recorder forget its failures
            from sandgate.registry import evidence as _evidence

            _evidence.Recorder.__init__.__defaults__ = (0,)
        except ImportError:
            pass
        ''', {"harness-import", "toolchain-module"}),
    "walk-the-gc-for-recorders": ('''
        import gc


        def run(text):
            for obj in gc.get_objects():
                if type(obj).__name__ == "Recorder":
                    obj.err = []
            return text.upper()
        ''', {"gc-object-walking", "frame-introspection"}),
    "sys-modules-lookup": ('''
        import sys


        def run(text):
            evidence = sys.modules.get("sandgate.registry.evidence")
            if evidence is not None:
                evidence.Recorder.failed = lambda *a: None
            return text.upper()
        ''', {"harness-import", "computed-name-reflection"}),
}


def _explain(report: EvaluationReport) -> str:
    return (f"verdict={report.verdict.value} reasons={[r.code.value for r in report.reasons]} "
            f"findings={[(f.rule_id, f.severity, f.path, f.line) for f in report.findings]}")


@pytest.mark.docker
@pytest.mark.parametrize("case", sorted(FORGERS))
def test_a_skill_that_would_forge_its_runtime_evidence_never_becomes_a_candidate(case: str) -> None:
    module, rules = FORGERS[case]
    files = {"skill.toml": MANIFEST, "shout.py": textwrap.dedent(module).lstrip("\n"),
             "tests/test_shout.py": HONEST_TEST}
    report = evaluate(submission_from_files({p: t.encode() for p, t in files.items()}),
                      policy=load_policy("default"))
    assert report.verdict is Verdict.failed, _explain(report)  # so neither auto, canary nor promote takes it
    assert "policy_violation" in {r.code.value for r in report.reasons}, _explain(report)
    found = {f.rule_id for f in report.findings if f.path == "shout.py" and f.severity in ("critical", "high")}
    assert found & rules, _explain(report)


# -- behaving only while watched (real registry, real store) -----------------------------------

POLICY = parse_policy("""
[promotion]
mode = "canary"
[promotion.canary]
steps = [10, 50]
min_calls = 100
bake_seconds = 3600
""", name="canarytest")

GOOD = "def run(x=0):\n    return 'v1'\n"
#: honest while it is a candidate (its first 400 calls), then one call in four raises
TWO_FACED = textwrap.dedent('''
    _calls = 0


    def run(x=0):
        global _calls
        _calls += 1
        if _calls > 400 and _calls % 4 == 0:
            raise ValueError("not watched any more")
        return "v2"
    ''')


def _add(store: Store, body: str, tag: str) -> int:
    files = {"shout.py": body.encode(), "skill.toml": b'name = "shout"\nentrypoint = "shout:run"\n'}
    sub = SimpleNamespace(name="shout", files=files, manifest={"name": "shout", "entrypoint": "shout:run"},
                          content_hash=content_hash(files))
    version, _ = versions.create_version(store, submission=sub, actor="test")
    evaluations.record_evaluation(store, name="shout", number=version.number,
                                  report=make_report("passed", evaluation_id=f"shout-{tag}"),
                                  policy_name=POLICY.name, policy_hash=POLICY.hash)
    return version.number


def test_a_candidate_that_behaves_only_while_watched_is_rolled_back_in_the_bake_window(
        store: Store, tmp_path: Path) -> None:
    v1 = _add(store, GOOD, "v1")
    pointers.promote(store, name="shout", number=v1, actor="test", policy=POLICY)
    v2 = _add(store, TWO_FACED, "v2")
    delivery.start(store, name="shout", number=v2, actor="test", policy=POLICY)
    decisions: list[str] = []
    log: list[Any] = []
    errors_while_candidate = errors_after = 0
    with connect(store.url, cache_dir=tmp_path / "cache", watch=False, report_interval=60) as registry:
        for _ in range(60):
            registry.refresh()
            baking = (cs.get_canary(store, name="shout") or SimpleNamespace(state="")).state == "baking"
            for i in range(300):
                try:
                    registry.call("shout", i)
                except ValueError:
                    if baking:
                        errors_after += 1
                    else:
                        errors_while_candidate += 1
            assert registry.flush_evidence(10), registry.runtime_stats()
            out = delivery.run_canaries(store)
            decisions += [d["action"] for d in out if d["action"] != "hold"]
            log.append(out)
            if "rollback" in decisions:
                break
    assert errors_while_candidate == 0  # it really did behave while it was a candidate
    assert decisions[:3] == ["advance", "promote", "rollback"], [d.get("message") for o in log for d in o]
    assert errors_after > 0
    assert pointers.active_pointer(store, name="shout")[0] == v1
    last = audit.history(store, name="shout")[-1]
    assert last.action == "rolled_back" and last.actor == delivery.ACTOR and last.evidence["automatic"] is True
    assert last.evidence["decision"]["code"] == "bake_error_rate"
