"""Skills with requirements: the first evaluation builds, the next ones reuse the derived image.

first: ``examples/skills/csv_report`` (pandas) with an empty wheelhouse and lock cache (a
temporary SANDGATE_HOME) and its derived image removed (it is named from this run's sandbox
image, so it is ours): prints the download and build time of that first evaluation.
then, interleaved, ``--runs`` times each (intake + evaluation, mutation phase off):
  floor: a small skill without requirements (plain sandbox image);
  deps:  the same skill requiring tabulate (and importing it): lock from the cache, derived
         image cached (the report must say ``built: false``).
Prints medians and the ratio deps/floor (target <= 1.10).

    python bench/bench_deps.py [--runs 7] [--no-first]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODULE = '''{imports}

def render(rows):
    """Rows (the first is the header) as a plain text table."""
    if not rows:
        raise ValueError("no rows")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
'''
TESTS = b'''import pytest
from table import render


def test_render():
    assert render([["a", "bb"], [1, 2]]) == "a  bb\\n1  2"


def test_empty():
    with pytest.raises(ValueError):
        render([])
'''


def skill(requirements: list[str]) -> dict[str, bytes]:
    listed = ", ".join(f'"{r}"' for r in requirements)
    imports = "import tabulate  # noqa: F401  (the requirement is really imported)" if requirements else ""
    return {
        "skill.toml": f'name = "table"\nentrypoint = "table:render"\nrequirements = [{listed}]\n'.encode(),
        "table.py": MODULE.format(imports=imports).encode(),
        "tests/test_table.py": TESTS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-first", action="store_true", help="skip the first (building) pandas evaluation")
    args = parser.parse_args()

    from sandgate.config import get_settings
    from sandgate.evaluation import evaluate
    from sandgate.policy import load_policy, parse_policy
    from sandgate.sandbox import connect
    from sandgate.sandbox.deps_image import derived_tag
    from sandgate.submission import load_submission, submission_from_files

    data = load_policy("default").model_dump(mode="json", exclude={"name"})
    data["mutation"]["max_mutants"] = 0
    data["gates"]["min_mutation_score"] = 0.0
    policy = parse_policy(data, name="bench-deps")

    if not args.no_first:
        with tempfile.TemporaryDirectory(prefix="sandgate-bench-deps-") as home:
            os.environ["SANDGATE_HOME"] = home
            get_settings.cache_clear()
            settings = get_settings()
            started = time.monotonic()
            sub = load_submission(ROOT / "examples" / "skills" / "csv_report")
            lock_seconds = time.monotonic() - started
            from sandgate import deps

            tag = derived_tag(settings.image, deps.parse_lock(sub.lock or b"").hash)
            client = connect(settings)
            try:
                client.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001 - not built yet
                pass
            report = evaluate(sub, policy=policy, settings=settings)
            d = report.dependencies
            assert d is not None and d.built, "the first evaluation must build"
            print(f"first evaluation (csv_report, pandas): verdict {report.verdict.value}, lock {lock_seconds:.1f}s "
                  f"(uv, cold cache), download {d.download_seconds:.1f}s, build {d.build_seconds:.1f}s, "
                  f"total {report.timings['total']:.1f}s; packages "
                  + ", ".join(f"{n}=={v}" for n, v in sorted(d.packages.items())))
        del os.environ["SANDGATE_HOME"]
        get_settings.cache_clear()

    settings = get_settings()
    warm = evaluate(submission_from_files(skill(["tabulate>=0.9"])), policy=policy, settings=settings)
    assert warm.verdict.value == "passed", warm.reasons
    evaluate(submission_from_files(skill([])), policy=policy, settings=settings)
    floor, withdeps = [], []
    for _ in range(args.runs):
        for files, out in ((skill([]), floor), (skill(["tabulate>=0.9"]), withdeps)):
            started = time.monotonic()
            report = evaluate(submission_from_files(files), policy=policy, settings=settings)
            out.append(time.monotonic() - started)
            assert report.verdict.value == "passed", report.reasons
            if out is withdeps:
                assert report.dependencies is not None and not report.dependencies.built, "a cached run built"
    f, d = statistics.median(floor), statistics.median(withdeps)
    print(f"floor (no requirements): median {f:.3f}s over {args.runs} runs")
    print(f"deps  (tabulate, cached): median {d:.3f}s over {args.runs} runs, no build")
    print(f"ratio deps/floor: {d / f:.3f} (target <= 1.10)")
    return 0 if d / f <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
