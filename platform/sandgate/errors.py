"""The one exception tree of sandgate, and the one table of what each error means at an edge.

Every error the library raises on purpose is a :class:`SandgateError`. The
edges translate them through :data:`MEANINGS` — the API to HTTP statuses
(:mod:`sandgate.api.errors`), the CLI to exit codes (:mod:`sandgate.cli.common`),
the HTTP client back from a status and code to the class
(:func:`error_from_status`). Nothing in between catches and re-labels them.

Two branches say what the caller should do: :class:`Refused` (the request or
the skill is refused; asking again unchanged gets the same answer) and
:class:`Unavailable` (the environment could not do it now; retry)::

    SandgateError
    ├── Refused                   the caller's to change                          exit 1
    │   ├── SubmissionError       invalid submission: verdict ``rejected``, nothing ran   422
    │   ├── InvalidRequest        the request is incomplete (``reason_required``,        422
    │   │   │                     ``actor_required``, ``invalid_key``)
    │   │   └── InvalidCanaryInput  a canary weight or a consumer's runtime report     422
    │   │                         that does not validate (``bad_weight``, ``invalid_report``)
    │   ├── NotFound              no such skill / version / evaluation / key             404
    │   ├── Conflict              a concurrent pointer move won (compare-and-set lost)   409
    │   └── InvalidTransition     the state forbids the move (``already_active``,        409
    │                             ``yanked``, ``not_passed``, ...)
    ├── Unavailable               the environment could not do it now: retry       exit 2, 503
    │   ├── InfrastructureError   verdict ``error``, never the skill's fault
    │   │   ├── EngineUnavailable     no Docker engine answers
    │   │   ├── ImageMissing          the sandbox image is not built
    │   │   ├── RuntimeUnavailable    the policy asks for a runtime (e.g. runsc) the engine lacks
    │   │   └── SandboxFailure        the sandbox did not produce a trustworthy result
    │   ├── StoreError            the skill store (or a registry's backend) could not do it
    │   └── QueueFull             a tenant (API key) has its cap of queued evaluations:   429
    │                             retry after ``retry_after`` s (``queue_full``)
    ├── ConfigError               bad settings or policy file (the operator's)     exit 2, 500
    │   └── PolicyError           a policy file that does not validate
    ├── ApiError                  a refusal decided at the HTTP edge with its own status
    │                             (401, 403, 413, 415, 429, ...)                    exit 2
    └── LoadFailed                a consumer (registry) could not load a version; the old one keeps serving

``InvalidTransition(..., code="reason_required")`` (and the other
:data:`REQUEST_CODES`) builds an :class:`IncompleteRequest`, which is both an
:class:`InvalidRequest` and an :class:`InvalidTransition`: code that raised
``InvalidTransition`` for an incomplete request keeps working, and the table
gives it the request's meaning (422) without looking at the code.

Errors raised at a boundary keep their cause: ``raise X(...) from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "SandgateError",
    "Refused",
    "Unavailable",
    "ConfigError",
    "PolicyError",
    "SubmissionError",
    "InvalidRequest",
    "IncompleteRequest",
    "InvalidCanaryInput",
    "InfrastructureError",
    "EngineUnavailable",
    "ImageMissing",
    "RuntimeUnavailable",
    "SandboxFailure",
    "StoreError",
    "QueueFull",
    "NotFound",
    "Conflict",
    "InvalidTransition",
    "ApiError",
    "LoadFailed",
    "Meaning",
    "MEANINGS",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_ERROR",
    "HTTP_CODES",
    "REQUEST_CODES",
    "SUBMISSION_CODES",
    "CANARY_INPUT_CODES",
    "meaning_of",
    "status_of",
    "exit_code_of",
    "register_meaning",
    "error_from_status",
]

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2

#: the codes of an incomplete request (422), whichever class raised it
REQUEST_CODES = frozenset({"reason_required", "actor_required", "invalid_key"})
#: the codes of an invalid submission the API answers with 422
SUBMISSION_CODES = frozenset({"invalid_submission", "syntax_error", "name_mismatch"})

#: the codes of a canary weight or a runtime report that does not validate (422)
CANARY_INPUT_CODES = frozenset({"bad_weight", "invalid_report"})

#: the error code of a bare HTTP status (an :class:`ApiError` without its own)
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
}


class SandgateError(Exception):
    """Base of every error sandgate raises on purpose."""

    #: reason code carried into reports and API error bodies (the class's row of :data:`MEANINGS`)
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class Refused(SandgateError):
    """The request or the skill is refused: asking again unchanged gets the same answer."""


class Unavailable(SandgateError):
    """The environment could not do it now; the same request may succeed later."""


class ConfigError(SandgateError):
    pass


class PolicyError(ConfigError):
    pass


class SubmissionError(Refused):
    """The submission is invalid; nothing from it was executed.

    ``code`` is a report reason code (``invalid_submission``, ``syntax_error``,
    ...); ``path`` names the offending file when there is one.
    """

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message, code=code)
        self.path = path


class InvalidRequest(Refused):
    """The request itself is incomplete or malformed (a missing reason, actor, a bad key setting)."""


class InvalidCanaryInput(InvalidRequest):
    """A canary weight outside 1..99, or a consumer's runtime report that does not add up (nothing stored)."""


