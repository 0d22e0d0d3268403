"""The API's wire format, without an HTTP library: records rebuilt from JSON, errors from an
answer's status and body, and the read requests (:class:`ApiReads`) over any ``_json``.

:class:`~sandgate.client.SandgateClient` (httpx) is the full client; :class:`PlainClient`
(the standard library's :mod:`http.client`) is the one the CLI's remote read commands
(``skills``, ``versions``, ``show``, ``history``) use: httpx and httpcore cost more than
a tenth of a second to import (more where ``trio`` is installed: httpcore imports it),
for a command that sends one GET. Both send the same requests and turn the same
answers into the same records and errors (a test runs both against one server).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import typing
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from sandgate.errors import InfrastructureError, SandgateError, error_from_status
from sandgate.records import EvaluationRecord, EventRecord, FileDiff, SkillRecord, VersionRecord
from sandgate.service import VersionDetail

__all__ = ["KEY_ENV", "URL_ENV", "ApiReads", "PlainClient", "error_from_answer", "plain_from_env", "record_from_dict"]

URL_ENV = "SANDGATE_URL"
KEY_ENV = "SANDGATE_API_KEY"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 60.0

R = TypeVar("R")


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _kinds(hint: Any) -> tuple[Any, ...]:
    """The types a field annotation names: ``X | None`` → (X, None), ``list[X]`` → (X,)."""
    args = typing.get_args(hint)
    return tuple(k for a in args for k in _kinds(a)) if args else (hint,)


@functools.cache
def _fields_of(cls: type) -> tuple[tuple[str, type | None, bool], ...]:
    """``(name, nested record class or None, is a datetime)`` per field of a record class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kinds = _kinds(hints[f.name])
        nested = next((k for k in kinds if isinstance(k, type) and dataclasses.is_dataclass(k)), None)
        out.append((f.name, nested, datetime in kinds))
    return tuple(out)


def _rebuild(nested: type, value: Any) -> Any:
    if isinstance(value, Mapping):
        return record_from_dict(nested, value)
    if isinstance(value, list):
        return [_rebuild(nested, v) for v in value]
    return value


def record_from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
    """Rebuild a record from its ``to_dict()`` — the one rebuild for every record type.

    Unknown keys are ignored (a newer server may send more); datetimes and
    nested records (a yank's ``version`` and ``rollback``) are rebuilt from
    the record class's field types.
    """
    kwargs: dict[str, Any] = {}
    record_type: type = cls  # mypy does not see a type[R] as Hashable (the cache's key); a plain type it does
    for name, nested, is_time in _fields_of(record_type):
        if name not in data:
            continue
        value = data[name]
        if nested is not None:
            value = _rebuild(nested, value)
        elif is_time:
            value = _parse_time(value)
        kwargs[name] = value
    return cls(**kwargs)


def error_from_answer(status: int, body: bytes, retry_after: str | None, url: str) -> SandgateError:
    """The library error an API answer with ``status`` >= 400 stands for (its JSON ``error`` body,
    read backwards through :func:`~sandgate.errors.error_from_status`)."""
    try:
        decoded = json.loads(body)
        err = decoded.get("error") if isinstance(decoded, dict) else None
    except ValueError:
        err = None
    err = err if isinstance(err, dict) else {}
    message = err.get("message") or f"HTTP {status} from {url}"
    try:
        retry = float(retry_after) if retry_after is not None else None
    except ValueError:
        retry = None
    return error_from_status(status, err.get("code"), message, path=err.get("path"),
                             request_id=err.get("request_id"), retry_after=retry)


