"""ADE20K SceneParsing (ADEChallengeData2016): one object per class present in an image.

Label maps hold 0 ("unlabeled") and classes 1..150. Every class present is one target (all its
pixels, connected or not), with ``object_id == class_id``. Label 0 is void, never merged into
class 1 ("wall").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmc.data.imageio import check_same_size, load_labels, load_rgb
from mmc.data.layouts import ade20k_split_dir
from mmc.data.readers import Sample, SegObject
from mmc.errors import MMCError

VOID_LABEL = 0


class ADE20KReader:
    def __init__(self, root: str | Path, split: str = "val", *, max_images: int | None = None):
        self.root = Path(root)
        sub = ade20k_split_dir(split)
        self.image_dir = self.root / "images" / sub
        self.label_dir = self.root / "annotations" / sub
        if not self.image_dir.is_dir() or not self.label_dir.is_dir():
            raise MMCError(f"{self.root}: ADE20K split {split!r} not found (expected images/{sub} and annotations/{sub})")
        self.image_ids = sorted(p.stem for p in self.image_dir.glob("*.jpg"))[:max_images]
        if not self.image_ids:
            raise MMCError(f"{self.image_dir}: no .jpg images")

    @classmethod
    def from_config(cls, dataset: Any) -> ADE20KReader:
        return cls(dataset.root, dataset.split, max_images=dataset.max_images)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __iter__(self) -> Iterator[Sample]:
        for image_id in self.image_ids:
            yield self.sample(image_id)

    def paths(self, image_id: str) -> tuple[Path, Path]:
        """The image and label map of one image: what :meth:`sample` reads."""
        return self.image_dir / f"{image_id}.jpg", self.label_dir / f"{image_id}.png"

    def files(self) -> list[Path]:
        """Every file the reader reads: each selected image and its label map."""
        return [path for image_id in self.image_ids for path in self.paths(image_id)]

    def sample(self, image_id: str) -> Sample:
        image_path, label_path = self.paths(image_id)
        image = load_rgb(image_path)
        if not label_path.is_file():
            raise MMCError(f"{label_path}: annotation of image {image_id} not found")
        labels = load_labels(label_path)
        check_same_size(image, labels, str(label_path))
        objects = tuple(
            SegObject(object_id=int(c), class_id=int(c), mask=labels == c) for c in np.unique(labels) if c != VOID_LABEL
        )
        return Sample(image_id=image_id, image=image, objects=objects, void=labels == VOID_LABEL)
