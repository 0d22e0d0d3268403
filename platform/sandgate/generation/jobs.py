"""Run a generation in the background: what ``POST /v1/skills/{name}/generate`` will call.

::

    job = start_generation("slugify", "Turn a title into a URL slug", policy=policy, store=store)
    job.id, job.status            # "running" → "passed" | "failed" | "error" | "budget_exceeded" | "cancelled"
    job.snapshot()                # JSON-ready: status, events so far, result once done
    job.cancel()                  # cooperative: checked before each LLM call and each evaluation
    job.result(timeout=...)       # the GenerationResult (blocks)
    await asyncio.wrap_future(job.future)   # from an async route
    get_job(job.id)               # the last MAX_JOBS jobs of this process

Jobs run on a small thread pool (the loop is blocking: httpx + Docker). They
live in this process only; a service that needs them across restarts stores
``snapshot()`` itself. A job creates its own :class:`ChatClient` from
:class:`GenerationSettings` (environment) unless given one, and closes it.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sandgate.generation.client import ChatClient
from sandgate.generation.errors import GenerationError
from sandgate.generation.loop import GenerationResult, generate_skill
from sandgate.generation.settings import GenerationSettings
from sandgate.names import is_skill_name

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.generation.client import ChatClient
    from sandgate.generation.settings import GenerationSettings
    from sandgate.policy import Policy

__all__ = ["GenerationJob", "start_generation", "get_job", "MAX_JOBS"]

MAX_JOBS = 200
MAX_EVENTS = 500
_lock = threading.Lock()
_jobs: OrderedDict[str, GenerationJob] = OrderedDict()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandgate-generate")
        return _executor


@dataclass(eq=False)
class GenerationJob:
    id: str
    name: str
    created_at: str
    future: Future[GenerationResult] = field(repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _events_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _record(self, event: dict[str, Any]) -> None:
        with self._events_lock:
            if len(self._events) < MAX_EVENTS:
                self._events.append({**event, "at": datetime.now(UTC).isoformat(timespec="seconds")})

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._events_lock:
            return list(self._events)

    @property
    def status(self) -> str:
        if not self.future.done():
            return "cancelling" if self._cancel.is_set() else "running"
        exc = self.future.exception()
        if exc is not None:
            return "error"
        return self.future.result().status

    def cancel(self) -> None:
        self._cancel.set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        return self.future.result(timeout)

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "skill": self.name, "created_at": self.created_at,
                                "status": self.status, "events": self.events, "result": None,
                                "error": None}
        if self.future.done():
            exc = self.future.exception()
            if exc is not None:
                data["error"] = f"{type(exc).__name__}: {exc}"
            else:
                data["result"] = self.future.result().to_dict()
        return data


def start_generation(
    name: str,
    description: str,
    *,
    requirements: Sequence[str] = (),
    attempts: int = 3,
    policy: Policy,
    store: Any = None,
    actor: str | None = None,
    settings: GenerationSettings | None = None,
    client: ChatClient | None = None,
    evaluate: Callable[..., Any] | None = None,
    max_reasks: int = 2,
    executor: ThreadPoolExecutor | None = None,
) -> GenerationJob:
    """Start :func:`generate_skill` in the background and return its job at once.

    Configuration problems (no endpoint, bad name) are raised here, before the
    job starts, so an API can answer 400/500 instead of a failed job.
    """
    if not is_skill_name(name):
        raise GenerationError(f"{name!r} is not a skill name", code="invalid_request")
    if not description or not description.strip():
        raise GenerationError("a description is required", code="invalid_request")
    own_client = client is None
    if client is None:
        client = ChatClient(settings if settings is not None else GenerationSettings.load())

    job_id = uuid.uuid4().hex
    holder: dict[str, GenerationJob] = {}
    ready = threading.Event()

    def run() -> GenerationResult:
        ready.wait()
        job = holder["job"]
        try:
            return generate_skill(name, description, requirements=requirements,
                                  attempts=attempts, policy=policy, client=client,
                                  evaluate=evaluate, store=store, actor=actor,
                                  max_reasks=max_reasks, on_event=job._record,
                                  cancel=job._cancel)
        finally:
            if own_client:
                client.close()

    future = (executor or _pool()).submit(run)
    job = GenerationJob(id=job_id, name=name,
                        created_at=datetime.now(UTC).isoformat(timespec="seconds"), future=future)
    holder["job"] = job
    with _lock:
        _jobs[job_id] = job
        while len(_jobs) > MAX_JOBS:
            _jobs.popitem(last=False)
    ready.set()
    return job


def get_job(job_id: str) -> GenerationJob | None:
    with _lock:
        return _jobs.get(job_id)
