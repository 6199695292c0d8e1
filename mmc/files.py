"""File-system edges: atomic writes and content hashes.

Nothing half-written is ever left where a later stage would trust it: every output is produced
under a temporary sibling name and renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The temporary sibling lives on the same file system, so the final ``os.replace`` is atomic.
    For files, the data is fsync'ed before the rename. On any exception the temporary path is
    removed and ``target`` is left untouched. ``directory=True`` creates the temporary path as an
    empty directory; an existing target directory is replaced.
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
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def require_files(paths, flag: str) -> None:
    """Every path names an existing file, else one MMCError naming the flag and the missing ones.

    Commands call it on their input arguments before they open their job record, so a mistyped
    path leaves no record behind."""
    from mmc.errors import MMCError

    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise MMCError(f"{flag}: no such file: {', '.join(missing)}")


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


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
