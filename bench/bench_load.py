"""Queue throughput under load: 200 submissions at once, worker processes, a measured ceiling.

What it does, in one run:

1. **Floor CPU.** Runs the ``bench_evaluate`` floor (a bare hardened ``docker
   run`` of the same image doing the same work as an evaluation: semgrep with
   the platform's rules, pytest under branch coverage, a JSON coverage report,
   no harness) ``--floor-runs`` times and measures the CPU seconds of each run
   *from the container's own cgroup*: the floor script's last step reads
   ``cpuacct.usage`` (cgroup v1) or ``cpu.stat`` ``usage_usec`` (cgroup v2) —
   every process in the container, semgrep and pytest included. (The
   container's rusage of itself and its children is printed beside it as a
   cross-check.) The median is ``floor_cpu``.
2. **Ceiling** = cores ÷ ``floor_cpu`` evaluations per second: what the machine
   could do if every core did nothing but floor work. It ignores the Docker
   engine's own cost of creating/starting/removing a container and the
   controller's bookkeeping — both are real overhead the ratio has to absorb.
3. **Two works, two ceilings.** Since the issue's target was set, an evaluation
   under ``policies/default.toml`` does more than the floor: a mutation phase
   (up to 20 mutants, each a pytest run, plus the null-entrypoint check) and an
   oracle phase (the entrypoint served in a second sandbox, a third for the
   active version's replay once a version is active). So the bench runs:

   * ``issue`` — the issue's original work: policy ``issue14`` (written to a
     temporary policies directory: the default's gates and limits with
     ``max_mutants = 0``, ``min_mutation_score = 0``, no null-entrypoint check, no
     contract inputs) and submissions without ``examples.jsonl``, so the oracle
     has nothing to call and starts no sandbox. Its ratio is against the bare
     floor's ceiling: **this is the issue's target**.
   * ``policy`` — the default policy's whole evaluation. Its ceiling is honest:
     cores ÷ the CPU seconds *its* sandboxes need (evaluation + oracle sandboxes,
     from the engine's parent cgroup, sequential in-process evaluations, median
     of ``--floor-runs``). The ratio against the bare floor is printed too, and
     is not comparable with the target: the floor does not do that work.

   Per work: ``--workers`` worker processes (``python -m sandgate worker``)
   take ``--submissions`` distinct submissions (20 skills × N versions of the
   example ``text_stats`` skill) posted through ``lifecycle.submit(wait=False)``
   from 8 threads at once; the bench waits until every evaluation is done.
4. **Report.** Throughput (evaluations/minute, first submit → last verdict),
   p50/p95 submit → verdict, peak RSS of the worker processes (``VmHWM``),
   host CPU seconds actually spent per evaluation (``/proc/stat``) split into
   the sandboxes' (cgroup), the workers', dockerd's, containerd's and
   PostgreSQL's; the median phase timings of the stored reports, how many
   evaluation sandboxes came warm from the pool and how many oracle sandboxes
   an evaluation started; verdicts (any ``error`` is a failure), leftover
   containers, and **throughput ÷ ceiling** (target ≥ 0.9 with the workers'
   warm pool, the default; ``SANDGATE_POOL_SIZE=0`` runs them without one).

::

    python bench/bench_load.py                  # 200 submissions (a throwaway PostgreSQL if installed)
    python bench/bench_load.py --quick          # 20 submissions, smoke
    python bench/bench_load.py --work issue     # only the issue's original work
    python bench/bench_load.py --work policy --database-url sqlite:////tmp/load.db --workers 2 --concurrency 2

``--url`` is reserved for posting through the HTTP API (``sandgate serve``);
not implemented yet: the library path is measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SKILL = ROOT / "examples" / "skills" / "text_stats"

CPU_PROBE = r"""
import resource
def _cg_usage():
    for path, scale in (("/sys/fs/cgroup/cpuacct/cpuacct.usage", 1e-9),
                        ("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", 1e-9)):
        try:
            return int(open(path).read()) * scale
        except OSError:
            pass
    try:
        for line in open("/sys/fs/cgroup/cpu.stat"):
            if line.startswith("usage_usec"):
                return int(line.split()[1]) * 1e-6
    except OSError:
        pass
    return None
_s, _c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cgroup_cpu_seconds": _cg_usage(),
                  "rusage_cpu_seconds": _s.ru_utime + _s.ru_stime + _c.ru_utime + _c.ru_stime}))
