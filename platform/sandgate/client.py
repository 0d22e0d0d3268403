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
import io
import json
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from sandgate.errors import ApiError, InfrastructureError, SandgateError, SubmissionError
from sandgate.records import CanaryRecord, EventRecord, PointerMove, YankResult
from sandgate.wire import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    KEY_ENV,
    URL_ENV,
    ApiReads,
    error_from_answer,
    record_from_dict,
)

__all__ = ["SandgateClient", "ApiError", "URL_ENV", "KEY_ENV", "from_env", "record_from_dict"]

#: a waiting submit asks `/readyz` this often whether any worker is alive (and gives up when none is)
NO_WORKER_AFTER_SECONDS = 3.0

def _error_from_response(response: httpx.Response) -> SandgateError:
    return error_from_answer(response.status_code, response.content, response.headers.get("retry-after"),
                             str(response.request.url))


class SandgateClient(ApiReads):
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
