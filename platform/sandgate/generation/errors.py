"""Errors of the generation loop, grafted onto :mod:`sandgate.errors`.

::

    SandgateError
    ├── ConfigError                   (sandgate.errors) e.g. no SANDGATE_LLM_BASE_URL
    └── GenerationError               the generation loop could not go on
        ├── MalformedOutput           the model's reply is not in the file format (re-asked)
        ├── BudgetExceeded            the token or cost budget of this generation is spent
        └── LLMError                  the provider failed: also an InfrastructureError,
            │                         so the CLI exits 2 and the skill is never blamed
            ├── LLMUnavailable        connection refused/reset, 429/5xx after every retry
            │   └── LLMTimeout        connect or read timeout after every retry
            ├── LLMRequestRejected    4xx other than 408/409/429 (bad key, unknown model): not retried
            └── LLMResponseInvalid    a 200 that is not a chat completion

No message of these errors ever contains the API key: the client builds them
from the status, a trimmed and redacted body, and the base URL *host*.
"""

from __future__ import annotations

from sandgate.errors import EXIT_ERROR, InfrastructureError, Meaning, SandgateError, register_meaning

__all__ = [
    "GenerationError",
    "MalformedOutput",
    "BudgetExceeded",
    "LLMError",
    "LLMUnavailable",
    "LLMTimeout",
    "LLMRequestRejected",
    "LLMResponseInvalid",
]


class GenerationError(SandgateError):
    code = "generation"


class MalformedOutput(GenerationError):
    """The reply could not be parsed into a file set; ``problems`` lists every issue found."""

    code = "malformed_output"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems) or ["the reply is malformed"]
        super().__init__("; ".join(self.problems))


class BudgetExceeded(GenerationError):
    code = "budget_exceeded"


class LLMError(GenerationError, InfrastructureError):
    code = "llm_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 requests: int = 0) -> None:
        super().__init__(message, code=code)
        #: HTTP status of the last response, if there was one
        self.status = status
        #: HTTP requests made (first try plus retries)
        self.requests = requests


class LLMUnavailable(LLMError):
    code = "llm_unavailable"


class LLMTimeout(LLMUnavailable):
    code = "llm_timeout"


class LLMRequestRejected(LLMError):
    code = "llm_rejected"


class LLMResponseInvalid(LLMError):
    code = "llm_invalid_response"


# the generation loop's rows of the one table (sandgate.errors.MEANINGS): a generation
# that cannot go on is the request's (400); a provider failure is unavailable (503); both exit 2
register_meaning(GenerationError, Meaning(400, EXIT_ERROR, "generation"))
register_meaning(LLMError, Meaning(503, EXIT_ERROR, "llm_error"))
