"""Sharded image datasets: uncompressed tar shards of ~1 GB, an index for random access, a manifest.

A shard directory holds::

    shard-000000.tar ...   POSIX tars; member i is the source image under its original relative
                           name (any tar tool lists and extracts them)
    index.npy              one row per sample, in sample order: shard, byte offset and size of the
                           image's data inside the shard, label, width, height, and whether it is
                           a JPEG that nvJPEG decodes (RGB or grayscale)
    keys.txt               line i is the member name of sample i (provenance)
    manifest.json          written last: format, sample count, shards with sample counts, bytes
                           and sha256, the sha256 of index.npy and keys.txt, class names, source

Why this format rather than a library's: a sample is read with one ``pread`` at a known offset,
so any global order (the pretraining sampler's per-epoch permutation, split over ranks and
workers, resumed mid-epoch) is served exactly with no shuffle buffer and no per-worker state; the
index is memory-mapped, so no rank lists or stats files at start; and the shards stay plain tars
that outlive this code. webdataset streams shards in order (shuffling in a buffer, so it cannot
give an exact global order), its indexed reader ``wids`` scans every tar to build its index on
first open, and litdata and mosaicml-streaming use their own binary chunk formats with their own
samplers and resume state, which would replace, not serve, the sampler that makes resume exact.

Writing is resumable: each shard is written under a temporary name, renamed, then recorded in
``.build/``; a rerun keeps the recorded shards and continues after the last one. Nothing is
trusted before ``manifest.json`` exists, and a complete directory is left as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from mmc.data.image_folder import image_header
from mmc.errors import MMCError
from mmc.files import atomic_path, sha256_file, write_text_atomic

FORMAT = "mmc-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.npy"
KEYS = "keys.txt"
BUILD = ".build"
DEFAULT_SHARD_BYTES = 10**9  # "1GB", the default of `mmc data shard --shard-size`
INDEX_DTYPE = np.dtype(
    [("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i4"), ("width", "<u4"), ("height", "<u4"),
     ("jpeg", "u1")]
)  # fmt: skip
BLOCK = tarfile.BLOCKSIZE


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def is_shard_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclasses.dataclass(frozen=True)
class Item:
    """One source image: its member name, label (-1: none) and a function returning its bytes."""

    name: str
    label: int
    read: Callable[[], bytes]


# ------------------------------------------------------------------------------------ writing
def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # fixed metadata: the same input gives the same bytes
    return info


class _Build:
    """The resumable state of a shard directory being written (``OUT/.build``)."""

    def __init__(self, out: Path, plan: dict, log: Callable[[str], None]):
        self.out, self.dir, self.plan, self.log = out, out / BUILD, plan, log
        plan_file = self.dir / "plan.json"
        if plan_file.exists() and json.loads(plan_file.read_text()) != plan:
            log(f"{out}: discarding an unfinished build of a different source or shard size")
            for path in out.glob("shard-*.tar"):
                path.unlink()
            shutil.rmtree(self.dir)
        for stale in out.glob(".shard-*.tar.tmp-*"):  # a shard being written when the run was killed
            stale.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(plan_file, json.dumps(plan, indent=1, sort_keys=True))
        self.records: list[dict] = []
        while True:  # the shards recorded in order whose tar is still there, whole
            record_file = self.dir / f"{shard_name(len(self.records))}.json"
            if not record_file.exists():
                break
            record = json.loads(record_file.read_text())
            tar = out / record["name"]
            if not tar.is_file() or tar.stat().st_size != record["bytes"]:
                break
            self.records.append(record)
        for stale in self.dir.glob("shard-*.json"):  # records after a gap are rewritten
            if int(stale.name[6:12]) >= len(self.records):
                stale.unlink()
        if self.records:
            log(f"{out}: resuming after {len(self.records)} complete shards ({self.done} images)")

    @property
    def done(self) -> int:
        return sum(r["samples"] for r in self.records)

    def record(self, record: dict) -> None:
        write_text_atomic(self.dir / f"{record['name']}.json", json.dumps(record))
        self.records.append(record)


class _ShardFile:
    """A shard being written under a temporary name; ``close`` renames it into place."""

    def __init__(self, out: Path, number: int):
        self.name = shard_name(number)
        self.path = out / self.name
        self._context = atomic_path(self.path)
        # open across add() calls, closed by close()/abort(): no `with` can span them
        self.tar = tarfile.open(self._context.__enter__(), "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.rows: list[tuple] = []
        self.names: list[str] = []

    @property
    def bytes(self) -> int:
        return self.tar.offset

    def add(self, name: str, data: bytes, label: int, header: tuple[int, int, bool]) -> None:
        self.tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        offset = self.tar.offset - _padded(len(data))  # the data is the member's last blocks
        self.rows.append((offset, len(data), label, *header))
        self.names.append(name)

    def close(self) -> tuple[int, str]:
        """Finish the tar, rename it into place; return its size and sha256 (read back from disk)."""
        self.tar.close()
        self._context.__exit__(None, None, None)
        return self.path.stat().st_size, sha256_file(self.path)

    def abort(self, error: BaseException) -> None:
        self.tar.close()
        self._context.__exit__(type(error), error, error.__traceback__)


def write_shards(
    items: Iterable[Item],
    out: str | os.PathLike,
    source: dict,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    classes: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Pack ``items`` (in order) into shards of about ``shard_bytes`` under ``out``; return the manifest.

    A shard is closed before the image that would take it past ``shard_bytes`` (tar's end-of-archive
    padding, up to 10 KiB, comes on top).

    ``source`` describes where the items come from (it must change when they do): a rerun with the
    same source continues an unfinished build, and a complete directory of the same source is left
    as it is. A shard holds at least one image even if that image alone exceeds ``shard_bytes``.
    """
    out = Path(out)
    log = log or (lambda message: print(f"mmc data: {message}", file=sys.stderr, flush=True))
    if shard_bytes < 2 * BLOCK:
        raise MMCError(f"shard size {shard_bytes} bytes is too small (at least {2 * BLOCK})")
    plan = {"format_version": FORMAT_VERSION, "shard_bytes": shard_bytes, "source": source, "classes": classes}
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if {k: manifest.get(k) for k in plan} != plan:
            raise MMCError(f"{out}: holds complete shards of another source or shard size; remove it or choose another OUT")
        log(f"{out}: complete ({manifest['samples']} images in {len(manifest['shards'])} shards); nothing to do")
        return out / MANIFEST
    out.mkdir(parents=True, exist_ok=True)
    build = _Build(out, plan, log)
    skip = build.done
    current: _ShardFile | None = None
    count = 0
    try:
        for count, item in enumerate(items, start=1):
            if count <= skip:
                continue
            data = item.read()
            header = image_header(data, f"{source.get('path') or source.get('archive', '')}:{item.name}")
            long_name = len(item.name.encode()) > 99 or not item.name.isascii()  # a PAX header: ~2 more blocks
            member = BLOCK * (3 if long_name else 1) + _padded(len(data))
            if current is not None and current.rows and current.bytes + member + 2 * BLOCK > shard_bytes:
                _finish(current, build, log)
                current = None
            if current is None:
                current = _ShardFile(out, len(build.records))
            current.add(item.name, data, item.label, header)
        if current is not None:
            _finish(current, build, log)
            current = None
    except BaseException as e:
        if current is not None:
            current.abort(e)
        raise
    if count < skip:
        raise MMCError(f"{out}: the source has {count} images but {skip} were already written; remove {out}")
    if not build.records:
        raise MMCError(f"{source.get('path', out)}: no images to shard")
    return _write_index_and_manifest(out, build, plan)


