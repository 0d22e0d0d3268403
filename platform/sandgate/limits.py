"""Sandbox limits: one type, the seven fields written once.

:class:`Limits` is the operator's ceiling (``[limits]`` in a policy) and what a
sandbox runs with; :data:`LimitsRequest` is the same fields, each optional,
for what a submitter asks for (``[sandbox]`` in ``skill.toml``) — derived from
:class:`Limits`, so the two cannot drift apart. Ground floor: pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = ["Runtime", "Limits", "LimitsRequest"]

Runtime = Literal["runc", "runsc"]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Limits(BaseModel):
    """Sandbox limits: the operator's ceiling. A submitter may only tighten them."""

    model_config = _STRICT

    runtime: Runtime = "runc"
    timeout_seconds: float = Field(default=60.0, gt=0)
    memory_mb: int = Field(default=512, gt=0)
    pids: int = Field(default=128, gt=0)
    cpus: float = Field(default=1.0, gt=0)
    output_kb: int = Field(default=256, gt=0)
    work_disk_mb: int = Field(default=64, gt=0)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024

    @property
    def output_bytes(self) -> int:
        return self.output_kb * 1024

    @property
    def work_disk_bytes(self) -> int:
        return self.work_disk_mb * 1024 * 1024


def _request_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in Limits.model_fields.items():
        inner: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[name] = (inner | None, None)
    return fields


#: ``[sandbox]`` in ``skill.toml``: every field of :class:`Limits`, optional (None: not asked)
LimitsRequest: type[BaseModel] = create_model(
    "LimitsRequest",
    __config__=_STRICT,
    __doc__=(
        "What a submitter asks for: a submitter may only ask for *more* safety. Values are "
        "validated here; :func:`sandgate.policy.effective_limits` clamps them to the policy."
    ),
    **_request_fields(),
)
