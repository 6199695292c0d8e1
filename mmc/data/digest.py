"""Content hashes of the data a job read, recorded in its job record and checked again by ``mmc provenance``.

Three kinds of entry (the ``data`` field of a job record, :mod:`mmc.records`):

- ``dataset``: an evaluation dataset (``segment``, ``similarity``, ``select``): the sha256 of every
  file its reader reads (:meth:`mmc.data.readers.DatasetReader.files`: images, label maps, split
  lists, annotation files), by path relative to the dataset root, and a digest over them. A
  changed, missing or added file is named when the entry is checked.
- ``shards``: pretraining data packed as shards: the sha256 of ``manifest.json``, which holds the
  sha256 of every shard (``mmc data check-shards`` verifies the shards against it).
- ``folder``: pretraining data as an image folder: a listing hash, the sha256 of the sorted
  ``relative path <TAB> size`` lines of every file (hashing millions of images for every run
  would cost as much as an epoch); with the file count and bytes.

Data under ``data_dir`` is also covered by ``data.dvc`` (the DVC tree md5), which
``mmc provenance`` compares with the data on disk (:func:`mmc.dvc.tree_changes`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmc.errors import MMCError
from mmc.files import sha256_file


def digest_lines(lines: Iterable[str]) -> str:
    """sha256 of newline-terminated lines, in the order given."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def files_digest(files: Mapping[str, str]) -> str:
    """The digest of a ``relative path -> sha256`` mapping (sorted by path)."""
    return digest_lines(f"{path}\t{files[path]}" for path in sorted(files))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a file outside the root (never with the built-in readers): kept as given
        return str(path)


def dataset_files(dataset: Any) -> tuple[Path, list[Path]]:
    """The root of a ``datasets.NAME`` entry and every file its reader reads."""
    from mmc.data.readers import open_reader

    reader = open_reader(dataset)
    return Path(dataset.root), list(reader.files())


def dataset_entry(dataset: Any) -> dict[str, Any]:
    """The ``dataset`` entry of what the reader of ``datasets.NAME`` reads (file hashes, digest)."""
    root, paths = dataset_files(dataset)
    files = {}
    for path in paths:
        try:
            files[_relative(path, root)] = sha256_file(path)
        except OSError as e:
            raise MMCError(f"{path}: cannot read a file of the dataset ({e.strerror})") from None
    return {
        "kind": "dataset",
        "root": str(dataset.root),
        "format": dataset.format,
        "split": dataset.split,
        "digest": files_digest(files),
        "files": files,
    }


def folder_listing(root: Path) -> tuple[str, int, int]:
    """(listing hash, files, bytes) of every file under ``root`` (sorted relative paths and sizes)."""
    lines, total = [], 0
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = Path(folder, name)
            size = path.stat().st_size
            lines.append(f"{path.relative_to(root).as_posix()}\t{size}")
            total += size
    lines.sort()
    return digest_lines(lines), len(lines), total


def pretrain_entry(path: str | os.PathLike, data_format: str = "auto") -> dict[str, Any]:
    """The ``shards`` or ``folder`` entry of pretraining data at ``path`` (``pretrain.data``)."""
    from mmc.data.shards import MANIFEST

    root = Path(path)
    manifest = root / MANIFEST
    if data_format == "shards" or (data_format == "auto" and manifest.is_file()):
        return {"kind": "shards", "root": str(path), "manifest": MANIFEST, "digest": sha256_file(manifest)}
    digest, count, total = folder_listing(root)
    return {"kind": "folder", "root": str(path), "digest": digest, "files": count, "bytes": total}


def check_entry(entry: Mapping[str, Any], base: Path, dataset: Any = None) -> list[str]:
    """What changed since ``entry`` was recorded (empty: nothing), each naming a file.

    Relative roots are relative to ``base`` (the job's working directory). ``dataset`` (the
    ``datasets.NAME`` config the job ran with) lists the files the reader reads now, so an added
    file is found too; without it only the recorded files are hashed again.
    """
    kind = entry.get("kind")
    root = base / entry["root"]
    if kind == "dataset":
        return _check_dataset(entry, root, dataset)
    if kind == "shards":
        manifest = root / entry.get("manifest", "manifest.json")
        now = sha256_file(manifest) if manifest.is_file() else None
        if now != entry["digest"]:
            return [f"{manifest}: sha256 {now or '(missing)'}, recorded {entry['digest']}"]
        from mmc.data.shards import verify

        try:
            verify(root, full=False)  # sizes of the shards against the manifest (full: check-shards)
        except MMCError as e:
            return [str(e)]
        return []
    if kind == "folder":
        if not root.is_dir():
            return [f"{root}: the pretraining image folder is missing"]
        digest, count, total = folder_listing(root)
        if digest != entry["digest"]:
            return [f"{root}: the listing (paths and sizes) changed: now {count} files, {total} bytes; recorded "
                    f"{entry.get('files')} files, {entry.get('bytes')} bytes"]
        return []
    return [f"unknown data entry kind {kind!r}"]


def _check_dataset(entry: Mapping[str, Any], root: Path, dataset: Any) -> list[str]:
    recorded: Mapping[str, str] = entry.get("files") or {}
    current = set(recorded)
    if dataset is not None:
        try:
            import dataclasses

            _, paths = dataset_files(dataclasses.replace(dataset, root=str(root)))
            current = {_relative(p, root) for p in paths}
        except MMCError as e:  # the reader cannot even open the dataset now
            return [f"{root}: {e}"]
    problems = []
    for rel in sorted(current | set(recorded)):
        path = root / rel
        if rel not in recorded:
            problems.append(f"{path}: read by the dataset's reader now, not recorded by the job (added)")
            continue
        if not path.is_file():
            problems.append(f"{path}: missing (recorded sha256 {recorded[rel]})")
            continue
        now = sha256_file(path)
        if now != recorded[rel]:
            problems.append(f"{path}: sha256 {now}, recorded {recorded[rel]}")
    if dataset is not None:
        gone = sorted(set(recorded) - current)
        problems += [f"{root / rel}: recorded by the job, no longer read by the dataset's reader" for rel in gone
                     if (root / rel).is_file()]  # fmt: skip
    return problems
