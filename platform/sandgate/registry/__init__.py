"""The consumer side: call the active version of a skill, follow promotions and rollbacks live.

::

    import sandgate

    with sandgate.connect() as registry:                 # the settings' store
        registry.call("text_stats", "The cat saw the dog.")
        h = registry.get("text_stats")                   # pinned to the version active now
        h.version, h.content_hash, h.call("more text")
        await registry.acall("text_stats", "async code")

``connect(url=None, *, poll_interval=0.05, cache_dir=None, max_loaded=3, on_event=None)``
returns a :class:`Registry`:

* ``call(name, *args, **kwargs)`` resolves ``active`` on *every* call from an
  in-memory snapshot (a dict lookup; no I/O, no lock) that a daemon watcher
  thread keeps fresh by polling the pointers every ``poll_interval`` seconds
  (one indexed query for all watched skills; generations make "nothing
  changed" cheap). The first call of a skill loads it synchronously; from
  then on it is watched. ``refresh()`` polls once, synchronously.
* A new version is fetched, verified against its content hash, written to
  an on-disk cache (``cache_dir``, default ``Settings.home/"registry-cache"``),
  imported as a fresh module under a versioned name
  (``sandgate_skills.<skill>.v<N>_<hash8>``; never ``importlib.reload``) and
  its entrypoint checked — all *before* one atomic swap. If any of that
  fails, the old version keeps serving and a ``load_failed`` event is logged
  and sent to ``on_event``. See :mod:`sandgate.registry.loader` for module
  isolation (each version's own imports resolve to that version's files).
* In-flight calls finish on the version they started on. At most
  ``max_loaded`` old versions per skill stay loaded (a rollback to one of
  them is a pure swap); older ones are unloaded once no call runs on them
  and no handle pins them.
* Unknown skill or nothing active: :class:`~sandgate.errors.NotFound`. Active
  but not loadable (nothing older to fall back on): :class:`LoadFailed`.
* ``acall``: ``async def`` entrypoints are awaited on the loop; plain ones run
  in a worker thread (``asyncio.to_thread``). ``call`` refuses async
  entrypoints (``TypeError``).
* Canary: while a skill has a *candidate* (``sandgate promote N --canary W``),
  ``call`` sends ``W`` % of calls to it, at random; ``call_keyed(name, key,
  *args)`` routes by a stable hash of ``key`` instead (sticky). With the
  policy's ``fallback`` a failed candidate call is retried on the active
  version. ``canary(name)`` shows the split this process applies.
* Runtime evidence: every call is counted per version (calls, exceptions by
  type, a latency histogram) and sent in batches to the store or the API by a
  background thread (:mod:`sandgate.registry.evidence`; ``report=False`` to
  keep it local, ``runtime_stats()`` / ``flush_evidence()``).

Latency: a move reaches callers within about one ``poll_interval`` plus the
load (``bench/bench_registry.py``: p99 ≈ 65 ms at 50 ms polling, SQLite or
PostgreSQL). The watcher is an ordinary Python thread: in a consumer whose
threads are CPU-bound *in Python*, it queues for the GIL after every I/O like
everyone else and the latency grows with the number of busy threads (seconds
with 8 threads spinning on calls; ``bench --load-threads 8``). Such a
consumer should lower ``sys.setswitchinterval`` or call ``refresh()`` from its
own loop between batches.

Backends: :class:`StoreBackend` (SQLite/PostgreSQL, this package's default) and
:class:`HttpBackend` (the API server, ``sandgate serve``: ``connect("https://…",
api_key=…)`` or ``$SANDGATE_URL``/``$SANDGATE_API_KEY``; pointer moves are
pushed over server-sent events and wake the watcher at once, polling every
``poll_interval`` — 1 s by default over HTTP — stays underneath as the safety
net; ``bench/bench_registry.py --serve``: p99 ≈ 115 ms from a move to the
first call on the new version with the server's event feed polling every
0.1 s, ≈ 515 ms at its 0.5 s default). Any object with
``pointers``/``fetch``/``close`` can be passed as ``backend=`` (see
:mod:`sandgate.registry.backends`).

Trust model
===========

**The registry runs promoted code inside your process, with your process's
privileges.** There is no sandbox on this side: a skill loaded by the
registry can read your memory, your environment variables and files, open
network connections, start threads and processes, and change interpreter
state (``sys.modules``, ``builtins``, signal handlers) exactly like any
module you import yourself. In-process loading is for consumers that have
decided to accept promoted code into their own process. If that is not
acceptable, run consumers in a separate, locked-down process or container,
or call skills through a service boundary.

What the gates *do* guarantee, for a version you receive through the
registry:

* it is byte-for-byte the version that was evaluated: the registry verifies
  the sha256 content hash of the files (from the store and from its own
  cache, on every load) and executes only those verified bytes — never a
  ``.pyc``, never an unverified file;
* it passed the evaluation the promotion was based on (static policy scan,
  its own tests, coverage gates) in a network-less, resource-limited,
  throwaway sandbox — or a human promoted it with ``--force``, which the
  audit log records;
* who moved the pointer, when and why is in the append-only event log, and
  one command moves it back; a rollback reaches every consumer within about
  one poll interval, without a restart.

What the gates do **not** guarantee:

* that the code is safe or correct. Tests written by the same generator
  prove what they check and nothing more; the static rules catch known
  patterns, not intent; code can behave differently outside the sandbox
  (network present, real data, other time, other environment variables) —
  including on purpose;
* resource limits: the sandbox's CPU, memory, time and network limits do not
  follow the code into your process. A skill that loops, leaks or blocks does
  so in your process (wrap calls with your own timeouts; ``acall`` runs sync
  skills in threads, which cannot be killed);
* isolation between skills, or between a skill and your code: versions are
  kept apart in ``sys.modules`` for *correct hot reload*, not for security;
* that the store itself is trustworthy. Anyone who can write the database
  (or the registry cache directory *and* the database) decides what runs in
  every consumer: protect the store's credentials like deploy keys. (A
  tampered cache alone is detected and re-fetched.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sandgate.errors import ConfigError
from sandgate.registry.backends import (
    HTTP_POLL_INTERVAL,
    CanaryRoute,
    FetchedVersion,
    HttpBackend,
    RegistryBackend,
    StoreBackend,
    VersionInfo,
)
from sandgate.registry.core import EventKind, Registry, RegistryEvent, SkillHandle
from sandgate.registry.loader import ROOT_PACKAGE, LoadFailed

__all__ = [
    "connect",
    "Registry",
    "SkillHandle",
    "RegistryEvent",
    "EventKind",
    "LoadFailed",
    "RegistryBackend",
    "StoreBackend",
    "HttpBackend",
    "VersionInfo",
    "FetchedVersion",
    "CanaryRoute",
    "ROOT_PACKAGE",
]


def connect(
    url: str | None = None,
    *,
    backend: RegistryBackend | None = None,
    api_key: str | None = None,
    poll_interval: float | None = None,
    cache_dir: str | Path | None = None,
    max_loaded: int = 3,
    on_event: Callable[[RegistryEvent], Any] | None = None,
    skills: Iterable[str] = (),
    watch: bool = True,
    report: bool = True,
    report_interval: float = 1.0,
) -> Registry:
    """A :class:`Registry` following the store at ``url`` (default: ``$SANDGATE_URL``, else the settings' store).

    ``url``: a database URL (``sqlite:///…``, ``postgresql+psycopg://…``) or
    the ``http(s)://`` URL of a sandgate API server (:class:`HttpBackend`,
    authenticated with ``api_key``, default ``$SANDGATE_API_KEY``; a key
    with the reader role is enough). ``backend``: any
    :class:`RegistryBackend` instead of a URL (it is closed with the registry).
    ``poll_interval``: seconds between polls (default 0.05 for a database,
    :data:`HTTP_POLL_INTERVAL` over HTTP, where moves are pushed and polling
    is the safety net). ``skills``: load these now (errors raise here rather
    than at the first call). ``watch=False``: no watcher thread; only
    :meth:`Registry.refresh` moves the snapshot (tools and tests). ``on_event``
    is called from the watcher thread (or the thread that called
    ``refresh``/made the first call); its exceptions are logged and ignored.
    ``report``: send runtime counts (calls, errors, latency per version) to the
    store or the API every ``report_interval`` seconds from a background
    thread (:mod:`sandgate.registry.evidence`; ``report=False`` keeps them in
    this process, ``runtime_stats()``).
    """
    import os

    if backend is not None and url is not None:
        raise ConfigError("pass either url or backend, not both")
    if backend is None and url is None:
        from sandgate.client import URL_ENV

        url = os.environ.get(URL_ENV, "").strip() or None
    remote = url is not None and url.split("://", 1)[0].lower() in ("http", "https")
    if api_key is not None and not remote:
        raise ConfigError("api_key is for http(s):// URLs (a sandgate API server)")
    if poll_interval is None:
        poll_interval = HTTP_POLL_INTERVAL if remote or isinstance(backend, HttpBackend) else 0.05
    if not poll_interval > 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
    if max_loaded < 0:
        raise ValueError(f"max_loaded must be >= 0, got {max_loaded!r}")
    if cache_dir is None:
        from sandgate.config import get_settings

        cache_dir = get_settings().home / "registry-cache"
    if backend is None:
        backend = HttpBackend(url, api_key=api_key) if remote and url is not None else StoreBackend(url)
    registry = Registry(
        backend,
        cache_dir=cache_dir,
        poll_interval=poll_interval,
        max_loaded=max_loaded,
        on_event=on_event,
        skills=skills,
        watch=watch,
        report=report,
        report_interval=report_interval,
    )
    if isinstance(backend, HttpBackend):  # close() must not wait out a long poll interval in watch()
        backend.bind_stop(getattr(registry, "_stop", None))
    return registry
