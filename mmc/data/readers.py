"""The one interface every evaluation dataset is read through.

A reader yields :class:`Sample`s: an RGB image, its target objects (each a boolean mask with an
object id and a class id) and a void mask (pixels excluded from every metric). Segmentation and
similarity analysis only ever see this interface; each dataset format has a module of its own
(``mmc.data.voc``, ``coco``, ``ade20k``, ``davis``) registered in :data:`READERS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmc.errors import MMCError


@dataclass(frozen=True)
class SegObject:
    object_id: int
    class_id: int
    mask: np.ndarray  # bool, H x W, at the label resolution


@dataclass(frozen=True)
class Sample:
    image_id: str
    image: np.ndarray  # uint8, H x W x 3, RGB
    objects: tuple[SegObject, ...]
    void: np.ndarray  # bool, H x W; True where labels are unknown (borders, "unlabeled")


class DatasetReader(Protocol):
    """A finite, re-iterable sequence of samples in a fixed order.

    ``files()`` lists every file the samples are read from (images, labels, split lists,
    annotation files), without reading them: the evaluation records their hashes
    (:mod:`mmc.data.digest`) and ``mmc provenance`` checks them again.
    """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Sample]: ...

    def files(self) -> list[Path]: ...


# dataset `format` (config schema) -> "module:factory"; factory(dataset_config) -> DatasetReader.
READERS: dict[str, str] = {
    "voc": "mmc.data.voc:VOCReader.from_config",
    "synthetic": "mmc.data.voc:VOCReader.from_config",  # the synthetic scenes use the VOC layout
    "coco": "mmc.data.coco:COCOReader.from_config",
    "ade20k": "mmc.data.ade20k:ADE20KReader.from_config",
    "davis": "mmc.data.davis:DAVISReader.from_config",
}


def open_reader(dataset: Any) -> DatasetReader:
    """Open the reader for a ``datasets.<name>`` config entry."""
    try:
        target = READERS[dataset.format]
    except KeyError:
        raise MMCError(f"no reader for dataset format {dataset.format!r} (known: {sorted(READERS)})") from None
    module_name, _, attr = target.partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    return factory(dataset)
