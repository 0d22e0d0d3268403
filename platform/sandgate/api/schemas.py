"""Request and response bodies of the API (what ``/openapi.json`` publishes).

Request bodies refuse unknown fields. Every free-text field refuses NUL and
other control characters (except newline and tab) and lone surrogates, and is
length-capped; every number is bounded to what the database holds; so a
malformed value is a 422 here, never a database error later.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from sandgate.names import SKILL_NAME_PATTERN

__all__ = [
    "INT32",
    "SKILL_NAME_PATTERN",
    "POLICY_NAME_PATTERN",
    "EVALUATION_ID_PATTERN",
    "Text",
    "Reason",
    "FilesSubmission",
    "PromoteRequest",
    "RollbackRequest",
    "YankRequest",
    "GenerateRequest",
    "SkillOut",
    "VersionOut",
    "EvaluationOut",
    "EventOut",
    "MoveOut",
    "YankOut",
    "FileDiffOut",
    "FileOut",
    "FileContentOut",
    "VersionDetailOut",
    "VersionFilesOut",
    "SubmitOut",
    "PointerOut",
    "PointersOut",
    "EvaluationStatusOut",
    "GenerationOut",
    "WhoAmIOut",
]

INT32 = 2**31 - 1
INT64 = 2**63 - 1
POLICY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
EVALUATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"
MAX_FILES = 1000
MAX_PROVENANCE_BYTES = 16 * 1024


def _clean(value: str) -> str:
    for ch in value:
        o = ord(ch)
        if (o < 32 and ch not in "\n\t\r") or o == 0x7F:
            raise ValueError(f"control character U+{o:04X} is not allowed")
        if 0xD800 <= o <= 0xDFFF:
            raise ValueError("lone surrogate characters are not allowed (not valid UTF-8)")
    return value


def _bounded_json(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        raise ValueError("nested deeper than 8 levels")
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        for k, v in value.items():
            _clean(str(k))
            _bounded_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _bounded_json(v, depth + 1)
    elif isinstance(value, float) and value != value:  # NaN
        raise ValueError("NaN is not allowed")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
        raise ValueError("integers must fit in 64 bits")
    return value


def _provenance(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    _bounded_json(value)
    try:
        size = len(json.dumps(value, allow_nan=False).encode("utf-8"))
    except ValueError as exc:
        raise ValueError(f"not representable as JSON: {exc}") from None
    if size > MAX_PROVENANCE_BYTES:
        raise ValueError(f"larger than {MAX_PROVENANCE_BYTES} bytes as JSON")
    return value


#: free text: no control characters (but newline and tab), valid UTF-8, capped
Text = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_clean)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_clean)]
PolicyName = Annotated[str, StringConstraints(pattern=POLICY_NAME_PATTERN)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_clean)]
Version = Annotated[int, Field(ge=1, le=INT32)]
Generation = Annotated[int, Field(ge=0, le=INT32)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilesSubmission(_In):
    """A submission as JSON: every file's content as a string.

    ``encoding`` says how to read the strings: ``utf-8`` (the default: the text
    itself) or ``base64`` (standard alphabet, padding required) for exact bytes.
    The same intake rules apply as for an archive.
    """

    files: Annotated[dict[FilePath, str], Field(min_length=1, max_length=MAX_FILES)] = Field(
        description="relative path → content (text, or base64 when encoding is base64)",
        examples=[{"skill.toml": 'name = "greet"\nentrypoint = "greet:run"\n',
                   "greet.py": "def run(x):\n    return f'hello {x}'\n",
                   "tests/test_greet.py": "from greet import run\n\ndef test_run():\n"
                                          "    assert run('a') == 'hello a'\n"}])
    encoding: Literal["utf-8", "base64"] = "utf-8"
    policy: PolicyName | None = Field(default=None, description="a policy this server offers "
                                      "(default: the server's)")
    provenance: Annotated[dict[str, Any] | None, AfterValidator(_provenance)] = Field(
        default=None, description="where the submission came from (stored with the version, "
                                  "at most 16 KiB as JSON)")


class PromoteRequest(_In):
    version: Version
    reason: Text | None = None
    force: bool = Field(default=False, description="promote without a passed evaluation "
                                                   "(needs the admin role and a reason)")
    expected_generation: Generation | None = Field(
        default=None, description="refuse with 409 unless the skill is at this generation")
    policy: PolicyName | None = Field(default=None, description="the current policy (default: the server's)")


class RollbackRequest(_In):
    to: Version | None = Field(default=None, description="an older version to go back to "
                                                         "(default: what was active before)")
    reason: Text | None = None
    expected_generation: Generation | None = None


class YankRequest(_In):
    reason: Reason
    rollback: bool = Field(default=False, description="if the version is active, roll back first")


class GenerateRequest(_In):
    description: Annotated[str, StringConstraints(min_length=1, max_length=4000),
                           AfterValidator(_clean)]
    requirements: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200),
                                           AfterValidator(_clean)]], Field(max_length=20)] = []
    attempts: Annotated[int, Field(ge=1, le=5)] = 3
    policy: PolicyName | None = None


# --------------------------------------------------------------------------- responses


class _Out(BaseModel):
    """A response: the shape of one record (``to_dict()``), field for field.

    Unknown keys are not passed through: a field a record gains must be
    declared here (``tests/unit/test_api.py`` checks each record against its schema).
    """

    model_config = ConfigDict(extra="ignore")


class SkillOut(_Out):
    name: str
    created_at: datetime
    active_version: int | None
    generation: int
    latest_version: int | None


class VersionOut(_Out):
    id: int
    skill: str
    number: int
    content_hash: str
    manifest: dict[str, Any]
    file_count: int
    total_bytes: int
    created_at: datetime
    created_by: str
    status: str
    yanked_at: datetime | None
    yank_reason: str | None
    provenance: dict[str, Any] | None
    active: bool
    #: verdict of the latest finished evaluation (any policy; ``error`` included), in listings
    latest_verdict: str | None = None


class EvaluationOut(_Out):
    id: str
    skill: str
    version: int
    policy_name: str
    policy_hash: str
    status: Literal["queued", "running", "done"]
    verdict: Literal["passed", "failed", "rejected", "error"] | None
    reasons: list[dict[str, Any]]
    report: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = Field(default=0, description="how many times a worker claimed it")
    lease_owner: str | None = Field(default=None, description="the worker holding it while "
                                    "running; after that, the last one")
    # passed through as the record's ISO 8601 text (as it always was)
    lease_expires_at: str | None = Field(default=None, description="while running: when the "
                                         "lease lapses unless heartbeated (ISO 8601)")
    traceparent: str | None = Field(default=None, description="the W3C traceparent of the span that "
                                    "queued it, which the worker's spans continue (null: traces were off)")


class EventOut(_Out):
    id: int
    skill: str
    version: int | None
    actor: str
    action: str
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    evidence: dict[str, Any] | None
    created_at: datetime


class MoveOut(_Out):
    skill: str
    action: Literal["promoted", "rolled_back"]
    from_version: int | None
    to_version: int
    generation: int
    event_id: int
    forced: bool = False


class EvaluationStatusOut(EvaluationOut):
    promoted: MoveOut | None = Field(default=None, description="the automatic promotion that "
                                     "followed this evaluation, if any")


class YankOut(_Out):
    version: VersionOut
    rollback: MoveOut | None
    event_id: int


class FileDiffOut(_Out):
    path: str
    change: Literal["added", "removed", "modified"]
    diff: str
    binary: bool = False


class FileOut(_Out):
    path: str
    size: int
    sha256: str


class FileContentOut(FileOut):
    content_base64: str


class VersionDetailOut(_Out):
    version: VersionOut
    evaluation: EvaluationOut | None = Field(description="the latest finished evaluation")
    files: list[FileOut]


class VersionFilesOut(_Out):
    skill: str
    version: int
    content_hash: str
    entrypoint: str | None
    files: list[FileContentOut]


class SubmitOut(_Out):
    skill: str
    version: int
    content_hash: str
    created: bool
    status: str | None
    verdict: str | None
    reasons: list[dict[str, Any]]
    evaluation_id: str | None
    reused_evaluation: bool
    promotion_mode: str
    promoted: MoveOut | None
    promotion_note: str | None
    yanked: bool
    links: dict[str, str]


class CanaryRouteOut(_Out):
    candidate: int
    weight: int
    fallback: bool
    sample_io: int


class PointerOut(_Out):
    version: int
    generation: int
    content_hash: str | None = Field(default=None, description="with content=true: the active "
                                     "version's content hash")
    entrypoint: str | None = Field(default=None, description="with content=true: the active "
                                   "version's entrypoint")
    canary: CanaryRouteOut | None = Field(default=None, description="with content=true: the candidate "
                                          "beside the active version (null: none), as /v1/canaries")


class PointersOut(_Out):
    pointers: dict[str, PointerOut]
    last_event_id: int = Field(description="start /v1/watch after this id to miss no later move")


class GenerationOut(_Out):
    id: str
    skill: str
    status: str
    created_at: str
    events: list[dict[str, Any]] = []
    result: dict[str, Any] | None = None
    error: str | None = None


class WhoAmIOut(_Out):
    name: str
    role: str
    actor: str
