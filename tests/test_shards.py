"""`mmc data shard`, `mmc data check-shards` and `mmc data prepare imagenet`, as real processes.

The ImageNet archives are built here with the official structure (a tar of per-class tars, a flat
validation tar, a devkit tar.gz with the ground truth and a meta.mat synset table), small, so the
expected md5s are passed with --md5-*.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pretrain_support import env
from workflow_helpers import REPO

from mmc.data import shards
from mmc.data.image_folder import ImageFolder
from mmc.errors import MMCError

WNIDS = ["n01440764", "n01443537", "n02102040"]  # sorted: labels 0, 1, 2


def mmc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmc", *args], env=env(), capture_output=True, text=True, timeout=120, cwd=REPO)


def jpeg(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three class folders of JPEGs of different sizes and modes, and one PNG."""
    root = tmp_path_factory.mktemp("folder") / "images"
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for i in range(7):
            mode = "L" if i == 3 else ("CMYK" if i == 5 else "RGB")
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg(10 * c + i, (40 + i, 30 + c), mode))
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / WNIDS[1] / "extra.png")
    return root


def test_shard_a_folder_then_read_every_image_back(folder, tmp_path):
    out = tmp_path / "shards"
    result = mmc("data", "shard", str(folder), str(out), "--shard-size", "6KB")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    files = ImageFolder(folder).files
    assert manifest["samples"] == len(files) == 22 and manifest["classes"] == WNIDS
    assert len(manifest["shards"]) > 3 and sum(s["samples"] for s in manifest["shards"]) == 22
    assert sorted(p.name for p in out.iterdir()) == sorted([s["name"] for s in manifest["shards"]] + ["index.npy", "keys.txt", "manifest.json"])
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
        assert (out / shard["name"]).stat().st_size == shard["bytes"]
    keys = (out / "keys.txt").read_text().splitlines()
    assert keys == [p.relative_to(folder).as_posix() for p in files]
    source = shards.ShardSource(out)
    for i, path in enumerate(files):  # random access gives the folder's i-th image, byte for byte
        assert source.read(i) == path.read_bytes()
        with Image.open(path) as image:
            plain = image.format == "JPEG" and image.mode in ("RGB", "L")
            assert source.size(i) == (image.width, image.height, plain)
    labels = np.load(out / "index.npy")["label"]
    assert labels.tolist() == [WNIDS.index(k.split("/")[0]) for k in keys]
    # plain tars: members are the images under their relative names
    with tarfile.open(out / manifest["shards"][0]["name"]) as tar:
        first = tar.getmembers()[0]
        assert first.name == keys[0] and tar.extractfile(first).read() == files[0].read_bytes()
    assert mmc("data", "check-shards", str(out)).returncode == 0

    # a rerun leaves a complete directory as it is; another source is refused
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = mmc("data", "shard", str(folder), str(out), "--shard-size", "6KB")
    assert result.returncode == 0 and "nothing to do" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    result = mmc("data", "shard", str(folder / WNIDS[0]), str(out), "--shard-size", "6KB")
    assert result.returncode == 2 and "another source" in result.stderr and "Traceback" not in result.stderr

    # a damaged shard is reported by check-shards and by the reader
    damaged = out / manifest["shards"][1]["name"]
    data = bytearray(damaged.read_bytes())
    data[600] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = mmc("data", "check-shards", str(out))
    assert result.returncode == 2 and f"{damaged}: sha256 differs" in result.stderr
    damaged.write_bytes(bytes(data[:1024]))
    with pytest.raises(MMCError, match="bytes, the manifest says"):
        shards.ShardSource(out)


