"""Killing what submitted code left running, inside the sandbox (standard library only).

The sandbox's processes all run as one uid, and the harness is PID 1. ``kill(-1,
SIGKILL)`` kills every process but the caller and PID 1 in one call. When one
process must survive (the warm mutation server, which has not been given its
job and has never run submitted code), :func:`kill_all_but` stops everyone
first — ``SIGSTOP`` cannot be caught, and a stopped process cannot fork — then
kills each live process by pid, repeating until a scan after the stop finds no
one else, and only then continues the survivor.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time


def kill_everything_else() -> None:
    """Every process but this one and PID 1."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass


def live_pids(skip: tuple[int, ...]) -> list[int]:
    """Every process in the container but ``skip``; zombies left out (they are dead already)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                if handle.read().rpartition(b")")[2].split()[:1] == [b"Z"]:
                    continue
        except OSError:
            continue
        pids.append(int(name))
    return pids


def kill_all_but(keep: int | None) -> bool:
    """SIGKILL every process but this one, PID 1 and ``keep``, which is then continued.

    False when it could not be done (someone kept appearing, or ``keep`` is gone):
    then ``keep`` has been killed too. With ``keep`` None this is
    :func:`kill_everything_else`.
    """
    if keep is None:
        kill_everything_else()
        return True
    me = os.getpid()
    for _ in range(50):
        try:
            os.kill(-1, signal.SIGSTOP)
        except OSError:
            pass
        others = live_pids((me, 1, keep))
        if not others:
            try:
                os.kill(keep, signal.SIGCONT)
            except OSError:
                return False
            return True
        _kill(others)
    kill_everything_else()
    return False


def kill_strays(keep: int) -> bool:
    """SIGKILL every process but this one, PID 1 and ``keep`` (which keeps running); False if
    some kept coming back. For a caller whose ``keep`` runs submitted code and may be busy."""
    me = os.getpid()
    for _ in range(20):
        others = live_pids((me, 1, keep))
        if not others:
            return True
        _kill(others)
    return False


def _kill(pids: list[int]) -> None:
    """SIGKILL each of ``pids``, then give the kernel a moment to make them zombies."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.001)


def exited_within(pid: int, timeout: float) -> bool | None:
    """Whether child ``pid`` exits within ``timeout`` (it is not reaped), waiting on a pidfd,
    which becomes readable at the exit itself; None without pidfds (an older kernel, gVisor)."""
    try:
        watch = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    try:
        return bool(select.select([watch], [], [], max(0.0, timeout))[0])
    finally:
        os.close(watch)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` that returns as the child exits.

    ``Popen.wait`` with a timeout polls with sleeps growing to 50 ms, so it returns
    up to 50 ms (25 on average) after the exit; :func:`exited_within` does not.
    Without pidfds it is ``Popen.wait``. Raises :class:`subprocess.TimeoutExpired`
    as that does.
    """
    if proc.returncode is not None:
        return proc.returncode
    exited = exited_within(proc.pid, timeout)
    if exited is None:
        return proc.wait(timeout=timeout)
    if not exited:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


#: the command line submitted code sees (``sys.argv``, ``sys.orig_argv``, argparse's default
#: ``prog``): an interpreter's, never the harness's (``python3 -I .../sandgate_harness/runner.py
#: 3 4 5`` would tell a skill it is under test). Fixed, so a skill can still compare with it:
#: reading the command line outside ``__main__`` is the static rule ``sys-argv-inspection``.
PLAIN_ARGV = ("",)
PLAIN_ORIG_ARGV = ("python3",)


def hide_command_line() -> None:
    """Give this process :data:`PLAIN_ARGV` before submitted code runs in it (after its own
    arguments were read)."""
    sys.argv = list(PLAIN_ARGV)
    sys.orig_argv = list(PLAIN_ORIG_ARGV)
