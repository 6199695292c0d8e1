"""Safe extraction of zip and tar archives, member by member, by this module's own code.

Official dataset archives hold regular files and directories only, so everything else is refused,
and the whole archive is checked **before anything is written**:

- the archive is complete: a tar ends with its two zero end-of-archive blocks after the data of its
  last member, a zip's end-of-central-directory record ends the file (a transfer cut short at a
  member boundary would otherwise extract part of the members without an error);
- every member is a regular file or a directory: symbolic links, hard links, devices, FIFOs and
  sparse files are refused, in tar and zip alike;
- every name is valid UTF-8 without control characters, relative, with no ``.`` or ``..``
  component, no component longer than 255 bytes, and appears once (a file may not also be a
  directory, nor lie under a file);
- the sum of the declared sizes is at most ``max_bytes`` (:data:`DEFAULT_MAX_BYTES` unless the
  caller gives another limit: ``datasets.NAME.max_extracted_bytes``) and fits in the free space
  of the target's file system; zip members must not be encrypted.

Members are then written with ``os.open`` relative to the already opened parent directory,
``O_NOFOLLOW | O_EXCL``: nothing is ever opened through a link and no existing file is ever
written into, whatever the interpreter's ``tarfile`` filters do. Bytes are counted while copying:
a member that yields more or fewer bytes than it declares (a lying zip) fails the archive.

Callers extract into a temporary directory and rename it into place only after the layout check
(:func:`mmc.data.fetch.fetch_dataset`), so nothing half-extracted is ever taken as complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tarfile
import time
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mmc.errors import MMCError
from mmc.files import describe_free, free_space

# A limit on the bytes one archive may expand to. The largest archive the paper's datasets use
# (VOC 2012 trainval) expands to about 2 GB; datasets.NAME.max_extracted_bytes raises the limit.
DEFAULT_MAX_BYTES = 64 * 2**30
NAME_MAX = 255  # bytes per path component on Linux file systems
PATH_MAX = 4096  # bytes of a whole path, terminating NUL included
CHUNK = 1 << 20
_ZIP_EOCD = b"PK\x05\x06"
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, *, max_bytes: int | None = None) -> int:
    """Extract ``archive`` (zip or any tar) into the existing directory ``target``; return the member count.

    Raises :class:`MMCError` naming the archive (and the member) for anything refused.
    """
    archive, target = Path(archive), Path(target)
    limit = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    kind = archive_kind(archive)
    try:
        if kind == "zip":
            return _extract_zip(archive, target, limit)
        return _extract_tar(archive, target, limit)
    except _WriteError as e:
        raise MMCError(str(e)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, NotImplementedError) as e:
        raise MMCError(f"{archive}: damaged archive ({e})") from None
    except UnicodeDecodeError as e:
        raise MMCError(f"{archive}: a member name is not valid UTF-8 ({e})") from None
    except (OSError, ValueError) as e:  # reading the archive: gzip/bz2/lzma errors, I/O errors
        raise MMCError(f"{archive}: damaged archive ({getattr(e, 'strerror', None) or e})") from None


def archive_kind(archive: Path) -> str:
    """``zip`` or ``tar`` (plain or compressed), from the file's first bytes; MMCError otherwise."""
    try:
        with open(archive, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise MMCError(f"{archive}: cannot read the archive ({e.strerror or e})") from None
    if head.startswith((b"PK\x03\x04", _ZIP_EOCD)):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    try:
        if tarfile.is_tarfile(archive):  # a pre-POSIX tar without the ustar magic
            return "tar"
    except OSError:
        pass
    raise MMCError(f"{archive}: not a zip or tar archive")


# ----------------------------------------------------------------------------- names
def _short(text: str, keep: int = 60) -> str:
    """A name as shown in messages: crafted names can be thousands of characters long."""
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2 :]}"


