"""Harness entry point (PID 1 of the sandbox). See the package docstring."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from sandgate_harness import PROTOCOL
from sandgate_harness.mutation import summarise  # imported here: 10-20 ms after the phase otherwise
from sandgate_harness.payload import PayloadError, read_payload, write_tree
from sandgate_harness.procs import kill_all_but, kill_everything_else, wait_exit
from sandgate_harness.runner import HEADER, MAGIC
from sandgate_harness.static import PrestartedEngine, run_static

WORK = "/work"
SKILL_DIR = "/work/skill"
RULES_DIR = "/work/rules"
MAX_RESULT = 16 * 1024 * 1024


def _non_dumpable() -> None:
    """PR_SET_DUMPABLE=0: no ptrace, no /proc/1/{mem,fd,environ} for same-uid processes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; reported below
        pass


def _read_first(paths: list[str]) -> str | None:
    for path in paths:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            continue
    return None


def cgroup_stats() -> dict[str, Any]:
    """Peak memory, OOM kills and pids-limit hits, cgroup v2 or v1, best effort."""
    stats: dict[str, Any] = {"peak_memory_bytes": None, "oom_kills": None, "pids_max_hits": None}
    peak = _read_first(["/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes"])
    if peak and peak.strip().isdigit():
        stats["peak_memory_bytes"] = int(peak.strip())
    events = _read_first(["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"])
    if events:
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                stats["oom_kills"] = int(value)
    pids = _read_first(["/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"])
    if pids:
        for line in pids.splitlines():
            key, _, value = line.partition(" ")
            if key == "max" and value.strip().isdigit():
                stats["pids_max_hits"] = int(value)
    return stats


class _CappedReader(threading.Thread):
    """Drain a pipe into a bounded buffer; call on_overflow once when the cap is hit."""

    def __init__(self, fd: int, cap: int, on_overflow: Any = None) -> None:
        super().__init__(daemon=True)
        self.fd, self.cap, self.on_overflow = fd, cap, on_overflow
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            room = self.cap - self.size
            if room > 0:
                self.chunks.append(chunk[:room])
                self.size += min(room, len(chunk))
            if len(chunk) > room and not self.truncated:
                self.truncated = True
                if self.on_overflow is not None:
                    self.on_overflow()
        os.close(self.fd)

    def data(self) -> bytes:
        return b"".join(self.chunks)


def _kill_everything_else() -> None:
    kill_everything_else()


