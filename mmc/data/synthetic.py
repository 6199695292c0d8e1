"""Synthetic scenes: a deterministic segmentation dataset that behaves like the real ones.

No real dataset can be fetched where the tests and the demo run, so this generator draws small
scenes with several objects from a handful of categories on textured backgrounds. Each category
has its own shape *and* its own texture and colour, so that categories are learnable by
self-supervision and a good feature extractor separates them. Scenes are written in the on-disk
layout of PASCAL VOC 2012 (so the real VOC reader reads them unchanged), plus a folder of
unlabelled images for pretraining.

Every image is drawn from its own random stream, ``default_rng([seed, stream, index])``: image ``i``
is the same whatever the number of images asked for, and the same arguments give byte-identical
files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mmc.files import atomic_path

VOID = 255
LABELLED_STREAM, UNLABELLED_STREAM = 0, 1


# ----------------------------------------------------------------------------- categories
def _disc(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)


def _triangle(u, v):
    return (v <= 0.5) & (math.sqrt(3.0) * np.abs(u) - v <= 1.0)


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5**2)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _diamond(u, v):
    return np.abs(u) + np.abs(v) <= 1.0


def _dots(u, v):
    return (np.mod(u * 4, 1) - 0.5) ** 2 + (np.mod(v * 4, 1) - 0.5) ** 2 < 0.09


def _stripes(u, v):
    return np.sin(u * 3.0 * np.pi) > 0


def _checker(u, v):
    return (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0


def _concentric(u, v):
    return np.sin(np.sqrt(u * u + v * v) * 6.0 * np.pi) > 0


def _diagonal(u, v):
    return np.sin((u + v) * 3.0 * np.pi) > 0


def _plain(u, v):
    return np.zeros_like(u, dtype=bool)


@dataclass(frozen=True)
class Category:
    class_id: int
    name: str
    shape: Callable[[np.ndarray, np.ndarray], np.ndarray]  # unit-size shape in object coordinates
    texture: Callable[[np.ndarray, np.ndarray], np.ndarray]
    colour: tuple[int, int, int]


CATEGORIES: tuple[Category, ...] = (
    Category(1, "disc", _disc, _dots, (220, 60, 50)),
    Category(2, "square", _square, _stripes, (60, 180, 75)),
    Category(3, "triangle", _triangle, _checker, (50, 90, 220)),
    Category(4, "ring", _ring, _plain, (240, 200, 40)),
    Category(5, "cross", _cross, _diagonal, (200, 70, 200)),
    Category(6, "diamond", _diamond, _concentric, (40, 200, 210)),
)


@dataclass(frozen=True)
class PlacedObject:
    object_id: int
    class_id: int
    center: tuple[float, float]  # (y, x) in pixels
    radius: float  # half the object's side, pixels; every pixel of the object is within it
    angle: float  # radians


# ----------------------------------------------------------------------------- drawing
def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), as a flat 768-entry PIL palette."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random texture: a few random sinusoidal waves per channel, plus fine noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.empty((size, size, 3), np.float32)
    base = rng.uniform(70, 170, size=3)
    for channel in range(3):
        waves = np.zeros((size, size), np.float32)
        for _ in range(3):
            fy, fx = rng.uniform(-4, 4, size=2)
            waves += np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
        image[..., channel] = base[channel] + 18.0 * waves
    image += rng.normal(0, 6.0, size=image.shape)
    return image


def _object_coords(size: int, obj: PlacedObject) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (y - obj.center[0]) / obj.radius, (x - obj.center[1]) / obj.radius
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def draw_scene(
    rng: np.random.Generator,
    size: int,
    n_objects_range: tuple[int, int],
    scale_range: tuple[float, float],
    void_width: int,
    max_tries: int = 30,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[PlacedObject]]:
    """Draw one scene. Returns (image uint8 HxWx3, class map, instance map, objects).

    Objects are painted in order (later ones occlude earlier ones). A placement is rejected when
    it would leave an earlier object, or itself, with less than half of its drawn area visible,
    so every object stays a sizeable target. Label maps carry ``VOID`` in a band of
    ``void_width`` pixels on every boundary between different instances (as VOC's 255 border).
    """
    image = _background(rng, size)
    instance = np.zeros((size, size), np.uint8)
    drawn_area: dict[int, int] = {}
    objects: list[PlacedObject] = []
    n_objects = int(rng.integers(n_objects_range[0], n_objects_range[1] + 1))
    for object_id in range(1, n_objects + 1):
        for _ in range(max_tries):
            category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            radius = 0.5 * size * float(rng.uniform(*scale_range))
            center = (float(rng.uniform(radius * 0.6, size - radius * 0.6)), float(rng.uniform(radius * 0.6, size - radius * 0.6)))
            obj = PlacedObject(object_id, category.class_id, center, radius, float(rng.uniform(0, 2 * np.pi)))
            u, v = _object_coords(size, obj)
            mask = category.shape(u, v)
            area = int(mask.sum())
            if area < 16:
                continue
            trial = np.where(mask, object_id, instance)
            visible = np.bincount(trial.ravel(), minlength=object_id + 1)
            if all(visible[k] * 2 >= drawn for k, drawn in drawn_area.items()) and visible[object_id] == area:
                break
        else:
            break  # the scene is full: fewer objects than drawn, still at least the first one
        instance = trial
        drawn_area[object_id] = area
        objects.append(obj)
        shade = 0.55 + 0.45 * category.texture(u, v)
        colour = np.clip(np.asarray(category.colour) + rng.normal(0, 12, size=3), 0, 255)
        image[mask] = shade[mask, None] * colour + rng.normal(0, 5.0, size=(area, 3))
    class_of = np.zeros(256, np.uint8)
    for obj in objects:
        class_of[obj.object_id] = obj.class_id
    classes = class_of[instance]
    if void_width > 0:
        window = 2 * void_width + 1
        border = ndimage.maximum_filter(instance, window) != ndimage.minimum_filter(instance, window)
        instance = np.where(border, VOID, instance).astype(np.uint8)
        classes = np.where(border, VOID, classes).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), classes, instance, objects


# ----------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class SyntheticSpec:
    images: int
    unlabelled_images: int
    size: int
    seed: int
    val_fraction: float
    objects: tuple[int, int]
    object_scale: tuple[float, float]
    void_width: int

    @classmethod
    def from_config(cls, section) -> SyntheticSpec:
        return cls(
            images=section.images,
            unlabelled_images=section.unlabelled_images,
            size=section.size,
            seed=section.seed,
            val_fraction=section.val_fraction,
            objects=tuple(section.objects),
            object_scale=tuple(section.object_scale),
            void_width=section.void_width,
        )


def _save_indexed_png(array: np.ndarray, path: Path, palette: list[int]) -> None:
    label = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
    label.putpalette(palette)
    label.save(path, optimize=False)


def generate(out: str | Path, spec: SyntheticSpec) -> Path:
    """Write the dataset to ``out`` (replaced atomically: never left half-written)."""
    out = Path(out)
    with atomic_path(out, directory=True) as tmp:
        voc = tmp / "VOCdevkit" / "VOC2012"
        folders = {name: voc / name for name in ("JPEGImages", "SegmentationClass", "SegmentationObject")}
        for folder in [*folders.values(), voc / "ImageSets" / "Segmentation", tmp / "unlabelled"]:
            folder.mkdir(parents=True)
        palette = voc_palette()
        ids, scenes = [], []
        for index in range(spec.images):
            rng = np.random.default_rng([spec.seed, LABELLED_STREAM, index])
            image, classes, instance, objects = draw_scene(rng, spec.size, spec.objects, spec.object_scale, spec.void_width)
            image_id = f"syn_{index:06d}"
            Image.fromarray(image).save(folders["JPEGImages"] / f"{image_id}.jpg", quality=92)
            _save_indexed_png(classes, folders["SegmentationClass"] / f"{image_id}.png", palette)
            _save_indexed_png(instance, folders["SegmentationObject"] / f"{image_id}.png", palette)
            ids.append(image_id)
            scenes.append({"image_id": image_id, "objects": [asdict(o) for o in objects]})
        n_val = round(spec.images * spec.val_fraction) if spec.images > 1 else 0
        splits = {"train": ids[: len(ids) - n_val], "val": ids[len(ids) - n_val :]}
        for split, members in splits.items():
            (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
        for index in range(spec.unlabelled_images):
            rng = np.random.default_rng([spec.seed, UNLABELLED_STREAM, index])
            image, *_ = draw_scene(rng, spec.size, spec.objects, spec.object_scale, 0)
            Image.fromarray(image).save(tmp / "unlabelled" / f"img_{index:06d}.jpg", quality=92)
        (tmp / "scenes.jsonl").write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in scenes))
        meta = {
            "classes": [{"id": c.class_id, "name": c.name} for c in CATEGORIES],
            "void": VOID,
            "spec": asdict(spec),
        }
        (tmp / "classes.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out
