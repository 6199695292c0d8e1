"""Safe extraction: every unsafe member kind is refused by name, in zip and tar, and nothing escapes."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from mmc.data.extract import safe_extract
from mmc.errors import MMCError


def make_tar(path: Path, members: list[tuple[str, str, object]]) -> Path:
    """members: (kind, name, data) with kind file (data=bytes), dir, symlink/hardlink (data=target), chr, fifo."""
    with tarfile.open(path, "w:gz") as tar:
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
    with zipfile.ZipFile(path, "w") as zf:
        for kind, name, data in members:
            info = zipfile.ZipInfo(name)
            if kind == "file":
                zf.writestr(info, data)
            elif kind == "dir":
                zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                mode = {"symlink": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o644, "fifo": stat.S_IFIFO | 0o644}[kind]
                info.external_attr = mode << 16
                zf.writestr(info, data if isinstance(data, bytes) else str(data).encode())
    return path


GOOD = [("dir", "ds", None), ("file", "ds/a.txt", b"alpha"), ("file", "ds/sub/b.txt", b"beta")]


@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
def test_regular_archive_with_an_inside_link(tmp_path, maker):
    archive = maker(tmp_path / ("ok.tar.gz" if maker is make_tar else "ok.zip"), [*GOOD, ("symlink", "ds/link", "sub/b.txt")])
    target = tmp_path / "out"
    target.mkdir()
    assert safe_extract(archive, target) == 4
    assert (target / "ds/a.txt").read_bytes() == b"alpha"
    assert (target / "ds/link").is_symlink() and (target / "ds/link").read_bytes() == b"beta"


CASES = [
    ("dotdot", [("file", "ds/../../evil.txt", b"x")], r"contains '\.\.' \(path traversal\)"),
    ("absolute", [("file", "/tmp/evil_abs.txt", b"x")], "has an absolute path"),
    ("symlink_absolute", [("symlink", "ds/etc", "/etc")], "points to an absolute path"),
    ("symlink_escape", [("symlink", "ds/up", "../../outside")], "points outside the extraction directory"),
    ("device", [("chr", "ds/null", b"")], "is a device or special file"),
    ("fifo", [("fifo", "ds/pipe", b"")], "is a device or special file"),
]


@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
@pytest.mark.parametrize(("case", "members", "message"), CASES, ids=[c[0] for c in CASES])
def test_unsafe_member_is_refused_before_anything_is_written(tmp_path, maker, case, members, message):
    archive = maker(tmp_path / ("bad.tar.gz" if maker is make_tar else "bad.zip"), [*GOOD, *members])
    target = tmp_path / "deep/out"
    target.mkdir(parents=True)
    with pytest.raises(MMCError, match=message) as info:
        safe_extract(archive, target)
    assert str(archive) in str(info.value)  # the message names the archive
    assert list(target.iterdir()) == []  # checked before extraction: nothing written
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep/evil.txt").exists()


def test_tar_hardlink_escape_is_refused(tmp_path):
    archive = make_tar(tmp_path / "hl.tar.gz", [*GOOD, ("hardlink", "ds/passwd", "../../etc/passwd")])
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match=r"contains '\.\.'"):
        safe_extract(archive, tmp_path / "out")


@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
def test_link_chain_leading_outside_is_caught(tmp_path, maker):
    """Each link points inside on its own; following both leads outside (tar: data filter; zip: final check)."""
    members = [*GOOD, ("symlink", "ds/sub/deep", "../.."), ("symlink", "ds/x", "sub/deep/..")]
    archive = maker(tmp_path / ("chain.tar.gz" if maker is make_tar else "chain.zip"), members)
    (tmp_path / "out").mkdir()
    with pytest.raises(MMCError, match=r"ds/x.*outside"):
        safe_extract(archive, tmp_path / "out")


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "x.zip"
    bogus.write_bytes(b"this is not an archive")
    with pytest.raises(MMCError, match="not a zip or tar archive"):
        safe_extract(bogus, tmp_path)
