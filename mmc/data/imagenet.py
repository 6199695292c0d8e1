"""ImageNet-1k (ILSVRC 2012) from the official archives you already have, into shards.

ImageNet cannot be downloaded by this pipeline: its terms of access require an account on
image-net.org (docs/datasets.md, "ImageNet-1k"). ``mmc data prepare imagenet --from DIR`` reads
the three official archives from DIR, verifies their md5 while streaming them (published values
below; overridable for tests and mirrors), and writes ``OUT/train`` (and ``OUT/val`` when the val
archive and the devkit are there) as shard directories (:mod:`mmc.data.shards`) straight from the
archives: the per-class tars inside the training tar are read as streams, member by member, with
the extraction rules of :mod:`mmc.data.extract` (no absolute paths, no ``..``, no links or
devices), and no 1.28 M-file tree is ever written.

Labels are the index of the class's WordNet id (``n01440764`` ...) among the sorted ids, the
convention of torchvision's and timm's ImageNet folders. The devkit gives the validation labels
(``ILSVRC2012_validation_ground_truth.txt``, in the devkit's own class numbering, mapped to WordNet
ids through ``meta.mat``) and the list of the 1000 classes, checked against the training tar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mmc.data import shards
from mmc.errors import MMCError
from mmc.files import md5_file


@dataclasses.dataclass(frozen=True)
class Archive:
    file: str
    md5: str
    size: int | None  # bytes; None where not checked


# The archives of image-net.org's ILSVRC 2012 download page, with its published md5.
OFFICIAL = {
    "train": Archive("ILSVRC2012_img_train.tar", "1d675b47d978889d74fa0da5fadfb00e", 147_897_477_120),
    "val": Archive("ILSVRC2012_img_val.tar", "29b22e2961454d5413ddabcf34fc5622", 6_744_924_160),
    "devkit": Archive("ILSVRC2012_devkit_t12.tar.gz", "fa75699e90414af021442c21a62c3abf", None),
}
TRAIN_IMAGES, VAL_IMAGES, CLASSES = 1_281_167, 50_000, 1000
DEVKIT_DIR = "ILSVRC2012_devkit_t12/data"
GROUND_TRUTH = f"{DEVKIT_DIR}/ILSVRC2012_validation_ground_truth.txt"
META = f"{DEVKIT_DIR}/meta.mat"
CLASS_TAR = re.compile(r"^(n\d{8})\.tar$")
VAL_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
STREAM_BUFFER = 1 << 20  # tar streams read 1 MiB at a time (tarfile's default is 10 KiB)


def archives(md5: dict[str, str | None] | None = None) -> dict[str, Archive]:
    """The official archives; an md5 override (tests, re-packed mirrors) also drops the size check."""
    md5 = md5 or {}
    return {k: dataclasses.replace(a, md5=md5[k].lower(), size=None) if md5.get(k) else a for k, a in OFFICIAL.items()}


class ChecksumError(MMCError):
    """An archive's md5 is not the expected one."""


class _HashingReader:
    """A file read sequentially through md5 (tarfile's stream mode only calls ``read``)."""

    def __init__(self, path: Path):
        self.path, self.file, self.md5 = path, open(path, "rb"), hashlib.md5(usedforsecurity=False)  # noqa: SIM115

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.md5.update(data)
        return data

    def finish(self, expected: str) -> None:
        """Hash the rest of the file (the archive's end padding) and compare; close the file."""
        while self.read(1 << 20):
            pass
        self.file.close()
        if self.md5.hexdigest() != expected:
            raise ChecksumError(f"{self.path}: md5 {self.md5.hexdigest()} differs from the expected {expected} "
                           "(a damaged or different archive: nothing was kept)")  # fmt: skip


def _check_size(path: Path, archive: Archive) -> None:
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise MMCError(f"{path}: {size} bytes, the official archive has {archive.size} (incomplete or another file)")


@dataclasses.dataclass(frozen=True)
class Devkit:
    classes: list[str]  # the 1000 WordNet ids, sorted
    val_labels: list[str]  # WordNet id of validation image n at position n - 1


def read_devkit(path: Path, archive: Archive) -> Devkit:
    """Verify the devkit's md5 and read the class list and the validation ground truth from it."""
    import scipy.io

    digest = md5_file(path)
    if digest != archive.md5:
        raise ChecksumError(f"{path}: md5 {digest} differs from the expected {archive.md5}")
    wanted = {GROUND_TRUTH: None, META: None}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member, name in shards.iter_archive_members(tar, str(path)):
                if name in wanted:
                    wanted[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise MMCError(f"{path}: damaged archive ({e})") from None
    missing = [name for name, data in wanted.items() if data is None]
    if missing:
        raise MMCError(f"{path}: {', '.join(missing)} missing from the devkit")
    try:
        synsets = scipy.io.loadmat(io.BytesIO(wanted[META]), squeeze_me=True)["synsets"]
        leaves = {int(i): str(w) for i, w, c in zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"],
                                                    strict=True) if int(c) == 0}  # fmt: skip
    except (KeyError, ValueError, TypeError) as e:
        raise MMCError(f"{path}: {META} is not the ILSVRC 2012 synset table ({e})") from None
    try:
        ids = [int(line) for line in wanted[GROUND_TRUTH].decode().split()]
        val_labels = [leaves[i] for i in ids]
    except (ValueError, KeyError) as e:
        raise MMCError(f"{path}: {GROUND_TRUTH} names a class that is not in {META} ({e})") from None
    return Devkit(sorted(leaves.values()), val_labels)


