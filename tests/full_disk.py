"""A small real file system for disk-full tests: tests run as root, where permission bits stop
nothing, so a full disk is a tmpfs of a few hundred KiB (ENOSPC from the kernel, not a mock)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_file_system(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"256k"``, ``"1m"``) mounted on ``folder``; the test is skipped where
    mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` until at most ``leave`` bytes are free."""
    import shutil

    with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while (free := shutil.disk_usage(folder).free) > leave:
            f.write(bytes(min(1 << 16, free - leave)))
