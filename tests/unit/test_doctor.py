"""Doctor and image logic with fake engines (fast). The real engine is in tests/integration."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.errors import ImageNotFound

from sandgate.config import Settings
from sandgate.errors import ConfigError, EngineUnavailable, ImageMissing
from sandgate.sandbox import doctor, image


class FakeImages:
    def __init__(self, images: dict[str, dict]) -> None:
        self._images = images

    def get(self, tag: str):
        if tag not in self._images:
            raise ImageNotFound(f"no such image: {tag}")
        attrs = self._images[tag]
        return type("Image", (), {"id": attrs["Id"], "attrs": attrs})()


class FakeClient:
    def __init__(self, runtimes=("runc", "runsc"), images=None, seccomp=True) -> None:
        self._runtimes = runtimes
        self._seccomp = seccomp
        self.images = FakeImages(images or {})

    def info(self):
        return {
            "Runtimes": {name: {} for name in self._runtimes},
            "DefaultRuntime": "runc",
            "CgroupVersion": "2",
            "SecurityOptions": ["name=seccomp,profile=default"] if self._seccomp else [],
            "Architecture": "x86_64",
        }

    def version(self):
        return {"Version": "27.0.0", "ApiVersion": "1.46"}


def good_image(settings: Settings, definition: str | None = None) -> dict[str, dict]:
    return {settings.image: {
        "Id": "sha256:" + "ab" * 32,
        "Size": 400_000_000,
        "Config": {"Labels": {
            "sandgate.harness_protocol": str(image._protocol()),
            "sandgate.definition_hash": definition or image.definition_hash(),
            "sandgate.toolchain.python": "3.11.2",
            "sandgate.toolchain.pytest": "9.0.3",
        }},
    }}


def checks(diagnosis: doctor.Diagnosis) -> dict[str, doctor.Check]:
    return {c.name: c for c in diagnosis.checks}


def test_no_engine_is_not_ready_and_says_how_to_start_one() -> None:
    def down(_settings):
        raise EngineUnavailable("no Docker engine answers (connection refused); start a Docker engine")

    result = doctor.diagnose(Settings(), connect=down)
    assert not result.ready
    assert not checks(result)["engine"].ok
    assert "no Docker engine answers" in checks(result)["engine"].detail
    assert result.to_dict()["ready"] is False


def test_image_missing_is_not_ready_and_names_the_build_command() -> None:
    result = doctor.diagnose(Settings(), connect=lambda _s: FakeClient(images={}))
    assert checks(result)["engine"].ok
    assert not result.ready
    assert "sandgate image build" in checks(result)["image"].detail


def test_ready_with_image_reports_toolchain_versions() -> None:
    settings = Settings()
    result = doctor.diagnose(settings, connect=lambda _s: FakeClient(images=good_image(settings)))
    assert result.ready
    assert "pytest 9.0.3" in checks(result)["image"].detail
    assert result.image["toolchain"]["python"] == "3.11.2"
    assert checks(result)["image up to date"].ok


def test_runsc_absent_is_a_warning_not_a_blocker() -> None:
    settings = Settings()
    result = doctor.diagnose(settings, connect=lambda _s: FakeClient(runtimes=("runc",), images=good_image(settings)))
    runsc = checks(result)["runtime runsc (gVisor)"]
    assert not runsc.ok and not runsc.required
    assert "missing" in runsc.detail
    assert result.ready


def test_stale_image_is_flagged() -> None:
    settings = Settings()
    result = doctor.diagnose(settings, connect=lambda _s: FakeClient(images=good_image(settings, "sha256:old")))
    assert not checks(result)["image up to date"].ok
    assert result.ready  # still usable


def test_require_image_missing_and_protocol_mismatch() -> None:
    settings = Settings()
    with pytest.raises(ImageMissing, match="sandgate image build"):
        image.require_image(FakeClient(images={}), settings.image)
    stale = good_image(settings)
    stale[settings.image]["Config"]["Labels"]["sandgate.harness_protocol"] = "0"
    with pytest.raises(ImageMissing, match="protocol 0"):
        image.require_image(FakeClient(images=stale), settings.image)


def test_pinned_requirements_are_exact_pins(tmp_path: Path) -> None:
    pins = image.pinned_requirements()
    assert {"pytest", "coverage", "semgrep", "pip"} <= set(pins)
    loose = tmp_path / "requirements.txt"
    loose.write_text("pytest>=8\n")
    with pytest.raises(ConfigError, match="not an exact pin"):
        image.pinned_requirements(loose)


def test_definition_hash_follows_the_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "sandbox_images"
    shutil.copytree(image.images_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(image, "images_dir", lambda: copy)
    before = image.definition_hash()
    assert before == image.definition_hash()
    (copy / "harness" / "sandgate_harness" / "runner.py").write_text("# changed\n", encoding="utf-8")
    assert image.definition_hash() != before


def test_existing_base_is_reused_and_a_named_base_is_taken_as_is() -> None:
    said: list[str] = []
    client = FakeClient(images={image.DEFAULT_BASE: {"Id": "sha256:" + "cd" * 32, "Config": {}}})
    assert image._ensure_base(client, None, said.append) == image.DEFAULT_BASE
    assert any("reusing" in s for s in said)
    assert image._ensure_base(client, "python:3.11-slim", said.append) == "python:3.11-slim"
