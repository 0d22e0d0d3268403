"""Request body → :class:`~sandgate.submission.Submission`, by content type.

``POST /v1/skills/{name}/versions`` takes a submission three ways:

``application/json``
    :class:`~sandgate.api.schemas.FilesSubmission`: ``{"files": {path: content},
    "encoding": "utf-8" | "base64", "policy"?, "provenance"?}`` →
    :func:`sandgate.submission.submission_from_files`.
``multipart/form-data``
    one file field named ``archive`` (a ``.tar.gz``/``.tgz``/``.tar``/``.zip``);
    optional text fields ``policy`` and ``provenance`` (JSON).
``application/gzip``, ``application/x-gzip``, ``application/zip``, ``application/x-tar``,
``application/octet-stream``
    the archive itself as the body (``?policy=`` in the query).

Archives are written to a private temporary file and read by
:func:`sandgate.lifecycle.load_submission` — the same intake, archive safety
and caps as ``sandgate submit PATH``. The body is already complete and
bounded by the edge middleware; multipart is parsed by the standard library's
MIME parser (no ``python-multipart`` dependency), strictly: exactly one
``archive`` part, no unknown fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from email import message_from_bytes
from email import policy as email_policy
from typing import Any

from pydantic import ValidationError

from sandgate import lifecycle
from sandgate.api.errors import ApiError
from sandgate.api.schemas import FilesSubmission
from sandgate.submission import submission_from_files

__all__ = ["ARCHIVE_TYPES", "parse_submission_body", "ParsedBody"]

ARCHIVE_TYPES = frozenset({
    "application/gzip", "application/x-gzip", "application/zip", "application/x-zip-compressed",
    "application/x-tar", "application/x-gtar", "application/octet-stream",
})
_MULTIPART_FIELDS = frozenset({"archive", "policy", "provenance"})


class ParsedBody:
    """What a submit request carries, before intake."""

    def __init__(self, *, files: dict[str, bytes] | None = None, archive: bytes | None = None,
                 policy: str | None = None, provenance: dict[str, Any] | None = None,
                 source: str) -> None:
        self.files = files
        self.archive = archive
        self.policy = policy
        self.provenance = provenance
        self.source = source

    def submission(self) -> Any:
        """Run intake (blocking: call it from a worker thread)."""
        if self.files is not None:
            return submission_from_files(self.files)
        assert self.archive is not None
        fd, path = tempfile.mkstemp(prefix="sandgate-upload-", suffix=".archive")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.archive)
            return lifecycle.load_submission(path)
        finally:
            os.unlink(path)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ["body", *map(str, e["loc"])], "message": str(e["msg"])[:300]}
            for e in exc.errors(include_url=False)][:50]


def _from_json(body: bytes) -> ParsedBody:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, f"the body is not valid JSON: {str(exc)[:200]}",
                       code="invalid_request") from None
    try:
        req = FilesSubmission.model_validate(data)
    except ValidationError as exc:
        details = _validation_details(exc)
        first = details[0]
        raise ApiError(422, f"{'.'.join(first['loc'])}: {first['message']}",
                       code="invalid_request", details=details) from None
    files: dict[str, bytes] = {}
    for path, content in req.files.items():
        if req.encoding == "base64":
            try:
                files[path] = base64.b64decode(content.encode("ascii"), validate=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                raise ApiError(422, f"files[{path!r}] is not valid base64", code="invalid_request",
                               details=[{"loc": ["body", "files", path], "message": "not base64"}]
                               ) from None
        else:
            try:
                files[path] = content.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, f"files[{path!r}] is not valid UTF-8 text (lone surrogate); "
                                    "send exact bytes with encoding base64",
                               code="invalid_request") from None
    return ParsedBody(files=files, policy=req.policy, provenance=req.provenance, source="json")


def _from_multipart(content_type: str, body: bytes) -> ParsedBody:
    if "boundary=" not in content_type.lower():
        raise ApiError(400, "multipart/form-data needs a boundary parameter", code="bad_request")
    try:
        header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise ApiError(400, "invalid Content-Type header", code="bad_request") from None
    msg = message_from_bytes(header + body, policy=email_policy.HTTP)
    if not msg.is_multipart():
        raise ApiError(400, "the multipart body could not be parsed", code="bad_request")
    fields: dict[str, bytes] = {}
    for part in msg.iter_parts():
        disposition = part.get("Content-Disposition", "")
        if not str(disposition).lower().startswith("form-data"):
            raise ApiError(400, "every multipart part needs 'Content-Disposition: form-data'",
                           code="bad_request")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name not in _MULTIPART_FIELDS:
            raise ApiError(422, f"unknown multipart field {str(name)[:50]!r}: expected 'archive' "
                                "(and optionally 'policy', 'provenance')", code="invalid_request")
        if name in fields:
            raise ApiError(422, f"multipart field {name!r} given twice", code="invalid_request")
        payload = part.get_payload(decode=True)
        fields[name] = payload if isinstance(payload, bytes) else b""
    if "archive" not in fields:
        raise ApiError(422, "the multipart body has no file field named 'archive'",
                       code="invalid_request")
    policy = None
    if "policy" in fields:
        try:
            policy = fields["policy"].decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise ApiError(422, "the policy field is not UTF-8", code="invalid_request") from None
    provenance = None
    if "provenance" in fields:
        try:
            provenance = json.loads(fields["provenance"])
        except (ValueError, RecursionError):
            raise ApiError(422, "the provenance field is not JSON", code="invalid_request") from None
    checked = _check_extras(policy, provenance)
    return ParsedBody(archive=fields["archive"], policy=checked.policy,
                      provenance=checked.provenance, source="multipart")


def _check_extras(policy: Any, provenance: Any) -> FilesSubmission:
    """Validate ``policy``/``provenance`` that did not come in the JSON model."""
    try:
        return FilesSubmission.model_validate(
            {"files": {"x": ""}, "policy": policy, "provenance": provenance})
    except ValidationError as exc:
        details = _validation_details(exc)
        first = details[0]
        raise ApiError(422, f"{'.'.join(first['loc'])}: {first['message']}",
                       code="invalid_request", details=details) from None


def parse_submission_body(content_type: str | None, body: bytes, *, policy: str | None) -> ParsedBody:
    """Dispatch on the content type; every refusal is an :class:`ApiError` (4xx)."""
    media = _media_type(content_type or "")
    if not body:
        raise ApiError(422, "the request has no body: send an archive or {\"files\": ...}",
                       code="invalid_request")
    if media == "application/json":
        parsed = _from_json(body)
        if policy is not None and parsed.policy is not None and policy != parsed.policy:
            raise ApiError(422, "policy given twice (query and body) with different values",
                           code="invalid_request")
        parsed.policy = parsed.policy or policy
        return parsed
    if media == "multipart/form-data":
        parsed = _from_multipart(content_type or "", body)
        parsed.policy = parsed.policy or policy
        return parsed
    if media in ARCHIVE_TYPES:
        checked = _check_extras(policy, None)
        return ParsedBody(archive=body, policy=checked.policy, source="archive")
    shown = media or "none"
    raise ApiError(415, f"unsupported content type {shown[:80]!r}: send application/json, "
                        "multipart/form-data (field 'archive'), or the archive itself as "
                        "application/gzip or application/zip", code="unsupported_media_type")