def parse_frames(key: bytes, data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Check the runner's frame stream; return its final result, or why there is none.

    The stream must be: numbered frames (0, 1, ...), each authentic; at most one
    ``collected`` frame, before any ``case``; one ``case`` per collected test at
    most, never for a test that was not collected; exactly one ``final`` frame, the
    last, whose summary agrees with the streamed frames. Anything else is
    tampering: the result is dropped (``None``) and the problem names it.
    """
    frames: list[dict[str, Any]] = []
    offset = 0
    while offset < len(data):
        head = data[offset:offset + HEADER]
        if len(head) < HEADER or head[:4] != MAGIC:
            return None, "the result channel carried bytes that are not a result frame (forged results)"
        seq, length = struct.unpack(">II", head[4:12])
        mac, payload = head[12:HEADER], data[offset + HEADER:offset + HEADER + length]
        if len(payload) != length:
            return None, "the result frame was cut short"
        expected = hmac.new(key, struct.pack(">I", seq) + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            return None, "a result frame failed authentication (forged results)"
        if seq != len(frames):
            return None, f"result frame {seq} arrived out of order (replayed or forged results)"
        try:
            body = json.loads(payload)
        except ValueError:
            return None, "an authentic result frame did not parse"
        if not isinstance(body, dict):
            return None, "an authentic result frame is not an object"
        frames.append(body)
        offset += HEADER + length
    if not frames:
        return None, "the test process exited without reporting results"
    return check_stream(frames)


def check_stream(frames: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """The stream's rules (see :func:`parse_frames`), on already authenticated frames."""
    collected: list[str] | None = None
    cases: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] | None = None
    for body in frames:
        kind = body.get("kind")
        if final is not None:
            return None, "a result frame arrived after the final one (tampering)"
        if kind == "collected":
            if collected is not None or cases:
                return None, "the collected tests were reported twice (tampering)"
            nodeids = body.get("nodeids")
            if not isinstance(nodeids, list) or len(set(map(str, nodeids))) != len(nodeids):
                return None, "the collected test ids are malformed or repeated (tampering)"
            collected = [str(n) for n in nodeids]
        elif kind == "case":
            case = body.get("case")
            nodeid = case.get("nodeid") if isinstance(case, dict) else None
            if collected is None or nodeid not in collected:
                return None, (f"an outcome arrived for a test that was never collected: "
                              f"{str(nodeid)[:200]!r} (tampering)")
            if nodeid in cases:
                return None, f"two outcomes arrived for one test: {str(nodeid)[:200]!r} (tampering)"
            cases[nodeid] = case
        elif kind == "final":
            final = body
        else:
            return None, f"a result frame of unknown kind {str(kind)[:40]!r} (tampering)"
    if final is None:
        return None, "the test process exited without a final result (it reported only partial results)"
    if len(frames) > 1 and frames[-1] is not final:
        return None, "a result frame arrived after the final one (tampering)"
    final = {k: v for k, v in final.items() if k != "kind"}
    reported = final.get("cases")
    if collected is None:
        if reported:
            return None, "the final result reports tests that were never collected (tampering)"
        return final, None
    if (
        not isinstance(reported, list)
        or len(reported) != len(cases)
        or any(not isinstance(c, dict) or cases.get(c.get("nodeid")) != c for c in reported)
    ):
        return None, ("the final result disagrees with the outcomes streamed while the tests ran (tampering)")
    if final.get("collected") != len(collected):
        return None, ("the final result's number of collected tests disagrees with the collected test ids (tampering)")
    return final, None


def defined_tests(skill_dir: str, tests: list[str]) -> list[tuple[str, str]]:
    """``(test file, qualified name)`` of every test pytest must collect, from the files' AST.

    Top-level ``def test_*`` functions, and ``test_*`` methods of top-level
    ``class Test*`` classes without ``__init__`` (the harness's pytest.ini rules).
    The harness reads these itself, before submitted code runs.
    """
    found: list[tuple[str, str]] = []
    for rel in tests:
        try:
            with open(os.path.join(skill_dir, rel), "rb") as handle:
                tree = ast.parse(handle.read())
        except (OSError, SyntaxError, ValueError):
            continue  # pytest reports it as a collection error
        names: set[str] = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                members = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
                if any(m.name == "__init__" for m in members):
                    continue
                names.update(f"{node.name}::{m.name}" for m in members if m.name.startswith("test_"))
        found.extend((rel, name) for name in sorted(names))
    return found


def unreported_tests(result: dict[str, Any], required: list[tuple[str, str]]) -> list[str]:
    """Tests defined in the files that the result never mentions (collection errors and
    module-level skips excuse their whole file)."""
    excused = {
        str(e.get("nodeid", ""))
        for e in (result.get("collect_errors") or []) + (result.get("collect_skipped") or [])
        if isinstance(e, dict)
    }
    if "<collection>" in excused or "" in excused:
        return []
    seen: set[tuple[str, str]] = set()
    for case in result.get("cases") or []:
        nodeid = str(case.get("nodeid", "")) if isinstance(case, dict) else ""
        path, sep, rest = nodeid.partition("::")
        if sep:
            seen.add((path, rest.split("[", 1)[0]))
    return [f"{path}::{name}" for path, name in required if path not in excused and (path, name) not in seen]


#: the environment of the harness's children (the test runner, the mutation server)
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp/home",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
}