def _name_problem(name: str) -> str | None:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):  # tarfile's surrogateescape of invalid bytes
        return "is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "contains a control character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        return "contains '..' (path traversal)"
    if "." in parts:
        return "contains a '.' component"
    if any(len(p.encode()) > NAME_MAX for p in parts):
        return f"has a component longer than {NAME_MAX} bytes"
    return None


def member_path(archive: Path, name: str) -> str | None:
    """The member's normalised relative path (``a/b``), or None for the bare archive root (``.``, ``./``).

    MMCError naming the archive and the member if the name is unsafe (see the module docstring).
    """
    if name.rstrip("/\\") in (".", ""):
        return None
    problem = _name_problem(name)
    if problem:
        raise MMCError(f"{archive}: member {_short(name)!r} {problem}; refused")
    return "/".join(p for p in re.split(r"[/\\]", name) if p)


@dataclass(frozen=True)
class _Member:
    name: str  # as in the archive
    path: str  # normalised relative path
    is_dir: bool
    size: int  # declared bytes (0 for directories)
    mode: int  # permission bits from the archive
    mtime: float | None
    source: object  # TarInfo or ZipInfo


def _check_members(archive: Path, target: Path, members: list[_Member], limit: int) -> None:
    """Duplicates, files under files, the size limit and the free space: before anything is written."""
    seen: dict[str, _Member] = {}
    for m in members:
        if m.path in seen:
            raise MMCError(f"{archive}: member {_short(m.name)!r} appears twice (as {_short(seen[m.path].name)!r} before); refused")
        seen[m.path] = m
    files = {m.path for m in members if not m.is_dir}
    for m in members:
        parts = m.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in files:
                raise MMCError(f"{archive}: member {_short(m.name)!r} lies under {_short(seen[parent].name)!r}, which is a file; refused")
        if len(os.fsencode(target)) + 1 + len(m.path.encode()) >= PATH_MAX:
            raise MMCError(f"{archive}: member {_short(m.name)!r} would have a path longer than {PATH_MAX - 1} bytes; refused")
    total = sum(m.size for m in members)
    if total > limit:
        raise MMCError(
            f"{archive}: its members declare {total} bytes in all, more than the limit of {limit} bytes "
            "(a decompression bomb, or a larger dataset: raise datasets.NAME.max_extracted_bytes)"
        )
    free = free_space(target)
    if free is not None and total > free:
        raise MMCError(f"{archive}: its members declare {total} bytes, but only {free} bytes are free on the "
                       f"file system of {target}; free some space and run again")


# ----------------------------------------------------------------------------- writing
SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _WriteError(Exception):
    """Writing into the target failed (disk full, a path that exists): a clear message for the user."""


