"""The shared vocabulary's formulas: skill names, content hashes, host and controller ids.

:func:`host_id` names this host in controller ids and lease owners: the
setting ``host_id`` (``SANDGATE_HOST_ID``), else the hostname. Several
workers sharing one store must each run on a distinct host id (one per
Docker engine): "whose containers are these" is answered by it.
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
    "HOST_ID_PATTERN",
    "host_id",
    "set_host_id",
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


#: a host id: a letter or digit, then letters, digits, ``.``, ``_`` or ``-`` (64 at most; no ``:``)
HOST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_HOST_ID = re.compile(HOST_ID_PATTERN)
#: set by :func:`set_host_id` (the CLI's long-running commands set it from the settings)
_host_override: str | None = None


def _checked_host_id(value: str, source: str) -> str:
    if not _HOST_ID.match(value):
        raise ValueError(f"{source} {value!r} is not a host id: a letter or digit, then letters, digits, "
                         f"'.', '_' or '-', at most 64 characters ({HOST_ID_PATTERN})")
    return value


def set_host_id(value: str | None) -> None:
    """Name this host ``value`` in controller ids and lease owners (None: back to the default)."""
    global _host_override
    _host_override = None if value is None else _checked_host_id(value, "host id")


def host_id() -> str:
    """This host's id: :func:`set_host_id`'s, else ``$SANDGATE_HOST_ID``, else the hostname."""
    if _host_override is not None:
        return _host_override
    env = os.environ.get("SANDGATE_HOST_ID", "").strip()
    if env:
        return _checked_host_id(env, "SANDGATE_HOST_ID")
    return socket.gethostname()


def controller_id() -> str:
    """``<host id>:<pid>``: the controller process (the ``sandgate.controller`` label)."""
    return f"{host_id()}:{os.getpid()}"


def owner_id() -> str:
    """``<host id>:<pid>:<random>``: a lease owner; it starts with its :func:`controller_id`."""
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

    True / False for controllers on this host (same :func:`host_id`); None when
    it is another host's (or the label is missing or malformed): not ours to judge. A process with
    that pid that started after the container was created is a reused pid:
    the controller is dead.
    """
    if not label or ":" not in label:
        return None
    host, _, pid_text = label.rpartition(":")
    if host != host_id():
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
