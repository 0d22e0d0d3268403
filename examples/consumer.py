"""A consumer process: keeps calling a skill and shows which version answered.

::

    python examples/consumer.py text_stats --calls 200 --interval 0.25 --args "The cat saw the dog."
    python examples/consumer.py text_stats --db postgresql+psycopg://sandgate@db/sandgate

One line per call on stdout, flushed at once (so a demo can tail it)::

    text_stats@1 -> {"characters": 20, "words": 5, ...}
    text_stats@2 -> {"characters": 20, "words": 5, ..., "sentences": 1}
    text_stats@- -> NotFound: skill 'text_stats' has no active version (...)

The version shown is the one that actually ran the call: each call takes a
handle pinned to the active version (``registry.get``) and calls through it.
Registry events (swaps, rollbacks, failed loads) go to stderr as ``# ...``
lines. A call that raises is printed and counted; the loop goes on. Exits 0
after ``--calls`` calls (0: until interrupted).

``--args`` values are parsed as JSON when they are valid JSON (``3``,
``[1, 2]``, ``{"a": 1}``, ``"text"``) and passed as plain strings otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from sandgate.errors import SandgateError
from sandgate.registry import RegistryEvent, connect


def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def render(result: Any) -> str:
    try:
        return json.dumps(result, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("skill", help="skill name")
    parser.add_argument("--db", default=None, help="store URL (default: the settings' store)")
    parser.add_argument("--calls", type=int, default=100, help="stop after N calls (0: run until interrupted)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between calls")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="registry poll interval (seconds)")
    parser.add_argument("--args", nargs="*", default=[], help="positional arguments for the skill (JSON or text)")
    opts = parser.parse_args(argv)
    args = [parse_arg(a) for a in opts.args]

    def on_event(event: RegistryEvent) -> None:
        print(f"# {event}", file=sys.stderr, flush=True)

    with connect(opts.db, poll_interval=opts.poll_interval, on_event=on_event) as registry:
        done = 0
        try:
            while opts.calls <= 0 or done < opts.calls:
                try:
                    with registry.get(opts.skill) as handle:
                        ref = handle.ref
                        try:
                            line = f"{ref} -> {render(handle.call(*args))}"
                        except Exception as exc:  # the skill raised: show it, keep going
                            line = f"{ref} -> error: {type(exc).__name__}: {exc}"
                except SandgateError as exc:
                    line = f"{opts.skill}@- -> {type(exc).__name__}: {exc}"
                print(line, flush=True)
                done += 1
                if opts.interval > 0 and (opts.calls <= 0 or done < opts.calls):
                    time.sleep(opts.interval)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