class _Writer:
    """Creates directories and files below ``target`` through directory descriptors, never following links."""

    def __init__(self, archive: Path, target: Path, limit: int):
        self.archive, self.target, self.limit = archive, target, limit
        self.written = 0
        try:
            self.root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise _WriteError(f"{archive}: cannot open the extraction directory {target} ({e.strerror})") from None
        self.dirs: dict[str, int] = {"": self.root}

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def _fail(self, rel: str, e: OSError, parent: int | None = None) -> _WriteError:
        where = self.target / rel if rel else self.target
        reason = e.strerror or str(e)
        if parent is not None and _is_link(rel.rpartition("/")[2], parent):
            reason = "it is a symbolic link, and links are never followed"
        elif e.errno in SPACE_ERRORS:
            reason += f" ({describe_free(self.target)})"
        return _WriteError(f"{self.archive}: extraction into {self.target} failed writing {where}: {reason}")

    def directory(self, rel: str) -> int:
        """The descriptor of directory ``rel`` (created if needed, component by component)."""
        if rel in self.dirs:
            return self.dirs[rel]
        parent_rel, _, name = rel.rpartition("/")
        parent = self.directory(parent_rel)
        try:
            # an existing one (made by an earlier archive) is opened below, never through a link
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as e:
            raise self._fail(rel, e, parent) from None
        if len(self.dirs) > 256:  # deep or wide trees: keep few descriptors open
            for key in [k for k in self.dirs if k and not rel.startswith(k)]:
                os.close(self.dirs.pop(key))
        self.dirs[rel] = fd
        return fd

    def file(self, member: _Member, data: IO[bytes]) -> None:
        parent_rel, _, name = member.path.rpartition("/")
        parent = self.directory(parent_rel)
        mode = 0o777 if member.mode & 0o100 else 0o666  # the umask applies, as for any new file
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, mode, dir_fd=parent)
        except FileExistsError:
            raise _WriteError(f"{self.archive}: member {_short(member.name)!r}: {self.target / member.path} already exists "
                              "(written by another archive extracted into the same directory?); refused") from None
        except OSError as e:
            raise self._fail(member.path, e) from None
        count = 0
        out = os.fdopen(fd, "wb", closefd=True)
        try:
            while True:
                try:
                    chunk = data.read(CHUNK)
                except Exception as e:  # any failure to decompress means a damaged archive
                    raise MMCError(f"{self.archive}: member {_short(member.name)!r} cannot be read ({e}): damaged archive, "
                                   "or a zip whose declared size or CRC lies; refused") from None
                if not chunk:
                    break
                count += len(chunk)
                self.written += len(chunk)
                if count > member.size:
                    raise MMCError(f"{self.archive}: member {_short(member.name)!r} holds more than the "
                                   f"{member.size} bytes it declares; refused")
                if self.written > self.limit:
                    raise MMCError(f"{self.archive}: more than {self.limit} bytes extracted; refused")
                try:
                    out.write(chunk)
                except OSError as e:
                    raise self._fail(member.path, e) from None
            try:
                out.flush()
                if member.mtime is not None:
                    os.utime(out.fileno(), (member.mtime, member.mtime))
                out.close()
            except OSError as e:
                raise self._fail(member.path, e) from None
        finally:
            if not out.closed:
                with contextlib.suppress(OSError):
                    out.close()
        if count != member.size:
            raise MMCError(f"{self.archive}: member {_short(member.name)!r} holds {count} bytes, not the {member.size} "
                           "it declares (damaged or lying archive); refused")


def _write_all(archive: Path, target: Path, limit: int, members: list[_Member], open_member) -> int:
    writer = _Writer(archive, target, limit)
    try:
        for member in members:
            if member.is_dir:
                writer.directory(member.path)
                continue
            with open_member(member) as data:
                writer.file(member, data)
    finally:
        writer.close()
    return len(members)


# ----------------------------------------------------------------------------- tar
def _tar_members(archive: Path, infos: Iterable[tarfile.TarInfo]) -> Iterator[_Member]:
    for info in infos:
        path = member_path(archive, info.name)
        if info.issym() or info.islnk():
            kind = "a symbolic link" if info.issym() else "a hard link"
            raise MMCError(f"{archive}: member {_short(info.name)!r} is {kind} (to {_short(info.linkname)!r}); dataset archives "
                           "contain no links, so every link is refused")
        if info.issparse():
            raise MMCError(f"{archive}: member {_short(info.name)!r} is a sparse file; refused")
        if not (info.isreg() or info.isdir()):
            raise MMCError(f"{archive}: member {_short(info.name)!r} is a device or special file; refused")
        if path is None:
            if info.isdir():
                continue  # the bare root entry ("./"): the target itself
            raise MMCError(f"{archive}: member {_short(info.name)!r} has no name; refused")
        yield _Member(info.name, path, info.isdir(), 0 if info.isdir() else info.size, info.mode, info.mtime, info)