def test_an_interrupted_shard_run_resumes_after_its_last_complete_shard(folder, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "resumed"
    assert mmc("data", "shard", str(folder), str(reference), "--shard-size", "6KB").returncode == 0
    # the 12th image is unreadable (same size, so the source listing is unchanged): the run stops there
    victim = ImageFolder(folder).files[11]
    original = victim.read_bytes()
    victim.write_bytes(b"\0" * len(original))
    try:
        result = mmc("data", "shard", str(folder), str(out), "--shard-size", "6KB")
    finally:
        victim.write_bytes(original)
    assert result.returncode == 2 and f"{victim.relative_to(folder)}: not a readable image" in result.stderr
    assert not (out / "manifest.json").exists()
    written = sorted(out.glob("shard-*.tar"))
    assert written and not list(out.glob(".*tmp-*"))  # complete shards only, no temporary file left
    inodes = {p.name: p.stat().st_ino for p in written}
    killed = out / f".{written[-1].name[:-4]}9.tar.tmp-killed"  # what a SIGKILL during a write leaves
    killed.write_bytes(b"partial")
    result = mmc("data", "shard", str(folder), str(out), "--shard-size", "6KB")
    assert result.returncode == 0, result.stderr
    assert f"resuming after {len(written)} complete shards" in result.stderr
    assert {p.name: p.stat().st_ino for p in written} == inodes  # kept, not rewritten
    assert json.loads((out / "manifest.json").read_text())["shards"] == json.loads((reference / "manifest.json").read_text())["shards"]
    assert not (out / ".build").exists() and not killed.exists()


def test_bad_sources_are_one_clear_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = mmc("data", "shard", str(empty), str(tmp_path / "out"))
    assert result.returncode == 2 and "no images found" in result.stderr
    result = mmc("data", "shard", str(empty), str(tmp_path / "out"), "--shard-size", "lots")
    assert result.returncode == 2 and "'lots' is not a size" in result.stderr
    with pytest.raises(MMCError, match=r"no manifest\.json"):
        shards.ShardSource(empty)


# -------------------------------------------------------------------------------------- ImageNet
def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    return buffer.getvalue()


def meta_mat(synsets: list[tuple[int, str, int]]) -> bytes:
    """A meta.mat like the devkit's: a struct array `synsets` (ILSVRC2012_ID, WNID, words, num_children)."""
    import scipy.io

    table = np.zeros((len(synsets), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    for row, (number, wnid, children) in enumerate(synsets):
        table[row, 0] = (number, wnid, f"class {wnid}", children)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": table})
    return buffer.getvalue()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    # the devkit numbers classes in its own order (not sorted by WordNet id), plus a non-leaf synset
    devkit_ids = {"n02102040": 1, "n01440764": 2, "n01443537": 3}
    class_tars = {f"{w}.tar": tar_bytes({f"{w}_{i}.JPEG": jpeg(100 * c + i) for i in range(5)}) for c, w in enumerate(reversed(WNIDS))}
    (root / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(class_tars))
    val_classes = ["n01443537", "n02102040", "n01440764", "n01440764"]
    (root / "ILSVRC2012_img_val.tar").write_bytes(
        tar_bytes({f"ILSVRC2012_val_{n:08d}.JPEG": jpeg(1000 + n) for n in range(1, len(val_classes) + 1)})
    )
    truth = "".join(f"{devkit_ids[w]}\n" for w in val_classes).encode()
    synsets = [(i, w, 0) for w, i in devkit_ids.items()] + [(4, "n00001740", 3)]
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(tar_bytes({
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth,
        "ILSVRC2012_devkit_t12/data/meta.mat": meta_mat(synsets),
        "ILSVRC2012_devkit_t12/readme.txt": b"devkit",
    }, "w:gz"))  # fmt: skip
    return root


def md5_options(root: Path) -> list[str]:
    return ["--md5-train", md5(root / "ILSVRC2012_img_train.tar"), "--md5-val", md5(root / "ILSVRC2012_img_val.tar"),
            "--md5-devkit", md5(root / "ILSVRC2012_devkit_t12.tar.gz")]  # fmt: skip


def test_prepare_imagenet_writes_labelled_train_and_val_shards(archives, tmp_path):
    out = tmp_path / "imagenet"
    result = mmc("data", "prepare", "imagenet", "--from", str(archives), "--out", str(out), "--shard-size", "5KB",
                 *md5_options(archives))  # fmt: skip
    assert result.returncode == 0, result.stderr
    train = json.loads((out / "train" / "manifest.json").read_text())
    assert train["samples"] == 15 and train["classes"] == WNIDS and len(train["shards"]) > 1
    assert train["source"]["archive"] == "ILSVRC2012_img_train.tar"
    keys = (out / "train" / "keys.txt").read_text().splitlines()
    assert keys[0] == "n02102040/n02102040_0.JPEG"  # archive order
    labels = np.load(out / "train" / "index.npy")["label"].tolist()
    assert labels == [WNIDS.index(k.split("/")[0]) for k in keys]
    source = shards.ShardSource(out / "train")
    assert source.read(keys.index("n01443537/n01443537_3.JPEG")) == jpeg(100 * 1 + 3)
    val = np.load(out / "val" / "index.npy")
    assert (out / "val" / "keys.txt").read_text().splitlines()[0] == "ILSVRC2012_val_00000001.JPEG"
    assert val["label"].tolist() == [1, 2, 0, 0]  # n01443537, n02102040, n01440764 x 2 via the devkit's ids
    assert mmc("data", "check-shards", str(out / "train")).returncode == 0


def test_prepare_imagenet_refuses_wrong_archives_and_keeps_nothing(archives, tmp_path):
    out = tmp_path / "imagenet"
    # the official checksums (and sizes) are the defaults: these small archives are not the real ones
    result = mmc("data", "prepare", "imagenet", "--from", str(archives), "--out", str(out))
    assert result.returncode == 2 and "the official archive has 147897477120" in result.stderr
    options = md5_options(archives)
    options[1] = "0" * 32  # a wrong train md5: detected at the end of the stream, nothing kept
    result = mmc("data", "prepare", "imagenet", "--from", str(archives), "--out", str(out), "--shard-size", "5KB", *options)
    assert result.returncode == 2 and f"md5 {md5(archives / 'ILSVRC2012_img_train.tar')} differs" in result.stderr
    assert not (out / "train").exists()
    result = mmc("data", "prepare", "imagenet", "--from", str(tmp_path), "--out", str(out))
    assert result.returncode == 2 and "ILSVRC2012_img_train.tar: not found" in result.stderr and "image-net.org" in result.stderr


@pytest.mark.parametrize("attack", ["traversal", "symlink"])
def test_prepare_imagenet_refuses_unsafe_members_of_a_class_tar(tmp_path, attack):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        add_member(tar, "n01440764_0.JPEG", jpeg(0))
        if attack == "traversal":
            add_member(tar, "../../evil.JPEG", jpeg(1))
        else:
            link = tarfile.TarInfo("n01440764_1.JPEG")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    train = tmp_path / "ILSVRC2012_img_train.tar"
    train.write_bytes(tar_bytes({"n01440764.tar": inner.getvalue()}))
    out = tmp_path / "out"
    result = mmc("data", "prepare", "imagenet", "--from", str(tmp_path), "--out", str(out), "--md5-train", md5(train))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "contains '..'" if attack == "traversal" else "is not a regular file"
    assert expected in result.stderr and "n01440764.tar" in result.stderr
    assert not (out / "train" / "manifest.json").exists() and not (tmp_path / "evil.JPEG").exists()
