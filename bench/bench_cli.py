"""CLI start-up benchmark: what does a short ``sandgate`` command cost, against the interpreter's own start-up?

::

    python bench/bench_cli.py                 # 15 runs per command, embedded and remote
    python bench/bench_cli.py --runs 30
    python bench/bench_cli.py --check         # exit 1 when a target is missed
    python bench/bench_cli.py --no-remote     # without the `sandgate serve` part

Every command runs in a fresh interpreter (``python -m sandgate ...``, the
interpreter running the benchmark), ``--runs`` times; the table prints per
command the wall time p50, the ratio against the floor, and how many modules
the command had imported when it ended (``sys.modules``, counted in one extra
run). The floors are measured in the same run, interleaved with the
commands: ``python -c pass`` (the interpreter) and ``python -c "import
typer"`` (the CLI framework every command needs).

Embedded commands run against a small SQLite store the benchmark creates in a
temporary ``SANDGATE_HOME`` (a few skills and versions, submitted with
``--no-wait``: queued, so no Docker engine is needed). Remote ones run with
``SANDGATE_URL`` against a ``sandgate serve`` the benchmark starts on
127.0.0.1 over that store, with an admin key it creates.

Two more floors are the framework's own: a typer app with one command and
one flag, run (typer 0.29 coerces every parameter through a pydantic
TypeAdapter, so any command pays for pydantic; column ``x app``), and the
same app's ``--help`` (typer's help renderer loads rich, markdown-it and
pygments). ``evaluate`` runs on a submission that
intake rejects (a syntax error: no sandbox, no Docker engine needed) beside
the same library call in a plain script (``evaluate_path``); the difference
of their p50s is the CLI's overhead.

Targets: ``--help``, ``skills``, ``versions``, ``history``, ``show`` (embedded
and remote) p50 <= 0.25 s; ``evaluate``'s overhead over the library call
<= 0.3 s. Compile bytecode first (``make setup`` does: ``--compile-bytecode``);
with ``PYTHONDONTWRITEBYTECODE=1`` and no ``.pyc`` files every run compiles
the sources again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 0.25
COUNT_MODULES = ("import atexit, sys\n"
                 "atexit.register(lambda: print('MODULES', sum(m is not None for m in sys.modules.values()),"
                 " file=sys.stderr))\n")
OVERHEAD_TARGET_SECONDS = 0.3
EXPECTED_CODE = {"evaluate (rejected)": 1}  # rejected: exit 1
SKILLS = ["text_stats", "text_stats_v2", "unit_convert", "csv_summary"]
PY = sys.executable
#: the framework's own floor: a typer app with a callback and one command with one flag, run
TYPER_APP = (
    "from typing import Annotated\n"
    "import typer\n"
    "app = typer.Typer(add_completion=True)\n"
    "@app.callback()\n"
    "def main(verbose: bool = False) -> None: pass\n"
    "@app.command()\n"
    "def skills(as_json: Annotated[bool, typer.Option('--json')] = False) -> None: print('no skills yet')\n"
    "app(['skills', '--json'])\n"
)
#: the library call `sandgate evaluate PATH` makes, in a script
EVALUATE_LIBRARY = (
    "import sys\n"
    "from sandgate.config import get_settings\n"
    "from sandgate.evaluation import evaluate_path\n"
    "from sandgate.policy import load_policy\n"
    "settings = get_settings()\n"
    "report = evaluate_path(sys.argv[1], policy=load_policy(settings.policy), settings=settings)\n"
    "print(report.verdict.value)\n"
)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDGATE_")}
    env.update({"SANDGATE_HOME": str(home), "SANDGATE_API_READY_REQUIRES_ENGINE": "false",
                "SANDGATE_POLICY": "default", "COLUMNS": "120"})
    env.update(extra)
    return env


def _sandgate(*args: str) -> list[str]:
    return [PY, "-m", "sandgate", *args]


def _run(argv: list[str], env: dict[str, str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def _modules(argv: list[str], env: dict[str, str]) -> int:
    """How many modules the command had imported at exit (one extra run, through -c)."""
    code = COUNT_MODULES + "import runpy, sys; sys.argv = ['sandgate', *sys.argv[1:]]; runpy.run_module('sandgate')"
    args = argv[3:] if argv[1:3] == ["-m", "sandgate"] else None
    if args is None:  # a floor
        done = _run([PY, "-c", COUNT_MODULES + argv[2]], env, check=False)
    else:
        done = _run([PY, "-c", code, *args], env, check=False)
    for line in done.stderr.splitlines():
        if line.startswith("MODULES "):
            return int(line.split()[1])
    return -1


def _time_all(cases: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, list[float]]:
    """Interleaved: every round runs every case once, so load on the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, (argv, env) in cases.items():  # warm the page cache, check they work
        done = _run(argv, env, check=False)
        if done.returncode != EXPECTED_CODE.get(name, 0):
            raise SystemExit(f"{name}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    for _ in range(runs):
        for name, (argv, env) in cases.items():
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                           check=False)
            times[name].append(time.perf_counter() - t0)
    return times


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(_sandgate("serve", "--port", str(port)), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sandgate serve exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("sandgate serve did not listen within 30 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--no-remote", action="store_true", help="skip the commands against `sandgate serve`")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="sandgate-bench-cli-"))
    server = None
    try:
        env = _env(home)
        for skill in SKILLS:  # a few skills; text_stats gets three versions
            _run(_sandgate("submit", "--no-wait", str(REPO / "examples/skills" / skill)), env)
        for extra in ("text_stats_v4", "text_stats_bad"):
            _run(_sandgate("submit", "--no-wait", str(REPO / "examples/skills" / extra)), env)
        skill = json.loads(_run(_sandgate("skills", "--json"), env).stdout)[0]["name"]

        bad = home / "broken"
        (bad / "tests").mkdir(parents=True)
        (bad / "skill.toml").write_text('name = "broken"\nentrypoint = "broken:f"\nrequirements = []\n')
        (bad / "broken.py").write_text("def f(:\n    pass\n")
        (bad / "tests" / "test_broken.py").write_text("from broken import f\n\n\ndef test_f():\n    assert f\n")

        floors = {"python -c pass": [PY, "-c", "pass"], "python -c 'import typer'": [PY, "-c", "import typer"],
                  "typer app, one command": [PY, "-c", TYPER_APP],
                  "typer app --help": [PY, "-c", TYPER_APP.replace("app(['skills', '--json'])", "app(['--help'])")]}
        commands = {
            "--help": ["--help"], "skills": ["skills"], "versions": ["versions", skill],
            "history": ["history", skill], "show": ["show", f"{skill}@1"],
        }
        cases: dict[str, tuple[list[str], dict[str, str]]] = {k: (v, env) for k, v in floors.items()}
        targets = set()
        for name, cmd in commands.items():
            cases[name] = (_sandgate(*cmd), env)
            targets.add(name)
        cases["evaluate (rejected)"] = (_sandgate("evaluate", str(bad)), env)
        cases["library evaluate_path"] = ([PY, "-c", EVALUATE_LIBRARY, str(bad)], env)
        if not args.no_remote:
            token = json.loads(_run(_sandgate("keys", "create", "bench", "--role", "admin", "--rate", "1000",
                                              "--burst", "1000", "--json"), env).stdout)["token"]
            server, url = _start_server(env)
            remote_env = _env(home, SANDGATE_URL=url, SANDGATE_API_KEY=token)
            for name, cmd in commands.items():
                if name != "--help":
                    cases[f"remote {name}"] = (_sandgate(*cmd), remote_env)
                    targets.add(f"remote {name}")

        times = _time_all(cases, args.runs)
        modules = {name: _modules(argv_, env_) for name, (argv_, env_) in cases.items()}
        floor = statistics.median(times["python -c pass"])
        typer_floor = statistics.median(times["python -c 'import typer'"])
        app_floor = statistics.median(times["typer app, one command"])
        print(f"python {sys.version.split()[0]} ({PY}), {args.runs} runs per command, "
              f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
        print(f"{'command':<28}{'p50 s':>8}{'min s':>8}{'x pass':>8}{'x typer':>9}{'x app':>7}{'modules':>9}  target")
        missed = []
        for name, ts in times.items():
            p50 = statistics.median(ts)
            verdict = ""
            if name in targets:
                ok = p50 <= TARGET_SECONDS
                verdict = f"<= {TARGET_SECONDS} s {'ok' if ok else 'MISSED'}"
                if not ok:
                    missed.append(name)
            print(f"{name:<28}{p50:>8.3f}{min(ts):>8.3f}{p50 / floor:>8.1f}{p50 / typer_floor:>9.2f}"
                  f"{p50 / app_floor:>7.2f}{modules[name]:>9}  {verdict}")
        overhead = statistics.median(times["evaluate (rejected)"]) - statistics.median(times["library evaluate_path"])
        ok = overhead <= OVERHEAD_TARGET_SECONDS
        if not ok:
            missed.append("evaluate overhead")
        print(f"evaluate's overhead over the library call: {overhead:.3f} s (p50 difference)  "
              f"<= {OVERHEAD_TARGET_SECONDS} s {'ok' if ok else 'MISSED'}")
        if missed:
            print(f"missed: {', '.join(missed)}")
        return 1 if (args.check and missed) else 0
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
