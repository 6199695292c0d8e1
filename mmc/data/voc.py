"""Reader for the PASCAL VOC 2012 segmentation layout (also used by the synthetic scenes).

``root`` is the ``VOC2012`` directory::

    JPEGImages/{id}.jpg
    SegmentationObject/{id}.png   indexed PNG: 0 background, 1..n instances, 255 void
    SegmentationClass/{id}.png    indexed PNG: 0 background, class ids, 255 void
    ImageSets/Segmentation/{split}.txt

Each instance of ``SegmentationObject`` is one target; its class is the most frequent class id
under it in ``SegmentationClass``. Void is the union of 255 in either map.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmc.data.imageio import load_labels, load_rgb
from mmc.data.readers import Sample, SegObject
from mmc.errors import MMCError

VOID = 255


class VOCReader:
    def __init__(self, root: str | Path, split: str = "val", max_images: int | None = None):
        self.root = Path(root)
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            hint = ""
            if (self.root / "VOCdevkit" / "VOC2012").is_dir():
                hint = f" (root should be the VOC2012 directory: {self.root / 'VOCdevkit' / 'VOC2012'})"
            raise MMCError(f"{list_file}: split list not found; root must be a VOC2012 directory{hint}")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise MMCError(f"{list_file}: the split lists no images")
        self.ids = ids[:max_images] if max_images else ids

    @classmethod
    def from_config(cls, dataset: Any) -> VOCReader:
        return cls(dataset.root, dataset.split, dataset.max_images)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = load_rgb(self.root / "JPEGImages" / f"{image_id}.jpg")
        instances = load_labels(self.root / "SegmentationObject" / f"{image_id}.png")
        classes = load_labels(self.root / "SegmentationClass" / f"{image_id}.png")
        if instances.shape != classes.shape or instances.shape != image.shape[:2]:
            raise MMCError(
                f"{self.root}: image {image_id}: sizes differ: image {image.shape[:2]}, "
                f"SegmentationObject {instances.shape}, SegmentationClass {classes.shape}"
            )
        void = (instances == VOID) | (classes == VOID)
        objects = []
        for object_id in np.unique(instances):
            if object_id in (0, VOID):
                continue
            mask = (instances == object_id) & ~void
            if not mask.any():
                continue
            class_counts = np.bincount(classes[mask], minlength=256)
            objects.append(SegObject(int(object_id), int(np.argmax(class_counts)), mask))
        return Sample(image_id, image, tuple(objects), void)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]
