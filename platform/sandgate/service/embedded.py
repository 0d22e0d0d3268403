"""The embedded skill service: the store and the lifecycle in this process.

Every call sandgate's edges (the CLI without ``SANDGATE_URL``, the API's
routes) make into the store goes through this module: the
:class:`EmbeddedService` methods, and the read queries below (the event feed
and the pointers with their content hash and entrypoint, which are the store's
:func:`~sandgate.store.audit.events_after` and
:func:`~sandgate.store.pointers.active_pointer_details`; the queue gauges and
the auto-promotion of an evaluation).

Policies are named; ``load_policy`` (a collaborator passed in) turns a name
into a :class:`~sandgate.policy.Policy` — the CLI loads the file, the API
resolves it against the policies it offers (cached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from sandgate.config import get_settings, sqlite_path
from sandgate.errors import NotFound
from sandgate.records import (
    CanaryRecord,
    EventRecord,
    FileDiff,
    PointerMove,
    SkillRecord,
    VersionRecord,
    YankResult,
)
from sandgate.service import VersionDetail, version_detail
from sandgate.store import audit, evaluations, open_store, pointers, versions
from sandgate.store.engine import Store
from sandgate.store.models import Evaluation, Event

if TYPE_CHECKING:  # pragma: no cover - imported where used: a read (`sandgate skills`) loads neither
    from sandgate import lifecycle

__all__ = [
    "EmbeddedService",
    "ActivePointer",
    "active_pointer_details",
    "latest_event_id",
    "events_after",
    "version_with_files",
    "evaluation_counts",
    "auto_promotion_of",
]


def _lifecycle() -> Any:
    """:mod:`sandgate.lifecycle` (the policies, intake, the evaluation), imported on first use."""
    from sandgate import lifecycle

    return lifecycle


def _delivery() -> Any:
    """:mod:`sandgate.delivery` (the canary statistics, the policies), imported on first use."""
    from sandgate import delivery

    return delivery


class EmbeddedService:
    """:class:`~sandgate.service.SkillService` over a :class:`~sandgate.store.Store`."""

    def __init__(self, store: Store | Callable[[bool], Store], *,
                 load_policy: Callable[[str | None], Any] | None = None,
                 load_submission: Callable[[Path], Any] | None = None,
                 evaluate: lifecycle.EvaluateFn | None = None,
                 default_actor: Callable[[], str] | None = None, owns_store: bool = False) -> None:
        """``store``: a store, or a function opening it on first use (:meth:`open`), called with
        ``create``: True only for a submit (nothing else creates a store that does not exist).

        Collaborators (``None``: the lifecycle's defaults): ``load_policy`` turns a
        policy name into a policy, ``load_submission`` reads a path, ``evaluate``
        runs an evaluation (the sandbox)."""
        self._store = store if isinstance(store, Store) else None
        self._opener = None if isinstance(store, Store) else store
        self._policy_loader = load_policy  # None: lifecycle.load_policy, looked up when first needed
        self._submission_loader = load_submission
        self._evaluate = evaluate
        self._default_actor = default_actor
        self._owns_store = owns_store

    @classmethod
    def open(cls, *, default_actor: Callable[[], str] | None = None,
             load_policy: Callable[[str | None], Any] | None = None,
             load_submission: Callable[[Path], Any] | None = None,
             evaluate: lifecycle.EvaluateFn | None = None) -> EmbeddedService:
        """Over the configured store (``Settings.effective_database_url``), opened on first use
        (a command checks its input first) and closed by :meth:`close`. Only a submit creates
        the store; only the default home's directory is created for it."""
        def opener(create: bool) -> Store:
            settings = get_settings()
            url = settings.effective_database_url
            file = sqlite_path(url)
            own_dir = file is not None and file.parent.resolve() == settings.home.resolve()
            return open_store(url, create=create, make_dirs=own_dir)

        return cls(opener, load_policy=load_policy, load_submission=load_submission, evaluate=evaluate,
                   default_actor=default_actor, owns_store=True)

    def _open(self, *, create: bool) -> Store:
        if self._store is None:
            assert self._opener is not None
            self._store = self._opener(create)
        return self._store

    @property
    def store(self) -> Store:
        """The store, which must exist (reads and pointer moves)."""
        return self._open(create=False)

    def ensure_store(self) -> Store:
        """The store, created if it does not exist yet (a submit, the first API key)."""
        return self._open(create=True)

    def close(self) -> None:
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> EmbeddedService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_policy(self, name: str | None) -> Any:
        return (self._policy_loader or _lifecycle().load_policy)(name)

    def _load_submission(self, path: Path) -> Any:
        return (self._submission_loader or _lifecycle().load_submission)(path)

    def _actor(self, actor: str | None) -> str:
        if actor:
            return actor
        if self._default_actor is None:
            raise TypeError("an actor is needed")
        return self._default_actor()

    # -- reads -----------------------------------------------------------------------

    def list_skills(self, *, prefix: str | None = None, limit: int | None = None) -> list[SkillRecord]:
        return versions.list_skills(self.store, prefix=prefix, limit=limit)

    def get_skill(self, name: str) -> SkillRecord:
        return versions.get_skill(self.store, name=name)

    def list_versions(self, name: str) -> list[VersionRecord]:
        return versions.list_versions(self.store, name=name)

    def show(self, name: str, number: int | None = None) -> VersionDetail:
        if number is None:
            active = versions.get_active_version(self.store, name=name)
            number = active.number if active else versions.get_skill(self.store, name=name).latest_version
            if number is None:
                raise NotFound(f"{name} has no versions")
        version = versions.get_version(self.store, name=name, number=number)
        evaluation = evaluations.latest_evaluation(self.store, name=name, number=number)
        files = versions.get_version_files(self.store, name=name, number=number)
        return version_detail(version, evaluation, files)

    def version_files(self, name: str, number: int) -> tuple[VersionRecord, dict[str, bytes]]:
        """The version's record and its exact bytes."""
        return (versions.get_version(self.store, name=name, number=number),
                versions.get_version_files(self.store, name=name, number=number))

    def get_evaluation(self, evaluation_id: str) -> Any:
        return evaluations.get_evaluation(self.store, evaluation_id=evaluation_id)

    def history(self, name: str, *, limit: int | None = None) -> list[EventRecord]:
        return audit.history(self.store, name=name, limit=limit)

    def diff(self, name: str, a: int, b: int) -> list[FileDiff]:
        return versions.diff(self.store, name=name, a=a, b=b)

    def pointers(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        return pointers.active_pointers(self.store, names=names)

    # -- writes ----------------------------------------------------------------------

    def submit(self, path: Path, *, policy: str | None, actor: str | None, wait: bool,
               wait_timeout: float = 0.0, provenance: Mapping[str, Any],
               progress: Callable[[str], None] | None = None) -> tuple[Any, str]:
        submission = self._load_submission(path)
        pol = self._load_policy(policy)
        return self.submit_submission(submission, policy=pol, actor=actor, wait=wait,
                                      provenance=provenance, progress=progress), pol.name

    def submit_submission(self, submission: Any, *, policy: Any, actor: str | None, wait: bool,
                          provenance: Mapping[str, Any], progress: Callable[[str], None] | None = None,
                          tenant: str | None = None, max_queued: int | None = None,
                          limit_setting: str | None = None) -> Any:
        """Submit an already-read submission under an already-loaded policy (queued for ``tenant``,
        default ``local``, refused with ``QueueFull`` when it has ``max_queued`` queued)."""
        store = self.ensure_store()
        evaluate = self._evaluate
        if evaluate is None and progress is not None:
            evaluate = _lifecycle().store_evaluate(store, progress=progress)
        return _lifecycle().submit(store, submission=submission, policy=policy,
                                actor=self._actor(actor), evaluate=evaluate, wait=wait,
                                provenance=dict(provenance), tenant=tenant or evaluations.LOCAL_TENANT,
                                max_queued=max_queued, limit_setting=limit_setting)

    def promote(self, name: str, number: int, *, actor: str | None, reason: str | None,
                policy: str | None, expected_generation: int | None, force: bool) -> PointerMove:
        pol = self._load_policy(policy)
        return _lifecycle().promote(self.store, name=name, number=number, actor=self._actor(actor),
                                 reason=reason, policy=pol, expected_generation=expected_generation,
                                 force=force)

    def rollback(self, name: str, *, to: int | None, actor: str | None, reason: str | None,
                 expected_generation: int | None) -> PointerMove:
        return _lifecycle().rollback(self.store, name=name, to=to, actor=self._actor(actor),
                                  reason=reason, expected_generation=expected_generation)

    def yank(self, name: str, number: int, *, actor: str | None, reason: str,
             rollback: bool) -> YankResult:
        return _lifecycle().yank(self.store, name=name, number=number, actor=self._actor(actor),
                              reason=reason, rollback=rollback)

    # -- canary ----------------------------------------------------------------------

    def start_canary(self, name: str, number: int, *, weight: int | None, actor: str | None,
                     reason: str | None, policy: str | None, expected_generation: int | None,
                     force: bool) -> CanaryRecord:
        pol = self._load_policy(policy)
        return _delivery().start(self.store, name=name, number=number, actor=self._actor(actor), policy=pol,
                              weight=weight, reason=reason, expected_generation=expected_generation,
                              force=force)

    def abort_canary(self, name: str, *, actor: str | None, reason: str) -> CanaryRecord:
        return _delivery().abort(self.store, name=name, actor=self._actor(actor), reason=reason)

    def canary_status(self, name: str) -> dict[str, Any]:
        return _delivery().status(self.store, name=name)


# --------------------------------------------------------------------------- read queries
# (one read transaction each, records out: candidates for the store's own modules)


ActivePointer = pointers.ActivePointer
active_pointer_details = pointers.active_pointer_details


def latest_event_id(store: Store) -> int:
    """The highest event id (0: no events). One index lookup."""
    with store.read() as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


events_after = audit.events_after
version_with_files = versions.get_version_with_files


def evaluation_counts(store: Store) -> dict[tuple[str, str | None], int]:
    """``{(status, verdict): count}`` over all evaluations (one grouped count)."""
    q = select(Evaluation.status, Evaluation.verdict, func.count()).group_by(
        Evaluation.status, Evaluation.verdict
    )
    with store.read() as s:
        return {(status, verdict): int(n) for status, verdict, n in s.execute(q)}


def auto_promotion_of(store: Store, *, skill: str, evaluation_id: str) -> PointerMove | None:
    """The promotion whose evidence names ``evaluation_id`` (an indexed column, no event scan)."""
    return audit.promotion_of(store, skill=skill, evaluation_id=evaluation_id)
