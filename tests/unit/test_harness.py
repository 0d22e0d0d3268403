"""The in-container harness's pure parts, run on the host (the image runs the same code)."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox_images" / "harness"))

from sandgate_harness.__main__ import parse_frames  # noqa: E402
from sandgate_harness.payload import PayloadError, read_payload, write_tree  # noqa: E402
from sandgate_harness.runner import frame  # noqa: E402
from sandgate_harness.static import _finding, semgrep_command  # noqa: E402

KEY = b"k" * 32


def test_authentic_frame_is_accepted() -> None:
    result, problem = parse_frames(KEY, frame(KEY, b'{"collected": 3}'))
    assert result == {"collected": 3} and problem is None


def test_forged_frame_is_refused_even_after_an_authentic_one() -> None:
    data = frame(KEY, b'{"collected": 1}') + frame(b"x" * 32, b'{"collected": 99}')
    result, problem = parse_frames(KEY, data)
    assert "forged" in problem


def test_junk_and_cut_frames_are_problems() -> None:
    assert "not a result frame" in parse_frames(KEY, b"hello world" * 10)[1]
    assert "cut short" in parse_frames(KEY, frame(KEY, b'{"a": 1}')[:-2])[1]
    assert parse_frames(KEY, b"") == (None, "the test process exited without reporting results")


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            payload = (data or {}).get(info.name, b"")
            info.size = len(payload) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    buf.seek(0)
    return buf


def test_payload_reads_regular_files() -> None:
    info = tarfile.TarInfo("skill/mod.py")
    assert read_payload(_tar([info], {"skill/mod.py": b"x = 1\n"})) == {"skill/mod.py": b"x = 1\n"}


@pytest.mark.parametrize("name,kind", [
    ("skill/link.py", tarfile.SYMTYPE),
    ("skill/hard.py", tarfile.LNKTYPE),
    ("skill/dev", tarfile.CHRTYPE),
    ("/etc/passwd", tarfile.REGTYPE),
    ("skill/../../evil.py", tarfile.REGTYPE),
])
def test_payload_refuses_links_devices_and_escapes(name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    with pytest.raises(PayloadError):
        read_payload(_tar([info]))


def test_write_tree_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "mod.py")
    with pytest.raises(OSError):
        write_tree(str(root), {"mod.py": b"pwned"})
    assert not outside.exists()


def test_semgrep_does_not_honour_nosemgrep_or_ignore_files() -> None:
    command = semgrep_command("/work/rules", ["a.py"])
    assert "--disable-nosem" in command and "--x-ignore-semgrepignore-files" in command
    assert command[-1] == "a.py"  # explicit targets: tests/ is scanned too


def test_finding_takes_our_severity_and_strips_the_rule_path() -> None:
    finding = _finding({"check_id": "work.rules.no-subprocess", "path": "mod.py", "start": {"line": 3},
                        "extra": {"message": " m ", "severity": "WARNING", "metadata": {"severity": "critical"}}})
    assert finding == {"rule_id": "no-subprocess", "severity": "critical", "path": "mod.py", "line": 3,
                       "message": "m"}
    fallback = _finding({"check_id": "x", "extra": {"severity": "WARNING"}})
    assert fallback["severity"] == "medium"


def test_a_target_semgrep_did_not_scan_or_failed_on_is_a_critical_finding() -> None:
    from sandgate_harness.static import _unscanned

    findings = _unscanned(["a.py", "b.py", "tests/test_a.py"], ["a.py", "./tests/test_a.py"],
                          [{"path": "tests/test_a.py", "type": ["Timeout", "x"], "message": "t"}])
    assert [(f["rule_id"], f["severity"], f["path"]) for f in findings] == [
        ("static-scan-incomplete", "critical", "b.py"),
        ("static-scan-incomplete", "critical", "tests/test_a.py"),
    ]
    assert "did not scan" in findings[0]["message"] and "Timeout" in findings[1]["message"]
    assert _unscanned(["a.py"], ["a.py"], [{"message": "a rule file warning"}]) == []


def test_semgrep_gets_an_explicit_target_size_above_intakes_cap() -> None:
    from sandgate_harness.static import MAX_TARGET_BYTES

    from sandgate.submission import IntakeLimits

    assert f"--max-target-bytes={MAX_TARGET_BYTES}" in semgrep_command("/r", ["a.py"])
    assert MAX_TARGET_BYTES > IntakeLimits().max_py_bytes
