"""``sandgate doctor``: is this machine ready to evaluate skills? Pure reporting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sandgate.config import Settings, describe_store, get_settings
from sandgate.errors import EngineUnavailable, InfrastructureError
from sandgate.sandbox.docker_backend import as_backend
from sandgate.sandbox.engine import connect as default_connect
from sandgate.sandbox.image import definition_hash, inspect_image

__all__ = ["Check", "Diagnosis", "diagnose"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: a failed optional check is a warning, not a blocker
    required: bool = True


@dataclass
class Diagnosis:
    checks: list[Check] = field(default_factory=list)
    engine: dict[str, Any] | None = None
    image: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "checks": [asdict(c) for c in self.checks],
                "engine": self.engine, "image": self.image}


def diagnose(settings: Settings | None = None, *, connect: Callable[..., Any] | None = None) -> Diagnosis:
    settings = settings or get_settings()
    connect = connect or default_connect
    diagnosis = Diagnosis()
    store, exists = describe_store(settings)
    diagnosis.checks.append(Check("store", exists, store, required=False))
    try:
        client = connect(settings)
        info = as_backend(client).info()
    except EngineUnavailable as exc:
        diagnosis.checks.append(Check("engine", False, str(exc)))
        diagnosis.checks.append(Check("image", False, "not checked: no engine"))
        return diagnosis
    diagnosis.engine = asdict(info)
    diagnosis.checks.append(Check("engine", True, f"Docker {info.version} (API {info.api_version}), "
                                                  f"cgroup v{info.cgroup_version or '?'}"))
    diagnosis.checks.append(Check("runtime runc", "runc" in info.runtimes,
                                  "available" if "runc" in info.runtimes else "missing"))
    has_runsc = "runsc" in info.runtimes
    diagnosis.checks.append(Check(
        "runtime runsc (gVisor)", has_runsc,
        "available" if has_runsc else "missing: policies that ask for runsc will end in verdict error "
        "(install runsc and register it in /etc/docker/daemon.json, see sandbox_images/engine.sh)",
        required=False))
    seccomp = any("seccomp" in opt for opt in info.security_options)
    diagnosis.checks.append(Check("seccomp", seccomp, "default profile" if seccomp else
                                  "the engine reports no seccomp support", required=False))
    try:
        image = inspect_image(client, settings.image)
    except InfrastructureError as exc:
        diagnosis.checks.append(Check("image", False, str(exc)))
        return diagnosis
    if image is None:
        diagnosis.checks.append(Check("image", False, f"{settings.image} is missing: run `sandgate image build`"))
        return diagnosis
    diagnosis.image = {"tag": image.tag, "id": image.id, "size_bytes": image.size_bytes,
                       "toolchain": image.toolchain, "definition_hash": image.definition_hash}
    tools = ", ".join(f"{k} {v}" for k, v in sorted(image.toolchain.items()))
    diagnosis.checks.append(Check("image", True, f"{image.tag} {image.id[7:19]} "
                                                 f"({image.size_bytes / 1e6:.0f} MB): {tools}"))
    current = definition_hash()
    fresh = image.definition_hash == current
    diagnosis.checks.append(Check(
        "image up to date", fresh,
        "matches sandbox_images/" if fresh else
        "built from an older definition: run `sandgate image build` to refresh", required=False))
    return diagnosis