"""

_WIRED = "worker" in (ROOT / "platform" / "sandgate" / "cli" / "__init__.py").read_text()
_MAIN = (
    "from sandgate.cli import app, _register\n_register()\n"
    "if not any(c.name == 'worker' for c in app.registered_commands):\n"
    "    from sandgate.cli import worker\n    worker.register(app)\n"
    "app(prog_name='sandgate')\n"
)


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- floor


def measure_floor(runs: int, *, parallel_runs: int = 0, width: int = 1) -> dict[str, Any]:
    """CPU seconds of one floor evaluation, from the container's cgroup (median of ``runs``).

    Also: the host's CPU per (sequential) floor run — engine and kernel included —
    and, with ``parallel_runs``, the bare floor's own throughput ``width`` at a time.
    """
    from sandgate.config import get_settings
    from sandgate.evaluation import rules_files
    from sandgate.policy import load_policy
    from sandgate.sandbox import connect, make_payload, run_sandbox
    from sandgate.submission import load_submission

    floor_script = _load(ROOT / "bench" / "bench_evaluate.py", "bench_evaluate").FLOOR_SCRIPT + CPU_PROBE
    settings = get_settings()
    policy = load_policy(settings.policy)
    submission = load_submission(SKILL)
    client = connect(settings)
    files = {f"skill/{p}": b for p, b in submission.files.items()}
    files.update({f"rules/{n}": b for n, b in rules_files(settings.policies_dir / "semgrep").items()})
    files["config.json"] = json.dumps({"tests": submission.test_files()}).encode()
    payload = make_payload(files)
    limits = policy.limits

    def once() -> dict[str, Any]:
        run = run_sandbox(
            client,
            image=settings.image,
            payload=payload,
            limits=limits,
            entrypoint=["python3", "-I", "-c", floor_script],
        )
        lines = run.harness["stdout"].strip().splitlines()
        work, cpu = json.loads(lines[-2]), json.loads(lines[-1])
        assert work["scan_rc"] == 0 and work["pytest_rc"] == 0 and work["cov_rc"] == 0, work
        return cpu

    cgroup, rusage, wall, host = [], [], [], []
    once()  # warms the page cache
    for _ in range(runs):
        busy, t = _host_busy_seconds(), time.perf_counter()
        cpu = once()
        wall.append(time.perf_counter() - t)
        host.append(_host_busy_seconds() - busy)
        rusage.append(cpu["rusage_cpu_seconds"])
        if cpu["cgroup_cpu_seconds"] is not None:
            cgroup.append(cpu["cgroup_cpu_seconds"])
    out: dict[str, Any] = {
        "cpu_seconds": statistics.median(cgroup or rusage),
        "source": "cgroup" if cgroup else "rusage",
        "cgroup_cpu_seconds": cgroup,
        "rusage_cpu_seconds": rusage,
        "host_cpu_seconds": statistics.median(host),
        "wall_seconds": statistics.median(wall),
        "parallel_per_min": None,
        "parallel_cpu_seconds": None,
        "parallel_host_cpu_seconds": None,
    }
    if parallel_runs:
        done = []
        parallel_cpu: list[float] = []
        lock = threading.Lock()

        def loop() -> None:
            while True:
                with lock:
                    if len(done) >= parallel_runs:
                        return
                    done.append(None)
                cpu = once()
                with lock:
                    parallel_cpu.append(cpu["cgroup_cpu_seconds"] if cpu["cgroup_cpu_seconds"] is not None
                                        else cpu["rusage_cpu_seconds"])

        busy, t = _host_busy_seconds(), time.perf_counter()
        threads = [threading.Thread(target=loop) for _ in range(width)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out["parallel_per_min"] = parallel_runs / (time.perf_counter() - t) * 60
        # the same work's CPU when ``width`` run at once: what concurrency itself costs the floor
        out["parallel_cpu_seconds"] = statistics.median(parallel_cpu)
        out["parallel_host_cpu_seconds"] = (_host_busy_seconds() - busy) / parallel_runs
    return out


# --------------------------------------------------------------------------- host accounting


def _host_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def background_cpu(seconds: float = 2.0) -> float:
    """Fraction of the machine busy while this benchmark does nothing (other tenants)."""
    busy = _host_busy_seconds()
    time.sleep(seconds)
    return (_host_busy_seconds() - busy) / seconds / (os.cpu_count() or 1)


def wait_for_quiet(limit: float, patience: float) -> float:
    """Wait (up to ``patience`` seconds) until background load is below ``limit``; return it."""
    deadline = time.monotonic() + patience
    level = background_cpu()
    while level > limit and time.monotonic() < deadline:
        print(f"  machine busy with other work ({level:.0%}); waiting for a quiet moment ...", flush=True)
        level = background_cpu()
    return level


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _proc_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _docker_cgroup_cpu_seconds() -> float | None:
    """CPU of every container ever run, from the engine's parent cgroup.

    cgroup v1 ``cpuacct`` charges each ancestor as it goes, so the parent keeps
    the usage of removed sandboxes. (cgroup v2: None.)
    """
    for path in ("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/docker/cpuacct.usage"):
        try:
            return int(Path(path).read_text()) / 1e9
        except (OSError, ValueError):
            continue
    return None


_CPUACCT_DOCKER = ("/sys/fs/cgroup/cpuacct/docker", "/sys/fs/cgroup/cpu,cpuacct/docker")


class OwnContainersCPU:
    """CPU of this run's own containers only (label ``sandgate.controller`` one of
    ``controllers``), from each container's cgroup v1 ``cpuacct.usage``, sampled every
    ``interval`` seconds while it exists: other tenants' sandboxes on the shared engine
    are left out (the engine's parent cgroup counts them too). The last sample before a
    container goes misses at most ``interval`` of its CPU. ``total()`` is None without
    cgroup v1."""

    def __init__(self, client: Any, controllers: set[str], interval: float = 0.05) -> None:
        self.client, self.controllers, self.interval = client, controllers, interval
        self.root = next((Path(p) for p in _CPUACCT_DOCKER if Path(p).is_dir()), None)
        self._mine: dict[str, bool] = {}
        self._usage: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if self.root is not None:
            self._thread.start()

    def _loop(self) -> None:
        assert self.root is not None
        while not self._stop.is_set():
            try:
                entries = [d for d in self.root.iterdir() if len(d.name) == 64]
            except OSError:
                entries = []
            for d in entries:
                cid = d.name
                if cid not in self._mine:
                    try:
                        labels = self.client.api.inspect_container(cid)["Config"]["Labels"] or {}
                    except Exception:  # gone already
                        labels = {}
                    self._mine[cid] = labels.get("sandgate.controller") in self.controllers
                if self._mine[cid]:
                    try:
                        self._usage[cid] = int((d / "cpuacct.usage").read_text())
                    except (OSError, ValueError):
                        pass
            self._stop.wait(self.interval)

    def total(self) -> float | None:
        return None if self.root is None else sum(self._usage.values()) / 1e9

    def containers(self) -> int:
        return len(self._usage)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def _cpu_by_command(names: tuple[str, ...]) -> dict[str, float]:
    """Summed CPU seconds of live processes by command name (dockerd, postgres, ...)."""
    out = dict.fromkeys(names, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in out:
            out[comm] += _proc_cpu_seconds(int(entry.name))
    return out


ENGINE_PROCESSES = ("dockerd", "containerd", "postgres")


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- load


#: the issue's original work (semgrep + pytest + coverage, what the floor does): the default
#: policy without the phases added since (mutation, the null-entrypoint check, the oracle)
ISSUE_POLICY = "issue14"


def issue_policies_dir(tmp: Path) -> Path:
    """A policies directory with the default policy and ``issue14``: the same gates and limits
    with the mutation phase off and nothing for the oracle to call (no contract inputs; the
    issue-work submissions carry no examples), the platform's semgrep rules."""
    import re

    out = tmp / "policies"
    (out / "semgrep").mkdir(parents=True)
    for rule in (ROOT / "policies" / "semgrep").iterdir():
        if rule.is_file():
            (out / "semgrep" / rule.name).write_bytes(rule.read_bytes())
    text = (ROOT / "policies" / "default.toml").read_text()
    (out / "default.toml").write_text(text)
    for key, value in (("min_mutation_score", "0.0"), ("null_entrypoint_must_be_killed", "false"),
                       ("examples_must_pass", "false"), ("max_mutants", "0"), ("contract_inputs", "0")):
        text, n = re.subn(rf"(?m)^{key}\s*=\s*[^#\n]*", f"{key} = {value} ", text)
        assert n == 1, f"policies/default.toml has no single {key} line"
    (out / f"{ISSUE_POLICY}.toml").write_text(text.replace("Default gates", "issue 14's work only: no mutation/oracle"))
    return out


def submissions(n: int, *, examples: bool = True) -> list[Any]:
    from sandgate.submission import submission_from_files

    base = {str(p.relative_to(SKILL)): p.read_bytes() for p in sorted(SKILL.rglob("*")) if p.is_file()}
    if not examples:
        base.pop("examples.jsonl", None)
    out = []
    for i in range(n):
        files = dict(base)
        name = f"load_{i % 20:02d}"
        files["skill.toml"] = files["skill.toml"].replace(b'name = "text_stats"', f'name = "{name}"'.encode())
        files["text_stats.py"] = files["text_stats.py"] + f"\n# load variant {i}\n".encode()
        out.append(submission_from_files(files))
    return out


def measure_evaluation_cpu(policy: Any, subs: list[Any], runs: int) -> dict[str, Any]:
    """CPU inside the sandboxes of one whole evaluation under ``policy`` (sequential runs).

    The evaluation sandbox and the oracle's served sandbox(es) together, from each of this
    process's containers' own cgroup (:class:`OwnContainersCPU`): the policy's own work,
    harness included, without the engine's create/start/remove. Median of ``runs`` after
    one warm-up. None without cgroup v1.
    """
    from sandgate.evaluation import evaluate
    from sandgate.names import controller_id
    from sandgate.sandbox import connect

    evaluate(subs[0], policy=policy)  # warm-up
    cpu, wall, host, containers = [], [], [], []
    phases: dict[str, list[float]] = {}
    own = OwnContainersCPU(connect(), {controller_id()})
    try:
        for sub in subs[1 : runs + 1]:
            time.sleep(3 * own.interval)  # the sampler has seen the last run's containers go
            c0, n0, b0, t = own.total(), own.containers(), _host_busy_seconds(), time.perf_counter()
            report = evaluate(sub, policy=policy)
            wall.append(time.perf_counter() - t)
            host.append(_host_busy_seconds() - b0)
            time.sleep(3 * own.interval)
            c1 = own.total()
            containers.append(own.containers() - n0)
            if report.verdict != "passed":  # an overloaded machine times mutants out: say so, keep measuring
                print(f"  (sequential evaluation {report.verdict.value}: "
                      f"{'; '.join(r.message[:200] for r in report.reasons)})", flush=True)
            if c0 is not None and c1 is not None:
                cpu.append(c1 - c0)
            for k, v in report.timings.items():
                phases.setdefault(k, []).append(v)
    finally:
        own.close()
    return {
        "cpu_seconds": round(statistics.median(cpu), 3) if cpu else None,
        "cpu_runs": [round(x, 3) for x in cpu],
        "containers_per_evaluation": containers,
        "wall_seconds": statistics.median(wall),
        "host_cpu_seconds": statistics.median(host),
        "phases": {k: round(statistics.median(v), 3) for k, v in phases.items()},
    }


def phase_breakdown(records: list[Any]) -> dict[str, Any]:
    """Median harness/controller timings of the finished evaluations, and sandboxes per evaluation."""
    phases: dict[str, list[float]] = {}
    warm = cold = oracle_candidate = oracle_active = 0
    for r in records:
        report = r.report or {}
        timings = report.get("timings") or {}
        for k, v in timings.items():
            if isinstance(v, (int, float)):
                phases.setdefault(k, []).append(float(v))
        if "sandbox_create" in timings:
            if timings["sandbox_create"] == 0.0:
                warm += 1
            else:
                cold += 1
        oracle_timings = (report.get("oracle") or {}).get("timings") or {}
        oracle_candidate += "candidate_start" in oracle_timings
        oracle_active += "active_start" in oracle_timings
    n = max(len(records), 1)
    return {
        "median_seconds": {k: round(statistics.median(v), 3) for k, v in sorted(phases.items())},
        "evaluation_sandboxes_warm": warm,
        "evaluation_sandboxes_cold": cold,
        "oracle_sandboxes_per_evaluation": round((oracle_candidate + oracle_active) / n, 2),
        "oracle_active_replay_sandboxes": oracle_active,
    }


def start_workers(url: str, count: int, concurrency: int | None, lease: float, logdir: Path,
                  tag: str = "") -> list[Any]:
    argv = [sys.executable, "-m", "sandgate"] if _WIRED else [sys.executable, "-c", _MAIN]
    env = {**os.environ, "SANDGATE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    procs = []
    for k in range(count):
        args = [*argv, "worker", "--lease-seconds", str(lease), "--poll-interval", "0.2", "--log-level", "warning"]
        if concurrency:
            args += ["--concurrency", str(concurrency)]
        log = open(logdir / f"worker-{tag}{k}.log", "wb")  # noqa: SIM115
        procs.append((subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def run_load(args: Any, url: str, tmp: Path, *, policy_name: str, subs: list[Any], tag: str) -> dict[str, Any]:
    """Workers against the queue at ``url``: post ``subs`` under ``policy_name``, wait, measure."""
    from sqlalchemy import text

    from sandgate import lifecycle
    from sandgate.policy import load_policy
    from sandgate.sandbox import connect
    from sandgate.sandbox.runner import CONTROLLER_LABEL, MANAGED_LABEL, reap
    from sandgate.store import evaluations as queue
    from sandgate.store import open_store

    with ExitStack() as stack:
        store = open_store(url)
        stack.callback(store.close)
        policy = load_policy(policy_name)
        procs = start_workers(url, args.workers, args.concurrency, args.lease_seconds, tmp, tag)

        def stop_workers() -> None:
            for p, _log in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p, log in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                log.close()

        stack.callback(stop_workers)
        time.sleep(2.0)  # let them import and connect (idle polling costs nearly nothing)

        before = wait_for_quiet(args.quiet_limit, args.quiet_patience)
        own = OwnContainersCPU(connect(), {f"{socket.gethostname()}:{p.pid}" for p, _ in procs})
        stack.callback(own.close)
        busy0, workers0 = _host_busy_seconds(), sum(_proc_cpu_seconds(p.pid) for p, _ in procs)
        sandboxes0, engine0 = _docker_cgroup_cpu_seconds(), _cpu_by_command(ENGINE_PROCESSES)
        t0 = time.time()
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda s: lifecycle.submit(store, submission=s, policy=policy, actor="bench", wait=False), subs
                )
            )
        posted = time.time() - t0
        ids = [r.evaluation.id for r in results]
        assert len(set(ids)) == len(ids), "distinct submissions must queue distinct evaluations"
        print(f"[{tag}] posted {len(ids)} submissions in {posted:.2f}s", flush=True)

        peak_rss: dict[int, int] = {}
        stop_sampling = threading.Event()

        def sample() -> None:  # VmHWM is already a peak; sampling keeps it if a worker dies
            while not stop_sampling.wait(1.0):
                for p, _ in procs:
                    peak_rss[p.pid] = max(peak_rss.get(p.pid, 0), _peak_rss(p.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.time() + max(600, len(subs) * 10)
        while time.time() < deadline:
            with store.read() as s:
                left = s.scalar(text("SELECT count(*) FROM evaluations WHERE status <> 'done'"))
            if left == 0:
                break
            if all(p.poll() is not None for p, _ in procs):
                raise SystemExit(f"all workers exited early; see their logs: {tmp}")
            time.sleep(1.0)
        busy = _host_busy_seconds() - busy0
        workers_cpu = sum(_proc_cpu_seconds(p.pid) for p, _ in procs) - workers0
        sandboxes1, engine1 = _docker_cgroup_cpu_seconds(), _cpu_by_command(ENGINE_PROCESSES)
        all_sandboxes_cpu = None if sandboxes0 is None or sandboxes1 is None else sandboxes1 - sandboxes0
        time.sleep(3 * own.interval)
        sandboxes_cpu, own_containers = own.total(), own.containers()
        engine_cpu = {k: engine1[k] - engine0.get(k, 0.0) for k in engine1}
        stop_sampling.set()
        sampler.join()
        for p, _ in procs:
            peak_rss[p.pid] = max(peak_rss.get(p.pid, 0), _peak_rss(p.pid))
        after = background_cpu()

        records = [queue.get_evaluation(store, evaluation_id=e) for e in ids]
        unfinished = [r for r in records if r.status != "done"]
        finished = [r for r in records if r.status == "done"]
        latencies = sorted((r.finished_at - r.created_at).total_seconds() for r in finished)
        first = min(r.created_at for r in records)
        last = max(r.finished_at for r in finished) if finished else first
        span = (last - first).total_seconds()
        verdicts: dict[str, int] = {}
        for r in finished:
            verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
        retried = sum(1 for r in finished if r.attempts > 1)
        stop_workers()
        problems = []
        for k in range(args.workers):
            for line in (tmp / f"worker-{tag}{k}.log").read_text(errors="replace").splitlines():
                if '"level": "warning"' in line or '"level": "error"' in line or not line.startswith("{"):
                    problems.append(f"worker-{tag}{k}: {line[:400]}")
                    if '"exception": ' in line:  # the traceback's last lines say what failed
                        try:
                            problems.append("    " + json.loads(line)["exception"][-800:].replace("\n", "\n    "))
                        except ValueError:
                            pass
        slowest = sorted(finished, key=lambda r: (r.finished_at - r.created_at).total_seconds())[-3:]
        client = connect()
        leftovers = []
        for p, _ in procs:
            controller = f"{os.uname().nodename}:{p.pid}"
            leftovers += client.api.containers(
                all=True, filters={"label": [f"{MANAGED_LABEL}=true", f"{CONTROLLER_LABEL}={controller}"]}
            )
            reap(client, controller=controller)

    n = len(finished)
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    return {
        "policy": policy_name,
        "submissions": len(subs),
        "finished": n,
        "unfinished": len(unfinished),
        "verdicts": verdicts,
        "retried": retried,
        "span_seconds": round(span, 2),
        "throughput_per_min": round(n / span * 60 if span > 0 else 0.0, 1),
        "latency_p50_seconds": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_seconds": round(q[18], 2) if latencies else None,
        "peak_rss_bytes_per_worker": sorted(peak_rss.values()),
        "host_cpu_seconds_per_evaluation": round(busy / max(n, 1), 3),
        "worker_cpu_seconds_per_evaluation": round(workers_cpu / max(n, 1), 3),
        "sandbox_cpu_seconds_per_evaluation": (
            round(sandboxes_cpu / max(n, 1), 3) if sandboxes_cpu is not None else None
        ),
        "engine_cpu_seconds_per_evaluation": {k: round(v / max(n, 1), 3) for k, v in engine_cpu.items()},
        "all_containers_cpu_seconds_per_evaluation": (
            round(all_sandboxes_cpu / max(n, 1), 3) if all_sandboxes_cpu is not None else None
        ),
        "own_containers_per_evaluation": round(own_containers / max(n, 1), 2),
        "phases": phase_breakdown(finished),
        "leftover_containers": len(leftovers),
        "background_load_before": round(before, 3),
        "background_load_after": round(after, 3),
        "problems": problems,
        "not_passed": [
            f"{r.skill}@{r.version} {r.verdict} (attempts {r.attempts}): "
            + "; ".join(f"{x.get('code')}: {str(x.get('message'))[:300]}" for x in r.reasons)
            for r in finished if r.verdict != "passed"
        ],
        "slowest": [
            f"{r.skill}@{r.version} queued {(r.started_at - r.created_at).total_seconds():.1f}s, "
            f"ran {(r.finished_at - r.started_at).total_seconds():.1f}s, attempts {r.attempts}"
            for r in slowest
        ],
    }


def print_load(out: dict[str, Any], label: str, ceiling_cpu: float, cores: int, quiet_limit: float) -> float:
    mib = 1024 * 1024
    ceiling_per_min = cores / ceiling_cpu * 60 if ceiling_cpu else 0.0
    ratio = out["throughput_per_min"] / ceiling_per_min if ceiling_per_min else 0.0
    out["ceiling_per_min"] = round(ceiling_per_min, 1)
    out["ratio"] = round(ratio, 3)
    # what this run's own processes spent per evaluation (not other tenants'): the ratio the
    # machine would reach if it were all ours and runc/the kernel cost nothing
    ours = (out["sandbox_cpu_seconds_per_evaluation"] or 0.0) + out["worker_cpu_seconds_per_evaluation"] + sum(
        out["engine_cpu_seconds_per_evaluation"].values())
    out["cpu_bound_ratio"] = round(ceiling_cpu / ours, 3) if ours and ceiling_cpu else None
    print(f"--- {label} (policy {out['policy']})")
    print(
        f"finished {out['finished']}/{out['submissions']} in {out['span_seconds']:.1f}s: "
        f"{out['throughput_per_min']:.1f} evaluations/min "
        f"(verdicts {out['verdicts']}, retried {out['retried']}, unfinished {out['unfinished']})"
    )
    print(f"submit -> verdict: p50 {out['latency_p50_seconds']}s, p95 {out['latency_p95_seconds']}s")
    print("peak worker RSS: " + ", ".join(f"{b / mib:.0f} MiB" for b in out["peak_rss_bytes_per_worker"]))
    print(
        f"CPU actually spent per evaluation: host {out['host_cpu_seconds_per_evaluation']}s = "
        f"own sandboxes {out['sandbox_cpu_seconds_per_evaluation']}s "
        f"({out['own_containers_per_evaluation']} containers; every container on the engine, other tenants' too: "
        f"{out['all_containers_cpu_seconds_per_evaluation']}s) + "
        f"workers {out['worker_cpu_seconds_per_evaluation']}s + "
        + " + ".join(f"{k} {v}s" for k, v in out["engine_cpu_seconds_per_evaluation"].items())
        + " + kernel/runc/shims/other tenants"
    )
    ph = out["phases"]
    print(
        f"phases (median s): {json.dumps(ph['median_seconds'])}; evaluation sandboxes warm "
        f"{ph['evaluation_sandboxes_warm']}, cold {ph['evaluation_sandboxes_cold']}; oracle sandboxes per "
        f"evaluation {ph['oracle_sandboxes_per_evaluation']} "
        f"(active-version replays {ph['oracle_active_replay_sandboxes']})"
    )
    print(f"ceiling: {cores} cores / {ceiling_cpu:.3f} CPU-s = {ceiling_per_min:.1f}/min")
    print(f"ratio throughput/ceiling: {ratio:.3f}  (target >= 0.9 with the warm pool)")
    print(
        f"  CPU-bound ratio: {ceiling_cpu:.3f} / {ours:.3f} CPU-s this run's sandboxes + workers + engine spent per "
        f"evaluation = {out['cpu_bound_ratio']} (what the ratio would be with the machine to ourselves, "
        "runc/kernel not counted; other tenants' containers do count in the sandboxes' cgroup)"
    )
    print(f"leftover containers: {out['leftover_containers']}")
    noisy = max(out["background_load_before"], out["background_load_after"]) > quiet_limit
    print(
        f"background load from other tenants: {out['background_load_before']:.0%} before, "
        f"{out['background_load_after']:.0%} after"
        + ("  (NOISY: the numbers above are not trustworthy)" if noisy else "")
    )
    if out["problems"]:
        print(f"worker warnings/errors ({len(out['problems'])}):")
        for line in out["problems"][:20]:
            print("  " + line)
    for line in out["not_passed"]:
        print("not passed: " + line)
    print("slowest: " + "; ".join(out["slowest"]))
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 submissions, 1 floor run")
    parser.add_argument(
        "--work",
        choices=("both", "issue", "policy"),
        default="both",
        help="issue: the issue's original work (policy issue14: semgrep + pytest + coverage, no mutation/oracle) "
        "against the bare floor; policy: the default policy's whole evaluation against the CPU its sandboxes "
        "need; both (default): one after the other",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="evaluations per worker (default: the worker's own default)"
    )
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--floor-runs", type=int, default=5)
    parser.add_argument(
        "--floor-load",
        type=int,
        default=40,
        help="bare floor runs at the workers' total concurrency, for the engine's own throughput (0: skip)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: a throwaway PostgreSQL (tests/pg.py), else a temporary SQLite file (one per work)",
    )
    parser.add_argument("--url", default=None, help="post through the HTTP API (not implemented yet)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=0.10,
        help="wait until other tenants use less than this share of the CPUs (default 0.10)",
    )
    parser.add_argument(
        "--quiet-patience", type=float, default=120.0, help="seconds to wait for that before measuring anyway"
    )
    args = parser.parse_args()
    if args.url:
        parser.error("--url (posting through sandgate serve) is not implemented yet; use the library path")
    if args.quick:
        args.submissions, args.floor_runs, args.floor_load = 20, 1, 0
    if args.database_url and args.work == "both":
        parser.error("--database-url takes one work: add --work issue or --work policy")

    works = ["issue", "policy"] if args.work == "both" else [args.work]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sandgate-load-")))
        # both policies from one directory, for this process and the workers (set before any settings load)
        os.environ["SANDGATE_POLICIES_DIR"] = str(issue_policies_dir(tmp))

        from sandgate.policy import load_policy
        from sandgate.worker import default_concurrency

        cores = os.cpu_count() or 1
        before = wait_for_quiet(args.quiet_limit, args.quiet_patience)
        print(
            f"machine: {cores} cores, background load {before:.0%}, loadavg {_loadavg()}; "
            f"measuring the floor ({args.floor_runs} runs + 1 warm-up) ...",
            flush=True,
        )
        per_worker = args.concurrency or default_concurrency(load_policy("default"))
        width = per_worker * args.workers
        floor = measure_floor(args.floor_runs, parallel_runs=args.floor_load, width=width)
        ceiling_per_min = cores / floor["cpu_seconds"] * 60
        engine_ceiling_per_min = cores / floor["host_cpu_seconds"] * 60
        print(
            f"floor (bare hardened docker run: semgrep + pytest + coverage): {floor['cpu_seconds']:.3f} CPU-s "
            f"per evaluation ({floor['source']}; rusage {', '.join(f'{x:.3f}' for x in floor['rusage_cpu_seconds'])}), "
            f"wall {floor['wall_seconds']:.3f}s; ceiling {cores} cores / {floor['cpu_seconds']:.3f} = "
            f"{ceiling_per_min:.1f}/min",
            flush=True,
        )
        print(
            f"engine-inclusive: {floor['host_cpu_seconds']:.3f} host CPU-s per floor run (engine + kernel too) "
            f"-> {engine_ceiling_per_min:.1f}/min"
            + (f"; bare floor {width} at a time: {floor['parallel_per_min']:.1f}/min "
               f"({floor['parallel_per_min'] / ceiling_per_min:.3f} of the ceiling), "
               f"{floor['parallel_cpu_seconds']:.3f} CPU-s per run in its cgroup, "
               f"{floor['parallel_host_cpu_seconds']:.3f} host CPU-s per run"
               if floor["parallel_per_min"] else ""),
            flush=True,
        )
        evaluation_cpu: dict[str, Any] = {}
        for work in works:
            name = ISSUE_POLICY if work == "issue" else "default"
            measured = measure_evaluation_cpu(load_policy(name), submissions(args.floor_runs + 1,
                                              examples=work != "issue"), args.floor_runs)
            evaluation_cpu[work] = measured
            print(
                f"one whole evaluation under {name} (sequential, in-process, cold sandboxes): "
                f"{measured['cpu_seconds']} CPU-s in its sandboxes (runs {measured['cpu_runs']}, containers "
                f"{measured['containers_per_evaluation']}), wall "
                f"{measured['wall_seconds']:.3f}s, host {measured['host_cpu_seconds']:.3f}s; phases "
                f"{json.dumps(measured['phases'])}",
                flush=True,
            )

        url = args.database_url
        server = None
        if url is None:
            pg = _load(ROOT / "tests" / "pg.py", "sandgate_bench_pg")
            try:
                server = stack.enter_context(pg.postgres_server())
            except pg.PostgresUnavailable:
                server = None
        results: dict[str, Any] = {}
        ratios: dict[str, float] = {}
        for work in works:
            if args.database_url:
                db = url
            elif server is not None:
                db = server.create_database(f"load_{work}")
            else:
                db = f"sqlite:///{tmp / f'load_{work}.db'}"
            assert db is not None
            name = ISSUE_POLICY if work == "issue" else "default"
            print(
                f"[{work}] store: {db.split(':', 1)[0]}; {args.workers} worker process(es) x concurrency {per_worker}; "
                f"{args.submissions} submissions under {name}; SANDGATE_POOL_SIZE="
                f"{os.environ.get('SANDGATE_POOL_SIZE', 'the default')}; loadavg {_loadavg()}",
                flush=True,
            )
            out = run_load(args, db, tmp, policy_name=name,
                           subs=submissions(args.submissions, examples=work != "issue"), tag=work)
            results[work] = out
            if work == "issue":
                ratios[work] = print_load(
                    out, "the issue's original work vs the bare floor's CPU", floor["cpu_seconds"], cores,
                    args.quiet_limit)
                if floor["parallel_per_min"]:
                    out["ratio_to_parallel_floor"] = round(out["throughput_per_min"] / floor["parallel_per_min"], 3)
                    print(f"  vs the bare floor run {width} at a time in this run "
                          f"({floor['parallel_per_min']:.1f}/min, "
                          f"the same engine and tenants): {out['ratio_to_parallel_floor']}")
            else:
                ratios[work] = print_load(
                    out, "the default policy's whole evaluation (static + dynamic + mutation + oracle) vs the CPU "
                    "its sandboxes need (sequential evaluations)", evaluation_cpu["policy"]["cpu_seconds"] or 0.0,
                    cores, args.quiet_limit)
                print(f"  the same throughput against the bare floor (work the floor does not do): "
                      f"{out['throughput_per_min'] / ceiling_per_min:.3f}")
        print(f"loadavg at the end: {_loadavg()}")

    summary = {
        "cores": cores,
        "floor_cpu_seconds": round(floor["cpu_seconds"], 3),
        "floor_wall_seconds": round(floor["wall_seconds"], 3),
        "floor_host_cpu_seconds": round(floor["host_cpu_seconds"], 3),
        "floor_parallel_per_min": round(floor["parallel_per_min"], 1) if floor["parallel_per_min"] else None,
        "floor_parallel_cpu_seconds": (round(floor["parallel_cpu_seconds"], 3)
                                       if floor["parallel_cpu_seconds"] is not None else None),
        "ceiling_per_min": round(ceiling_per_min, 1),
        "evaluation_cpu": evaluation_cpu,
        "concurrency_per_worker": per_worker,
        "workers": args.workers,
        "results": {k: {kk: vv for kk, vv in v.items() if kk not in ("problems",)} for k, v in results.items()},
        "ratios": ratios,
    }
    if args.json:
        print(json.dumps(summary))
    ok = all(
        not r["unfinished"] and r["verdicts"].get("error", 0) == 0 and not r["leftover_containers"]
        and r["verdicts"].get("passed") == r["finished"]
        for r in results.values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
