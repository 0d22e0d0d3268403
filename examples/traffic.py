"""Traffic for a canary: calls a skill through ``registry.call`` and prints a summary every second.

::

    python examples/traffic.py text_stats --seconds 30 --texts "The cat sat." "Crème brûlée."

Each call is routed like any consumer's (candidate or active, by weight) and
counted by the registry's runtime evidence, which a background thread sends to
the store every ``--report-interval`` seconds: this process *is* the evidence
a canary is judged on. A summary line per second on stdout::

    traffic | 1480 calls, 0 failed; served: text_stats@1 1333 (0 errors), text_stats@4 147 (52 errors, 52 fallbacks)

(with ``fallback = true`` a candidate's failure is answered by the active
version, so the caller sees no failure while the candidate's errors are
counted). Exits after ``--seconds`` (0: until interrupted) with one last line.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from sandgate.registry import connect

DEFAULT_TEXTS = ["The cat sat. The dog ran!", "One line of text", "Crème brûlée, s'il vous plaît.",
                 "two\nlines\n", "Naïve café owners sell 3.14 pies."]


def summary(registry: object, name: str, calls: int, failed: int) -> str:
    totals = registry.runtime_stats()["totals"]  # type: ignore[attr-defined]
    served = ", ".join(f"{ref} {t['calls']} ({t['errors']} errors"
                       f"{', ' + str(t['fallbacks']) + ' fallbacks' if t['fallbacks'] else ''})"
                       for ref, t in totals.items() if ref.startswith(f"{name}@"))
    return f"traffic | {calls} calls, {failed} failed; served: {served or '(counts follow)'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("skill")
    p.add_argument("--db", default=None, help="store URL (default: the settings' store)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--pause", type=float, default=0.002, help="seconds between calls")
    p.add_argument("--report-interval", type=float, default=0.5)
    p.add_argument("--texts", nargs="*", default=DEFAULT_TEXTS)
    opts = p.parse_args(argv)
    calls = failed = 0
    with connect(opts.db, report_interval=opts.report_interval) as registry:
        end = time.monotonic() + opts.seconds if opts.seconds > 0 else float("inf")
        next_line = time.monotonic() + 1.0
        try:
            for text in itertools.cycle(opts.texts):
                if time.monotonic() >= end:
                    break
                try:
                    registry.call(opts.skill, text)
                except Exception:  # counted; the loop goes on
                    failed += 1
                calls += 1
                if time.monotonic() >= next_line:
                    print(summary(registry, opts.skill, calls, failed), flush=True)
                    next_line += 1.0
                time.sleep(opts.pause)
        except KeyboardInterrupt:
            pass
        registry.flush_evidence(5)
        print(summary(registry, opts.skill, calls, failed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
