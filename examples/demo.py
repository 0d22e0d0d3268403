"""The sandgate demo: the main job end to end on the embedded default.

SQLite under .sandgate/demo/ (fresh each run), the local Docker engine, the
example skills in examples/skills/. Every step is a real `sandgate` command,
printed before it runs, so the demo doubles as a tour of the CLI:

1. evaluate a skill in a sandbox and read its report
2. submit text_stats v1: evaluated, passes, auto-promoted
   ... a consumer process starts calling text_stats through the hot-reload
   registry and prints, for each call, the version that answered ("consumer |")
3. submit v2 (adds sentence counting): passes, promoted; the consumer switches
4. submit a bad v3 (an off-by-one the tests catch): the gates stop it, v2 stays active
5. roll back: v1 is active again, with no re-evaluation; the consumer follows
6. the history: every move with who, what, when and why
7. a canary: v4's tests pass but it raises on non-ASCII text; under the canary
   policy it serves 10 % of a traffic process's calls, the scheduler's
   sequential test sees its errors in the runtime counts and rolls it back by
   itself (fallback on: the traffic sees no failure)
8. a skill that requires pandas: its requirements are locked at intake (the lock is one of
   the version's files), evaluated in a derived sandbox image (the sandbox image + the lock's
   wheels, built offline once, then cached); `sandgate deps show` prints the lock
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ROOT / "examples" / "skills"
DEMO_HOME = ROOT / ".sandgate" / "demo"


def sandgate(*args: str, expect: int = 0) -> str:
    print(f"\n$ sandgate {' '.join(args)}", flush=True)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sandgate", *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    print(f"[exit {proc.returncode}, {time.monotonic() - started:.1f}s]", flush=True)
    if proc.returncode != expect:
        raise SystemExit(f"demo: `sandgate {' '.join(args)}` exited {proc.returncode}, expected {expect}")
    return proc.stdout


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def start_consumer() -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """examples/consumer.py in the background; its lines are echoed as they come."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "consumer.py"), "text_stats", "--calls", "0",
         "--interval", "0.75", "--args", "The cat sat. The dog ran!"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    seen: list[str] = []

    def echo() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip())
            print(f"    consumer | {line.rstrip()[:110]}", flush=True)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    return proc, seen, thread


def run_store_steps(seen: list[str]) -> None:
    step("3. submit text_stats v2 (adds sentence counting): passes and is promoted")
    sandgate("submit", str(SKILLS / "text_stats_v2"))
    wait_for_line(seen, "text_stats@2")

    step("4. submit a bad v3 (an off-by-one its own tests catch): the gates stop it, v2 stays active")
    sandgate("submit", str(SKILLS / "text_stats_bad"), expect=1)
    sandgate("versions", "text_stats")
    wait_for_line(seen, "text_stats@2")

    step("5. on call: roll back to what was active before the last move (no re-evaluation)")
    sandgate("rollback", "text_stats", "--reason", "demo: v2 misbehaves in production")
    wait_for_line(seen, "text_stats@1")
    sandgate("show", "text_stats")

    step("6. the history: who moved what, when and why")
    sandgate("history", "text_stats")


def run_canary_steps() -> None:
    step("7. a canary: v4's tests pass, but it raises on non-ASCII text (its tests never try any)")
    print("   a traffic process calls text_stats through the registry (some texts are not ASCII)", flush=True)
    traffic = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "traffic.py"), "text_stats", "--seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    lines: list[str] = []

    def echo() -> None:
        assert traffic.stdout is not None
        for line in traffic.stdout:
            lines.append(line.rstrip())

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        sandgate("submit", str(SKILLS / "text_stats_v4"), "--policy", "canary")
        sandgate("status", "text_stats")
        for _ in range(20):  # the scheduler's job (`sandgate scheduler` runs it every 5 s)
            time.sleep(1.5)
            out = sandgate("scheduler", "--once", "--job", "run_canaries")
            if '"rollback"' in out or '"promote"' in out:
                break
        sandgate("status", "text_stats")
        sandgate("history", "text_stats", "--limit", "4")
    finally:
        traffic.terminate()
        traffic.wait(timeout=10)
        reader.join(timeout=5)
    for line in lines[-3:]:
        print(f"    {line}", flush=True)


def _runs(served: list[str]) -> list[str]:
    """Collapse consecutive repeats: [@1, @1, @2, @2, @1] -> [@1, @2, @1]."""
    out: list[str] = []
    for ref in served:
        if not out or out[-1] != ref:
            out.append(ref)
    return out


def wait_for_line(seen: list[str], prefix: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seen and seen[-1].startswith(prefix):
            return
        time.sleep(0.05)
    raise SystemExit(f"demo: the consumer never served {prefix!r} (last: {seen[-1:]})")


def main() -> int:
    shutil.rmtree(DEMO_HOME, ignore_errors=True)
    DEMO_HOME.mkdir(parents=True)
    step("1. evaluate a skill in a fresh sandbox (no network, read-only root, no capabilities)")
    sandgate("evaluate", str(SKILLS / "csv_summary"))

    step("2. submit text_stats v1: stored, evaluated, passed, auto-promoted by the default policy")
    sandgate("submit", str(SKILLS / "text_stats"))

    step("   a consumer process starts calling text_stats through the hot-reload registry")
    consumer, seen, echo = start_consumer()
    try:
        wait_for_line(seen, "text_stats@1")
        run_store_steps(seen)
    finally:
        consumer.terminate()
        consumer.wait(timeout=10)
        echo.join(timeout=5)
    served = [line.split(" ", 1)[0] for line in seen if line.startswith("text_stats@")]
    failed = [line for line in seen if line.startswith("text_stats@") and " -> " in line
              and line.split(" -> ", 1)[1].split(":", 1)[0].endswith(("Error", "NotFound"))]
    print(f"\nthe consumer made {len(served)} calls without a restart ({len(failed)} failed); "
          f"the versions it used, in order: {' -> '.join(_runs(served))}")
    run_canary_steps()

    step("8. a skill with a third-party requirement (pandas): locked at intake against "
         "policies/packages.toml, evaluated in a derived image built offline (cached after the first run)")
    sandgate("evaluate", str(SKILLS / "csv_report"))
    sandgate("submit", str(SKILLS / "csv_report"))
    sandgate("deps", "show", "csv_report")

    if os.environ.get("SANDGATE_LLM_BASE_URL"):
        step("9. generate a skill with the configured OpenAI-compatible endpoint (generate, evaluate, repair)")
        sandgate("generate", "slugify", "--description",
                 "Turn a title into a lowercase URL slug: letters and digits kept, runs of anything "
                 "else collapsed to a single '-', no leading or trailing '-'.", "--attempts", "3")
    else:
        print("\n(step 9, generating a skill with an LLM, runs when SANDGATE_LLM_BASE_URL is set)")
    print("\ndemo finished: v1 active again, v3 never went live, v4 was rolled back by its canary, "
          "every move is in the audit log.")
    return 0


ENV = {
    **os.environ,
    "SANDGATE_DATABASE_URL": f"sqlite:///{DEMO_HOME / 'sandgate.db'}",
    "SANDGATE_ACTOR": "demo:operator",
    "COLUMNS": os.environ.get("COLUMNS", "120"),
}

if __name__ == "__main__":
    sys.exit(main())
