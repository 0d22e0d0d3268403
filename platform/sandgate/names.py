"""The shared vocabulary's formulas: skill names, content hashes, controller ids.

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

__all__ = [
    "SKILL_NAME_PATTERN",
    "SKILL_NAME",
    "SKILL_NAME_RULE",
    "is_skill_name",
    "content_hash",
    "controller_id",
    "owner_id",
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
