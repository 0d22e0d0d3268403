"""Skill generation: an LLM writes a skill, the sandbox judges it, the loop repairs it.

::

    from sandgate.generation import ChatClient, GenerationSettings, generate_skill

    with ChatClient(GenerationSettings.load()) as client:       # SANDGATE_LLM_* environment
        result = generate_skill("slugify", "Turn a title into a URL slug",
                                policy=load_policy("default"), client=client, store=store)
    result.status            # passed | failed | error | budget_exceeded | cancelled
    result.provenance()      # what is stored on the passing version

Modules: :mod:`.settings` (configuration), :mod:`.client` (OpenAI-compatible
chat completions with retries and budgets), :mod:`.prompt` and :mod:`.parse`
(the strict output format), :mod:`.loop` (generate → evaluate → repair),
:mod:`.jobs` (background runs for the API), :mod:`.errors`.
"""

from __future__ import annotations

from sandgate.generation.client import Budget, ChatClient, Completion, Usage
from sandgate.generation.errors import (
    BudgetExceeded,
    GenerationError,
    LLMError,
    LLMRequestRejected,
    LLMResponseInvalid,
    LLMTimeout,
    LLMUnavailable,
    MalformedOutput,
)
from sandgate.generation.jobs import GenerationJob, get_job, start_generation
from sandgate.generation.loop import (
    Attempt,
    Exchange,
    GenerationResult,
    generate_skill,
    lifecycle_submitter,
)
from sandgate.generation.parse import ParsedOutput, parse_output, render_files
from sandgate.generation.settings import GenerationSettings

__all__ = [
    "GenerationSettings",
    "ChatClient",
    "Completion",
    "Usage",
    "Budget",
    "generate_skill",
    "GenerationResult",
    "Attempt",
    "Exchange",
    "lifecycle_submitter",
    "start_generation",
    "get_job",
    "GenerationJob",
    "parse_output",
    "render_files",
    "ParsedOutput",
    "GenerationError",
    "MalformedOutput",
    "BudgetExceeded",
    "LLMError",
    "LLMUnavailable",
    "LLMTimeout",
    "LLMRequestRejected",
    "LLMResponseInvalid",
]
