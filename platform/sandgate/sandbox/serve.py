"""An interactive sandbox: the skill's entrypoint served by ``sandgate_harness.serve``.

Same image, hardening, labels and limits as the evaluation sandbox
(:func:`sandgate.sandbox.docker_backend.hardened_host_config`); single use, always
removed. The only process is the server, which holds no secret. The
controller talks to it over the container's attach socket: length-prefixed
JSON frames on stdin, answers on stdout (Docker multiplexes stdout and stderr
on that socket; :class:`_Demux` takes them apart).

:meth:`ServedSkill.call` sends one request and waits for its answer. Every way
the server can misbehave is an outcome of that call, never an exception and
never a different call's answer:

``early``       bytes arrived before the request was sent (a fake answer ahead of time)
``timeout``     no complete answer within the call's time
``oversize``    an answer frame announced more than ``max_answer_bytes``
``malformed``   the frame is not a JSON object, or answers another request (out of order)
``closed``      the server closed its stdout or exited

After any of these the session is *broken*: the server is killed and every
later call is ``closed`` without being sent. Only Docker failures raise
(:class:`~sandgate.errors.InfrastructureError`).
"""

from __future__ import annotations

import json
import select
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException

from sandgate.errors import InfrastructureError, RuntimeUnavailable
from sandgate.limits import Limits
from sandgate.names import controller_id
from sandgate.sandbox.docker_backend import SANDBOX_UID, hardened_host_config, remove_container
from sandgate.sandbox.runner import (
    CONTROLLER_LABEL,
    EVALUATION_LABEL,
    MANAGED_LABEL,
    plausible_hostname,
)

__all__ = ["SERVE_ENTRYPOINT", "CallOutcome", "ServedSkill", "encode_frame"]

SERVE_ENTRYPOINT = ["python3", "-I", "-m", "sandgate_harness.serve"]
ROLE_LABEL = "sandgate.role"
#: the server says hello before it reads the payload; no submitted code can delay it
HELLO_TIMEOUT = 20.0
#: what the server may write to stderr that is kept for diagnostics
STDERR_CAP = 16 * 1024


def encode_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@dataclass
class CallOutcome:
    #: answer | early | timeout | oversize | malformed | closed
    status: str
    body: dict[str, Any] | None = None
    seconds: float = 0.0
    detail: str = ""