def train_classes(path: Path) -> list[str]:
    """The sorted WordNet ids of the per-class tars (listing the uncompressed tar seeks, reads no images)."""
    try:
        with tarfile.open(path, "r:") as tar:
            names = []
            for member, name in shards.iter_archive_members(tar, str(path)):
                match = CLASS_TAR.match(name)
                if not match:
                    raise MMCError(f"{path}: member {member.name!r} is not a per-class tar (expected nXXXXXXXX.tar)")
                names.append(match.group(1))
    except (tarfile.TarError, EOFError) as e:
        raise MMCError(f"{path}: damaged archive ({e})") from None
    if len(set(names)) != len(names):
        raise MMCError(f"{path}: a class tar appears twice")
    return sorted(names)


def _train_items(reader: _HashingReader, classes: list[str]) -> Iterator[shards.Item]:
    label = {wnid: i for i, wnid in enumerate(classes)}
    where = str(reader.path)
    with tarfile.open(fileobj=reader, mode="r|", bufsize=STREAM_BUFFER) as outer:
        for member, name in shards.iter_archive_members(outer, where):
            wnid = CLASS_TAR.match(name).group(1)
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|", bufsize=STREAM_BUFFER) as inner:
                for image, image_name in shards.iter_archive_members(inner, f"{where}:{name}"):
                    yield shards.Item(f"{wnid}/{image_name}", label[wnid], _reader(inner, image))


def _val_items(reader: _HashingReader, classes: list[str], devkit: Devkit) -> Iterator[shards.Item]:
    label = {wnid: i for i, wnid in enumerate(classes)}
    with tarfile.open(fileobj=reader, mode="r|", bufsize=STREAM_BUFFER) as tar:
        for member, name in shards.iter_archive_members(tar, str(reader.path)):
            match = VAL_IMAGE.match(name)
            number = int(match.group(1)) if match else 0
            if not 1 <= number <= len(devkit.val_labels):
                raise MMCError(f"{reader.path}: member {name!r} is not a validation image of the devkit's ground truth")
            yield shards.Item(name, label[devkit.val_labels[number - 1]], _reader(tar, member))


def _reader(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], bytes]:
    # lazy: a resumed build skips the images of its complete shards without copying them
    return lambda: tar.extractfile(member).read()


def _items_then_verify(items: Iterator[shards.Item], reader: _HashingReader, md5: str) -> Iterator[shards.Item]:
    try:
        yield from items
    except (tarfile.TarError, EOFError) as e:
        raise MMCError(f"{reader.path}: damaged archive ({e})") from None
    reader.finish(md5)  # before write_shards writes the index and the manifest


def prepare(src: str | Path, out: str | Path, md5: dict[str, str | None] | None = None,
            shard_bytes: int = shards.DEFAULT_SHARD_BYTES, log=None) -> dict[str, Path]:  # fmt: skip
    """Verify the archives in ``src`` and write ``out/train`` (and ``out/val``) shards; return the manifests."""
    import shutil

    src, out = Path(src), Path(out)
    expected = archives(md5)
    paths = {split: src / a.file for split, a in expected.items()}
    if not paths["train"].is_file():
        raise MMCError(f"{paths['train']}: not found; obtain the ILSVRC 2012 archives from image-net.org "
                       "(see docs/datasets.md, ImageNet-1k) and pass their directory with --from")  # fmt: skip
    if paths["val"].is_file() and not paths["devkit"].is_file():
        raise MMCError(f"{paths['devkit']}: not found; the validation labels come from the devkit")
    present = [split for split, path in paths.items() if path.is_file()]
    for split in present:
        _check_size(paths[split], expected[split])
    devkit = read_devkit(paths["devkit"], expected["devkit"]) if "devkit" in present else None
    classes = train_classes(paths["train"])
    if devkit is not None and classes != devkit.classes:
        extra, absent = sorted(set(classes) - set(devkit.classes)), sorted(set(devkit.classes) - set(classes))
        raise MMCError(f"{paths['train']}: classes differ from the devkit's (extra: {extra[:5]}, missing: {absent[:5]})")
    manifests = {}
    for split in ("train", "val"):
        if split not in present:
            continue
        archive, target = expected[split], out / split
        source = {"kind": "imagenet", "split": split, "archive": archive.file, "md5": archive.md5,
                  "bytes": paths[split].stat().st_size}  # fmt: skip
        reader = _HashingReader(paths[split])
        items = _train_items(reader, classes) if split == "train" else _val_items(reader, classes, devkit)
        try:
            manifests[split] = shards.write_shards(
                _items_then_verify(items, reader, archive.md5), target, source, shard_bytes, classes, log
            )
        except ChecksumError:
            shutil.rmtree(target, ignore_errors=True)  # shards of a bad archive must not be resumed from
            raise
        finally:
            reader.file.close()
    return manifests
