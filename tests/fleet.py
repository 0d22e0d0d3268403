"""A fleet on one machine: N extra Docker engines, one worker process per engine, one store.

::

    with Fleet(2, database_url=url) as fleet:   # engines up, image loaded, a worker on each
        fleet.hosts[0].kill()          # SIGKILL its worker, its engine, containerd, shims, sandboxes
        fleet.hosts[0].restart()       # the engine again on the same dirs, a new worker (same host id)
    # every process it started is dead and every directory removed, even when the block raised

Each :class:`Host` is a separate ``dockerd`` with its own ``--data-root``,
``--exec-root`` (dockerd 20.10 starts its own containerd under it: its socket,
state and config live there, so no two hosts share one), ``--pidfile`` and
``-H unix://…/docker.sock``, ``--bridge=none --iptables=false`` (sandboxes never
get a network), and the runtimes of ``/etc/docker/daemon.json`` (runsc). The
sandbox image is ``docker save``'d from the main engine once per image id
(cached under ``$TMPDIR/sandgate-fleet-cache``) and ``docker load``'ed into each.

Its worker is ``python -m sandgate worker`` with ``DOCKER_HOST`` pointing at
that engine and ``SANDGATE_HOST_ID=fleet-<i>``: the pids of all simulated hosts
share one kernel, so the host id (not the hostname) is what tells whose
containers are whose.

Tear-down (also on failure): SIGKILL every process whose command line names a
host's directory (dockerd, containerd, the shims) and their descendants (the
sandboxes), unmount what the engine left mounted there, remove the directory.
Needs root, like the engine itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker

__all__ = ["Fleet", "Host", "cached_image_tar", "fleet_policy", "managed_containers"]

ROOT = Path(__file__).resolve().parents[1]
ENGINE_START_TIMEOUT = 60.0
CACHE = Path(tempfile.gettempdir()) / "sandgate-fleet-cache"
MANAGED = "sandgate.managed"


def _pids_naming(needle: str) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle.encode() in (entry / "cmdline").read_bytes():
                out.add(int(entry.name))
        except OSError:
            continue
    return out


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _with_descendants(pids: set[int]) -> set[int]:
    tree, out, todo = _children(), set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo.extend(tree.get(pid, []))
    return out


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    prefix = str(root)
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def cached_image_tar(image: str, main: docker.DockerClient | None = None) -> Path:
    """``docker save`` of ``image`` from the main engine, once per image id."""
    main = main or docker.from_env()
    image_id = main.images.get(image).id.split(":", 1)[-1][:20]
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"{image.replace('/', '_').replace(':', '_')}-{image_id}.tar"
    if not tar.exists():
        part = tar.with_suffix(f".{os.getpid()}.part")
        subprocess.run(["docker", "save", "-o", str(part), image], check=True, capture_output=True)
        part.replace(tar)
        for old in CACHE.glob(f"{image.replace('/', '_').replace(':', '_')}-*.tar"):
            if old != tar:
                old.unlink(missing_ok=True)
    return tar


def fleet_policy(tmp: Path) -> Path:
    """The checkout's policies plus ``fleet``: ``default`` without the mutation phase.

    What is tested here is who runs an evaluation, not its gates; the mutation
    phase is the slowest and most load-sensitive part (its controls time out
    on a starved machine), so it is off.
    """
    shutil.copytree(ROOT / "policies", tmp, dirs_exist_ok=True)
    text = (tmp / "default.toml").read_text()
    for old, new in (("min_mutation_score = 60.0", "min_mutation_score = 0.0"),
                     ("null_entrypoint_must_be_killed = true", "null_entrypoint_must_be_killed = false"),
                     ("max_mutants = 20", "max_mutants = 0")):
        assert old in text, old
        text = text.replace(old, new)
    (tmp / "fleet.toml").write_text(text)
    return tmp


def managed_containers(client: docker.DockerClient) -> list[dict[str, Any]]:
    return list(client.api.containers(all=True, filters={"label": [f"{MANAGED}=true"]}))


class Host:
    """One simulated machine: a Docker engine and (when started) one worker process on it."""

    def __init__(self, index: int, root: Path, *, database_url: str, worker_args: list[str]) -> None:
        self.index = index
        self.host_id = f"fleet-{index}"
        self.root = root
        self.database_url = database_url
        self.worker_args = worker_args
        self.sock = root / "docker.sock"
        self.engine: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.generation = 0
        #: extra environment of its worker (e.g. ``SANDGATE_POLICIES_DIR``)
        self.env: dict[str, str] = {}
        self._client: docker.DockerClient | None = None

    # ---------------------------------------------------------------- engine

    @property
    def docker_host(self) -> str:
        return f"unix://{self.sock}"

    def start_engine(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {}
        with contextlib.suppress(OSError, ValueError):
            runtimes = json.loads(Path("/etc/docker/daemon.json").read_text()).get("runtimes")
            if runtimes:
                config["runtimes"] = runtimes
        (self.root / "daemon.json").write_text(json.dumps(config))
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - the engine keeps it
        self.engine = subprocess.Popen(
            ["dockerd", "--config-file", str(self.root / "daemon.json"),
             "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid"), "-H", self.docker_host,
             "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        self._client = None
        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.engine.poll() is not None:
                raise RuntimeError(f"dockerd of {self.host_id} exited: {self.engine_log()}")
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd of {self.host_id} did not answer in {ENGINE_START_TIMEOUT:g}s: "
                           f"{self.engine_log()}")

    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.docker_host, timeout=30)
        return self._client

    def load_image(self, tar: Path) -> None:
        subprocess.run(["docker", "-H", self.docker_host, "load", "-q", "-i", str(tar)],
                       check=True, capture_output=True, timeout=300)

    def engine_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
        return ""

    def engine_pids(self) -> set[int]:
        """dockerd, its containerd, the shims and every sandbox process of this host."""
        return _with_descendants(_pids_naming(str(self.root) + "/"))

    def kill_engine(self) -> None:
        """SIGKILL the engine, its containerd, the shims and the sandboxes (a machine losing power)."""
        _kill_all(self.engine_pids())
        if self.engine is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.engine.wait(10)
        self._client = None

    # ---------------------------------------------------------------- worker

    def start_worker(self, *extra: str) -> None:
        self.generation += 1
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "DOCKER_HOST": self.docker_host, "SANDGATE_HOST_ID": self.host_id,
               "SANDGATE_DATABASE_URL": self.database_url, "SANDGATE_HOME": str(home),
               "PYTHONUNBUFFERED": "1", **self.env}
        out = open(self.worker_log, "ab")  # noqa: SIM115 - the worker keeps it
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "sandgate", "worker", *self.worker_args, *extra],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()

    @property
    def worker_log(self) -> Path:
        return self.root / f"worker-{self.generation}.log"

    @property
    def controller(self) -> str | None:
        return f"{self.host_id}:{self.worker.pid}" if self.worker is not None else None

    def owns(self, owner: str | None) -> bool:
        return bool(owner) and str(owner).startswith(self.host_id + ":")

    def stop_worker(self, timeout: float = 40) -> int | None:
        if self.worker is None:
            return None
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
        try:
            return self.worker.wait(timeout)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            return self.worker.wait(10)

    def log_text(self) -> str:
        """This host's current worker's whole log."""
        with contextlib.suppress(OSError):
            return self.worker_log.read_text(errors="replace")
        return ""

    def tail(self) -> str:
        return self.log_text()[-3000:]

    # ---------------------------------------------------------------- the whole host

    def kill(self) -> None:
        """kill -9 the host: its worker, then its engine and everything under it, at once."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
        self.kill_engine()
        if self.worker is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.worker.wait(10)

    def restart(self, *extra: str) -> None:
        """The host comes back: the engine on the same directories, then a new worker."""
        self.start_engine()
        self.start_worker(*extra)

    def destroy(self) -> None:
        """Tear-down: nothing of this host survives (processes, mounts, directory)."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.worker.wait(10)
        for _ in range(3):
            pids = self.engine_pids()
            if not pids:
                break
            _kill_all(pids)
            time.sleep(0.3)
        if self.engine is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.engine.wait(10)
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():  # a mount that would not go: try once more
            _unmount_under(self.root)
            shutil.rmtree(self.root, ignore_errors=True)


class Fleet:
    """``n`` hosts on one store (see the module docstring); a context manager."""

    def __init__(self, n: int, *, database_url: str, image: str | None = None,
                 worker_args: list[str] | None = None, start_workers: bool = True) -> None:
        from sandgate.config import Settings

        self.n = n
        self.database_url = database_url
        self.image = image or Settings().image
        self.worker_args = worker_args or ["--concurrency", "1", "--poll-interval", "0.1"]
        # short: a unix socket path has ~100 bytes
        self.base = Path(tempfile.mkdtemp(prefix="sgfleet-", dir="/tmp"))
        self.hosts = [Host(i, self.base / f"h{i}", database_url=database_url, worker_args=self.worker_args)
                      for i in range(n)]
        self.start_workers = start_workers
        #: the policy a test or bench queues under (its choice; the workers load it by name)
        self.policy: Any = None

    def __enter__(self) -> Fleet:
        try:
            self.start(workers=self.start_workers)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, *, workers: bool = True) -> None:
        tar = cached_image_tar(self.image)
        errors: list[BaseException] = []

        def up(host: Host) -> None:
            try:
                host.start_engine()
                host.load_image(tar)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=up, args=(h,)) for h in self.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if workers:
            for host in self.hosts:
                host.start_worker()

    def close(self) -> None:
        for host in self.hosts:
            host.destroy()
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> dict[str, int]:
        """Managed containers on each live engine (host id → count)."""
        out = {}
        for host in self.hosts:
            with contextlib.suppress(Exception):
                out[host.host_id] = len(managed_containers(host.client()))
        return out

    def tails(self) -> str:
        return "\n".join(f"--- {h.host_id} worker\n{h.tail()}" for h in self.hosts)


@contextlib.contextmanager
def fleet(n: int, **kw: Any) -> Iterator[Fleet]:
    with Fleet(n, **kw) as f:
        yield f
