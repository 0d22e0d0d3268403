"""The oracle's server: a fresh interpreter that serves the skill's entrypoint, nothing else.

Run as ``python3 -I -m sandgate_harness.serve`` as the only process of a
single-use sandbox. It holds no harness secret: there is no key, no result
channel and no verdict here. Everything it writes is the skill's *answers*,
which the controller, outside the sandbox, judges itself.

Protocol (every frame is a 4-byte big-endian length, then that many bytes):

0. server → controller, at start-up, before any submitted code exists here:
   ``{"hello": 1}`` (without it the controller knows the *server* is broken —
   an infrastructure failure, never the skill's);
1. controller → server: one frame holding the payload tar (``skill/...`` files
   and ``serve.json`` = ``{"module": ..., "function": ...}``);
2. server → controller: ``{"ready": true}`` or ``{"ready": false, "error": ...}``;
3. then, one at a time: request ``{"id": n, "args": [...], "kwargs": {...}}`` →
   answer ``{"id": n, "ok": true, "value": v}`` or
   ``{"id": n, "ok": false, "raised": "ValueError", "message": "..."}`` or
   ``{"id": n, "ok": false, "unserializable": "set"}``.

Values are JSON: None, bool, int, finite float, str, lists (tuples become
lists) and dicts with str keys. Whatever else a call returns is reported as
``unserializable`` with its type name.

What the skill prints goes to stderr (fd 1 is pointed there before the skill is
imported); answers go out on a private duplicate of the original stdout. The
skill can still find that descriptor and write to it: the controller treats any
byte it did not ask for as a failed call, so nothing written there can become
anything but the skill's own answers.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import struct
import sys
import types
from typing import Any

from sandgate_harness.payload import PayloadError, read_payload, write_tree

SKILL_DIR = "/work/skill"
MAX_PAYLOAD = 32 * 1024 * 1024
MAX_REQUEST = 1024 * 1024
MAX_DEPTH = 64
HELLO = 1


class Unserializable(Exception):
    pass


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError("stdin closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, cap: int) -> bytes:
    (length,) = struct.unpack(">I", _read_exact(fd, 4))
    if length > cap:
        raise ValueError(f"frame of {length} bytes is over the cap of {cap}")
    return _read_exact(fd, length)


def write_frame(fd: int, body: dict[str, Any]) -> None:
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    data = struct.pack(">I", len(data)) + data
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def to_json(value: Any, depth: int = 0) -> Any:
    """The JSON form of a returned value, or :class:`Unserializable` naming the type."""
    if depth > MAX_DEPTH:
        raise Unserializable("nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unserializable(f"float {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise Unserializable(f"dict key of type {type(key).__name__}")
            out[key] = to_json(item, depth + 1)
        return out
    raise Unserializable(type(value).__name__)


def answer(function: Any, request: dict[str, Any]) -> dict[str, Any]:
    call_id = request.get("id")
    args, kwargs = request.get("args", []), request.get("kwargs", {})
    try:
        result = function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every outcome of the call is its answer
        try:
            message = str(exc)[:2000]
        except BaseException:  # noqa: BLE001 - a hostile __str__
            message = "<unprintable>"
        return {"id": call_id, "ok": False, "raised": type(exc).__name__, "message": message}
    try:
        return {"id": call_id, "ok": True, "value": to_json(result)}
    except Unserializable as exc:
        return {"id": call_id, "ok": False, "unserializable": str(exc)}
    except RecursionError:
        return {"id": call_id, "ok": False, "unserializable": "nested too deeply"}


def unmark() -> None:
    """Take the server's names out of what the skill can read without introspection.

    ``sys.argv``, ``sys.orig_argv``, ``sys.modules["__main__"]`` and the harness's
    own modules would otherwise say "served by the oracle" in plain words, and a
    skill could answer right only then. The running server keeps its functions
    (they hold their own globals). This raises the cost of telling the oracle
    from production; it does not make it impossible (the README says what is left).
    """
    sys.argv = [""]
    sys.orig_argv = ["python3"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    for name in [n for n in sys.modules if n == "sandgate_harness" or n.startswith("sandgate_harness.")]:
        del sys.modules[name]


def load(files: dict[str, bytes]) -> Any:
    config = json.loads(files.pop("serve.json"))
    skill = {k[len("skill/"):]: v for k, v in files.items() if k.startswith("skill/")}
    write_tree(SKILL_DIR, skill)
    os.chdir(SKILL_DIR)
    sys.path.append(SKILL_DIR)  # appended: the standard library always wins
    unmark()
    module = importlib.import_module(config["module"])
    function = getattr(module, config["function"])
    if not callable(function):
        raise TypeError(f"{config['module']}:{config['function']} is not callable")
    return function


def main() -> int:
    out = os.dup(1)
    os.set_inheritable(out, False)
    os.dup2(2, 1)  # the skill's prints go to stderr, never to the answer channel
    write_frame(out, {"hello": HELLO})
    try:
        files = read_payload(io.BytesIO(read_frame(0, MAX_PAYLOAD)))
    except (PayloadError, EOFError, ValueError, OSError) as exc:
        print(f"serve: bad payload: {exc}", file=sys.stderr, flush=True)
        return 3
    try:
        function = load(files)
    except BaseException as exc:  # noqa: BLE001 - the skill failed to load: say so, then stop
        write_frame(out, {"ready": False, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
        return 0
    write_frame(out, {"ready": True})
    while True:
        try:
            raw = read_frame(0, MAX_REQUEST)
        except EOFError:
            return 0
        request = json.loads(raw)
        write_frame(out, answer(function, request))


if __name__ == "__main__":
    sys.exit(main())
