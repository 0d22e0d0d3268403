"""Versions: storing a submission as a skill's next version, and reading versions back.

Keyword-only functions, one transaction each, plain records out
(:mod:`sandgate.records`). A version is immutable: its number, content hash
and exact bytes never change once written; identical content is the same
version (:func:`create_version` is idempotent on content).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sandgate.errors import InvalidTransition, StoreError
from sandgate.names import SKILL_NAME
from sandgate.records import FileChange, FileDiff, SkillRecord, VersionRecord
from sandgate.store._rows import (
    _hook,
    _now,
    _require_actor,
    _skill,
    _skill_record,
    _utc,
    _version,
    _version_record,
)
from sandgate.store.engine import Store
from sandgate.store.models import HASH_LENGTH, PATH_LENGTH, Evaluation, Event, Skill, Version, VersionFile

__all__ = [
    "SubmissionLike",
    "create_version",
    "get_skill",
    "list_skills",
    "list_versions",
    "get_version",
    "get_active_version",
    "get_version_files",
    "StoredFile",
    "get_version_with_files",
    "diff",
]

_CREATE_ATTEMPTS = 5


class SubmissionLike(Protocol):
    """What the store needs of a ``sandgate.submission.Submission``."""

    @property
    def name(self) -> str: ...

    @property
    def manifest(self) -> Any: ...

    @property
    def files(self) -> Mapping[str, bytes]: ...

    @property
    def content_hash(self) -> str: ...

def _manifest_dict(manifest: Any) -> dict[str, Any]:
    if manifest is None:
        return {}
    if hasattr(manifest, "model_dump"):
        return dict(manifest.model_dump(mode="json"))
    return dict(manifest)

def create_version(
    store: Store,
    *,
    submission: SubmissionLike,
    actor: str,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[VersionRecord, bool]:
    """Store a submission as the skill's next version (idempotent on content).

    Identical content returns the existing version and ``created=False``. A new
    version — row, every file, and its ``submitted`` event — is written in one
    transaction: a crash at any point leaves no trace of it, and numbers stay
    contiguous.
    """
    actor = _require_actor(actor)
    name = submission.name
    if not SKILL_NAME.match(name or ""):
        raise InvalidTransition(f"invalid skill name {name!r}: must match {SKILL_NAME.pattern}")
    content_hash = submission.content_hash
    if not content_hash or len(content_hash) > HASH_LENGTH:
        raise StoreError(f"invalid content hash {content_hash!r}")
    files = {path: bytes(data) for path, data in sorted(submission.files.items())}
    if not files:
        raise StoreError(f"submission {name!r} has no files")
    for path in files:
        if len(path) > PATH_LENGTH:
            raise StoreError(f"file path longer than {PATH_LENGTH} characters: {path[:60]}...")
    manifest = _manifest_dict(submission.manifest)

    last_error: IntegrityError | None = None
    for _attempt in range(_CREATE_ATTEMPTS):
        try:
            return _create_version_once(
                store,
                name=name,
                content_hash=content_hash,
                files=files,
                manifest=manifest,
                actor=actor,
                provenance=dict(provenance) if provenance is not None else None,
            )
        except IntegrityError as exc:
            # a concurrent submit created the skill or took the number first: retry
            last_error = exc
    raise StoreError(f"could not store {name!r}: concurrent writers kept colliding") from last_error

def _create_version_once(
    store: Store,
    *,
    name: str,
    content_hash: str,
    files: dict[str, bytes],
    manifest: dict[str, Any],
    actor: str,
    provenance: dict[str, Any] | None,
) -> tuple[VersionRecord, bool]:
    now = _now()
    with store.write() as s:
        skill = s.scalars(select(Skill).where(Skill.name == name).with_for_update()).one_or_none()
        if skill is None:
            skill = Skill(name=name, created_at=now, generation=0)
            s.add(skill)
            s.flush()
        existing = s.scalars(
            select(Version).where(Version.skill_id == skill.id, Version.content_hash == content_hash)
        ).one_or_none()
        if existing is not None:
            return _version_record(existing, skill), False
        latest = s.scalar(select(func.max(Version.number)).where(Version.skill_id == skill.id))
        version = Version(
            skill_id=skill.id,
            number=(latest or 0) + 1,
            content_hash=content_hash,
            manifest=manifest,
            file_count=len(files),
            total_bytes=sum(len(b) for b in files.values()),
            created_at=now,
            created_by=actor,
            status="pending",
            provenance=provenance,
        )
        s.add(version)
        s.flush()
        s.execute(
            cast(Table, VersionFile.__table__).insert(),  # a declared model's __table__ is a Table
            [
                {
                    "version_id": version.id,
                    "path": path,
                    "content": data,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
                for path, data in files.items()
            ],
        )
        _hook("create_version.files_inserted", s)
        s.add(
            Event(
                skill_id=skill.id,
                version_id=version.id,
                actor=actor,
                action="submitted",
                reason=None,
                before=None,
                after={"version": version.number, "content_hash": content_hash},
                evidence={"files": len(files), "bytes": version.total_bytes},
                created_at=now,
            )
        )
        record = _version_record(version, skill)
    return record, True

def get_skill(store: Store, *, name: str) -> SkillRecord:
    with store.read() as s:
        return _skill_record(s, _skill(s, name))

def list_skills(store: Store, *, prefix: str | None = None, limit: int | None = None) -> list[SkillRecord]:
    """All skills by name (optionally those starting with ``prefix``)."""
    latest = (
        select(func.max(Version.number))
        .where(Version.skill_id == Skill.id)
        .correlate(Skill)
        .scalar_subquery()
    )
    active = (
        select(Version.number)
        .where(Version.id == Skill.active_version_id)
        .correlate(Skill)
        .scalar_subquery()
    )
    q = select(Skill.name, Skill.created_at, active, Skill.generation, latest).order_by(Skill.name)
    if prefix:
        q = q.where(Skill.name.startswith(prefix, autoescape=True))
    if limit is not None:
        q = q.limit(limit)
    with store.read() as s:
        return [
            SkillRecord(
                name=row[0],
                created_at=_utc(row[1]),
                active_version=row[2],
                generation=row[3],
                latest_version=row[4],
            )
            for row in s.execute(q)
        ]

def list_versions(store: Store, *, name: str) -> list[VersionRecord]:
    with store.read() as s:
        skill = _skill(s, name)
        versions = list(s.scalars(
            select(Version).where(Version.skill_id == skill.id).order_by(Version.number)
        ))
        latest = _latest_verdicts(s, [v.id for v in versions])
        return [_version_record(v, skill, latest.get(v.id)) for v in versions]


def _latest_verdicts(s: Session, version_ids: list[int]) -> dict[int, str]:
    """version id -> verdict of its latest finished evaluation (any policy, ``error`` included)."""
    if not version_ids:
        return {}
    rows = s.execute(
        select(Evaluation.version_id, Evaluation.verdict)
        .where(Evaluation.version_id.in_(version_ids), Evaluation.status == "done")
        .order_by(Evaluation.version_id, Evaluation.finished_at, Evaluation.created_at)
    )
    return {vid: verdict for vid, verdict in rows if verdict is not None}


def get_version(store: Store, *, name: str, number: int) -> VersionRecord:
    with store.read() as s:
        skill = _skill(s, name)
        return _version_record(_version(s, skill, number), skill)

def get_active_version(store: Store, *, name: str) -> VersionRecord | None:
    """The active version of ``name``, or None when nothing was promoted yet."""
    with store.read() as s:
        skill = _skill(s, name)
        if skill.active_version_id is None:
            return None
        return _version_record(s.get_one(Version, skill.active_version_id), skill)

def get_version_files(store: Store, *, name: str, number: int) -> dict[str, bytes]:
    """The exact bytes of a version, by path (sorted)."""
    with store.read() as s:
        version = _version(s, _skill(s, name), number)
        rows = s.execute(
            select(VersionFile.path, VersionFile.content)
            .where(VersionFile.version_id == version.id)
            .order_by(VersionFile.path)
        )
        return {path: bytes(content) for path, content in rows}

def get_files_of_versions(store: Store, *, name: str, paths: tuple[str, ...]) -> dict[int, dict[str, bytes]]:
    """The bytes each version of ``name`` stores at ``paths`` (those it has): by version number,
    then path. One read, whatever the number of versions; no other file's bytes are read."""
    with store.read() as s:
        skill = _skill(s, name)
        rows = s.execute(
            select(Version.number, VersionFile.path, VersionFile.content)
            .join(VersionFile, VersionFile.version_id == Version.id)
            .where(Version.skill_id == skill.id, VersionFile.path.in_(paths))
            .order_by(Version.number, VersionFile.path)
        )
        found: dict[int, dict[str, bytes]] = {}
        for number, path, content in rows:
            found.setdefault(int(number), {})[path] = bytes(content)
        return found