class _Demux:
    """Docker's attach stream (8-byte headers: stream, 0, 0, 0, size) → stdout and stderr bytes."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stderr_dropped = 0

    def feed(self, data: bytes) -> None:
        self._raw += data
        while len(self._raw) >= 8:
            stream, size = self._raw[0], struct.unpack(">I", self._raw[4:8])[0]
            if len(self._raw) < 8 + size:
                return
            chunk = bytes(self._raw[8:8 + size])
            del self._raw[:8 + size]
            if stream == 1:
                self.stdout += chunk
            else:
                room = STDERR_CAP - len(self.stderr)
                self.stderr += chunk[:max(room, 0)]
                self.stderr_dropped += max(len(chunk) - max(room, 0), 0)


@dataclass
class ServedSkill:
    """One served skill in its own sandbox. Use as a context manager, or call :meth:`close`."""

    client: docker.DockerClient
    image: str
    limits: Limits
    payload: bytes
    evaluation_id: str = ""
    role: str = "candidate"
    max_answer_bytes: int = 1024 * 1024
    timings: dict[str, float] = field(default_factory=dict)
    container_id: str | None = None
    broken: str | None = None
    _sock: Any = None
    _raw: Any = None
    _demux: _Demux = field(default_factory=_Demux)
    _eof: bool = False
    _next_id: int = 0

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Create and start the container and send the payload (does not wait for the skill)."""
        api = self.client.api
        evaluation_id = self.evaluation_id or uuid.uuid4().hex
        started = time.monotonic()
        try:
            try:
                created = api.create_container(
                    self.image,
                    user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                    stdin_open=True,
                    network_disabled=True,
                    hostname=plausible_hostname(),
                    entrypoint=SERVE_ENTRYPOINT,
                    environment={},
                    labels={MANAGED_LABEL: "true", EVALUATION_LABEL: evaluation_id,
                            CONTROLLER_LABEL: controller_id(), ROLE_LABEL: f"oracle-{self.role}"},
                    name=f"sandgate-{evaluation_id[:20]}-o{self.role[:1]}-{uuid.uuid4().hex[:6]}",
                    host_config=hardened_host_config(api, self.limits),
                )
            except APIError as exc:
                if "runtime" in str(exc).lower() and self.limits.runtime != "runc":
                    raise RuntimeUnavailable(
                        f"the Docker engine has no runtime {self.limits.runtime!r}: {exc.explanation}"
                    ) from exc
                raise InfrastructureError(
                    f"could not create the oracle sandbox: {exc.explanation or exc}") from exc
            self.container_id = created["Id"]
            # attached before start: nothing the server writes can be missed
            self._sock = api.attach_socket(
                self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._raw = getattr(self._sock, "_sock", self._sock)
            api.start(self.container_id)
            self._raw.sendall(encode_frame(self.payload))
        except InfrastructureError:
            self.close()
            raise
        except (DockerException, requests.exceptions.RequestException, OSError) as exc:
            self.close()
            raise InfrastructureError(f"could not start the oracle sandbox: {exc}") from exc
        self.timings["start"] = time.monotonic() - started

    def wait_ready(self, timeout: float) -> dict[str, Any] | None:
        """The server's ``{"ready": ...}`` frame, or None (and the session broken).

        Raises :class:`InfrastructureError` when the server's ``hello`` (written before
        any submitted code is in the sandbox) does not come: the server is broken.
        """
        started = time.monotonic()
        deadline = started + timeout
        hello = self._read_answer(min(deadline, started + HELLO_TIMEOUT), expect_id=None)
        if hello.status != "answer" or hello.body != {"hello": 1}:
            tail = self.stderr.strip()[-300:]
            self._break("no hello from the server")
            raise InfrastructureError(
                f"the oracle server in {self.image} did not start ({hello.status}: {hello.detail}"
                + (f"; stderr: {tail}" if tail else "") + "); rebuild the image (sandgate image build)")
        outcome = self._read_answer(deadline, expect_id=None)
        self.timings["ready"] = time.monotonic() - started
        if outcome.status != "answer":
            tail = self.stderr.strip()[-300:]
            self._break(f"the server sent no ready frame ({outcome.status}: {outcome.detail})"
                        + (f"; its stderr ends: {tail}" if tail else ""))
            return None
        return outcome.body

    def close(self) -> None:
        started = time.monotonic()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        if self.container_id is not None:
            remove_container(self.client.api, self.container_id)
            self.container_id = None
            self.timings["remove"] = time.monotonic() - started

    def __enter__(self) -> ServedSkill:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def stderr(self) -> str:
        return self._demux.stderr.decode("utf-8", "replace")

    # -- calls --------------------------------------------------------------

    def call(self, args: list[Any], kwargs: dict[str, Any], timeout: float) -> CallOutcome:
        """Send one request and judge the transport of its answer (not its value)."""
        if self.broken is not None:
            return CallOutcome("closed", detail=f"not sent: {self.broken}")
        started = time.monotonic()
        self._pump(0.0)
        if self._demux.stdout:
            n = len(self._demux.stdout)
            self._break("bytes arrived before a request was sent")
            return CallOutcome("early", seconds=0.0,
                               detail=f"{n} bytes arrived before the request was sent")
        self._next_id += 1
        call_id = self._next_id
        request = json.dumps({"id": call_id, "args": args, "kwargs": kwargs},
                             separators=(",", ":"), allow_nan=False).encode()
        try:
            self._raw.sendall(encode_frame(request))
        except OSError as exc:
            self._break(f"the server stopped reading ({exc})")
            return CallOutcome("closed", detail="the server stopped reading its requests")
        outcome = self._read_answer(started + timeout, expect_id=call_id)
        outcome.seconds = time.monotonic() - started
        if outcome.status != "answer":
            self._break(f"call {call_id}: {outcome.status}")
        return outcome

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
        if self.container_id is not None:
            try:
                self.client.api.kill(self.container_id)
            except (DockerException, requests.exceptions.RequestException):
                pass

    def _pump(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; False when nothing came."""
        if self._eof or self._raw is None:
            return False
        try:
            ready, _, _ = select.select([self._raw], [], [], max(timeout, 0.0))
        except (OSError, ValueError):
            self._eof = True
            return False
        if not ready:
            return False
        try:
            data = self._raw.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return False
        self._demux.feed(data)
        return True

    def _read_answer(self, deadline: float, expect_id: int | None) -> CallOutcome:
        out = self._demux.stdout
        while True:
            if len(out) >= 4:
                (length,) = struct.unpack(">I", out[:4])
                if length > self.max_answer_bytes:
                    return CallOutcome("oversize", detail=(
                        f"the answer announced {length} bytes (at most {self.max_answer_bytes})"))
                if len(out) >= 4 + length:
                    raw = bytes(out[4:4 + length])
                    del out[:4 + length]
                    return self._parse(raw, expect_id)
            if self._eof:
                return CallOutcome("closed", detail="the server closed its output")
            if self.broken is not None and expect_id is None:
                return CallOutcome("closed", detail=self.broken)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return CallOutcome("timeout", detail="no answer in time")
            self._pump(min(remaining, 0.25))

    @staticmethod
    def _parse(raw: bytes, expect_id: int | None) -> CallOutcome:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return CallOutcome("malformed", detail="the answer is not JSON")
        if not isinstance(body, dict):
            return CallOutcome("malformed", detail="the answer is not a JSON object")
        if expect_id is not None and (type(body.get("id")) is not int or body["id"] != expect_id):
            return CallOutcome("malformed", body=None,
                               detail=f"answer for request {body.get('id')!r}, expected {expect_id}")
        return CallOutcome("answer", body=body)

