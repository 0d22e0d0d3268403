"""The sandbox image ``sandgate-python``: offline build, labels, inspection.

No registry is needed: the base is reused when present, else built with
debootstrap and ``docker import`` (``sandbox_images/build_base.sh``); the
toolchain is installed from a wheelhouse that the host downloads, with the
build's network off. Labels record the toolchain versions and a hash of the
image definition and harness, so a stale image is detected.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import BuildError, DockerException, ImageNotFound

from sandgate.config import Settings, get_settings, project_root, rules_files
from sandgate.errors import ConfigError, ImageMissing, InfrastructureError
from sandgate.sandbox.engine import connect, engine_info

__all__ = [
    "DEFAULT_BASE",
    "ImageInfo",
    "build_image",
    "definition_hash",
    "inspect_image",
    "pinned_requirements",
    "require_image",
]

DEFAULT_BASE = "sandgate-base:bookworm"
LABEL_PREFIX = "sandgate."
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)$")


def images_dir() -> Path:
    return project_root() / "sandbox_images"


@dataclass(frozen=True)
class ImageInfo:
    tag: str
    id: str
    size_bytes: int
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def toolchain(self) -> dict[str, str]:
        prefix = LABEL_PREFIX + "toolchain."
        return {k[len(prefix):]: v for k, v in self.labels.items() if k.startswith(prefix)}

    @property
    def definition_hash(self) -> str | None:
        return self.labels.get(LABEL_PREFIX + "definition_hash")

    @property
    def protocol(self) -> int | None:
        value = self.labels.get(LABEL_PREFIX + "harness_protocol")
        return int(value) if value and value.isdigit() else None


def pinned_requirements(path: Path | None = None) -> dict[str, str]:
    """name → version of every pin in the image's requirements file."""
    path = path or images_dir() / "python" / "requirements.txt"
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            raise ConfigError(f"{path}: {raw!r} is not an exact pin (name==version)")
        pins[match.group(1).lower()] = match.group(2)
    return pins


