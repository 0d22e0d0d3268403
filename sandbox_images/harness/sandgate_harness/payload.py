"""Read the payload tar from stdin: regular files only, safe relative paths, caps."""

from __future__ import annotations

import os
import tarfile
from pathlib import PurePosixPath
from typing import BinaryIO

MAX_MEMBERS = 2000
MAX_TOTAL = 32 * 1024 * 1024


class PayloadError(Exception):
    pass


def read_payload(stream: BinaryIO) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise PayloadError("payload: too many members")
            if member.isdir():
                continue
            if not member.isreg():
                raise PayloadError(f"payload: {member.name!r} is not a regular file")
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise PayloadError(f"payload: unsafe path {member.name!r}")
            total += member.size
            if total > MAX_TOTAL:
                raise PayloadError("payload: too large")
            handle = tar.extractfile(member)
            assert handle is not None
            files[str(path)] = handle.read()
    return files


def write_tree(root: str, files: dict[str, bytes]) -> None:
    """Write files under root, refusing to follow any symlink on the way."""
    os.makedirs(root, mode=0o755, exist_ok=True)
    for rel, data in files.items():
        parts = PurePosixPath(rel).parts
        parent = root
        for part in parts[:-1]:
            parent = os.path.join(parent, part)
            try:
                os.mkdir(parent, 0o755)
            except FileExistsError:
                pass
        fd = os.open(
            os.path.join(root, *parts),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
            0o644,
        )
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