def _finish(shard: _ShardFile, build: _Build, log) -> None:
    size, digest = shard.close()
    first = build.done
    build.record({"name": shard.name, "samples": len(shard.rows), "bytes": size, "sha256": digest,
                  "first": first, "rows": shard.rows, "names": shard.names})  # fmt: skip
    log(f"{shard.name}: images {first}..{first + len(shard.rows) - 1}, {size / 1e6:.1f} MB")


def _write_index_and_manifest(out: Path, build: _Build, plan: dict) -> Path:
    total = build.done
    index = np.zeros(total, dtype=INDEX_DTYPE)
    names = []
    for number, record in enumerate(build.records):
        rows = np.asarray(record["rows"], dtype=np.int64).reshape(-1, 6)
        part = index[record["first"] : record["first"] + record["samples"]]
        part["shard"] = number
        for column, field in enumerate(("offset", "size", "label", "width", "height", "jpeg")):
            part[field] = rows[:, column]
        names += record["names"]
    with atomic_path(out / INDEX) as tmp, open(tmp, "wb") as f:
        np.save(f, index)
    write_text_atomic(out / KEYS, "".join(f"{n}\n" for n in names))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "samples": total,
        "total_bytes": sum(r["bytes"] for r in build.records), "shard_bytes": plan["shard_bytes"],
        "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in build.records],
        "index": {"name": INDEX, "sha256": sha256_file(out / INDEX)},
        "keys": {"name": KEYS, "sha256": sha256_file(out / KEYS)},
        "classes": plan["classes"], "source": plan["source"],
    }  # fmt: skip
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(build.dir)
    return out / MANIFEST