class ApiReads:
    """The API's read requests, over a subclass's ``_json(method, path, params=...)``."""

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def whoami(self) -> dict[str, Any]:
        return self._json("GET", "/v1/whoami")

    def list_skills(self, *, prefix: str | None = None, limit: int | None = None) -> list[SkillRecord]:
        params = {k: v for k, v in (("prefix", prefix), ("limit", limit)) if v is not None}
        return [record_from_dict(SkillRecord, r) for r in self._json("GET", "/v1/skills", params=params)]

    def get_skill(self, name: str) -> SkillRecord:
        return record_from_dict(SkillRecord, self._json("GET", f"/v1/skills/{name}"))

    def list_versions(self, name: str) -> list[VersionRecord]:
        return [record_from_dict(VersionRecord, v)
                for v in self._json("GET", f"/v1/skills/{name}/versions")]

    def get_version(self, name: str, number: int) -> VersionDetail:
        """The version's record, latest finished evaluation and file list."""
        return record_from_dict(VersionDetail, self._json("GET", f"/v1/skills/{name}/versions/{int(number)}"))

    def get_version_files(self, name: str, number: int) -> dict[str, Any]:
        """``{"content_hash", "entrypoint", "files": {path: bytes}}`` — the exact stored bytes."""
        data = self._json("GET", f"/v1/skills/{name}/versions/{int(number)}/files")
        files = {f["path"]: base64.b64decode(f["content_base64"]) for f in data.get("files") or []}
        return {"content_hash": data["content_hash"], "entrypoint": data.get("entrypoint"),
                "files": files}

    def get_evaluation(self, evaluation_id: str) -> EvaluationRecord:
        data = self._json("GET", f"/v1/evaluations/{evaluation_id}")
        return record_from_dict(EvaluationRecord, data)

    def get_evaluation_status(self, evaluation_id: str) -> dict[str, Any]:
        """The raw evaluation answer, including ``promoted`` (the move that cites it)."""
        return self._json("GET", f"/v1/evaluations/{evaluation_id}")

    def history(self, name: str, *, limit: int | None = None) -> list[EventRecord]:
        params = {"limit": limit} if limit is not None else {}
        return [record_from_dict(EventRecord, e)
                for e in self._json("GET", f"/v1/skills/{name}/history", params=params)]

    def diff(self, name: str, a: int, b: int) -> list[FileDiff]:
        return [record_from_dict(FileDiff, d)
                for d in self._json("GET", f"/v1/skills/{name}/diff", params={"a": a, "b": b})]

    def pointers(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        """``{skill: (active version, generation)}`` (see :meth:`pointers_raw` for the event id)."""
        data = self.pointers_raw(names)
        return {n: (p["version"], p["generation"]) for n, p in data["pointers"].items()}

    def pointers_raw(self, names: Iterable[str] | None = None, *,
                     content: bool = False) -> dict[str, Any]:
        """The raw ``/v1/pointers`` answer; ``content``: each pointer also carries the active
        version's ``content_hash``, ``entrypoint`` and ``canary`` route."""
        params: dict[str, Any] = {"content": "true"} if content else {}
        if names is not None:
            wanted = list(names)
            if not wanted:
                return {"pointers": {}, "last_event_id": 0}
            params["names"] = ",".join(wanted)
        return self._json("GET", "/v1/pointers", params=params)

    def healthz(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")


class PlainClient(ApiReads):
    """:class:`ApiReads` over :mod:`http.client`: one connection, GET only, no redirects followed
    (as the full client). Errors as :class:`~sandgate.client.SandgateClient`'s."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, user_agent: str = "sandgate-client") -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InfrastructureError(f"cannot reach the sandgate server at {self.base_url}: "
                                      "not an http:// or https:// URL", code="unreachable")
        self._parts = parts
        self._prefix = parts.path
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            import http.client  # lazy: what a caller of the records alone never needs

            port = self._parts.port
            if self._parts.scheme == "https":
                self._conn = http.client.HTTPSConnection(self._parts.hostname or "", port,
                                                         timeout=self._connect_timeout)
            else:
                self._conn = http.client.HTTPConnection(self._parts.hostname or "", port,
                                                        timeout=self._connect_timeout)
            self._conn.connect()
            self._conn.sock.settimeout(self._timeout)  # connected: reads wait up to the read timeout
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PlainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        params = {k: v for k, v in (kwargs.pop("params", None) or {}).items() if v is not None}
        if kwargs or method != "GET":
            raise TypeError(f"PlainClient sends GET requests only, not {method} with {sorted(kwargs)}")
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        try:
            conn = self._connection()
            conn.request(method, target, headers=self._headers)
            response = conn.getresponse()
            body = response.read()
        except TimeoutError as exc:
            self.close()
            raise InfrastructureError(
                f"the sandgate server at {self.base_url} did not answer in time ({type(exc).__name__})",
                code="timeout") from exc
        except (OSError, ValueError) as exc:  # refused, reset, DNS, TLS; http.client's errors
            self.close()
            raise InfrastructureError(
                f"cannot reach the sandgate server at {self.base_url}: {exc or type(exc).__name__}",
                code="unreachable") from exc
        except Exception as exc:  # http.client.HTTPException: a malformed answer
            self.close()
            raise InfrastructureError(
                f"cannot reach the sandgate server at {self.base_url}: {type(exc).__name__}: {exc}",
                code="unreachable") from exc
        if response.status >= 400:
            raise error_from_answer(response.status, body, response.getheader("retry-after"),
                                    self.base_url + target)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InfrastructureError(f"{method} {path}: the server's answer is not JSON") from exc


def plain_from_env(**kwargs: Any) -> PlainClient | None:
    """A :class:`PlainClient` for ``$SANDGATE_URL`` with ``$SANDGATE_API_KEY``, or None when no URL is set
    (as :func:`sandgate.client.from_env`)."""
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        return None
    return PlainClient(url, os.environ.get(KEY_ENV, "").strip() or None, **kwargs)
