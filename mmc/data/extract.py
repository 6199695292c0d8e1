"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: no absolute paths, no ``..`` components, no
links that point outside the target, no device files, FIFOs or sockets. A bad member makes the
whole archive fail with a message naming it. Tar members are then extracted with Python's
``data`` filter as well, and after extraction every symlink is resolved once more, so a chain of
links cannot lead outside either.

Callers extract into a temporary directory and rename it into place only after the layout check
(:func:`mmc.data.fetch.fetch_dataset`), so nothing half-extracted is ever taken as complete.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from mmc.errors import MMCError


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> int:
    """Extract ``archive`` (zip or any tar) into the existing directory ``target``; return the member count."""
    archive, target = Path(archive), Path(target)
    try:
        if zipfile.is_zipfile(archive):
            count = _extract_zip(archive, target)
        elif tarfile.is_tarfile(archive):
            count = _extract_tar(archive, target)
        else:
            raise MMCError(f"{archive}: not a zip or tar archive")
        _check_links_stay_inside(archive, target)
    except tarfile.FilterError as e:
        raise MMCError(f"{archive}: unsafe member refused: {e}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise MMCError(f"{archive}: damaged archive ({e})") from None
    except OSError as e:
        raise MMCError(f"{archive}: extraction into {target} failed: {e.strerror or e}") from None
    return count


def member_path(archive: Path, name: str) -> str | None:
    """The member's normalised relative path, or None for the archive root; MMCError if unsafe."""
    if "\x00" in name:
        raise MMCError(f"{archive}: member {name!r} has a NUL byte in its name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise MMCError(f"{archive}: member {name!r} has an absolute path")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise MMCError(f"{archive}: member {name!r} contains '..' (path traversal)")
    return "/".join(parts) or None


def _check_link_target(archive: Path, name: str, link: str) -> None:
    if link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
        raise MMCError(f"{archive}: link {name!r} -> {link!r} points to an absolute path")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    if resolved == ".." or resolved.startswith("../"):
        raise MMCError(f"{archive}: link {name!r} -> {link!r} points outside the extraction directory")


def _extract_tar(archive: Path, target: Path) -> int:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            path = member_path(archive, m.name)
            if m.isdev() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise MMCError(f"{archive}: member {m.name!r} is a device or special file")
            if m.issym():
                _check_link_target(archive, path or "", m.linkname)
            if m.islnk():  # hard links name another member of the archive
                member_path(archive, m.linkname)
        tar.extractall(target, members=members, filter="data")
    return len(members)


def _extract_zip(archive: Path, target: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        links = []
        for info in infos:
            path = member_path(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", errors="strict")
                _check_link_target(archive, path or "", link)
                links.append((path, link))
            elif mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
                raise MMCError(f"{archive}: member {info.filename!r} is a device or special file")
        link_names = {p for p, _ in links}
        for info in infos:
            path = member_path(archive, info.filename)
            if path is None or path in link_names:
                continue
            destination = target / path
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            _refuse_through_link(archive, target, destination)
            with zf.open(info) as src, open(destination, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        # Links last: no regular member is ever written through one.
        for path, link in links:
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link, destination)
    return len(infos)


def _refuse_through_link(archive: Path, target: Path, destination: Path) -> None:
    if not destination.resolve().is_relative_to(target.resolve()):
        raise MMCError(f"{archive}: member {destination.relative_to(target)} would be written outside the target")


def _check_links_stay_inside(archive: Path, target: Path) -> None:
    root = target.resolve()
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise MMCError(
                    f"{archive}: link {path.relative_to(target)} -> {os.readlink(path)} resolves outside the extraction directory"
                )