# ------------------------------------------------------------------------------------ sources
def folder_items(root: str | os.PathLike) -> tuple[list[Item], dict, list[str] | None]:
    """The images of an image folder in :class:`mmc.data.image_folder.ImageFolder`'s order.

    Labels: the index of the first-level sub-folder among the sorted sub-folders (ImageNet's
    class folders), or -1 for images directly under ``root``.
    """
    from mmc.data.image_folder import ImageFolder

    folder = ImageFolder(root)
    relative = [p.relative_to(folder.root).as_posix() for p in folder.files]
    nested = all("/" in r for r in relative)
    classes = sorted({r.split("/", 1)[0] for r in relative}) if nested else None
    label_of = {c: i for i, c in enumerate(classes or [])}
    listing = hashlib.sha256()
    items = []
    for path, rel in zip(folder.files, relative, strict=True):
        listing.update(f"{rel}\t{path.stat().st_size}\n".encode())
        items.append(Item(rel, label_of[rel.split("/", 1)[0]] if nested else -1, path.read_bytes))
    source = {"kind": "folder", "path": str(folder.root.resolve()), "images": len(items),
              "listing_sha256": listing.hexdigest()}  # fmt: skip
    return items, source, classes


# ------------------------------------------------------------------------------------ reading
def read_manifest(root: str | os.PathLike) -> dict:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        hint = " (an unfinished `mmc data shard`: rerun it)" if (root / BUILD).exists() else ""
        raise MMCError(f"{root}: no {MANIFEST}{hint}; expected a shard directory written by `mmc data shard`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MMCError(f"{path}: cannot be read as JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise MMCError(f"{path}: not an {FORMAT} v{FORMAT_VERSION} manifest (format {manifest.get('format')!r})")
    return manifest


def verify(root: str | os.PathLike, full: bool = False) -> dict:
    """Check that every shard is present with its size (and, if ``full``, its sha256)."""
    root = Path(root)
    manifest = read_manifest(root)
    for shard in manifest["shards"]:
        path = root / shard["name"]
        if not path.is_file():
            raise MMCError(f"{path}: shard listed in {root / MANIFEST} is missing")
        if path.stat().st_size != shard["bytes"]:
            raise MMCError(f"{path}: {path.stat().st_size} bytes, the manifest says {shard['bytes']}")
        if full and sha256_file(path) != shard["sha256"]:
            raise MMCError(f"{path}: sha256 differs from the manifest's {shard['sha256']}")
    for part in ("index", "keys"):
        path = root / manifest[part]["name"]
        if not path.is_file() or (full and sha256_file(path) != manifest[part]["sha256"]):
            raise MMCError(f"{path}: missing or its sha256 differs from the manifest's")
    return manifest


class ShardSource:
    """Random access to the images of a shard directory, by sample index.

    Opening reads the manifest, checks the shards' sizes and memory-maps the index: no file tree
    is listed. Shard files are opened lazily in each process (DataLoader workers included).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = verify(self.root)
        self.paths = [self.root / s["name"] for s in self.manifest["shards"]]
        self._index = None
        self._files: dict[int, int] = {}
        self._pid = os.getpid()
        if len(self.index) != self.manifest["samples"]:
            raise MMCError(f"{self.root / INDEX}: {len(self.index)} rows, the manifest says {self.manifest['samples']}")

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = np.load(self.root / INDEX, mmap_mode="r")
        return self._index

    def __len__(self) -> int:
        return int(self.manifest["samples"])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": None, "_files": {}}

    def _file(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: descriptors are not shared
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return self._files[shard]

    def describe(self, index: int) -> str:
        return f"{self.paths[int(self.index[index]['shard'])]} (sample {index})"

    def size(self, index: int) -> tuple[int, int, bool]:
        row = self.index[index]
        return int(row["width"]), int(row["height"]), bool(row["jpeg"])

    def read(self, index: int) -> bytes:
        row = self.index[index]
        size = int(row["size"])
        data = os.pread(self._file(int(row["shard"])), size, int(row["offset"]))
        if len(data) != size:
            raise MMCError(f"{self.describe(index)}: truncated shard ({len(data)} of {size} bytes)")
        return data

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._files.values():
                os.close(fd)


def iter_archive_members(tar: tarfile.TarFile, archive: str) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """(member, safe relative name) of a tar's regular files; refuses links, devices and unsafe names.

    Names go through :func:`mmc.data.extract.member_path` (no absolute paths, ``..`` or NUL).
    """
    from mmc.data.extract import member_path

    for member in tar:
        name = member_path(Path(archive), member.name)
        if member.isdir() or name is None:
            continue
        if not member.isfile():
            raise MMCError(f"{archive}: member {member.name!r} is not a regular file (links and devices are refused)")
        yield member, name
