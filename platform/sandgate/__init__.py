"""sandgate: a gate between generated code and production.

The public API is small and imported lazily, so ``import sandgate`` stays cheap
(consumers that only use the registry do not pay for FastAPI or Docker).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Settings": "sandgate.config",
    "get_settings": "sandgate.config",
    "load_submission": "sandgate.submission",
    "Submission": "sandgate.submission",
    "evaluate": "sandgate.evaluation",
    "EvaluationReport": "sandgate.report",
    "load_policy": "sandgate.policy",
    "Policy": "sandgate.policy",
    "SandgateError": "sandgate.errors",
    "connect": "sandgate.registry",
}

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:  # pragma: no cover
    from sandgate.config import Settings, get_settings
    from sandgate.errors import SandgateError
    from sandgate.evaluation import evaluate
    from sandgate.policy import Policy, load_policy
    from sandgate.registry import connect
    from sandgate.report import EvaluationReport
    from sandgate.submission import Submission, load_submission


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandgate' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