class StoredFile(NamedTuple):
    path: str
    content: bytes
    #: hex SHA-256 of ``content``, computed when the version was stored
    sha256: str
    size: int


def get_version_with_files(store: Store, *, name: str, number: int) -> tuple[VersionRecord, list[StoredFile]]:
    """The version's record and its files (bytes with their stored digests, by path): one read transaction."""
    with store.read() as s:
        skill = _skill(s, name)
        version = _version(s, skill, number)
        rows = s.execute(
            select(VersionFile.path, VersionFile.content, VersionFile.sha256, VersionFile.size)
            .where(VersionFile.version_id == version.id)
            .order_by(VersionFile.path)
        )
        files = [StoredFile(path, bytes(content), sha, int(size)) for path, content, sha, size in rows]
        return _version_record(version, skill), files


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None

def diff(store: Store, *, name: str, a: int, b: int) -> list[FileDiff]:
    """Per changed file, a unified diff from ``name@a`` to ``name@b``."""
    with store.read() as s:
        skill = _skill(s, name)
        id_a, id_b = _version(s, skill, a).id, _version(s, skill, b).id
        files: dict[int, dict[str, bytes]] = {id_a: {}, id_b: {}}
        for vid, path, content in s.execute(
            select(VersionFile.version_id, VersionFile.path, VersionFile.content).where(
                VersionFile.version_id.in_({id_a, id_b})
            )
        ):
            files[vid][path] = bytes(content)
    old, new = files[id_a], files[id_b]
    out: list[FileDiff] = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        change: FileChange = "added" if before is None else "removed" if after is None else "modified"
        text_a = "" if before is None else _decode(before)
        text_b = "" if after is None else _decode(after)
        if text_a is None or text_b is None:
            out.append(FileDiff(path=path, change=change, diff="", binary=True))
            continue
        lines = difflib.unified_diff(
            text_a.splitlines(keepends=True),
            text_b.splitlines(keepends=True),
            fromfile=f"a/{path}" if before is not None else "/dev/null",
            tofile=f"b/{path}" if after is not None else "/dev/null",
        )
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        out.append(FileDiff(path=path, change=change, diff=text))
    return out
