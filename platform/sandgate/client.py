"""An HTTP client for the sandgate API (``sandgate serve``), returning the library's own records.

::

    from sandgate.client import SandgateClient

    with SandgateClient("http://127.0.0.1:8080", api_key="sg_...") as api:
        api.list_skills()                          # [SkillRecord, ...]
        result = api.submit_path("examples/skills/text_stats")   # dict: version, evaluation_id, ...
        api.wait_evaluation(result["evaluation_id"], timeout=120) # EvaluationRecord (done)
        api.promote("text_stats", 1, reason="ship it")            # PointerMove
        for event in api.watch(after=0):                          # EventRecord, ... (SSE)
            ...

Errors come back as the library's own exceptions, rebuilt from the API's
error body (``{"error": {"code", "message"}}``) by reading the one table
backwards (:func:`sandgate.errors.error_from_status`), so a caller — the remote
CLI — handles them exactly like embedded ones: 404 → :class:`NotFound`, 409 →
:class:`Conflict` (code ``conflict``) or :class:`InvalidTransition`, 422 with a
submission reason code → :class:`SubmissionError`, with an incomplete-request
code → :class:`~sandgate.errors.IncompleteRequest`, 503 → :class:`StoreError`
(codes ``store``, ``database_unavailable``) or :class:`InfrastructureError`,
connection failures → :class:`InfrastructureError`; anything else (401, 403,
413, 429, ...) → :class:`~sandgate.errors.ApiError` with ``status`` and
``code``. Messages are the server's.

Timeouts are named: ``connect_timeout`` (TCP/TLS), ``timeout`` (read/write
of one response); the watch stream reads without a timeout but the server
sends a keepalive comment every ``watch_keepalive_seconds``.

Registries (``HttpBackend``) use :meth:`pointers_raw` (with ``content``),
:meth:`get_version` (only against a server whose pointers lack the content),
:meth:`get_version_files` and :meth:`watch`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import os
import time
import tomllib
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from sandgate.errors import (
    ApiError,
    InfrastructureError,
    SandgateError,
    SubmissionError,
    error_from_status,
)
from sandgate.records import (
    CanaryRecord,
    EvaluationRecord,
    EventRecord,
    FileDiff,
    PointerMove,
    SkillRecord,
    VersionRecord,
    YankResult,
)
from sandgate.service import VersionDetail

__all__ = ["SandgateClient", "ApiError", "URL_ENV", "KEY_ENV", "from_env", "record_from_dict"]

URL_ENV = "SANDGATE_URL"
KEY_ENV = "SANDGATE_API_KEY"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 60.0
#: a waiting submit asks `/readyz` this often whether any worker is alive (and gives up when none is)
NO_WORKER_AFTER_SECONDS = 3.0

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


def _error_from_response(response: httpx.Response) -> SandgateError:
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        err = None
    err = err if isinstance(err, dict) else {}
    status = response.status_code
    message = err.get("message") or f"HTTP {status} from {response.request.url}"
    retry = response.headers.get("retry-after")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    return error_from_status(status, err.get("code"), message, path=err.get("path"),
                             request_id=err.get("request_id"), retry_after=retry_after)


class SandgateClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "sandgate-client",
    ) -> None:
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        # a plain-HTTP server never negotiates TLS (the client follows no redirect): no certificate
        # store to load, which is ~50 ms of a short command's start-up; https:// verifies as always
        verify = not self.base_url.lower().startswith("http://")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=self._timeout,
                                  transport=transport, verify=verify)

    # -- plumbing ------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandgateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a non-2xx answer raises the matching library error."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise InfrastructureError(
                f"the sandgate server at {self.base_url} did not answer in time ({type(exc).__name__})",
                code="timeout") from exc
        except httpx.TransportError as exc:
            raise InfrastructureError(
                f"cannot reach the sandgate server at {self.base_url}: {exc}",
                code="unreachable") from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise InfrastructureError(f"{method} {path}: the server's answer is not JSON") from exc

    # -- reads ---------------------------------------------------------------------

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

    def wait_evaluation(self, evaluation_id: str, *, timeout: float = 600.0, poll: float = 0.5,
                        progress: Callable[[str], None] | None = None,
                        no_worker_after: float = NO_WORKER_AFTER_SECONDS) -> dict[str, Any]:
        """Poll until the evaluation is ``done``; the raw answer. Raises InfrastructureError on timeout,
        and early (after ``no_worker_after`` seconds, code ``no_worker``) when it is still queued and the
        server's ``/readyz`` says no worker is alive. ``progress`` is told each status it sees."""
        started = time.monotonic()
        deadline = started + timeout
        delay = min(poll, 0.1)
        next_worker_check = started + no_worker_after
        while True:
            data = self.get_evaluation_status(evaluation_id)
            status = str(data.get("status"))
            if progress is not None:
                progress(status)
            if status == "done":
                return data
            now = time.monotonic()
            if status == "queued" and now >= next_worker_check:
                next_worker_check = now + no_worker_after
                if self.workers_alive() == 0:
                    raise InfrastructureError(
                        f"evaluation {evaluation_id} is still queued after {now - started:.0f} s and no worker "
                        "is alive: start `sandgate worker` against the server's database (or run `sandgate serve` "
                        "with --workers > 0); it stays queued and runs when a worker starts", code="no_worker")
            if now >= deadline:
                raise InfrastructureError(
                    f"evaluation {evaluation_id} is still {status} after {timeout:g} s "
                    "(is a worker running?)", code="timeout")
            time.sleep(delay)
            delay = min(poll, delay * 2)

    def workers_alive(self) -> int | None:
        """Live queue workers as the server's ``/readyz`` counts them (None: it does not say)."""
        try:
            r = self._http.get("/readyz")
            workers = r.json().get("checks", {}).get("workers", {})
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        alive = workers.get("alive") if isinstance(workers, dict) else None
        return alive if isinstance(alive, int) else None

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

    # -- writes --------------------------------------------------------------------

    def submit_files(self, files: Mapping[str, bytes], *, policy: str | None = None,
                     provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Submit an in-memory file set (sent as base64 JSON)."""
        body: dict[str, Any] = {
            "files": {p: base64.b64encode(bytes(d)).decode("ascii") for p, d in files.items()},
            "encoding": "base64",
        }
        if policy is not None:
            body["policy"] = policy
        if provenance is not None:
            body["provenance"] = dict(provenance)
        name = _manifest_name(files)
        return self._json("POST", f"/v1/skills/{name}/versions", json=body)

    def submit_archive(self, name: str, archive: bytes, *, filename: str = "skill.tar.gz",
                       policy: str | None = None,
                       provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Upload an archive (``.tar.gz``/``.zip`` bytes) as multipart field ``archive``."""
        data = {}
        if policy is not None:
            data["policy"] = policy
        if provenance is not None:
            data["provenance"] = json.dumps(dict(provenance))
        files = {"archive": (filename, io.BytesIO(archive), "application/octet-stream")}
        return self._json("POST", f"/v1/skills/{name}/versions", files=files,
                          data=data)

    def submit_path(self, path: str | os.PathLike[str], *, policy: str | None = None,
                    provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A skill directory (read with the same intake as embedded mode) or an archive file."""
        from sandgate.submission import load_submission  # lazy: ~2 s of import, for uploads only

        p = Path(path)
        # read with the same intake as embedded mode: a clear error before any upload
        # (the server checks everything again, and locks the requirements against its allowlist)
        submission = load_submission(p, lock=False)
        if p.is_dir():
            return self.submit_files(submission.files, policy=policy, provenance=provenance)
        return self.submit_archive(submission.name, p.read_bytes(), filename=p.name,
                                   policy=policy, provenance=provenance)

    def promote(self, name: str, number: int, *, reason: str | None = None, force: bool = False,
                expected_generation: int | None = None, policy: str | None = None) -> PointerMove:
        body = {"version": number, "reason": reason, "force": force,
                "expected_generation": expected_generation, "policy": policy}
        data = self._json("POST", f"/v1/skills/{name}/promote",
                          json={k: v for k, v in body.items() if v is not None})
        return record_from_dict(PointerMove, data)

    def rollback(self, name: str, *, to: int | None = None, reason: str | None = None,
                 expected_generation: int | None = None) -> PointerMove:
        body = {"to": to, "reason": reason, "expected_generation": expected_generation}
        data = self._json("POST", f"/v1/skills/{name}/rollback",
                          json={k: v for k, v in body.items() if v is not None})
        return record_from_dict(PointerMove, data)

    def yank(self, name: str, number: int, *, reason: str, rollback: bool = False) -> YankResult:
        data = self._json("POST", f"/v1/skills/{name}/versions/{int(number)}/yank",
                          json={"reason": reason, "rollback": rollback})
        return record_from_dict(YankResult, data)

    # -- events --------------------------------------------------------------------

    # -- canary (api/canary.py) ----------------------------------------------------

    def start_canary(self, name: str, number: int, *, weight: int | None = None, reason: str | None = None,
                     force: bool = False, expected_generation: int | None = None,
                     policy: str | None = None) -> CanaryRecord:
        """``name@number`` becomes the candidate at ``weight`` % (None: the policy's first step)."""
        body = {"version": number, "weight": weight, "reason": reason, "force": force,
                "expected_generation": expected_generation, "policy": policy}
        data = self._json("POST", f"/v1/skills/{name}/canary", json={k: v for k, v in body.items() if v is not None})
        return record_from_dict(CanaryRecord, data)

    def abort_canary(self, name: str, *, reason: str) -> CanaryRecord:
        """Drop the candidate of the running canary of ``name``."""
        return record_from_dict(CanaryRecord, self._json("POST", f"/v1/skills/{name}/canary/abort",
                                                         json={"reason": reason}))

    def canary_status(self, name: str) -> dict[str, Any]:
        """``GET /v1/skills/{name}/status``: pointer state, counts per version, the decision now (JSON)."""
        return self._json("GET", f"/v1/skills/{name}/status")

    def watch(self, *, after: int | None = None, skills: Iterable[str] | None = None,
              actions: Iterable[str] | None = None,
              read_timeout: float | None = None) -> Iterator[EventRecord]:
        """Events from ``GET /v1/watch`` as they happen (blocks; ends when the server closes).

        ``after``: resume after this event id. The last delivered event's ``id``
        is the resume point for the next call.
        """
        for kind, event_id, data in self.watch_raw(after=after, skills=skills, actions=actions,
                                                   read_timeout=read_timeout):
            if kind in ("ready",) or event_id is None:
                continue
            yield record_from_dict(EventRecord, data)

    def watch_raw(self, *, after: int | None = None, skills: Iterable[str] | None = None,
                  actions: Iterable[str] | None = None, last_event_id: int | None = None,
                  read_timeout: float | None = None) -> Iterator[tuple[str, int | None, Any]]:
        """``(event, id, data)`` triples of the SSE stream, ``ready`` included."""
        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if skills is not None:
            params["skills"] = ",".join(skills)
        if actions is not None:
            params["actions"] = ",".join(actions)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self._timeout.connect or DEFAULT_CONNECT_TIMEOUT, read=read_timeout)
        try:
            with self._http.stream("GET", "/v1/watch", params=params, headers=headers,
                                   timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                yield from _parse_sse(response.iter_lines())
        except httpx.TimeoutException as exc:
            raise InfrastructureError(f"the watch stream from {self.base_url} went silent",
                                      code="timeout") from exc
        except httpx.TransportError as exc:
            raise InfrastructureError(f"the watch stream from {self.base_url} broke: {exc}",
                                      code="unreachable") from exc


def _parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, int | None, Any]]:
    event: str = "message"
    event_id: int | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = "\n".join(data)
                try:
                    value = json.loads(payload)
                except ValueError:
                    value = payload
                yield event, event_id, value
            event, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = int(value) if value.isdigit() else None


def _manifest_name(files: Mapping[str, bytes]) -> str:
    raw = files.get("skill.toml")
    try:
        name = tomllib.loads(bytes(raw).decode("utf-8")).get("name") if raw is not None else None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        name = None
    if not isinstance(name, str) or not name:
        raise SubmissionError("the submission has no skill.toml with a name", code="invalid_submission")
    return name


def from_env(**kwargs: Any) -> SandgateClient | None:
    """A client for ``$SANDGATE_URL`` with ``$SANDGATE_API_KEY``, or None when no URL is set."""
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        return None
    return SandgateClient(url, os.environ.get(KEY_ENV, "").strip() or None, **kwargs)
