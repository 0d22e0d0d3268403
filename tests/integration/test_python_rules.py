"""The harness's AST allow-list rules (sandgate_harness/pyrules.py) against annotated fixtures.

The whole static phase (``run_static``: semgrep, the unscanned-target check, then the
AST rules) runs inside the real sandbox image over ``tests/fixtures/pyrules``; the AST
rules' findings are compared with the annotations (format: tests/fixtures/pyrules/README.md,
the same as the semgrep fixtures'). Every AST rule needs a ``ruleid`` and an ``ok`` case.
Also here: a target above semgrep's default 1,000,000-byte cap is scanned to its end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sandgate_harness.pyrules import RULES

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "pyrules"
RULES_DIR = REPO_ROOT / "policies" / "semgrep"

pytestmark = pytest.mark.docker

STATIC_SCRIPT = r"""
import json, sys
from sandgate_harness.payload import read_payload, write_tree
from sandgate_harness.static import run_static
files = read_payload(sys.stdin.buffer)
skill = {k[6:]: v for k, v in files.items() if k.startswith("skill/")}
rules = {k[6:]: v for k, v in files.items() if k.startswith("rules/")}
write_tree("/work/skill", skill)
write_tree("/work/rules", rules)
print(json.dumps(run_static("/work/skill", "/work/rules", sorted(skill), timeout=100)))
"""
#: the same, with semgrep's per-rule timeout at 1 s (the harness's is 5 s): what fires is the
#: same mechanism, three timeouts later the file is skipped, in 3 s instead of 15
SHORT_RULE_TIMEOUT_SCRIPT = STATIC_SCRIPT.replace("timeout=100)", 'timeout=100, rule_timeout="1")')

ANNOTATION = re.compile(r"^#\s*(ruleid|ok):\s*(.+)$")
#: the only rule no fixture can trigger through the real engine (every target is scanned)
UNTRIGGERABLE = {"static-scan-incomplete"}


def static_phase(files: dict[str, bytes], script: str = STATIC_SCRIPT) -> dict:
    from sandgate.config import Settings
    from sandgate.evaluation import rules_files
    from sandgate.limits import Limits
    from sandgate.sandbox import connect, make_payload, require_image, run_sandbox

    settings = Settings()
    client = connect(settings)
    require_image(client, settings.image)
    payload = {f"skill/{name}": data for name, data in files.items()}
    payload.update({f"rules/{n}": data for n, data in rules_files(RULES_DIR).items()})
    run = run_sandbox(client, image=settings.image, payload=make_payload(payload),
                      limits=Limits(timeout_seconds=120, memory_mb=1024),
                      entrypoint=["python3", "-I", "-c", script])
    stdout = (run.harness or {}).get("stdout", "")
    try:
        return json.loads(stdout)
    except ValueError:
        raise AssertionError(f"the static phase gave no JSON (exit {run.exit_code}): "
                             f"{stdout[-2000:]} {run.harness}") from None


def annotations(text: str) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    ruleid: dict[int, set[str]] = {}
    ok: dict[int, set[str]] = {}
    pending: list[tuple[str, set[str]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        match = ANNOTATION.match(stripped)
        if match:
            pending.append((match.group(1), {r.strip() for r in match.group(2).split(",")}))
            continue
        if stripped and pending:
            for kind, rules in pending:
                (ruleid if kind == "ruleid" else ok).setdefault(number, set()).update(rules)
            pending = []
    return ruleid, ok


@pytest.fixture(scope="module")
def fixture_files() -> dict[str, bytes]:
    return {
        str(p.relative_to(FIXTURES)): p.read_bytes() for p in sorted(FIXTURES.rglob("*.py")) if p.name != "conftest.py"
    }


@pytest.fixture(scope="module")
def scanned(sandbox_image, fixture_files) -> dict:
    return static_phase(fixture_files)


def test_every_target_is_scanned(scanned, fixture_files) -> None:
    assert scanned["ran"], scanned
    assert set(scanned["scanned"]) == set(fixture_files)
    assert not [f for f in scanned["findings"] if f["rule_id"] == "static-scan-incomplete"]


def test_annotations(scanned, fixture_files) -> None:
    problems = []
    for path, data in fixture_files.items():
        found: dict[int, set[str]] = {}
        for f in scanned["findings"]:
            if f["path"] == path and f["rule_id"] in RULES:
                found.setdefault(f["line"], set()).add(f["rule_id"])
        want, ok = annotations(data.decode("utf-8"))
        for line in sorted(set(found) | set(want) | set(ok)):
            got = found.get(line, set())
            if line in want and got != want[line]:
                problems.append(f"{path}:{line}: expected {sorted(want[line])}, got {sorted(got)}")
            elif line in ok and got & ok[line]:
                problems.append(f"{path}:{line}: must not produce {sorted(got & ok[line])}")
            elif line not in want and got:
                problems.append(f"{path}:{line}: unannotated findings {sorted(got)}")
    assert not problems, "\n".join(problems)


def test_every_rule_has_both_cases(fixture_files) -> None:
    fired, quiet = set(), set()
    for data in fixture_files.values():
        want, ok = annotations(data.decode("utf-8"))
        fired.update(*want.values())
        quiet.update(*ok.values())
    assert set(RULES) - UNTRIGGERABLE <= fired, set(RULES) - UNTRIGGERABLE - fired
    assert set(RULES) - UNTRIGGERABLE <= quiet, set(RULES) - UNTRIGGERABLE - quiet
    assert fired | quiet <= set(RULES), (fired | quiet) - set(RULES)


def test_findings_carry_the_report_fields(scanned) -> None:
    ours = [f for f in scanned["findings"] if f["rule_id"] in RULES]
    assert ours
    for f in ours:
        assert set(f) == {"rule_id", "severity", "path", "line", "message"}
        assert f["severity"] == RULES[f["rule_id"]][0]
        assert f["line"] > 0 and f["message"]


def test_a_target_above_semgreps_default_cap_is_scanned_to_its_end(sandbox_image) -> None:
    # comments: cheap for the engine, so no rule times out (a timeout is a finding of its own)
    padding = b"".join(
        b"# padding line %07d of a file past semgrep's default cap\n" % i for i in range(17_000)
    )  # ~1.02 MB
    tail = b"import os\n\n\ndef run(cmd):\n    return os.system(cmd)\n"
    source = padding + tail
    assert 1_000_000 < len(source) <= 1024 * 1024
    result = static_phase({"big.py": source})
    assert result["ran"] and result["scanned"] == ["big.py"], result.get("scanned")
    line = source.count(b"\n")  # os.system is on the last line
    assert any(f["rule_id"] == "os-command-execution" and f["line"] == line for f in result["findings"]), [
        (f["rule_id"], f["line"]) for f in result["findings"]
    ][:20]
    assert not [f for f in result["findings"] if f["rule_id"] == "static-scan-incomplete"]


def test_a_rule_timeout_fails_closed(sandbox_image) -> None:
    """52,000 statements make semgrep's per-rule timeout fire (or, on a loaded machine, the
    static phase's own): the file is reported as not completely scanned (critical), never
    silently trusted."""
    source = b"".join(b"PAD_%07d = %d\n" % (i, i) for i in range(52_000)) + b"import os\n"
    assert 'rule_timeout="1"' in SHORT_RULE_TIMEOUT_SCRIPT
    result = static_phase({"big.py": source}, SHORT_RULE_TIMEOUT_SCRIPT)
    assert any(e.startswith("big.py: Timeout") or "timed out" in e for e in result["errors"]), result["errors"][:3]
    incomplete = [f for f in result["findings"] if f["rule_id"] == "static-scan-incomplete"]
    assert incomplete and incomplete[0]["severity"] == "critical" and incomplete[0]["path"] == "big.py"


PRESTARTED_SHORT_RULE_TIMEOUT_SCRIPT = r"""
import json, sys
from sandgate_harness.payload import read_payload, write_tree
from sandgate_harness.static import PrestartedEngine, run_static
engine = PrestartedEngine("/work/skill", rule_timeout="1")
files = read_payload(sys.stdin.buffer)
skill = {k[6:]: v for k, v in files.items() if k.startswith("skill/")}
rules = {k[6:]: v for k, v in files.items() if k.startswith("rules/")}
write_tree("/work/skill", skill)
write_tree("/work/rules", rules)
assert engine.accepts(rules)
print(json.dumps(run_static("/work/skill", "/work/rules", sorted(skill), timeout=100, engine=engine)))
"""


def test_a_rule_timeout_in_the_prestarted_engine_fails_closed(sandbox_image) -> None:
    """The engine the harness prestarts (the default path) reports a timeout in its own JSON
    shape (``error_type``, ``location.path``): the file is still not trusted. It had been: the
    rules that timed out reported nothing, and nothing said so."""
    source = b"".join(b"PAD_%07d = %d\n" % (i, i) for i in range(52_000)) + b"import os\nos._exit(0)\n"
    result = static_phase({"big.py": source, "small.py": b"X = 1\n"}, PRESTARTED_SHORT_RULE_TIMEOUT_SCRIPT)
    assert any(e.startswith("big.py: Timeout") or "timed out" in e for e in result["errors"]), result["errors"][:3]
    incomplete = [f for f in result["findings"] if f["rule_id"] == "static-scan-incomplete"]
    assert [(f["severity"], f["path"]) for f in incomplete] == [("critical", "big.py")], result["findings"]


BOTH_ENGINES_SCRIPT = r"""
import json, sys
from sandgate_harness.payload import read_payload, write_tree
from sandgate_harness.static import PrestartedEngine, run_static
engine = PrestartedEngine("/work/skill")
files = read_payload(sys.stdin.buffer)
skill = {k[6:]: v for k, v in files.items() if k.startswith("skill/")}
rules = {k[6:]: v for k, v in files.items() if k.startswith("rules/")}
write_tree("/work/skill", skill)
write_tree("/work/rules", rules)
accepted = engine.accepts(rules)
hot = run_static("/work/skill", "/work/rules", sorted(skill), timeout=100, engine=engine if accepted else None)
cold = run_static("/work/skill", "/work/rules", sorted(skill), timeout=100)
print(json.dumps({"accepted": accepted, "hot": hot, "cold": cold}))
"""


def test_the_prestarted_engine_finds_what_the_cold_scan_finds() -> None:
    """Every semgrep and AST-rule fixture (their `paths:` filters, nosemgrep comments, test files
    included), scanned by the engine the harness prestarts with the image's rules and by the cold
    CLI on the payload's rules: the same findings, the same files scanned, no errors."""
    semgrep_cases = REPO_ROOT / "tests" / "fixtures" / "semgrep" / "cases"
    files = {f"semgrep/{p.relative_to(semgrep_cases)}": p.read_bytes() for p in sorted(semgrep_cases.rglob("*.py"))}
    files.update({f"pyrules/{p.name}": p.read_bytes() for p in sorted(FIXTURES.glob("*.py"))})
    result = static_phase(files, BOTH_ENGINES_SCRIPT)
    assert result["accepted"], "the image's baked rules are not the platform's: rebuild the image"
    hot, cold = result["hot"], result["cold"]

    def found(phase: dict) -> set[tuple]:
        return {(f["rule_id"], f["severity"], f["path"], f["line"]) for f in phase["findings"]}

    assert hot["ran"] and cold["ran"] and hot["errors"] == cold["errors"] == []
    assert hot["scanned"] == cold["scanned"] == sorted(files)
    assert len(found(cold)) > 100
    assert found(hot) == found(cold), (sorted(found(hot) - found(cold)), sorted(found(cold) - found(hot)))
