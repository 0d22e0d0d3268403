"""Effective sandbox limits: the policy's ceiling, tightened by what a submitter asked for.

A submitter may only ask for *more* safety: ``runsc`` wins over ``runc`` and
each numeric limit is ``min(policy, requested)``. A request for more (more
memory, a longer timeout, ``runc`` under a ``runsc`` policy) is ignored, not
refused. A request that is not a limit at all (a negative number, an unknown
runtime, an unknown key) is an invalid submission.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

from sandgate.errors import SubmissionError
from sandgate.policy.model import Limits

__all__ = ["effective_limits"]

_RUNTIMES = ("runc", "runsc")
#: numeric limits in ``Limits`` and whether they are whole numbers
_NUMERIC = {
    "timeout_seconds": False,
    "memory_mb": True,
    "pids": True,
    "cpus": False,
    "output_kb": True,
    "work_disk_mb": True,
}


def _requested_values(requested: Any) -> dict[str, Any]:
    if isinstance(requested, Mapping):
        unknown = sorted(str(k) for k in requested if k not in Limits.model_fields)
        if unknown:
            raise SubmissionError(f"unknown sandbox limit(s) requested: {', '.join(unknown)}")
        items = dict(requested)
    else:
        items = {name: getattr(requested, name, None) for name in Limits.model_fields}
    return {k: v for k, v in items.items() if v is not None}


def effective_limits(policy_limits: Limits, requested: Any | None) -> Limits:
    """The limits a sandbox runs with.

    ``requested`` is ``None``, a mapping or an object with optional attributes
    ``runtime``, ``timeout_seconds``, ``memory_mb``, ``pids``, ``output_kb``
    (and ``cpus``, ``work_disk_mb``); ``None`` means "not requested".
    """
    if requested is None:
        return policy_limits
    values = _requested_values(requested)
    update: dict[str, Any] = {}

    runtime = values.pop("runtime", None)
    if isinstance(runtime, Enum):
        runtime = runtime.value
    if runtime is not None:
        if runtime not in _RUNTIMES:
            raise SubmissionError(
                f"requested runtime {runtime!r} is not one of {', '.join(_RUNTIMES)}"
            )
        if runtime == "runsc":
            update["runtime"] = "runsc"

    for name, value in values.items():
        if name not in _NUMERIC:  # pragma: no cover - every non-runtime field is numeric
            continue
        whole = _NUMERIC[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SubmissionError(f"requested {name} must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise SubmissionError(f"requested {name} must be a positive number, got {value!r}")
        if whole:
            if isinstance(value, float) and not value.is_integer():
                raise SubmissionError(f"requested {name} must be a whole number, got {value!r}")
            value = int(value)
        ceiling = getattr(policy_limits, name)
        if value < ceiling:
            update[name] = value if whole else float(value)

    if not update:
        return policy_limits
    return Limits.model_validate({**policy_limits.model_dump(), **update})
