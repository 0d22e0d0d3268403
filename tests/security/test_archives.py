"""Hostile archives: each is built here, in tmp_path, and must be refused at intake.

Nothing is extracted to disk by intake; these tests check that the refusal is
for the right reason (code and message), and that bombs are refused without
being inflated (time and traced memory stay small).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandgate.errors import SubmissionError
from sandgate.submission import IntakeLimits, load_submission

MANIFEST = b'name = "greet"\nentrypoint = "greet:hello"\n'
MODULE = b"def hello():\n    return 'hello'\n"
TEST = b"from greet import hello\n\n\ndef test_hello():\n    assert hello() == 'hello'\n"
SKILL = {"skill.toml": MANIFEST, "greet.py": MODULE, "tests/test_greet.py": TEST}

GiB = 1 << 30
MiB = 1 << 20


# --------------------------------------------------------------------------- builders


def tar_member(name: str, data: bytes = b"", *, type: bytes = tarfile.REGTYPE,
               linkname: str = "", size: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type, linkname
    info.size = len(data) if size is None else size
    return info, data


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], *, gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def skill_tar(path: Path, *extra: tuple[tarfile.TarInfo, bytes], gz: bool = True) -> Path:
    return write_tar(path, [tar_member(n, d) for n, d in SKILL.items()] + list(extra), gz=gz)


def write_zip(path: Path, files: Mapping[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@dataclass
class RawMember:
    """A zip member written byte by byte, so that any field can lie."""

    name: bytes
    payload: bytes  # as stored (compressed for method 8)
    size: int  # declared uncompressed size
    crc: int
    method: int = zipfile.ZIP_DEFLATED
    flags: int = 0
    mode: int = 0o100644


def raw_member(name: str, data: bytes, **changes: object) -> RawMember:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    member = RawMember(name.encode(), packer.compress(data) + packer.flush(), len(data),
                       zlib.crc32(data), flags=0x800)
    for key, value in changes.items():
        setattr(member, key, value)
    return member


def write_raw_zip(path: Path, members: list[RawMember]) -> Path:
    """A minimal, valid-structure zip (no zip64) from raw members."""
    local, central = bytearray(), bytearray()
    for m in members:
        offset = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, m.flags, m.method, 0, 33,
                             m.crc, len(m.payload), m.size, len(m.name), 0)
        local += m.name + m.payload
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", (3 << 8) | 20, 20, m.flags, m.method,
                               0, 33, m.crc, len(m.payload), m.size, len(m.name), 0, 0, 0, 0,
                               (m.mode << 16) & 0xFFFFFFFF, offset)
        central += m.name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def skill_raw_members() -> list[RawMember]:
    return [raw_member(name, data) for name, data in SKILL.items()]


def deflated_zeros(total: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """Raw deflate of ``prefix`` + ``total`` zero bytes, and its CRC, without compressing it all.

    After a full flush the compressor's state is reset, so the compressed form
    of each further MiB of zeros is the same bytes: build one and repeat it.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(MiB)
    block = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    assert packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH) == block
    tail = packer.flush(zlib.Z_FINISH)
    assert total % MiB == 0
    crc = zlib.crc32(prefix)
    for _ in range(total // MiB):
        crc = zlib.crc32(zeros, crc)
    return head + block * (total // MiB) + tail, crc


def gzip_wrap(deflated: bytes, crc: int, size: int) -> bytes:
    header = b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + b"\x02\xff"
    return header + deflated + struct.pack("<LL", crc, size & 0xFFFFFFFF)


def refused(path: Path, **kwargs: object) -> SubmissionError:
    with pytest.raises(SubmissionError) as info:
        load_submission(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == "invalid_submission"
    return info.value


def refused_small_and_fast(
    path: Path, *, seconds: float = 2.0, peak: int = 50 * MiB
) -> SubmissionError:
    """Refused within ``seconds`` and with a traced memory peak below ``peak``."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        err = refused(path)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"took {elapsed:.2f}s"
    assert traced_peak < peak, f"traced peak {traced_peak / MiB:.1f} MiB"
    return err


# --------------------------------------------------------------------------- sanity


def test_the_builders_make_valid_skills(tmp_path: Path) -> None:
    assert load_submission(skill_tar(tmp_path / "s.tgz")).name == "greet"
    assert load_submission(skill_tar(tmp_path / "s.tar", gz=False)).name == "greet"
    assert load_submission(write_zip(tmp_path / "s.zip", SKILL)).name == "greet"
    assert load_submission(write_raw_zip(tmp_path / "r.zip", skill_raw_members())).name == "greet"


# --------------------------------------------------------------------------- links and devices


@pytest.mark.parametrize(
    ("member", "what"),
    [
        (tar_member("sparse.txt", type=tarfile.GNUTYPE_SPARSE), "a sparse file"),
        (tar_member("odd.txt", type=b"Z"), "of unsupported type b'Z'"),
        (tar_member("evil.py", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "a symbolic link"),
        (tar_member("data/x.txt", type=tarfile.SYMTYPE, linkname="../../x"), "a symbolic link"),
        (tar_member("evil.py", type=tarfile.LNKTYPE, linkname="greet.py"), "a hard link"),
        (tar_member("dev.txt", type=tarfile.CHRTYPE), "a device"),
        (tar_member("disk.txt", type=tarfile.BLKTYPE), "a device"),
        (tar_member("pipe.txt", type=tarfile.FIFOTYPE), "a FIFO"),
    ],
    ids=["sparse", "unknown", "symlink", "symlink-up", "hardlink", "chardev", "blockdev", "fifo"],
)
def test_tar_links_and_devices(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], what: str
) -> None:
    err = refused(skill_tar(tmp_path / "s.tgz", member))
    expected = f"archive member {member[0].name!r} is {what}; only regular files are accepted"
    assert str(err) == expected


def test_zip_symlink(tmp_path: Path) -> None:
    members = [*skill_raw_members(), raw_member("link.py", b"/etc/passwd", mode=0o120777)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "archive member 'link.py' is a symbolic link" in str(err)


@pytest.mark.parametrize("mode", [0o020644, 0o060644, 0o010644, 0o140644])
def test_zip_special_files(tmp_path: Path, mode: int) -> None:
    members = [*skill_raw_members(), raw_member("odd.txt", b"", mode=mode)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "archive member 'odd.txt' is a device, FIFO or socket" in str(err)


def test_zip_directory_entry_with_content(tmp_path: Path) -> None:
    members = [*skill_raw_members(), raw_member("data/", b"hidden payload", mode=0o040755)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "archive member 'data/' is a directory with content" in str(err)


def test_directory_with_a_fifo_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for name, data in SKILL.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.mkfifo(root / "pipe.txt")
    err = refused(root)
    assert "'pipe.txt' is not a regular file" in str(err)


def test_directory_symlink_to_a_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    root = tmp_path / "s"
    for name, data in SKILL.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "data.txt").symlink_to(secret)
    assert "'data.txt' is a symbolic link" in str(refused(root))


# --------------------------------------------------------------------------- zip slip


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.py", "has a '..' component (path traversal)"),
        ("tests/../../evil.py", "has a '..' component (path traversal)"),
        ("/tmp/evil.py", "is an absolute path"),
        ("C:/evil.py", "is an absolute path"),
        ("..\\evil.py", "contains a backslash"),
    ],
)
@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip"])
def test_zip_slip(tmp_path: Path, name: str, problem: str, fmt: str) -> None:
    if fmt == "zip":
        members = [*skill_raw_members(), raw_member(name, b"x = 1\n")]
        path = write_raw_zip(tmp_path / "s.zip", members)
    else:
        path = skill_tar(tmp_path / f"s.{fmt}", tar_member(name, b"x = 1\n"), gz=fmt == "tar.gz")
    err = refused(path)
    assert str(err).startswith(f"file name {name!r} {problem}")
    assert not (tmp_path.parent / "evil.py").exists() and not Path("/tmp/evil.py").exists()


# --------------------------------------------------------------------------- bombs


def test_zip_bomb_declaring_its_size(tmp_path: Path) -> None:
    payload, crc = deflated_zeros(GiB)
    assert len(payload) < 2 * MiB
    members = [*skill_raw_members(), RawMember(b"bomb.txt", payload, GiB, crc, flags=0x800)]
    err = refused_small_and_fast(write_raw_zip(tmp_path / "bomb.zip", members))
    assert "'bomb.txt' declares more than 256 KiB, the limit for data files" in str(err)


def test_zip_bomb_lying_about_its_size(tmp_path: Path) -> None:
    """The directory says 100 KiB; the data inflates to 1 GiB: never inflated past 100 KiB."""
    payload, crc = deflated_zeros(GiB)
    members = [*skill_raw_members(), RawMember(b"bomb.txt", payload, 100 * 1024, crc, flags=0x800)]
    err = refused_small_and_fast(write_raw_zip(tmp_path / "bomb.zip", members))
    assert "the zip archive is corrupt" in str(err) and "CRC" in str(err)


def test_zip_bomb_within_the_size_limit_but_high_ratio(tmp_path: Path) -> None:
    data = bytes(1000 * 1024)  # under the 1 MiB .py cap, ~1000:1
    members = [*skill_raw_members(), raw_member("big.py", data)]
    err = refused_small_and_fast(write_raw_zip(tmp_path / "bomb.zip", members))
    assert "member 'big.py' has a compression ratio above 100:1 (a decompression bomb?)" in str(err)


def test_zip_many_small_members_add_up(tmp_path: Path) -> None:
    """Each member under the grace size; the archive as a whole is a bomb."""
    data = bytes(60 * 1024)
    members = [*skill_raw_members()] + [raw_member(f"data/{i}.txt", data) for i in range(150)]
    err = refused_small_and_fast(write_raw_zip(tmp_path / "bomb.zip", members))
    assert "the archive has a compression ratio above 100:1" in str(err)


def test_tar_gz_bomb_declaring_its_size(tmp_path: Path) -> None:
    header = tarfile.TarInfo("bomb.py")
    header.size = GiB
    deflated, crc = deflated_zeros(GiB, prefix=header.tobuf(format=tarfile.USTAR_FORMAT))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip_wrap(deflated, crc, GiB + 512))
    err = refused_small_and_fast(path)
    assert "'bomb.py' declares more than 1 MiB, the limit for Python files" in str(err)


def test_tar_gz_bomb_within_the_size_limit(tmp_path: Path) -> None:
    header = tarfile.TarInfo("big.py")
    header.size = MiB - 512
    deflated, crc = deflated_zeros(MiB, prefix=header.tobuf(format=tarfile.USTAR_FORMAT))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip_wrap(deflated, crc, MiB + 512))
    err = refused_small_and_fast(path)
    assert "the archive has a compression ratio above 100:1" in str(err)


def test_tar_gz_bomb_in_a_pax_header(tmp_path: Path) -> None:
    """A 1 GiB extended header: tarfile would read it whole; the stream guard stops it."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, GiB
    deflated, crc = deflated_zeros(GiB, prefix=header.tobuf(format=tarfile.USTAR_FORMAT))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip_wrap(deflated, crc, GiB + 512))
    err = refused_small_and_fast(path, peak=2 * MiB)
    assert "the archive's headers and padding unpack to far more than its files" in str(err)


def test_tar_gz_bomb_in_a_gnu_long_name(tmp_path: Path) -> None:
    """A 1 GiB GNU long-name record: tarfile would read it whole; the stream guard stops it."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, GiB
    deflated, crc = deflated_zeros(GiB, prefix=header.tobuf(format=tarfile.USTAR_FORMAT))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip_wrap(deflated, crc, GiB + 512))
    err = refused_small_and_fast(path, peak=2 * MiB)
    assert "headers and padding unpack to far more than its files" in str(err)


def test_many_small_files_compress_well_and_are_fine(tmp_path: Path) -> None:
    """Tar headers compress extremely well; they do not count towards the ratio."""
    files = [tar_member(f"data/{i}.txt", b"x") for i in range(190)]
    sub = load_submission(skill_tar(tmp_path / "s.tgz", *files))
    assert len(sub.files) == 193


def test_ratio_check_is_configurable(tmp_path: Path) -> None:
    path = skill_tar(tmp_path / "s.tgz", tar_member("data/z.txt", bytes(200 * 1024)))
    assert "compression ratio above" in str(refused(path))
    assert load_submission(path, limits=IntakeLimits(max_ratio=10_000)).name == "greet"


# --------------------------------------------------------------------------- oversized


def test_too_many_tar_members(tmp_path: Path) -> None:
    dirs = [tar_member(f"d{i}", type=tarfile.DIRTYPE) for i in range(1001)]
    err = refused_small_and_fast(skill_tar(tmp_path / "s.tgz", *dirs))
    assert "the archive has more than 1000 members" in str(err)


def test_too_many_zip_members(tmp_path: Path) -> None:
    dirs = [raw_member(f"d{i}/", b"", mode=0o040755) for i in range(1001)]
    members = [*skill_raw_members(), *dirs]
    err = refused_small_and_fast(write_raw_zip(tmp_path / "s.zip", members))
    assert "the archive has more than 1000 members" in str(err)


def test_zip_end_record_lying_about_its_member_count(tmp_path: Path) -> None:
    """The end record says 3; the central directory holds 1003: counted again after parsing."""
    dirs = [raw_member(f"d{i}/", b"", mode=0o040755) for i in range(1000)]
    path = write_raw_zip(tmp_path / "s.zip", [*skill_raw_members(), *dirs])
    data = bytearray(path.read_bytes())
    struct.pack_into("<HH", data, len(data) - 22 + 8, 3, 3)
    path.write_bytes(bytes(data))
    assert "the archive has more than 1000 members" in str(refused_small_and_fast(path))


def test_zip64_end_record_member_count(tmp_path: Path) -> None:
    """A zip64 end record claiming 10 million members is refused before zipfile parses it."""
    path = write_raw_zip(tmp_path / "s.zip", skill_raw_members())
    data = bytearray(path.read_bytes())
    end = data[-22:]
    cd_size, cd_offset = struct.unpack("<LL", end[12:20])
    zip64_at = len(data) - 22
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0,
                         10_000_000, 10_000_000, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
    classic = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF,
                          0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(bytes(data[:zip64_at]) + record + locator + classic)
    assert "the archive has more than 1000 members" in str(refused_small_and_fast(path))


def test_zip_directory_entries_are_skipped(tmp_path: Path) -> None:
    members = [raw_member("greet/", b"", mode=0o040755), raw_member("greet/tests/", b"", mode=0),
               *[raw_member(f"greet/{n}", d) for n, d in SKILL.items()]]
    sub = load_submission(write_raw_zip(tmp_path / "s.zip", members))
    assert sorted(sub.files) == sorted(SKILL)


def test_too_many_files(tmp_path: Path) -> None:
    files = [tar_member(f"data/{i}.txt", b"x") for i in range(200)]
    err = refused(skill_tar(tmp_path / "s.tgz", *files))
    assert str(err) == "the submission has more than 200 files"


def test_too_large_unpacked(tmp_path: Path) -> None:
    chunk = os.urandom(200 * 1024)  # incompressible: the ratio check does not fire first
    files = [tar_member(f"data/{i}.txt", chunk) for i in range(30)]
    err = refused(skill_tar(tmp_path / "s.tar", *files, gz=False))
    assert "the submission is larger than 5 MiB unpacked" in str(err)


def test_too_large_archive_file(tmp_path: Path) -> None:
    path = skill_tar(tmp_path / "s.tar", tar_member("data/x.txt", os.urandom(100 * 1024)), gz=False)
    err = refused(path, limits=IntakeLimits(max_archive_bytes=64 * 1024))
    assert "s.tar: the archive is larger than 64 KiB" in str(err)


def test_oversized_member_in_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", {**SKILL, "big.py": b"#" + os.urandom(MiB).hex().encode()})
    assert "'big.py' declares more than 1 MiB, the limit for Python files" in str(refused(path))


# --------------------------------------------------------------------------- zip specifics


def test_encrypted_zip(tmp_path: Path) -> None:
    members = [*skill_raw_members(), raw_member("secret.py", b"x = 1\n", flags=0x801)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "archive member 'secret.py' is encrypted" in str(err)


def test_unsupported_compression_method(tmp_path: Path) -> None:
    members = [*skill_raw_members(), raw_member("x.py", b"x = 1\n", method=zipfile.ZIP_BZIP2)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "uses compression method 12; only stored and deflated members are accepted" in str(err)


def test_stored_member_with_mismatched_sizes(tmp_path: Path) -> None:
    members = [*skill_raw_members(),
               raw_member("x.py", b"", method=zipfile.ZIP_STORED, payload=b"x = 1\n", size=3)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "'x.py' is stored uncompressed but declares 3 bytes and holds 6" in str(err)


def test_zip_member_shorter_than_declared(tmp_path: Path) -> None:
    data = b"x = 1\n"
    members = [*skill_raw_members(), raw_member("x.py", data, size=len(data) + 10)]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "archive member 'x.py' declares 16 bytes but holds 6" in str(err)


def test_zip_with_nul_in_a_name(tmp_path: Path) -> None:
    """zipfile itself truncates names at NUL; intake looks at the name as stored."""
    members = [*skill_raw_members(), raw_member("evil.py\0.txt", b"x = 1\n")]
    err = refused(write_raw_zip(tmp_path / "s.zip", members))
    assert "file name 'evil.py\\x00.txt' contains a NUL character" in str(err)


def test_zip_name_that_is_not_utf8(tmp_path: Path) -> None:
    member = raw_member("x", b"x = 1\n", flags=0)
    member.name = b"caf\xe9.py"
    err = refused(write_raw_zip(tmp_path / "s.zip", [*skill_raw_members(), member]))
    assert "is not valid UTF-8" in str(err)


def test_zip_name_in_utf8_without_the_flag(tmp_path: Path) -> None:
    member = raw_member("x", b"[]", flags=0)
    member.name = "data/caf\u00e9.json".encode()
    sub = load_submission(write_raw_zip(tmp_path / "s.zip", [*skill_raw_members(), member]))
    assert "data/caf\u00e9.json" in sub.files


def test_truncated_archives(tmp_path: Path) -> None:
    tgz = skill_tar(tmp_path / "s.tgz", tar_member("data/x.txt", os.urandom(4096)))
    tgz.write_bytes(tgz.read_bytes()[:-2000])
    assert "the archive is corrupt" in str(refused(tgz))
    zipped = write_zip(tmp_path / "s.zip", SKILL)
    zipped.write_bytes(zipped.read_bytes()[:-30])
    assert "the zip archive is corrupt" in str(refused(zipped))


def test_garbage_after_gzip_magic(tmp_path: Path) -> None:
    path = tmp_path / "s.tgz"
    path.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    assert "the archive is corrupt or not a tar archive" in str(refused(path))


def test_bzip2_tar_is_not_supported(tmp_path: Path) -> None:
    path = tmp_path / "s.tar.bz2"
    with tarfile.open(path, "w:bz2") as tar:
        info, data = tar_member("skill.toml", MANIFEST)
        tar.addfile(info, io.BytesIO(data))
    assert "not a supported submission" in str(refused(path))


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\u061c"])
def test_bidi_names_in_archives(tmp_path: Path, char: str) -> None:
    name = f"tests/test_{char}greet.py"
    path = skill_tar(tmp_path / "s.tgz", tar_member(name, TEST))
    err = refused(path)
    assert f"contains the bidirectional control character U+{ord(char):04X}" in str(err)
    zipped = write_raw_zip(tmp_path / "s.zip", [*skill_raw_members(), raw_member(name, TEST)])
    assert f"U+{ord(char):04X}" in str(refused(zipped))


def test_nul_in_a_ustar_name_ends_the_name(tmp_path: Path) -> None:
    """A ustar name field ends at its first NUL for every tar reader: the file *is* evil.py."""
    path = skill_tar(tmp_path / "s.tgz", tar_member("evil.py\0.txt", b"x = 1\n"))
    assert load_submission(path).files["evil.py"] == b"x = 1\n"


def test_nul_in_a_pax_path(tmp_path: Path) -> None:
    info, data = tar_member("evil.py", b"x = 1\n")
    info.pax_headers = {"path": "evil.py\0.txt"}
    err = refused(skill_tar(tmp_path / "s.tgz", (info, data)))
    assert "contains a NUL character" in str(err)


def test_control_character_name(tmp_path: Path) -> None:
    path = skill_tar(tmp_path / "s.tgz", tar_member("tests/test_\x1b[2Jx.py", TEST))
    assert "contains the control character U+001B" in str(refused(path))


def test_case_collision_in_zip(tmp_path: Path) -> None:
    path = write_raw_zip(tmp_path / "s.zip", [*skill_raw_members(), raw_member("GREET.py", MODULE)])
    assert "collide after case-folding" in str(refused(path))


def test_duplicate_member_in_tar(tmp_path: Path) -> None:
    """A second greet.py would silently replace the scanned one: refused."""
    path = skill_tar(tmp_path / "s.tgz", tar_member("greet.py", b"import os\n"))
    assert "'greet.py' appears twice in the submission" in str(refused(path))


def test_duplicate_member_in_zip(tmp_path: Path) -> None:
    members = [*skill_raw_members(), raw_member("greet.py", b"x = 2\n")]
    path = write_raw_zip(tmp_path / "s.zip", members)
    assert "'greet.py' appears twice in the submission" in str(refused(path))


def test_nfc_collision_in_tar(tmp_path: Path) -> None:
    path = skill_tar(tmp_path / "s.tgz", tar_member("data/caf\u00e9.txt", b"1"),
                     tar_member("data/cafe\u0301.txt", b"2"))
    assert "collide after Unicode NFC normalisation" in str(refused(path))


# --------------------------------------------------------------------------- smuggling


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tests/conftest.py", "pytest would load it as a plugin before any test runs"),
        ("conftest.py", "pytest would load it as a plugin before any test runs"),
        ("sitecustomize.py", "Python imports it automatically at interpreter start-up"),
        ("usercustomize.py", "Python imports it automatically at interpreter start-up"),
        ("evil.pth", "site .pth files run code at interpreter start-up"),
        ("pytest.ini", "test-runner configuration is the platform's"),
        ("pyproject.toml", "test-runner configuration is the platform's"),
        (".coveragerc", "coverage configuration is the platform's"),
        (".semgrepignore", "it would hide code from the static scan"),
        ("__pycache__/greet.cpython-311.pyc", "compiled bytecode is not allowed"),
        ("greet.pyc", "compiled bytecode is not allowed"),
    ],
)
@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_smuggled_configuration_and_startup_files(
    tmp_path: Path, name: str, reason: str, fmt: str
) -> None:
    content = b"import os; os.system('id')\n"
    if fmt == "zip":
        path = write_zip(tmp_path / "s.zip", {**SKILL, name: content})
    else:
        path = skill_tar(tmp_path / "s.tgz", tar_member(name, content))
    err = refused(path)
    assert str(err).startswith(f"{name!r}: ") and reason in str(err)
    assert err.path == name


@pytest.mark.parametrize(
    ("name", "module", "kind"),
    [
        ("pytest.py", "pytest", "of the test toolchain"),
        ("json.py", "json", "standard-library module"),
        ("coverage/__init__.py", "coverage", "of the test toolchain"),
        ("_pytest/__init__.py", "_pytest", "of the test toolchain"),
        ("sandgate_harness/__init__.py", "sandgate_harness", "of the test toolchain"),
        ("os.py", "os", "standard-library module"),
    ],
)
def test_module_shadowing_in_archives(tmp_path: Path, name: str, module: str, kind: str) -> None:
    path = skill_tar(tmp_path / "s.tgz", tar_member(name, b"raise SystemExit\n"))
    err = refused(path)
    assert f"{name!r} would shadow the" in str(err) and f"module {module!r}" in str(err)
    assert kind in str(err)


def test_dotfile_in_archive(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "s.zip", {**SKILL, ".github/workflows/x.yml": b"on: push\n"})
    assert "hidden directories are not allowed ('.github')" in str(refused(path))


def test_executable_and_binary_members(tmp_path: Path) -> None:
    path = skill_tar(tmp_path / "s.tgz", tar_member("native.so", b"\x7fELF"))
    assert "'native.so': file type not allowed" in str(refused(path))


def test_mode_bits_are_not_carried(tmp_path: Path) -> None:
    info, data = tar_member("data/run.txt", b"echo hi\n")
    info.mode = stat.S_ISUID | 0o777
    sub = load_submission(skill_tar(tmp_path / "s.tgz", (info, data)))
    assert sub.files["data/run.txt"] == data  # content only: no mode, owner or mtime survives
