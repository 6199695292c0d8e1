"""Synthetic scenes: a deterministic segmentation dataset where a category is a shape and a texture.

No real dataset can be fetched where the tests and the demo run, so this generator draws small
scenes with several objects on cluttered backgrounds, in the on-disk layout of PASCAL VOC 2012 (so
the real VOC reader reads them unchanged), plus a folder of unlabelled images for pretraining.

**What a category is.** Each category is one shape (:data:`CATEGORIES`: disc, square, triangle,
ring, cross, star) filled with one texture family (dots, stripes, checker, concentric rings, waves,
speckle). Everything else is drawn per instance, independently of the category: the size, position
and rotation of the shape; the texture's scale (period), orientation, phase and contrast; and the
colour, one of :data:`PALETTE` (shared by all categories) with a small jitter. The texture modulates
the brightness around that colour with zero mean over the object (the pattern is standardised
within the object's mask), so an object's mean colour is its palette colour whatever its texture:
**colour carries no information about the class**; a feature that groups objects by colour groups
instances of different categories (tests/test_synthetic.py checks that the class cannot be
predicted from an object's mean colour better than chance). After the first object of a scene,
each object repeats a category already present with probability ``same_category``, so scenes hold
several instances of one category, in different colours.

Every image is drawn from its own random stream, ``default_rng([seed, stream, index])``: image ``i``
is the same whatever the number of images asked for, and the same arguments give byte-identical
files. ``scenes.jsonl`` records what was drawn (category, geometry, colour, texture parameters).
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


# ----------------------------------------------------------------------------- shapes
# Unit-size shapes in object coordinates (u, v): every pixel lies within radius sqrt(2) of the centre.
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


def _star(u, v):
    # five points: the boundary radius swings between 0.45 and 1.0 with the polar angle
    return np.hypot(u, v) <= 0.725 + 0.275 * np.cos(5.0 * np.arctan2(v, u))


# ----------------------------------------------------------------------------- textures
# Each takes texture coordinates (s, t) in periods (rotated by the texture's own orientation,
# shifted by its phase) and the distance from the object's centre in periods; returns a pattern.
def _dots(s, t, r):
    return ((np.mod(s, 1.0) - 0.5) ** 2 + (np.mod(t, 1.0) - 0.5) ** 2 < 0.09).astype(np.float32)


def _stripes(s, t, r):
    return (np.sin(2 * np.pi * s) > 0).astype(np.float32)


def _checker(s, t, r):
    return (np.mod(np.floor(s) + np.floor(t), 2) == 0).astype(np.float32)


def _concentric(s, t, r):
    return (np.sin(2 * np.pi * r) > 0).astype(np.float32)


def _waves(s, t, r):
    return (np.sin(2 * np.pi * (s + 0.35 * np.sin(np.pi * t))) > 0).astype(np.float32)


def _speckle(s, t, r):
    # a fixed pseudo-random value per cell of half a period: blocky noise
    cell_s, cell_t = np.floor(2 * s), np.floor(2 * t)
    return (np.mod(np.sin(cell_s * 12.9898 + cell_t * 78.233) * 43758.5453, 1.0) > 0.5).astype(np.float32)


@dataclass(frozen=True)
class Category:
    class_id: int
    name: str
    shape: Callable[[np.ndarray, np.ndarray], np.ndarray]  # unit-size shape in object coordinates
    texture_name: str
    texture: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


CATEGORIES: tuple[Category, ...] = (
    Category(1, "disc", _disc, "dots", _dots),
    Category(2, "square", _square, "stripes", _stripes),
    Category(3, "triangle", _triangle, "checker", _checker),
    Category(4, "ring", _ring, "concentric", _concentric),
    Category(5, "cross", _cross, "waves", _waves),
    Category(6, "star", _star, "speckle", _speckle),
)

# Object colours, shared by every category: an instance draws one uniformly. Channels stay within
# [50, 200] so that the texture's brightness swing rarely clips (clipping would shift the mean).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (190, 70, 60), (70, 160, 80), (70, 90, 190), (195, 180, 70), (170, 80, 175), (70, 170, 180),
    (200, 130, 60), (120, 80, 60), (150, 150, 150), (90, 60, 140), (130, 185, 110), (190, 140, 160),
)  # fmt: skip
COLOUR_JITTER = 8.0  # grey levels, per channel and instance
TEXTURE_PERIOD = (0.035, 0.07)  # fraction of the image side
TEXTURE_CONTRAST = (18.0, 34.0)  # grey levels per standard deviation of the standardised pattern
PIXEL_NOISE = 4.0
BACKGROUND_CELLS = (3, 7)  # palette-coloured cells of the background clutter, per image


@dataclass(frozen=True)
class PlacedObject:
    """What was drawn for one object (a line of ``scenes.jsonl`` lists them per image)."""

    object_id: int
    class_id: int
    center: tuple[float, float]  # (y, x) in pixels
    radius: float  # half the object's side, pixels; every pixel of the object is within sqrt(2) of it
    angle: float  # radians, the shape's rotation
    colour: tuple[int, int, int]  # the instance's mean colour (palette entry + jitter), RGB
    palette_index: int
    texture: str  # the category's texture family
    texture_period: float  # pixels
    texture_angle: float  # radians
    texture_phase: tuple[float, float]  # in periods
    contrast: float  # grey levels per standard deviation of the pattern


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
    """Clutter made of the objects' own colours and contrast: a mosaic of a few large cells (Voronoi
    cells of random sites), each a palette colour with a smooth blotchy texture (random low-frequency
    waves, standardised) of the objects' contrast range. Neither the colour of a patch nor its
    brightness variation tells an object from the background; its shape and texture family do."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cells = int(rng.integers(*BACKGROUND_CELLS, endpoint=True))
    sites = rng.uniform(0, 1, size=(cells, 2)).astype(np.float32)
    owner = np.argmin((y[..., None] - sites[:, 0]) ** 2 + (x[..., None] - sites[:, 1]) ** 2, axis=-1)
    colours = np.asarray(PALETTE, np.float32)[rng.integers(len(PALETTE), size=cells)]
    colours += rng.normal(0, COLOUR_JITTER, size=colours.shape).astype(np.float32)
    blotches = np.zeros((size, size), np.float32)
    for _ in range(4):
        fy, fx = rng.uniform(-6, 6, size=2)
        blotches += np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
    blotches = (blotches - blotches.mean()) / max(float(blotches.std()), 1e-6)
    contrast = rng.uniform(*TEXTURE_CONTRAST, size=cells).astype(np.float32)
    image = colours[owner] + (contrast[owner] * blotches)[..., None]
    return image + rng.normal(0, PIXEL_NOISE, size=image.shape)


