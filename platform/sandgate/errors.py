"""The one exception tree of sandgate.

Every error the library raises on purpose is a :class:`SandgateError`. The
edges translate them: the CLI to exit codes, the API to HTTP statuses. Nothing
in between catches and re-labels them.

::

    SandgateError
    ├── ConfigError               bad settings or policy file (the operator's to fix)
    │   └── PolicyError           a policy file that does not validate
    ├── SubmissionError           invalid submission: verdict ``rejected``, nothing ran
    ├── InfrastructureError       the environment broke: verdict ``error``, never the skill's fault
    │   ├── EngineUnavailable     no Docker engine answers
    │   ├── ImageMissing          the sandbox image is not built
    │   ├── RuntimeUnavailable    the policy asks for a runtime (e.g. runsc) the engine lacks
    │   └── SandboxFailure        the sandbox did not produce a trustworthy result
    ├── StoreError                the skill store refused an operation
    │   ├── NotFound              no such skill / version / evaluation
    │   ├── Conflict              a concurrent pointer move won (compare-and-set lost)
    │   └── InvalidTransition     the move is not allowed (e.g. promote a failed version)
    └── LoadFailed                a consumer (registry) could not load a version; the old one keeps serving

Errors raised at a boundary keep their cause: ``raise X(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "SandgateError",
    "ConfigError",
    "PolicyError",
    "SubmissionError",
    "InfrastructureError",
    "EngineUnavailable",
    "ImageMissing",
    "RuntimeUnavailable",
    "SandboxFailure",
    "StoreError",
    "NotFound",
    "Conflict",
    "InvalidTransition",
    "LoadFailed",
]


class SandgateError(Exception):
    """Base of every error sandgate raises on purpose."""

    #: reason code carried into reports and API error bodies
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(SandgateError):
    code = "config"


class PolicyError(ConfigError):
    code = "invalid_policy"


class SubmissionError(SandgateError):
    """The submission is invalid; nothing from it was executed.

    ``code`` is a report reason code (``invalid_submission``, ``syntax_error``,
    ...); ``path`` names the offending file when there is one.
    """

    code = "invalid_submission"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message, code=code)
        self.path = path


class InfrastructureError(SandgateError):
    """The environment broke. Never counted against the skill."""

    code = "infrastructure"


class EngineUnavailable(InfrastructureError):
    pass


class ImageMissing(InfrastructureError):
    pass


class RuntimeUnavailable(InfrastructureError):
    pass


class SandboxFailure(InfrastructureError):
    pass


class StoreError(SandgateError):
    code = "store"


class NotFound(StoreError):
    code = "not_found"


class Conflict(StoreError):
    code = "conflict"


class InvalidTransition(StoreError):
    code = "invalid_transition"


class LoadFailed(SandgateError):
    """A skill version could not be loaded; the previously active version keeps serving.

    ``retryable`` is True when the cause is the environment (the backend or the
    cache directory failed), False when it is the version itself (its import
    raised, its entrypoint is missing or not callable, its bytes do not match
    its content hash). A non-retryable failure is not tried again until the
    pointer moves.
    """

    code = "load_failed"

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