def definition_hash() -> str:
    """sha256 of everything that goes into the image (Dockerfile, pins, harness)."""
    root = images_dir()
    digest = hashlib.sha256()
    paths = [root / "python" / "Dockerfile", root / "python" / "requirements.txt"]
    paths += sorted(p for p in (root / "harness").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


def inspect_image(client: docker.DockerClient, tag: str) -> ImageInfo | None:
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return None
    except DockerException as exc:
        raise InfrastructureError(f"could not inspect image {tag}: {exc}") from exc
    attrs = image.attrs
    return ImageInfo(
        tag=tag,
        id=image.id,
        size_bytes=int(attrs.get("Size", 0)),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
    )


def _protocol() -> int:
    text = (images_dir() / "harness" / "sandgate_harness" / "__init__.py").read_text()
    match = re.search(r"^PROTOCOL = (\d+)$", text, re.M)
    if not match:
        raise ConfigError("sandbox_images/harness/sandgate_harness/__init__.py has no PROTOCOL")
    return int(match.group(1))


_checked: dict[tuple[int, str], tuple[float, ImageInfo]] = {}
#: how long a successful image check is reused (a removed image still fails loudly:
#: creating the sandbox then reports it)
IMAGE_CHECK_TTL = 30.0


def require_image(client: docker.DockerClient, tag: str) -> ImageInfo:
    """The image, or :class:`ImageMissing` saying how to build it (cached briefly when present)."""
    now = time.monotonic()
    cached = _checked.get((id(client), tag))
    if cached is not None and now - cached[0] < IMAGE_CHECK_TTL:
        return cached[1]
    info = _require_image(client, tag)
    _checked[(id(client), tag)] = (now, info)
    return info


def _require_image(client: docker.DockerClient, tag: str) -> ImageInfo:
    info = inspect_image(client, tag)
    if info is None:
        raise ImageMissing(f"the sandbox image {tag} does not exist; build it with `sandgate image build`")
    if info.protocol != _protocol():
        raise ImageMissing(
            f"the sandbox image {tag} speaks harness protocol {info.protocol}, this controller "
            f"speaks {_protocol()}; rebuild it with `sandgate image build`"
        )
    return info


def _base_python(client: docker.DockerClient, base: str) -> str:
    try:
        out = client.containers.run(
            base, ["python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            remove=True, network_mode="none", stdout=True, stderr=True,
        )
    except DockerException as exc:
        raise InfrastructureError(f"the base image {base} has no working python3: {exc}") from exc
    return out.decode().strip()


def _ensure_base(client: docker.DockerClient, base: str | None, say: Callable[[str], None]) -> str:
    if base is not None:
        return base  # a user-named base: the engine pulls it if it is not local
    if inspect_image(client, DEFAULT_BASE) is not None:
        say(f"base: reusing {DEFAULT_BASE}")
        return DEFAULT_BASE
    say(f"base: building {DEFAULT_BASE} offline with debootstrap (about a minute)")
    script = images_dir() / "build_base.sh"
    proc = subprocess.run(["bash", str(script), DEFAULT_BASE], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfrastructureError(
            f"building the base image failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return DEFAULT_BASE


def _wheel_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(wheelhouse: Path, name: str, version: str) -> Path | None:
    stem = f"{_wheel_name(name)}-{version}-"
    for path in wheelhouse.glob("*.whl"):
        if path.name.lower().startswith(stem.lower()):
            return path
    return None


def _ensure_wheelhouse(
    wheelhouse: Path, pins: dict[str, str], python: str, arch: str, say: Callable[[str], None]
) -> list[Path]:
    wheelhouse.mkdir(parents=True, exist_ok=True)
    missing = [f"{n}=={v}" for n, v in pins.items() if _find_wheel(wheelhouse, n, v) is None]
    if missing:
        say(f"wheelhouse: downloading {len(missing)} wheels for Python {python} ({arch})")
        major_minor = "".join(python.split(".")[:2])
        machine = {"aarch64": "aarch64", "arm64": "aarch64"}.get(arch, "x86_64")
        platforms = [f"manylinux_2_{m}_{machine}" for m in range(17, 37)]
        platforms += [f"manylinux2014_{machine}", f"manylinux1_{machine}"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(wheelhouse),
               "--python-version", major_minor, "--implementation", "cp"]
        for platform in platforms:
            cmd += ["--platform", platform]
        proc = subprocess.run(cmd + missing, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise InfrastructureError(f"downloading wheels failed: {proc.stderr.strip()[-2000:]}")
    else:
        say("wheelhouse: all wheels present")
    wheels = []
    for name, version in pins.items():
        wheel = _find_wheel(wheelhouse, name, version)
        if wheel is None:
            raise InfrastructureError(f"wheelhouse: no wheel for {name}=={version} after download")
        wheels.append(wheel)
    return wheels


def build_image(
    *,
    settings: Settings | None = None,
    client: docker.DockerClient | None = None,
    tag: str | None = None,
    base: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> ImageInfo:
    """Build (or refresh, cached) the sandbox image. Never needs a registry."""
    settings = settings or get_settings()
    client = client or connect(settings)
    tag = tag or settings.image
    started = time.monotonic()
    base_image = _ensure_base(client, base, say)
    python = _base_python(client, base_image)
    pins = pinned_requirements()
    wheels = _ensure_wheelhouse(settings.home / "wheelhouse", pins, python,
                                engine_info(client).architecture, say)
    labels = {
        LABEL_PREFIX + "managed_image": "true",
        LABEL_PREFIX + "base": base_image,
        LABEL_PREFIX + "definition_hash": definition_hash(),
        LABEL_PREFIX + "harness_protocol": str(_protocol()),
        LABEL_PREFIX + "toolchain.python": python,
        **{f"{LABEL_PREFIX}toolchain.{name}": version for name, version in pins.items()
           if name in {"pytest", "coverage", "semgrep"}},
    }
    with tempfile.TemporaryDirectory(prefix="sandgate-build-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(images_dir() / "python" / "Dockerfile", ctx / "Dockerfile")
        (ctx / "wheelhouse").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, ctx / "wheelhouse" / wheel.name)  # copy2 keeps mtimes: cache hits
        shutil.copy2(images_dir() / "python" / "requirements.txt", ctx / "wheelhouse" / "requirements.txt")
        shutil.copytree(images_dir() / "harness", ctx / "harness",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # the platform's rules, baked for the prestarted engine (not in the definition hash: a
        # rule edit without a rebuild only sends evaluations down the cold scan)
        (ctx / "rules").mkdir()
        for name, data in rules_files(settings.policies_dir / "semgrep").items():  # as evaluations send them
            (ctx / "rules" / name).write_bytes(data)
        say(f"build: {tag} from {base_image} (network off)")
        try:
            image, _logs = client.images.build(
                path=str(ctx), tag=tag, buildargs={"BASE": base_image}, network_mode="none",
                labels=labels, rm=True, forcerm=True, pull=False,
            )
        except BuildError as exc:
            lines = [str(c.get("stream", c.get("error", ""))).rstrip() for c in exc.build_log]
            tail = "\n".join(line for line in lines if line)[-3000:]
            raise InfrastructureError(f"image build failed: {exc.msg}\n{tail}") from exc
        except DockerException as exc:
            raise InfrastructureError(f"image build failed: {exc}") from exc
    info = inspect_image(client, tag)
    assert info is not None
    say(f"build: {tag} ready ({info.size_bytes / 1e6:.0f} MB) in {time.monotonic() - started:.1f}s")
    return info