class NotFound(Refused):
    pass


class Conflict(Refused):
    pass


class InvalidTransition(Refused):
    """The skill's state forbids the move (promote a failed version, yank twice, ...)."""

    def __new__(cls, message: str = "", *args: Any, code: str | None = None, **kwargs: Any) -> Any:
        if cls is InvalidTransition and code in REQUEST_CODES:
            cls = IncompleteRequest
        return super().__new__(cls, message)


class IncompleteRequest(InvalidRequest, InvalidTransition):
    """An incomplete request raised as ``InvalidTransition`` (see the module docstring)."""


class InfrastructureError(Unavailable):
    """The environment broke. Never counted against the skill."""


class EngineUnavailable(InfrastructureError):
    pass


class ImageMissing(InfrastructureError):
    pass


class RuntimeUnavailable(InfrastructureError):
    pass


class SandboxFailure(InfrastructureError):
    pass


class StoreError(Unavailable):
    """The skill store (or a registry's source) could not do it: unreachable, broken, refusing input it cannot hold."""


class QueueFull(Unavailable):
    """A tenant (an API key, or ``local``) already has its cap of queued evaluations; nothing was queued.

    ``tenant`` and ``limit`` name who and which cap, ``queued`` how many are queued now,
    ``retry_after`` (whole seconds, at least 1) when its queue should have room again.
    The API answers 429 with ``Retry-After``; the CLI exits 2 (retry later)."""

    def __init__(self, message: str, *, code: str | None = None, tenant: str | None = None,
                 limit: int | None = None, queued: int | None = None,
                 retry_after: float | None = None, setting: str | None = None) -> None:
        super().__init__(message, code=code)
        self.tenant = tenant
        self.limit = limit
        self.queued = queued
        self.retry_after = retry_after
        self.setting = setting

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(max(1, int(self.retry_after)))}

    @property
    def body(self) -> dict[str, Any]:
        """The fields the API's error body carries beside ``code`` and ``message``."""
        return {k: v for k, v in {"tenant": self.tenant, "limit": self.limit, "queued": self.queued,
                                  "limit_setting": self.setting,
                                  "retry_after": None if self.retry_after is None else
                                  max(1, int(self.retry_after))}.items() if v is not None}


