"""The shared vocabulary's formulas: skill names, content hashes, controller ids.

:func:`controller_alive` answers, for a controller id on this host, whether
that process still runs (``/proc``): the reaper's "is this controller alive".

Ground floor: standard library only. Everything that needs one of these
imports it from here, so each is written once.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SKILL_NAME_PATTERN",
    "SKILL_NAME",
    "SKILL_NAME_RULE",
    "is_skill_name",
    "content_hash",
    "controller_id",
    "owner_id",
    "controller_alive",
]

#: a skill's name: a lowercase letter, then lowercase letters, digits or ``_`` (63 at most)
SKILL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
SKILL_NAME = re.compile(SKILL_NAME_PATTERN)
#: the rule in words, for error messages
SKILL_NAME_RULE = (
    "a lowercase letter, then lowercase letters, digits or '_', at most 63 characters "
    f"({SKILL_NAME_PATTERN})"
)


def is_skill_name(name: object) -> bool:
    return isinstance(name, str) and SKILL_NAME.match(name) is not None


def content_hash(files: Mapping[str, bytes]) -> str:
    """``sha256:<hex>`` of a canonical file set.

    For each file in path order: the UTF-8 path, a NUL byte, the size as 8
    big-endian bytes, the bytes. A version's identity (same content = same version).
    """
    digest = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        digest.update(path.encode("utf-8"))
        digest.update(b"\0")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return "sha256:" + digest.hexdigest()


def controller_id() -> str:
    """``<hostname>:<pid>``: the controller process (the ``sandgate.controller`` label)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_id() -> str:
    """``<hostname>:<pid>:<random>``: a lease owner; it starts with its :func:`controller_id`."""
    return f"{controller_id()}:{uuid.uuid4().hex[:8]}"


def _process_start_epoch(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # pragma: no cover - e.g. hidepid: cannot tell, assume alive
        return 0.0
    try:
        fields = stat[stat.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of the whole line
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (ValueError, IndexError, StopIteration, OSError):  # pragma: no cover
        return 0.0


def controller_alive(label: str | None, created_epoch: float | None = None) -> bool | None:
    """Is the controller ``host:pid`` that started a container still running?

    True / False for controllers on this host; None when it is another host's
    (or the label is missing or malformed): not ours to judge. A process with
    that pid that started after the container was created is a reused pid:
    the controller is dead.
    """
    if not label or ":" not in label:
        return None
    host, _, pid_text = label.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    if pid == os.getpid():
        return True
    started = _process_start_epoch(pid)
    if started is None:
        return False
    if created_epoch is not None and started > created_epoch + 2.0:
        return False  # the pid was reused after the container was created
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")  # a zombie's controller is gone
