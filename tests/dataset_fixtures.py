"""Tiny datasets in the exact official layouts (a few images each), with known objects, and archives
of them wrapped the way the official archives are (VOCdevkit/VOC2012, ADEChallengeData2016, DAVIS,
two COCO zips).
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _indexed_png(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist()
    image.putpalette(palette)
    image.save(path)


def coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE, written independently of pycocotools: column-major runs, zeros first."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


# ----------------------------------------------------------------------------- VOC
def make_voc(root: Path, n: int = 3, split: str = "val") -> None:
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        Image.fromarray(_rgb(20, 24, i)).save(root / "JPEGImages" / f"{image_id}.jpg")
        labels = np.zeros((20, 24), np.uint8)
        labels[2:8, 2:10] = 1
        _indexed_png(labels * 15, root / "SegmentationClass" / f"{image_id}.png")
        _indexed_png(labels, root / "SegmentationObject" / f"{image_id}.png")
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


# ----------------------------------------------------------------------------- COCO
def make_coco(root: Path, n: int = 3, split: str = "val") -> dict[int, dict]:
    """Images of different sizes; each has a polygon object, an RLE object and a crowd region.

    Returns image id -> {"size": (h, w), "objects": {ann_id: (category, mask)}, "crowd": mask}.
    """
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations, expected = [], [], {}
    ann_id = 100
    for i in range(n):
        image_id = 139 + i
        h, w = 30 + 4 * i, 40 + 2 * i
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(_rgb(h, w, i)).save(root / f"{split}2017" / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        rect = np.zeros((h, w), bool)
        rect[5:15, 3:20] = True
        crowd = np.zeros((h, w), bool)
        crowd[20:26, 25:35] = True
        # A polygon with vertices on pixel corners covers exactly the pixels inside it.
        polygon = [22.0, 2.0, 36.0, 2.0, 36.0, 12.0, 22.0, 12.0]
        poly_mask = np.zeros((h, w), bool)
        poly_mask[2:12, 22:36] = True
        annotations += [
            {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "segmentation": coco_rle(rect),
             "area": float(rect.sum()), "bbox": [3, 5, 17, 10]},
            {"id": ann_id + 1, "image_id": image_id, "category_id": 18, "iscrowd": 0, "segmentation": [polygon],
             "area": float(poly_mask.sum()), "bbox": [22, 2, 14, 10]},
            {"id": ann_id + 2, "image_id": image_id, "category_id": 1, "iscrowd": 1, "segmentation": coco_rle(crowd),
             "area": float(crowd.sum()), "bbox": [25, 20, 10, 6]},
        ]  # fmt: skip
        expected[image_id] = {
            "size": (h, w),
            "objects": {ann_id: (1, rect), ann_id + 1: (18, poly_mask)},
            "crowd": crowd,
        }
        ann_id += 3
    categories = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
    body = {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(body))
    return expected


# ----------------------------------------------------------------------------- ADE20K
def make_ade20k(root: Path, n: int = 3) -> dict[str, np.ndarray]:
    """Label maps with void (0), wall (1) and two other classes. Returns image id -> label map."""
    (root / "images/validation").mkdir(parents=True, exist_ok=True)
    (root / "annotations/validation").mkdir(parents=True, exist_ok=True)
    expected = {}
    for i in range(n):
        image_id = f"ADE_val_{i + 1:08d}"
        labels = np.zeros((24, 32), np.uint8)
        labels[:8] = 1
        labels[10:20, 2:12] = 5 + i
        labels[10:14, 20:30] = 150
        labels[16:20, 20:30] = 150  # two separate regions of one class: one object
        Image.fromarray(_rgb(24, 32, i)).save(root / "images/validation" / f"{image_id}.jpg")
        Image.fromarray(labels, mode="L").save(root / "annotations/validation" / f"{image_id}.png")
        expected[image_id] = labels
    (root / "sceneCategories.txt").write_text("")
    return expected


# ----------------------------------------------------------------------------- DAVIS-2017
def make_davis(root: Path, sequences: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Sequences of indexed PNG frames with objects 1..n and 255 void. Returns 'seq/frame' -> labels."""
    sequences = sequences or {"bike-packing": 4, "blackswan": 3}
    expected = {}
    for s, (seq, frames) in enumerate(sequences.items()):
        (root / "JPEGImages/480p" / seq).mkdir(parents=True, exist_ok=True)
        (root / "Annotations/480p" / seq).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            labels = np.zeros((18, 26), np.uint8)
            labels[2 + f : 8 + f, 2:9] = 1
            if s == 0:
                labels[10:16, 12:20] = 2
            labels[0, :] = 255
            Image.fromarray(_rgb(18, 26, 10 * s + f)).save(root / "JPEGImages/480p" / seq / f"{f:05d}.jpg")
            _indexed_png(labels, root / "Annotations/480p" / seq / f"{f:05d}.png")
            expected[f"{seq}/{f:05d}"] = labels
    (root / "ImageSets/2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/2017/val.txt").write_text("\n".join(sequences) + "\n")
    (root / "ImageSets/2017/train.txt").write_text("")
    return expected


# ----------------------------------------------------------------------------- archives
def pack(src: Path, archive: Path, *, arcname: str = "", include: list[str] | None = None) -> Path:
    """Archive the tree ``src`` (zip or tar by suffix), members under ``arcname`` (may be empty)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in src.rglob("*") if include is None or p.relative_to(src).parts[0] in include)
    names = [(p, str(Path(arcname, p.relative_to(src))) if arcname else str(p.relative_to(src))) for p in paths]
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for p, name in names:
                zf.write(p, name)
    else:
        with tarfile.open(archive, "w") as tf:
            for p, name in names:
                tf.add(p, name, recursive=False)
    return archive


def official_archives(fmt: str, work: Path) -> list[Path]:
    """Build a dataset of ``fmt`` under ``work/src`` and pack it like the official archives."""
    src = work / "src" / fmt
    out = work / "archives"
    if fmt == "voc":
        make_voc(src)
        return [pack(src, out / "VOCtrainval_11-May-2012.tar", arcname="VOCdevkit/VOC2012")]
    if fmt == "coco":
        make_coco(src)
        return [
            pack(src, out / "val2017.zip", include=["val2017"]),
            pack(src, out / "annotations_trainval2017.zip", include=["annotations"]),
        ]
    if fmt == "ade20k":
        make_ade20k(src)
        return [pack(src, out / "ADEChallengeData2016.zip", arcname="ADEChallengeData2016")]
    if fmt == "davis":
        make_davis(src)
        return [pack(src, out / "DAVIS-2017-trainval-480p.zip", arcname="DAVIS")]
    raise ValueError(fmt)
