"""DAVIS-2017 (480p): every object in every annotated frame of the split's sequences.

Annotations are indexed PNGs: 0 background, objects 1..n, 255 void. Frames are treated as still
images; ``frame_step`` keeps every k-th annotated frame of each sequence (starting at the first).
The trainval archive has no semantic classes, so ``class_id`` is :data:`UNKNOWN_CLASS` (0).
``image_id`` is ``<sequence>/<frame>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmc.data.imageio import check_same_size, load_labels, load_rgb
from mmc.data.readers import Sample, SegObject
from mmc.errors import MMCError

VOID_LABEL = 255
UNKNOWN_CLASS = 0
RESOLUTION = "480p"


class DAVISReader:
    def __init__(self, root: str | Path, split: str = "val", *, frame_step: int = 1, max_images: int | None = None):
        self.root = Path(root)
        split_file = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if not split_file.is_file():
            raise MMCError(f"{split_file}: DAVIS-2017 split file not found")
        if frame_step < 1:
            raise MMCError(f"frame_step must be >= 1, got {frame_step}")
        sequences = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        self.frames: list[tuple[str, str]] = []
        for seq in sequences:
            label_dir = self.root / "Annotations" / RESOLUTION / seq
            stems = sorted(p.stem for p in label_dir.glob("*.png"))
            if not stems:
                raise MMCError(f"{label_dir}: no annotated frames for sequence {seq!r} of {split_file}")
            self.frames += [(seq, stem) for stem in stems[::frame_step]]
        self.frames = self.frames[:max_images]
        self.split_file = split_file

    @classmethod
    def from_config(cls, dataset: Any) -> DAVISReader:
        return cls(dataset.root, dataset.split, frame_step=dataset.frame_step, max_images=dataset.max_images)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Sample]:
        for seq, frame in self.frames:
            yield self.sample(seq, frame)

    def paths(self, seq: str, frame: str) -> tuple[Path, Path]:
        """The frame and its annotation: what :meth:`sample` reads."""
        return (self.root / "JPEGImages" / RESOLUTION / seq / f"{frame}.jpg",
                self.root / "Annotations" / RESOLUTION / seq / f"{frame}.png")  # fmt: skip

    def files(self) -> list[Path]:
        """Every file the reader reads: the split file and each selected frame with its annotation."""
        return [self.split_file, *(path for seq, frame in self.frames for path in self.paths(seq, frame))]

    def sample(self, seq: str, frame: str) -> Sample:
        image_path, label_path = self.paths(seq, frame)
        image = load_rgb(image_path)
        labels = load_labels(label_path)
        check_same_size(image, labels, str(label_path))
        objects = tuple(
            SegObject(object_id=int(o), class_id=UNKNOWN_CLASS, mask=labels == o)
            for o in np.unique(labels)
            if o not in (0, VOID_LABEL)
        )
        return Sample(image_id=f"{seq}/{frame}", image=image, objects=objects, void=labels == VOID_LABEL)