def _check_tar_end(archive: Path, tar: tarfile.TarFile) -> None:
    """The two zero blocks that end a tar must follow the last member's data."""
    stream = tar.fileobj
    stream.seek(tar.offset)
    end = stream.read(2 * tarfile.BLOCKSIZE)
    if end != bytes(2 * tarfile.BLOCKSIZE):
        raise MMCError(
            f"{archive}: truncated tar: the end-of-archive blocks are missing after byte {tar.offset} "
            "(an incomplete download?); refused before extraction"
        )
    # A compressed tar: read its stream to the end, where gzip, bzip2 and xz check their trailer.
    while stream.read(CHUNK):
        pass


def _extract_tar(archive: Path, target: Path, limit: int) -> int:
    with tarfile.open(archive, "r:*") as tar:
        infos = tar.getmembers()
        members = list(_tar_members(archive, infos))
        _check_tar_end(archive, tar)
        _check_members(archive, target, members, limit)

        def open_member(member: _Member):
            data = tar.extractfile(member.source)
            if data is None:
                raise MMCError(f"{archive}: member {_short(member.name)!r} cannot be read; refused")
            return data

        _write_all(archive, target, limit, members, open_member)
    return len(infos)


# ----------------------------------------------------------------------------- zip
def _check_zip_end(archive: Path) -> None:
    """The end-of-central-directory record (and its comment) must end the file."""
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        f.seek(max(0, size - (22 + 65535)))
        tail = f.read()
    pos = tail.rfind(_ZIP_EOCD)
    while pos >= 0:
        comment = int.from_bytes(tail[pos + 20 : pos + 22], "little") if pos + 22 <= len(tail) else -1
        if pos + 22 + comment == len(tail):
            return
        pos = tail.rfind(_ZIP_EOCD, 0, pos)
    raise MMCError(
        f"{archive}: truncated or damaged zip: the end-of-central-directory record does not end the file "
        "(an incomplete download?); refused before extraction"
    )


def _zip_name(archive: Path, info: zipfile.ZipInfo) -> str:
    """The member's name as stored, decoded as UTF-8 whether or not the archive flags it so."""
    name = info.orig_filename
    if not info.flag_bits & 0x800:  # zipfile decoded it as cp437: get the stored bytes back
        try:
            name = name.encode("cp437").decode("utf-8")
        except UnicodeError:
            raise MMCError(f"{archive}: member {_short(info.orig_filename)!r} has a name that is not valid UTF-8; refused") from None
    return name


def _zip_members(archive: Path, infos: Iterable[zipfile.ZipInfo]) -> Iterator[_Member]:
    for info in infos:
        name = _zip_name(archive, info)
        path = member_path(archive, name)
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        if stat.S_ISLNK(mode):
            raise MMCError(f"{archive}: member {_short(name)!r} is a symbolic link; dataset archives contain no links, "
                           "so every link is refused")
        is_dir = info.is_dir() or stat.S_ISDIR(mode)
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise MMCError(f"{archive}: member {_short(name)!r} is a device or special file; refused")
        if info.flag_bits & 0x1:
            raise MMCError(f"{archive}: member {_short(name)!r} is encrypted; refused")
        if info.compress_type not in _ZIP_METHODS:
            raise MMCError(f"{archive}: member {_short(name)!r} uses compression method {info.compress_type}, "
                           "which is not supported; refused")
        if path is None:
            if is_dir:
                continue
            raise MMCError(f"{archive}: member {_short(name)!r} has no name; refused")
        try:
            mtime = time.mktime((*info.date_time, 0, 0, -1))
        except (OverflowError, ValueError):
            mtime = None
        yield _Member(name, path, is_dir, 0 if is_dir else info.file_size, mode & 0o777 or 0o644, mtime, info)


def _extract_zip(archive: Path, target: Path, limit: int) -> int:
    _check_zip_end(archive)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        members = list(_zip_members(archive, infos))
        _check_members(archive, target, members, limit)
        _write_all(archive, target, limit, members, lambda m: zf.open(m.source))
    return len(infos)
