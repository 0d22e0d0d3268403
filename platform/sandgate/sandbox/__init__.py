"""The sandbox: the only code in sandgate that imports ``docker``.

One ephemeral container per evaluation, hardened by default (see
:func:`sandgate.sandbox.docker_backend.hardened_host_config`), labelled
``sandgate.managed=true`` and always removed.
"""

from sandgate.sandbox.engine import EngineInfo, connect, engine_info
from sandgate.sandbox.image import ImageInfo, build_image, inspect_image, require_image
from sandgate.sandbox.runner import (
    EVALUATION_LABEL,
    MANAGED_LABEL,
    SandboxRun,
    harness_args,
    make_payload,
    reap,
    run_sandbox,
)

__all__ = [
    "EVALUATION_LABEL",
    "MANAGED_LABEL",
    "EngineInfo",
    "ImageInfo",
    "SandboxRun",
    "build_image",
    "connect",
    "engine_info",
    "harness_args",
    "inspect_image",
    "make_payload",
    "reap",
    "require_image",
    "run_sandbox",
]