def _object_coords(size: int, center: tuple[float, float], radius: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the frame of a unit-size shape centred at ``center``, rotated by ``angle``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (y - center[0]) / radius, (x - center[1]) / radius
    cos, sin = math.cos(angle), math.sin(angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _texture_coords(size: int, obj: PlacedObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, t, r): pixel coordinates rotated by the texture angle, in periods, phase-shifted; and the
    distance from the object's centre in periods (for concentric textures)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = y - obj.center[0], x - obj.center[1]
    cos, sin = math.cos(obj.texture_angle), math.sin(obj.texture_angle)
    period = obj.texture_period
    s = (cos * dx + sin * dy) / period + obj.texture_phase[0]
    t = (-sin * dx + cos * dy) / period + obj.texture_phase[1]
    return s, t, np.hypot(dy, dx) / period + obj.texture_phase[0]


def _standardised(pattern: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pattern over the mask with zero mean and unit standard deviation (zero if constant)."""
    values = pattern[mask].astype(np.float64)
    std = values.std()
    return ((values - values.mean()) / std if std > 0 else np.zeros_like(values)).astype(np.float32)


def _choose_category(rng: np.random.Generator, present: list[int], same_category: float) -> Category:
    if present and rng.random() < same_category:
        return CATEGORIES[present[int(rng.integers(len(present)))]]
    return CATEGORIES[int(rng.integers(len(CATEGORIES)))]


def draw_scene(
    rng: np.random.Generator,
    size: int,
    n_objects_range: tuple[int, int],
    scale_range: tuple[float, float],
    void_width: int,
    same_category: float = 0.5,
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
    present: list[int] = []  # indices into CATEGORIES of the objects placed so far
    n_objects = int(rng.integers(n_objects_range[0], n_objects_range[1] + 1))
    for object_id in range(1, n_objects + 1):
        category = _choose_category(rng, present, same_category)
        for _ in range(max_tries):
            radius = 0.5 * size * float(rng.uniform(*scale_range))
            low, high = radius * 0.6, size - radius * 0.6
            center = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
            angle = float(rng.uniform(0, 2 * np.pi))
            u, v = _object_coords(size, center, radius, angle)
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
        palette_index = int(rng.integers(len(PALETTE)))
        jitter = rng.normal(0, COLOUR_JITTER, size=3)
        colour = np.clip(np.asarray(PALETTE[palette_index], np.float64) + jitter, 0, 255)
        obj = PlacedObject(
            object_id=object_id,
            class_id=category.class_id,
            center=center,
            radius=radius,
            angle=angle,
            colour=(round(colour[0]), round(colour[1]), round(colour[2])),
            palette_index=palette_index,
            texture=category.texture_name,
            texture_period=float(size * rng.uniform(*TEXTURE_PERIOD)),
            texture_angle=float(rng.uniform(0, np.pi)),
            texture_phase=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
            contrast=float(rng.uniform(*TEXTURE_CONTRAST)),
        )
        instance = trial
        drawn_area[object_id] = area
        objects.append(obj)
        present.append(category.class_id - 1)
        shade = _standardised(category.texture(*_texture_coords(size, obj)), mask)
        pixels = np.asarray(obj.colour, np.float32)[None, :] + obj.contrast * shade[:, None]
        image[mask] = pixels + rng.normal(0, PIXEL_NOISE, size=(area, 3))
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
    same_category: float = 0.5

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
            same_category=section.same_category,
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
            image, classes, instance, objects = draw_scene(
                rng, spec.size, spec.objects, spec.object_scale, spec.void_width, spec.same_category
            )
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
            image, *_ = draw_scene(rng, spec.size, spec.objects, spec.object_scale, 0, spec.same_category)
            Image.fromarray(image).save(tmp / "unlabelled" / f"img_{index:06d}.jpg", quality=92)
        (tmp / "scenes.jsonl").write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in scenes))
        meta = {
            "classes": [{"id": c.class_id, "name": c.name, "texture": c.texture_name} for c in CATEGORIES],
            "palette": [list(colour) for colour in PALETTE],
            "void": VOID,
            "spec": asdict(spec),
        }
        (tmp / "classes.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out