def _discard(proc: subprocess.Popen[bytes], fds: tuple[int, ...]) -> None:
    """A prepared child that will not get its job: killed, reaped, its pipes closed."""
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class WarmRunner:
    """The dynamic phase's child, started before the payload arrives.

    It imports the toolchain (pytest, coverage and pytest's default plugins) and
    then blocks reading its job from a pipe that only the harness holds: no
    submitted code exists, let alone runs, until :func:`run_dynamic` sends the
    job, which it does only after the static phase has ended. In a warm pool's
    sandbox that import happens while the sandbox waits for its payload; in a
    cold one it overlaps the static phase (it does not depend on submitted code).
    """

    def __init__(self) -> None:
        self.key_r, self.key_w = os.pipe()
        self.job_r, self.job_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.out_r, out_w = os.pipe()
        env = CHILD_ENV
        os.makedirs("/tmp/home", exist_ok=True)
        os.makedirs(SKILL_DIR, mode=0o755, exist_ok=True)

        def preexec() -> None:
            try:
                with open("/proc/self/oom_score_adj", "w") as adj:
                    adj.write("1000")  # the OOM killer takes the test process, not the harness
            except OSError:
                pass

        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "sandgate_harness.runner", str(self.key_r), str(res_w), str(self.job_r)],
            cwd=SKILL_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=out_w,
            pass_fds=(self.key_r, res_w, self.job_r),
            start_new_session=True,
            preexec_fn=preexec,
        )
        for fd in (self.key_r, self.job_r, res_w, out_w):
            os.close(fd)

    def send(self, job: dict[str, Any], key: bytes) -> None:
        """The job, then the key; each pipe closed at once (the runner reads each to its end)."""
        try:
            data = memoryview(json.dumps(job).encode())
            while data:
                data = data[os.write(self.job_w, data):]
            os.close(self.job_w)
            os.write(self.key_w, key)
        except OSError:
            pass  # the runner died: its exit status and empty result channel say so
        finally:
            for fd in (self.job_w, self.key_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def discard(self) -> None:
        """No dynamic phase: the runner never gets a job."""
        _discard(self.proc, (self.job_w, self.key_w, self.res_r, self.out_r))


class MutationServer:
    """The mutation phase's server (``sandgate_harness.mutation``), started before the payload.

    Like :class:`WarmRunner` it does only work that depends on nothing submitted
    before its job arrives: it imports pytest, runs one pytest session on the
    harness's own test file and imports the image's locked packages, then blocks
    reading its job from a pipe only the harness holds. It never imports the skill.
    It outlives the dynamic phase only through ``procs.kill_all_but``, which kills
    every other process while it is stopped; if it is gone by then (a skill can
    signal it), :func:`run_mutation` starts a cold one, as before.
    """

    def __init__(self, warm: bool = True) -> None:
        self.res_r, res_w = os.pipe()
        self.ready_r, ready_w = os.pipe()
        self.ready = not warm
        os.makedirs("/tmp/home", exist_ok=True)
        os.makedirs(SKILL_DIR, mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "sandgate_harness.mutation", str(res_w),
             *([f"--warm={ready_w}"] if warm else [])],
            cwd=WORK,
            env=CHILD_ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(res_w, ready_w),
            start_new_session=True,
        )
        os.close(res_w)
        os.close(ready_w)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """True once the server has prepared (its one byte arrived) within ``timeout`` seconds.

        Called before any submitted code runs: the server's preparation writes and
        imports files (its warm-up session), which must be done before a skill could
        touch them. A server not ready by then is discarded.
        """
        if not self.ready:
            readable, _, _ = select.select([self.ready_r], [], [], max(0.0, timeout))
            try:
                self.ready = bool(readable) and os.read(self.ready_r, 1) == b"R"
            except OSError:
                self.ready = False
        return self.ready and self.alive()

    def send(self, job: dict[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(job).encode())
            self.proc.stdin.close()
        except OSError:
            return False
        return True

    def discard(self) -> None:
        """No mutation phase: the server never gets a job."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        _discard(self.proc, (self.res_r, self.ready_r))


def run_dynamic(config: dict[str, Any], deadline: float, runner: WarmRunner | None = None,
                keep: MutationServer | None = None) -> dict[str, Any]:
    key = os.urandom(32)
    runner_config = {
        # the runner's own kill at the end of the tests spares the warm mutation server
        "keep_pid": keep.proc.pid if keep is not None and keep.alive() else None,
        "skill_dir": SKILL_DIR,
        "tests": config["tests"],
        "sources": config.get("sources"),
        "entrypoint": config.get("entrypoint"),
    }
    required = defined_tests(SKILL_DIR, config["tests"])  # read before any submitted code runs
    started = time.monotonic()
    runner = runner or WarmRunner()
    proc, res_r, out_r = runner.proc, runner.res_r, runner.out_r
    runner.send(runner_config, key)

    output_flooded = threading.Event()

    def on_flood() -> None:
        output_flooded.set()
        _kill_everything_else()

    out_reader = _CappedReader(out_r, int(config["output_bytes"]), on_flood)
    res_reader = _CappedReader(res_r, MAX_RESULT, _kill_everything_else)
    out_reader.start()
    res_reader.start()

    timed_out = False
    try:
        returncode = wait_exit(proc, max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_everything_else()
        returncode = proc.wait()
    # Daemonised children die here, before any result is accepted (all but a warm
    # mutation server that has not been given its job yet).
    if keep is not None and keep.alive() and not timed_out and not output_flooded.is_set():
        kill_all_but(keep.proc.pid)
    else:
        _kill_everything_else()
    out_reader.join(5)
    res_reader.join(5)
    seconds = time.monotonic() - started

    result, problem = parse_frames(key, res_reader.data())
    if res_reader.truncated:
        result, problem = None, "the result channel exceeded its size cap"
    signal_name = None
    if returncode < 0:
        try:
            signal_name = signal.Signals(-returncode).name
        except ValueError:
            signal_name = str(-returncode)
    if result is not None and returncode != 0:
        # The runner ends with os._exit(0) right after its final frame: anything else
        # means something else ended it (a forger covering its tracks, a crash).
        how = f"was killed by {signal_name}" if signal_name else f"exited with status {returncode}"
        problem = f"the test process {how} after reporting (results not trusted)"
    if result is not None and problem is None:
        missing = unreported_tests(result, required)
        if missing:
            listed = ", ".join(missing[:5]) + (f", and {len(missing) - 5} more" if len(missing) > 5 else "")
            problem = (
                f"tests defined in the test files were never reported (removed from the run, "
                f"or not collectable): {listed}"
            )
    return {
        "ran": True,
        "result": result,
        "problem": problem,
        "returncode": returncode,
        "signal": signal_name,
        "timed_out": timed_out,
        "output": out_reader.data().decode("utf-8", "replace"),
        "output_truncated": out_reader.truncated or output_flooded.is_set(),
        "seconds": seconds,
    }


def mutation_skip(config: dict[str, Any], dynamic: dict[str, Any]) -> str | None:
    """Why the mutation phase would change nothing (the verdict is already ``failed``), or None.

    Only what fails every policy the job was made for: the mutation phase runs on a
    clean, complete, all-passing dynamic phase whose tests assert something, whose
    entrypoint resolved and was tested, and whose coverage reaches the job's minimum.
    """
    settings = config.get("mutation") or {}
    result = dynamic.get("result")
    if not dynamic.get("ran") or not isinstance(result, dict) or dynamic.get("problem"):
        return "the dynamic phase did not pass"
    if dynamic.get("timed_out") or dynamic.get("output_truncated") or dynamic.get("returncode") != 0:
        return "the dynamic phase did not pass"
    cases = [c for c in result.get("cases") or [] if isinstance(c, dict)]
    outcomes = [c.get("outcome") for c in cases]
    if result.get("exit_status") != 0 or result.get("collect_errors"):
        return "the dynamic phase did not pass"
    if "passed" not in outcomes or not all(o in ("passed", "skipped", "xfailed", "xpassed") for o in outcomes):
        return "the dynamic phase did not pass"
    if not settings.get("allow_skips", False) and (
        result.get("collect_skipped") or any(o != "passed" for o in outcomes)
    ):
        return "tests were skipped and the policy does not allow it"
    if any(c.get("outcome") == "passed" and (not c.get("assertions") or c.get("failed_assertions")) for c in cases):
        return "vacuous tests"
    entry = result.get("entrypoint")
    if config.get("entrypoint") and (
        not isinstance(entry, dict) or not entry.get("resolved") or not entry.get("tested_by")
    ):
        return "the entrypoint did not resolve or no passing test executed it"
    minimum = float(settings.get("min_line_coverage") or 0.0)
    totals = (result.get("coverage") or {}).get("totals") if isinstance(result.get("coverage"), dict) else None
    if minimum > 0:
        if not isinstance(totals, dict):
            return "no coverage data"
        statements, covered = int(totals.get("num_statements") or 0), int(totals.get("covered_lines") or 0)
        percent = round(100.0 * covered / statements, 2) if statements else 100.0
        if percent < minimum:
            return "line coverage is below the policy's minimum"
    return None


def _serve_job(server: MutationServer | None, job: dict[str, Any], stop_at: float, started: float,
               seconds: float) -> tuple[int, list[dict[str, Any]], str | None, bool]:
    """One mutation server (``server``, else a cold one) given ``job``, until it exits or the
    deadline: its return code, its events, a problem, and whether its channel overflowed."""
    if server is None:
        server = MutationServer(warm=False)
    proc = server.proc
    reader = _CappedReader(server.res_r, MAX_RESULT, _kill_everything_else)
    reader.start()
    problem = None
    if not server.send(job):
        problem = "the mutation server did not accept its job"
    try:
        returncode = wait_exit(proc, max(0.1, min(stop_at, started + seconds + 5.0) - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_everything_else()
        returncode = proc.wait()
        problem = problem or "the mutation server was stopped at the evaluation's deadline"
    _kill_everything_else()
    reader.join(5)
    events = []
    for line in reader.data().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            problem = problem or "the mutation server wrote a line that is not JSON"
            break
        if isinstance(event, dict):
            events.append(event)
    return returncode, events, problem, reader.truncated


def run_mutation(
    config: dict[str, Any], skill: dict[str, bytes], dynamic: dict[str, Any], deadline: float,
    server: MutationServer | None = None,
) -> dict[str, Any]:
    """The mutation server (``sandgate_harness.mutation``) in its own session; see that module.

    The server receives the skill's files as the harness received them (never
    what the dynamic phase left on disk) and the runner's per-line passing tests
    (``line_tests``). The warm ``server`` is used when it is still alive, else a
    cold one is started. Stopped, with everything else, at the evaluation's
    deadline less a margin for the final line.
    """
    settings = config["mutation"]
    result = dynamic["result"]
    started = time.monotonic()
    stop_at = deadline - 1.5
    seconds = max(0.0, min(float(settings.get("seconds", 20.0)), stop_at - started - 0.5))
    job = {
        "files": {path: data.hex() for path, data in skill.items()},
        "tests": config["tests"],
        "module_files": config.get("sources"),
        "entrypoint": config.get("entrypoint"),
        "max_mutants": int(settings.get("max_mutants", 20)),
        "seconds": seconds,
        "min_score": float(settings.get("min_score") or 0.0),
        "null_must_be_killed": bool(settings.get("null_must_be_killed", True)),
        "stop_when_decided": bool(settings.get("stop_when_decided", True)),
        "line_tests": result.get("line_tests"),
        "coverage": result.get("coverage"),
        "cases": result.get("cases"),
        "baseline_seconds": result.get("seconds"),
        "memory_bytes": settings.get("memory_bytes"),
    }
    warm = server is not None and server.alive()
    if server is not None and not warm:
        server.discard()
    returncode, events, problem, truncated = _serve_job(server if warm else None, job, stop_at, started, seconds)
    if warm and returncode != 0 and not events and not truncated:
        # The warm server died before its first event (before the phase ran anything
        # submitted): a signal from the dynamic phase can still be taking effect when
        # alive() said yes (SIGINT unwinds the interpreter). The phase runs cold instead.
        warm = False
        seconds = max(0.0, min(seconds, stop_at - time.monotonic() - 0.5))
        returncode, events, problem, truncated = _serve_job(None, {**job, "seconds": seconds}, stop_at,
                                                            time.monotonic(), seconds)
    if returncode != 0 and problem is None:
        problem = f"the mutation server exited with status {returncode}"
    if truncated:
        problem = "the mutation result channel exceeded its size cap"
    out = summarise(events, problem)
    out["wall_seconds"] = time.monotonic() - started
    out["warm"] = warm
    return out


def signed_line(key: bytes, kind: str, body: dict[str, Any]) -> str:
    """``SGH1 <kind> <hmac-sha256 hex> <json>``: the controller accepts only lines it can verify.

    The key comes from the controller inside the payload; it is never written to
    disk, put in the environment or passed to the test process.
    """
    text = json.dumps(body, separators=(",", ":"))
    mac = hmac.new(key, f"{kind} {text}".encode(), hashlib.sha256).hexdigest()
    return f"SGH1 {kind} {mac} {text}\n"


def emit(key: bytes, kind: str, body: dict[str, Any]) -> None:
    sys.stdout.write(signed_line(key, kind, body))
    sys.stdout.flush()


def main() -> int:
    _non_dumpable()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    out: dict[str, Any] = {"protocol": PROTOCOL, "timings": {}}
    # Work that depends on nothing submitted, done before the payload arrives (in a
    # warm pool's sandbox, while it waits): the test runner imports the toolchain,
    # semgrep's engine is located. The runner gets its job only after the static phase.
    runner = WarmRunner()
    # ``--no-mutation-server``: none is prepared ahead - no mutation phase follows (the policy has
    # none), or this sandbox was made for its payload, which is already there (preparing would
    # only share the one CPU with the phases before). A payload with a mutation phase then gets
    # a server started when that phase begins.
    mutation_server: MutationServer | None = None if "--no-mutation-server" in sys.argv[1:] else MutationServer()
    engine: PrestartedEngine | None = PrestartedEngine(SKILL_DIR)  # the platform's rules, parsed while we wait
    stdin = sys.stdin.buffer
    stdin.peek(1)  # blocks until the payload's first bytes: the evaluation's clock starts here
    started = time.monotonic()
    try:
        files = read_payload(stdin)
        config = json.loads(files.pop("config.json"))
        key = bytes.fromhex(config.pop("channel_key"))
        skill = {k[len("skill/") :]: v for k, v in files.items() if k.startswith("skill/")}
        rules = {k[len("rules/") :]: v for k, v in files.items() if k.startswith("rules/")}
        write_tree(SKILL_DIR, skill)
        write_tree(RULES_DIR, rules)
    except (PayloadError, KeyError, ValueError, OSError) as exc:
        # No trustworthy key either: the controller sees an unauthenticated line
        # and reports an infrastructure error with this text.
        runner.discard()
        if mutation_server is not None:
            mutation_server.discard()
        engine.discard()
        print(f"harness: bad payload: {exc}", file=sys.stderr, flush=True)
        return 3
    out["timings"]["payload"] = time.monotonic() - started
    deadline = started + float(config["timeout_seconds"])

    if not engine.accepts(rules):  # other rules than the image's: the cold scan reads them
        engine.discard()
        engine = None
    if config.get("static", True):
        targets = sorted(p for p in skill if p.endswith(".py"))
        out["timings"]["static_prestarted"] = 1.0 if engine is not None else 0.0
        out["static"] = run_static(
            SKILL_DIR, RULES_DIR, targets, timeout=max(1.0, min(30.0, deadline - time.monotonic())),
            engine=engine,
        )
        engine = None
        out["timings"]["static"] = out["static"]["seconds"]
        if isinstance(out["static"].get("engine_seconds"), (int, float)):
            out["timings"]["static_engine"] = out["static"]["engine_seconds"]
        # Sent now, before any submitted code runs: if the sandbox dies later,
        # the findings still reach the report.
        emit(key, "static", {"protocol": PROTOCOL, "static": out["static"]})
        blocked = set(config.get("blocked_severities", []))
        if any(f["severity"] in blocked for f in out["static"]["findings"]):
            # no mutation phase follows a blocked finding: the server stops preparing now
            # (in a cold sandbox it was still importing while the scan ran)
            if mutation_server is not None:
                mutation_server.discard()
                mutation_server = None
            if config.get("fail_fast"):
                out["dynamic"] = {"ran": False, "skipped_reason": "blocked findings (fail_fast)"}
    elif engine is not None:
        engine.discard()
        engine = None
    if config.get("dynamic", True) and "dynamic" not in out:
        # The warm mutation server outlives the dynamic phase only if it was ready before it
        # (in a warm pool's sandbox it was ready long before the payload; in a cold one it
        # prepared during the static phase, and any wait left is counted as the mutation's).
        warm = False
        if mutation_server is not None and int((config.get("mutation") or {}).get("max_mutants", 0) or 0) > 0:
            waited = time.monotonic()
            warm = mutation_server.wait_ready(min(5.0, max(0.0, deadline - time.monotonic() - 5.0)))
            out["timings"]["mutation_ready_wait"] = round(time.monotonic() - waited, 4)
        if not warm and mutation_server is not None:
            mutation_server.discard()
            mutation_server = None
        out["dynamic"] = run_dynamic(config, deadline, runner, mutation_server)
        out["timings"]["dynamic"] = out["dynamic"]["seconds"]
    else:
        runner.discard()
    # taken before mutants run: a mutant that exhausts memory or processes is a
    # killed mutant, not a limit the skill hit
    out["cgroup"] = cgroup_stats()
    mutation = config.get("mutation") or {}
    mutation_started = False
    if int(mutation.get("max_mutants", 0) or 0) > 0 and "dynamic" in out and out["dynamic"].get("ran"):
        blocked = set(config.get("blocked_severities", []))
        skip = mutation_skip(config, out["dynamic"])
        if skip is not None:
            out["mutation"] = {"ran": False, "skipped_reason": skip}
        elif any(f.get("severity") in blocked for f in (out.get("static") or {}).get("findings", [])):
            out["mutation"] = {"ran": False, "skipped_reason": "static findings of a blocked severity"}
        elif deadline - time.monotonic() < 4.0:
            out["mutation"] = {"ran": False, "skipped_reason": "no time left before the deadline"}
        else:
            try:
                mutation_started = True
                out["mutation"] = run_mutation(config, skill, out["dynamic"], deadline, mutation_server)
            except Exception as exc:  # noqa: BLE001 - the harness's fault, never the skill's
                out["mutation"] = {
                    "ran": False,
                    "skipped_reason": "the harness failed",
                    "internal_error": f"{type(exc).__name__}: {exc}"[:500],
                }
            else:
                out["timings"]["mutation"] = out["mutation"]["wall_seconds"]
                out["timings"]["mutation_warm"] = 1.0 if out["mutation"].get("warm") else 0.0
                for name in ("generate_seconds", "children_seconds", "controls_seconds", "first_run_seconds",
                             "server_seconds"):
                    if isinstance(out["mutation"].get(name), (int, float)):
                        out["timings"][f"mutation_{name.removesuffix('_seconds')}"] = out["mutation"][name]
    if not mutation_started and mutation_server is not None:
        mutation_server.discard()
    out["timings"]["harness_total"] = time.monotonic() - started
    emit(key, "final", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