class ApiError(SandgateError):
    """A refusal decided at the HTTP edge, with an explicit HTTP status.

    Raised by the API layer (401, 403, 413, 415, 422, 429, a policy the client
    may not name; 503 for a feature the server is not configured for) and
    rebuilt by the client for a status the tree has no class for.
    ``headers`` are added to the response (``Retry-After``, ``WWW-Authenticate``);
    ``retry_after`` and ``request_id`` are what the client read from one.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None,
                 request_id: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code or HTTP_CODES.get(status, "error"))
        self.status = status
        self.headers = headers or {}
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after


class LoadFailed(SandgateError):
    """A skill version could not be loaded; the previously active version keeps serving.

    ``retryable`` is True when the cause is the environment (the backend or the
    cache directory failed), False when it is the version itself (its import
    raised, its entrypoint is missing or not callable, its bytes do not match
    its content hash). A non-retryable failure is not tried again until the
    pointer moves.
    """

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable


# --------------------------------------------------------------------------- the one table


@dataclass(frozen=True, slots=True)
class Meaning:
    """What an error class means at the edges."""

    #: HTTP status (None: the instance's own ``status``, see :class:`ApiError`)
    status: int | None
    #: CLI exit code
    exit_code: int
    #: the error code string (the class's ``code``)
    code: str
    #: codes on the wire (with ``status``) that the client rebuilds into this class;
    #: None: any code at this status; empty: never rebuilt
    wire: frozenset[str] | None = frozenset()


#: error class → meaning; a class not listed takes the row of its nearest listed ancestor.
#: The client rebuilds an answer into the first row (in this order) whose status and ``wire`` match.
MEANINGS: dict[type[SandgateError], Meaning] = {
    SubmissionError: Meaning(422, EXIT_REFUSED, "invalid_submission", SUBMISSION_CODES),
    IncompleteRequest: Meaning(422, EXIT_REFUSED, "invalid_transition", REQUEST_CODES),
    InvalidCanaryInput: Meaning(422, EXIT_REFUSED, "invalid_report", CANARY_INPUT_CODES),
    InvalidRequest: Meaning(422, EXIT_REFUSED, "invalid_request"),
    NotFound: Meaning(404, EXIT_REFUSED, "not_found", frozenset({"not_found"})),
    Conflict: Meaning(409, EXIT_REFUSED, "conflict", frozenset({"conflict"})),
    InvalidTransition: Meaning(409, EXIT_REFUSED, "invalid_transition", None),
    Refused: Meaning(400, EXIT_REFUSED, "refused"),
    StoreError: Meaning(503, EXIT_ERROR, "store", frozenset({"store", "database_unavailable"})),
    QueueFull: Meaning(429, EXIT_ERROR, "queue_full", frozenset({"queue_full"})),
    InfrastructureError: Meaning(503, EXIT_ERROR, "infrastructure", None),
    Unavailable: Meaning(503, EXIT_ERROR, "unavailable"),
    PolicyError: Meaning(500, EXIT_ERROR, "invalid_policy"),
    ConfigError: Meaning(500, EXIT_ERROR, "config"),
    ApiError: Meaning(None, EXIT_ERROR, "error"),
    LoadFailed: Meaning(500, EXIT_ERROR, "load_failed"),
    SandgateError: Meaning(500, EXIT_ERROR, "error"),
}

#: anything that is not a SandgateError (a bug): a 500 ``internal``, exit 2
_UNEXPECTED = Meaning(500, EXIT_ERROR, "internal")


def register_meaning(cls: type[SandgateError], meaning: Meaning) -> None:
    """Add the row of an error class defined above this module (e.g. the generation loop's)."""
    MEANINGS[cls] = meaning
    cls.code = meaning.code


def _assign_codes() -> None:
    for cls, meaning in MEANINGS.items():
        if cls is not ApiError:  # an ApiError's code follows its status
            cls.code = meaning.code


_assign_codes()


def meaning_of(exc: BaseException | type[BaseException]) -> Meaning:
    """The row of ``exc``'s class (or its nearest listed ancestor)."""
    cls = exc if isinstance(exc, type) else type(exc)
    for klass in cls.__mro__:
        meaning = MEANINGS.get(klass)
        if meaning is not None:
            return meaning
    return _UNEXPECTED


def status_of(exc: BaseException) -> int:
    """The HTTP status of ``exc`` (an :class:`ApiError` carries its own)."""
    meaning = meaning_of(exc)
    if meaning.status is None:
        return int(getattr(exc, "status", 500))
    return meaning.status


def exit_code_of(exc: BaseException) -> int:
    return meaning_of(exc).exit_code


def error_from_status(status: int, code: str | None, message: str, *, path: str | None = None,
                      request_id: str | None = None,
                      retry_after: float | None = None) -> SandgateError:
    """The error an API answer ``status`` with error ``code`` stands for (the table read backwards)."""
    for cls, meaning in MEANINGS.items():
        if meaning.status != status or meaning.wire is not None and code not in meaning.wire:
            continue
        if cls is SubmissionError:
            return SubmissionError(message, code=code, path=path)
        if cls is QueueFull:
            return QueueFull(message, code=code, retry_after=retry_after)
        return cls(message, code=code)
    return ApiError(status, message, code=code, request_id=request_id, retry_after=retry_after)
