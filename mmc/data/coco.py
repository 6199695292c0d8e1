"""COCO instances (val2017): one object per non-crowd annotation, decoded at the original image size.

Masks come from ``instances_<split>.json`` through pycocotools (polygons and RLE alike). Crowd
annotations are never targets; with ``crowd_as_void`` their pixels are void instead of ignored.
Annotations whose mask decodes to no pixel are skipped. ``object_id`` is the annotation id,
``class_id`` the COCO category id (1..90).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmc.data.imageio import check_same_size, load_rgb
from mmc.data.layouts import coco_split_name
from mmc.data.readers import Sample, SegObject
from mmc.errors import MMCError


class COCOReader:
    def __init__(self, root: str | Path, split: str = "val", *, max_images: int | None = None, crowd_as_void: bool = False):
        from pycocotools.coco import COCO

        self.root = Path(root)
        self.split = coco_split_name(split)
        self.crowd_as_void = crowd_as_void
        annotations = self.root / "annotations" / f"instances_{self.split}.json"
        if not annotations.is_file():
            raise MMCError(f"{annotations}: COCO annotations not found (download the dataset first: mmc data download)")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            self.coco = COCO(str(annotations))
        self.annotations = annotations
        self.image_ids = sorted(self.coco.getImgIds())[:max_images]

    @classmethod
    def from_config(cls, dataset: Any) -> COCOReader:
        return cls(dataset.root, dataset.split, max_images=dataset.max_images, crowd_as_void=dataset.crowd_as_void)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __iter__(self) -> Iterator[Sample]:
        for image_id in self.image_ids:
            yield self.sample(image_id)

    def image_path(self, image_id: int) -> Path:
        return self.root / self.split / self.coco.imgs[image_id]["file_name"]

    def files(self) -> list[Path]:
        """Every file the reader reads: the annotations and each selected image."""
        return [self.annotations, *(self.image_path(i) for i in self.image_ids)]

    def sample(self, image_id: int) -> Sample:
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        image = load_rgb(path)
        height, width = info["height"], info["width"]
        void = np.zeros((height, width), bool)
        check_same_size(image, void, str(path))
        objects = []
        annotations = sorted(self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], iscrowd=None)), key=lambda a: a["id"])
        for ann in annotations:
            with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice, once per mask
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = self.coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd", 0):
                if self.crowd_as_void:
                    void |= mask
            elif mask.any():
                objects.append(SegObject(object_id=int(ann["id"]), class_id=int(ann["category_id"]), mask=mask))
        return Sample(image_id=str(image_id), image=image, objects=tuple(objects), void=void)
