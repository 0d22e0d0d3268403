"""Evaluation overhead against a floor measured in the same run.

floor: a bare `docker run` under the same hardening, same image, same payload on
stdin, doing the same work (semgrep native scan with the same rules, pytest under
coverage with branch measurement, a JSON coverage report) with no harness.
sandgate: `sandgate.evaluation.evaluate()` end to end (engine connect, image
check, payload, sandbox, harness, parsing, gates), with the mutation phase off:
the floor does no such work (bench_mutation.py measures that phase).

Runs are interleaved (floor, sandgate, floor, ...) so drift hits both alike.
Prints medians, the ratio sandgate/floor (target <= 1.15) and per-phase timings
(target: static phase <= 0.3 s for a small skill).

    python bench/bench_evaluate.py [--runs 10] [--skill examples/skills/text_stats] [--runtime runc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOOR_SCRIPT = r"""
import json, os, subprocess, sys, tarfile
files = {}
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for m in tar:
        if m.isreg():
            files[m.name] = tar.extractfile(m).read()
for name, data in files.items():
    path = os.path.join("/work", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
config = json.loads(files["config.json"])
os.chdir("/work/skill")
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "SEMGREP_ENABLE_VERSION_CHECK": "0"}
targets = sorted(n[len("skill/"):] for n in files if n.startswith("skill/") and n.endswith(".py"))
scan = subprocess.run(["osemgrep", "scan", "--experimental", "--config", "/work/rules", "--json",
                       "--disable-nosem", "--x-ignore-semgrepignore-files", "--metrics=off", *targets],
                      capture_output=True, env=env)
tests = subprocess.run([sys.executable, "-m", "coverage", "run", "--branch", "--source", ".",
                        "--data-file", "/tmp/.coverage", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--import-mode=importlib", *config["tests"]],
                       capture_output=True, env={**env, "PYTHONPATH": "/work/skill"})
report = subprocess.run([sys.executable, "-I", "-m", "coverage", "json", "--data-file", "/tmp/.coverage",
                         "-o", "/tmp/cov.json"], capture_output=True, env=env)
print(json.dumps({"scan_rc": scan.returncode, "findings": len(json.loads(scan.stdout)["results"]),
                  "pytest_rc": tests.returncode, "cov_rc": report.returncode}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skill", type=Path, default=ROOT / "examples" / "skills" / "text_stats")
    parser.add_argument("--runtime", default="runc", choices=["runc", "runsc"])
    args = parser.parse_args()

    from sandgate.config import get_settings
    from sandgate.evaluation import evaluate, rules_files
    from sandgate.policy import load_policy, parse_policy
    from sandgate.sandbox import connect, make_payload, run_sandbox
    from sandgate.submission import load_submission

    settings = get_settings()
    base = load_policy(settings.policy)
    data = base.model_dump(mode="json", exclude={"name"})
    data["limits"]["runtime"] = args.runtime
    data["mutation"]["max_mutants"] = 0  # not in the floor; see bench_mutation.py
    data["gates"]["min_mutation_score"] = 0.0
    policy = parse_policy(data, name=f"bench-{args.runtime}")
    submission = load_submission(args.skill)
    client = connect(settings)

    files = {f"skill/{p}": b for p, b in submission.files.items()}
    files.update({f"rules/{n}": b for n, b in rules_files(settings.policies_dir / "semgrep").items()})
    files["config.json"] = json.dumps({"tests": submission.test_files()}).encode()
    payload = make_payload(files)
    limits = policy.limits

    def floor_once() -> float:
        t = time.perf_counter()
        run = run_sandbox(client, image=settings.image, payload=payload, limits=limits,
                          entrypoint=["python3", "-I", "-c", FLOOR_SCRIPT])
        elapsed = time.perf_counter() - t
        out = json.loads(run.harness["stdout"].strip().splitlines()[-1])
        assert out["scan_rc"] == 0 and out["pytest_rc"] == 0 and out["cov_rc"] == 0, out
        return elapsed

    phases: dict[str, list[float]] = {}

    def sandgate_once() -> float:
        t = time.perf_counter()
        report = evaluate(submission, policy=policy, settings=settings)
        elapsed = time.perf_counter() - t
        assert report.verdict.value == "passed", report.reasons
        for key, value in report.timings.items():
            phases.setdefault(key, []).append(value)
        return elapsed

    floor_once(), sandgate_once()  # warm the page cache and the engine
    floors, ours = [], []
    for _ in range(args.runs):
        floors.append(floor_once())
        ours.append(sandgate_once())
    floor, end_to_end = statistics.median(floors), statistics.median(ours)
    print(f"skill: {submission.name} ({len(submission.files)} files), runtime {args.runtime}, {args.runs} runs each")
    print(f"floor (bare hardened docker run, same work): median {floor:.3f}s  min {min(floors):.3f}s")
    print(f"sandgate evaluate end to end:                median {end_to_end:.3f}s  min {min(ours):.3f}s")
    print(f"ratio sandgate/floor: {end_to_end / floor:.3f}  (target <= 1.15)")
    static = statistics.median(phases.get("static", [0.0]))
    print(f"static phase (semgrep) median: {static:.3f}s  (target <= 0.300s)")
    print("per-phase medians: " + ", ".join(f"{k} {statistics.median(v):.3f}s" for k, v in sorted(phases.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
