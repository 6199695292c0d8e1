"""File-system edges: atomic writes and content hashes.

Nothing half-written is ever left where a later stage would trust it: every output is produced
under a temporary sibling name and renamed into place only once complete. A write that fails for
want of space (or on a read-only or failing disk) becomes a :class:`WriteError`: one line naming the
file and the free space, the previous version of the file untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mmc.errors import MMCError

# errno values that mean "this write cannot succeed here": no space, quota, file size limit,
# a read-only file system, an I/O error of the device.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
# torch.save reports a failed write as a RuntimeError from its zip writer, without the errno.
_TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter|inline_container")


class WriteError(MMCError):
    """An output could not be written (disk full, quota, read-only): the message names it and the free space."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def free_space(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent); None if unknown."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def describe_free(path: str | os.PathLike) -> str:
    """``'12.3 MB free on the file system of PATH'``, for messages about failed writes."""
    free = free_space(path)
    return "free space unknown" if free is None else f"{free / 1e6:.1f} MB free on the file system of {path}"


def write_failure(error: BaseException, written: str | os.PathLike | None = None) -> str | None:
    """Why ``error`` means a failed write (of ``written``, when an OSError names a file), or None."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        # shutil's copies name the source in ``filename`` and the destination in ``filename2``
        names = [n for n in (error.filename, error.filename2) if n is not None]
        if not names or written is None:
            return error.strerror or str(error)
        inside = os.path.abspath(written)
        for name in map(os.path.abspath, names):
            if name == inside or name.startswith(inside + os.sep):
                return error.strerror or str(error)
        return None
    if isinstance(error, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(error)):
        return "torch.save could not write the file"
    return None

# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The temporary sibling lives on the same file system, so the final ``os.replace`` is atomic.
    For files, the data is fsync'ed before the rename. On any exception the temporary path is
    removed and ``target`` is left untouched; a failed write of the temporary path (see
    :func:`write_failure`) is raised as a :class:`WriteError` naming ``target`` and the free space.
    ``directory=True`` creates the temporary path as an empty directory; an existing target
    directory is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        # mkstemp creates 0600; results are shared on clusters, so give the umask's usual mode
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if target.exists():
                shutil.rmtree(target)
        else:
            _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as e:
        reason = write_failure(e, tmp)
        free = describe_free(target.parent) if reason else ""  # before the partial file is removed
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if reason is None:
            raise
        kept = f"the previous {target.name} is unchanged" if target.exists() else "nothing was written there"
        raise WriteError(f"cannot write {target}: {reason} ({free} when the write failed); {kept}", target) from None


def require_files(paths, flag: str) -> None:
    """Every path names an existing file, else one MMCError naming the flag and the missing ones.

    Commands call it on their input arguments before they open their job record, so a mistyped
    path leaves no record behind."""
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise MMCError(f"{flag}: no such file: {', '.join(missing)}")


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def _file_hexdigest(path: str | os.PathLike, digest, chunk_size: int) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    return _file_hexdigest(path, hashlib.sha256(), chunk_size)


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The md5 of a file's bytes as they are: what DVC 3 records, and what ImageNet's devkit lists."""
    return _file_hexdigest(path, hashlib.md5(usedforsecurity=False), chunk_size)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsync'ed
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
