"""Safe extraction: every unsafe member kind is refused by name, in zip and tar, before anything is
written; truncated, oversized and lying archives are refused; nothing is written through a link."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from full_disk import small_file_system

from mmc.data.extract import safe_extract
from mmc.errors import MMCError


def make_tar(path: Path, members: list[tuple[str, str, object]], mode: str = "w:gz") -> Path:
    """members: (kind, name, data) with kind file (data=bytes), dir, symlink/hardlink (data=target), chr, fifo."""
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]  # fmt: skip
            if kind in ("symlink", "hardlink"):
                info.linkname = data
            if kind == "chr":
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple[str, str, object]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for kind, name, data in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if kind == "file":
                zf.writestr(info, data)
            elif kind == "dir":
                zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            elif kind == "hardlink":  # zip has no hard links: a second entry of the same name is the closest
                zf.writestr(zipfile.ZipInfo(data), b"x")
            else:
                mode = {"symlink": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o644, "fifo": stat.S_IFIFO | 0o644}[kind]
                info.create_system = 3
                info.external_attr = mode << 16
                zf.writestr(info, data if isinstance(data, bytes) else str(data).encode())
    return path


def build(maker, tmp_path: Path, stem: str, members) -> Path:
    return maker(tmp_path / (f"{stem}.tar.gz" if maker is make_tar else f"{stem}.zip"), members)


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


GOOD = [("dir", "ds", None), ("file", "ds/a.txt", b"alpha"), ("file", "ds/sub/b.txt", b"beta")]


@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
def test_regular_archive_is_extracted(tmp_path, maker):
    archive = build(maker, tmp_path, "ok", GOOD)
    target = tmp_path / "out"
    target.mkdir()
    assert safe_extract(archive, target) == 3
    assert (target / "ds/a.txt").read_bytes() == b"alpha" and (target / "ds/sub/b.txt").read_bytes() == b"beta"
    assert everything_under(target) == ["ds", "ds/a.txt", "ds/sub", "ds/sub/b.txt"]


CASES = [
    ("dotdot", [("file", "ds/../../evil.txt", b"x")], r"contains '\.\.' \(path traversal\)"),
    ("dot", [("file", "ds/./c.txt", b"x")], r"contains a '\.' component"),
    ("absolute", [("file", "/tmp/evil_abs.txt", b"x")], "has an absolute path"),
    ("control", [("file", "ds/bell\x07.txt", b"x")], "contains a control character"),
    ("long_component", [("file", "ds/" + "n" * 256, b"x")], "has a component longer than 255 bytes"),
    ("symlink_inside", [("symlink", "ds/link", "sub/b.txt")], "is a symbolic link"),
    ("symlink_absolute", [("symlink", "ds/etc", "/etc")], "is a symbolic link"),
    ("symlink_escape", [("symlink", "ds/up", "../../outside")], "is a symbolic link"),
    ("device", [("chr", "ds/null", b"")], "is a device or special file"),
    ("fifo", [("fifo", "ds/pipe", b"")], "is a device or special file"),
    ("duplicate", [("file", "ds/a.txt", b"again")], "appears twice"),
    ("under_a_file", [("file", "ds/a.txt/inner.txt", b"x")], "lies under 'ds/a.txt', which is a file"),
]


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns while the test builds the archive
@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
@pytest.mark.parametrize(("case", "members", "message"), CASES, ids=[c[0] for c in CASES])
def test_unsafe_member_is_refused_before_anything_is_written(tmp_path, maker, case, members, message):
    archive = build(maker, tmp_path, "bad", [*GOOD, *members])
    target = tmp_path / "deep/out"
    target.mkdir(parents=True)
    with pytest.raises(MMCError, match=message) as info:
        safe_extract(archive, target)
    assert str(archive) in str(info.value) and "\n" not in str(info.value)  # one line naming the archive
    assert list(target.iterdir()) == []  # checked before extraction: nothing written
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep/evil.txt").exists()


def test_hard_links_are_refused_even_inside(tmp_path):
    for link in ("ds/a.txt", "../../etc/passwd"):
        archive = make_tar(tmp_path / "hl.tar.gz", [*GOOD, ("hardlink", "ds/copy", link)])
        (tmp_path / "out").mkdir(exist_ok=True)
        with pytest.raises(MMCError, match=r"'ds/copy' is a hard link .*every link is refused"):
            safe_extract(archive, tmp_path / "out")
        assert list((tmp_path / "out").iterdir()) == []


def test_names_that_are_not_utf8_are_refused(tmp_path):
    tar_path = tmp_path / "latin1.tar"
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("ds/caf\xe9.txt")  # stored as the single byte 0xE9: not UTF-8
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    zip_path = make_zip(tmp_path / "latin1.zip", [("file", "ds/cafX.txt", b"x")])
    zip_path.write_bytes(zip_path.read_bytes().replace(b"cafX", b"caf\xe9"))  # no UTF-8 flag, byte 0xE9
    for archive in (tar_path, zip_path):
        (tmp_path / "out").mkdir(exist_ok=True)
        with pytest.raises(MMCError, match="not valid UTF-8"):
            safe_extract(archive, tmp_path / "out")
        assert list((tmp_path / "out").iterdir()) == []


def test_encrypted_zip_member_is_refused(tmp_path):
    archive = make_zip(tmp_path / "enc.zip", GOOD)
    data = bytearray(archive.read_bytes())
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(header)
        while at >= 0:
            data[at + flags_at] |= 0x1
            at = data.find(header, at + 4)
    archive.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match="is encrypted"):
        safe_extract(archive, tmp_path / "out")


# ----------------------------------------------------------------------------- CVE-2025-4517
def cve_2025_4517_tar(path: Path, levels_to_escape: int) -> Path:
    """A tar built like the public CVE-2025-4517 proof of concept: nested 247-character directory
    names and a chain of symlinks, each lexically inside the target, so that resolving the chain
    overflows PATH_MAX and ``os.path.realpath`` stops checking; then a symlink ``escape`` leading
    ``levels_to_escape`` levels above the target, a hard link through it to ``victim.txt`` (overwritten
    through the link) and a regular file written through it to ``outside/pwned.txt``."""
    component = "d" * 247
    steps = "abcdefghijklmnop"
    with tarfile.open(path, "w") as tar:
        prefix = ""
        for step in steps:
            folder = tarfile.TarInfo(os.path.join(prefix, component))
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            link = tarfile.TarInfo(os.path.join(prefix, step))
            link.type = tarfile.SYMTYPE
            link.linkname = component
            tar.addfile(link)
            prefix = os.path.join(prefix, component)
        chain = os.path.join(*steps, "l" * 254)
        deep = tarfile.TarInfo(chain)
        deep.type = tarfile.SYMTYPE
        deep.linkname = "../" * len(steps)
        tar.addfile(deep)
        escape = tarfile.TarInfo("escape")
        escape.type = tarfile.SYMTYPE
        escape.linkname = chain + "/" + "../" * levels_to_escape
        tar.addfile(escape)
        hard = tarfile.TarInfo("victim_link")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "escape/victim.txt"
        tar.addfile(hard)
        for name, data in (("victim_link", b"overwritten\n"), ("escape/outside/pwned.txt", b"pwned\n")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def test_cve_2025_4517_tar_writes_nothing_anywhere(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "victim.txt").write_text("original\n")
    target = tmp_path / "data/staging"
    target.mkdir(parents=True)
    archive = cve_2025_4517_tar(tmp_path / "evil.tar", levels_to_escape=2)
    with pytest.raises(MMCError, match=r"member 'a' is a symbolic link .*every link is refused") as info:
        safe_extract(archive, target)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert (tmp_path / "victim.txt").read_text() == "original\n"
    assert list((tmp_path / "outside").iterdir()) == [] and list(target.iterdir()) == []


# ----------------------------------------------------------------------------- truncated archives
def member_boundary(archive: Path, index: int) -> int:
    """Byte offset where member ``index`` of a plain tar starts (its header)."""
    with tarfile.open(archive) as tar:
        return tar.getmembers()[index].offset


def test_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    archive = make_tar(tmp_path / "full.tar", [*GOOD, ("file", "ds/c.txt", b"gamma")], mode="w")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: member_boundary(archive, 3)])
    with tarfile.open(cut) as tar:  # the standard library reads it as a complete, shorter archive
        assert [m.name for m in tar.getmembers()] == ["ds", "ds/a.txt", "ds/sub/b.txt"]
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match=r"truncated tar: the end-of-archive blocks are missing"):
        safe_extract(cut, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", ["tar", "tar.gz", "zip"])
def test_truncated_archive_is_refused_before_extraction(tmp_path, suffix):
    members = [*GOOD, ("file", "ds/big.bin", os.urandom(50_000))]
    if suffix == "zip":
        archive = make_zip(tmp_path / "full.zip", members)
    else:
        archive = make_tar(tmp_path / f"full.{suffix}", members, mode="w" if suffix == "tar" else "w:gz")
    data = archive.read_bytes()
    last = len(data) - 1  # a plain tar's last bytes are record padding: cut into the end blocks instead
    if suffix == "tar":
        with tarfile.open(archive) as tar:
            tar.getmembers()
            last = tar.offset + tarfile.BLOCKSIZE  # one of the two end blocks
    for keep in (last, len(data) // 2):
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(data[:keep])
        (tmp_path / "out").mkdir(exist_ok=True)
        with pytest.raises(MMCError, match=r"truncated|damaged") as info:
            safe_extract(cut, tmp_path / "out")
        assert str(cut) in str(info.value)
        assert list((tmp_path / "out").iterdir()) == [], keep


def test_zip_with_bytes_after_its_end_record_is_refused(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", GOOD)
    archive.write_bytes(archive.read_bytes() + b"trailing junk")
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match="end-of-central-directory record does not end the file"):
        safe_extract(archive, tmp_path / "out")


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
def test_declared_sizes_above_the_limit_are_refused_before_writing(tmp_path, maker):
    archive = build(maker, tmp_path, "bomb", [*GOOD, ("file", "ds/zeros.bin", bytes(1_000_000))])
    assert archive.stat().st_size < 20_000  # a small archive that expands 50-fold
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match=r"declare 1000009 bytes in all, more than the limit of 100000 bytes"):
        safe_extract(archive, tmp_path / "out", max_bytes=100_000)
    assert list((tmp_path / "out").iterdir()) == []
    assert safe_extract(archive, tmp_path / "out", max_bytes=2_000_000) == 4  # within the limit: extracted


def patch_zip_sizes(archive: Path, name: bytes, size: int) -> None:
    """Rewrite the uncompressed size that both headers of member ``name`` declare."""
    data = bytearray(archive.read_bytes())
    for header, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(header)
        while at >= 0:
            if data[at + name_at : at + name_at + len(name)] == name:
                data[at + size_at : at + size_at + 4] = size.to_bytes(4, "little")
            at = data.find(header, at + 4)
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("declared", [1000, 10**9], ids=["smaller", "larger"])
def test_zip_whose_declared_size_lies_is_refused(tmp_path, declared):
    archive = make_zip(tmp_path / "lie.zip", [*GOOD, ("file", "ds/zeros.bin", bytes(500_000))])
    patch_zip_sizes(archive, b"ds/zeros.bin", declared)
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match=r"'ds/zeros.bin' (cannot be read|holds)") as info:
        safe_extract(archive, tmp_path / "out", max_bytes=2 * 10**9)
    assert "lying" in str(info.value) or "lies" in str(info.value)
    written = tmp_path / "out/ds/zeros.bin"
    assert not written.exists() or written.stat().st_size <= declared


def test_archive_larger_than_the_free_space_is_refused_before_writing(tmp_path):
    archive = make_tar(tmp_path / "big.tar.gz", [*GOOD, ("file", "ds/zeros.bin", bytes(3_000_000))])
    with small_file_system(tmp_path / "small", "1m") as target:
        with pytest.raises(MMCError, match=r"declare 3000009 bytes, but only \d+ bytes are free on the file system"):
            safe_extract(archive, target)
        assert list(target.iterdir()) == []


# ----------------------------------------------------------------------------- links already on disk
def test_nothing_is_written_through_a_link_already_in_the_target(tmp_path):
    """Independent of the archive: a link planted in the target (by another process) is never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "a.txt"
    victim.write_text("original")
    archive = make_tar(tmp_path / "ok.tar.gz", GOOD)
    target = tmp_path / "out"
    target.mkdir()
    (target / "ds").symlink_to(outside)  # a directory link
    with pytest.raises(MMCError, match=r"failed writing .*/out/ds: it is a symbolic link, and links are never followed"):
        safe_extract(archive, target)
    (target / "ds").unlink()
    (target / "ds").mkdir()
    os.link(victim, target / "ds/a.txt")  # a hard link to a file outside, where a member will go
    with pytest.raises(MMCError, match=r"'ds/a.txt': .*/out/ds/a.txt already exists"):
        safe_extract(archive, target)
    assert victim.read_text() == "original" and sorted(p.name for p in outside.iterdir()) == ["a.txt"]


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "x.zip"
    bogus.write_bytes(b"this is not an archive")
    with pytest.raises(MMCError, match="not a zip or tar archive"):
        safe_extract(bogus, tmp_path)
