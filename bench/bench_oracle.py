"""What the oracle phase adds to an evaluation, for 50 calls, against the same evaluation without it.

floor: ``evaluate(..., phases=("static", "dynamic"))`` — the evaluation as it was.
oracle: ``evaluate(...)`` with the oracle phase: the entrypoint served in a second
sandbox (started beside the dynamic phase), 50 declared examples sent one at a
time and judged by the controller (contract inputs off, so exactly 50 calls).

Runs are interleaved (floor, oracle, floor, ...) so drift hits both alike. Prints
the medians, the added wall time (target <= 0.3 s: the median of the paired
differences, each oracle run minus the floor run just before it), the oracle's
critical path (``timings.oracle``: from the end of the dynamic phase to the end
of the evaluation) and the load average (on a machine whose cores are busy the
second sandbox's start costs wall time it does not cost on idle cores).

``--alternative`` also measures the design not taken: the server started as a
fresh process *inside* an already running sandbox (what the harness would do
by exec'ing into it after the dynamic phase), timed from spawn to its ready
frame, against what the second sandbox costs (create + start, ready, remove).

    python bench/bench_oracle.py [--runs 10] [--calls 50] [--runtime runc] [--alternative]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

MODULE = b'''def add(a: int, b: int) -> int:
    """The sum of a and b."""
    return a + b
'''
TESTS = b'''from adder import add


def test_add():
    assert add(1, 2) == 3
    assert add(-1, 1) == 0
'''


IN_SANDBOX_SPAWN = r"""
import io, json, os, struct, subprocess, sys, tarfile, time
def frame(b):
    return struct.pack(">I", len(b)) + b
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, data in (("skill/adder.py", ADDER), ("serve.json", b'{"module": "adder", "function": "add"}')):
        info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
out = []
for _ in range(RUNS):
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-I", "-m", "sandgate_harness.serve"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/tmp")
    p.stdin.write(frame(buf.getvalue())); p.stdin.flush()
    for _frame in range(2):  # hello, ready
        n = struct.unpack(">I", p.stdout.read(4))[0]; p.stdout.read(n)
    out.append(time.monotonic() - t)
    p.stdin.close(); p.wait()
    subprocess.run(["rm", "-rf", "/work/skill"])
print(json.dumps(out))
"""


def alternative(runs: int, runtime: str) -> dict[str, float]:
    """Median seconds from spawning the server in a running sandbox to its ready frame."""
    from sandgate.config import get_settings
    from sandgate.limits import Limits
    from sandgate.sandbox import connect, make_payload, run_sandbox

    settings = get_settings()
    script = IN_SANDBOX_SPAWN.replace("ADDER", repr(MODULE)).replace("RUNS", str(runs))
    run = run_sandbox(connect(settings), image=settings.image, payload=make_payload({"x": b""}),
                      limits=Limits(runtime=runtime, timeout_seconds=60),
                      entrypoint=["python3", "-I", "-c", script])
    seconds = json.loads(run.harness["stdout"].strip().splitlines()[-1])
    return {"in_sandbox_spawn_to_ready_median_s": round(statistics.median(seconds), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--runtime", default="runc", choices=["runc", "runsc"])
    parser.add_argument("--alternative", action="store_true")
    args = parser.parse_args()

    from sandgate.config import get_settings
    from sandgate.evaluation import evaluate
    from sandgate.policy import load_policy, parse_policy
    from sandgate.submission import submission_from_files

    settings = get_settings()
    data = load_policy(settings.policy).model_dump(mode="json", exclude={"name"})
    data["limits"]["runtime"] = args.runtime
    data["oracle"]["contract_inputs"] = 0
    data["gates"] = {k: v for k, v in data["gates"].items() if v is not None}
    policy = parse_policy(data, name=f"bench-oracle-{args.runtime}")
    examples = "".join(f"[[examples]]\nargs = [{i}, {i * 7}]\nexpect = {i * 8}\n\n" for i in range(args.calls))
    manifest = f'name = "adder"\nentrypoint = "adder:add"\n\n{examples}'.encode()
    submission = submission_from_files({"skill.toml": manifest, "adder.py": MODULE,
                                        "tests/test_adder.py": TESTS})

    floor, oracle, parts = [], [], []
    evaluate(submission, policy=policy)  # warm: image check, engine client
    for _ in range(args.runs):
        t = time.monotonic()
        base = evaluate(submission, policy=policy, phases=("static", "dynamic"))
        floor.append(time.monotonic() - t)
        t = time.monotonic()
        report = evaluate(submission, policy=policy)
        oracle.append(time.monotonic() - t)
        if base.verdict.value != "passed" or report.verdict.value != "passed":
            print(f"unexpected verdicts {base.verdict.value}/{report.verdict.value}: {report.reasons}",
                  file=sys.stderr)
            return 1
        assert report.oracle is not None and report.oracle.calls == {"example": args.calls}
        assert report.oracle.passed == {"example": args.calls}
        parts.append(report.oracle.timings)

    f, o = statistics.median(floor), statistics.median(oracle)
    added = statistics.median(b - a for a, b in zip(floor, oracle, strict=True))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    keys = sorted({k for p in parts for k in p})
    medians = {k: round(statistics.median(p.get(k, 0.0) for p in parts), 4) for k in keys}
    print(json.dumps({
        "runs": args.runs, "calls": args.calls, "runtime": args.runtime,
        "floor_median_s": round(f, 4), "oracle_median_s": round(o, 4),
        "added_s": round(added, 4), "target_added_s": 0.3, "ratio": round(o / f, 3),
        "difference_of_medians_s": round(o - f, 4),
        "oracle_critical_path_median_s": round(statistics.median(p.get("total", 0.0) for p in parts), 4),
        "load_average_1min": load, "cpus": os.cpu_count(),
        "oracle_timings_median_s": medians,
        **(alternative(args.runs, args.runtime) if args.alternative else {}),
    }, indent=2))
    print(f"oracle phase, {args.calls} calls: +{added:.3f}s on a {f:.3f}s evaluation "
          f"(median of {args.runs}; target <= 0.3s) -> {'OK' if added <= 0.3 else 'OVER'}")
    return 0 if added <= 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())
