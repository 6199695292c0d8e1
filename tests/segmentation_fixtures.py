"""Small VOC-layout scenes and configs for the segmentation/similarity tests (real files on disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mmc.data.readers import Sample, SegObject

TINY_ARCH = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 4.0, "img_size": 32}


def _palette_png(array: np.ndarray, path: Path) -> None:
    img = Image.fromarray(array.astype(np.uint8), mode="P")
    palette = [0, 0, 0] * 256
    for i in range(1, 256):
        palette[3 * i : 3 * i + 3] = [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256]
    img.putpalette(palette)
    img.save(path)


def scene(index: int, height: int = 48, width: int = 64):
    """An image with three rectangles (one tiny), a void band around the second, and labels."""
    rng = np.random.default_rng(index)
    image = (rng.random((height, width, 3)) * 60).astype(np.uint8)
    instances = np.zeros((height, width), np.uint8)
    classes = np.zeros((height, width), np.uint8)
    boxes = [
        (4 + index, 4, 24 + index, 28, 1, (220, 40, 40)),  # large, class 1
        (26, 34, 44, 60, 2, (40, 200, 60)),  # class 2, void band around it
        (2, 56, 4, 58, 3, (40, 40, 230)),  # 2 x 2 pixels: below the minimum size
    ]
    for object_id, (y0, x0, y1, x1, cls, colour) in enumerate(boxes, start=1):
        if object_id == 2:
            instances[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255
            classes[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255
        instances[y0:y1, x0:x1] = object_id
        classes[y0:y1, x0:x1] = cls
        image[y0:y1, x0:x1] = colour
    return image, instances, classes


def make_voc(root: Path, n_images: int = 3, split: str = "val") -> Path:
    """Write ``n_images`` scenes in the VOC2012 layout under ``root``; return ``root``."""
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n_images):
        image_id = f"2007_{i:06d}"
        image, instances, classes = scene(i)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        _palette_png(instances, root / "SegmentationObject" / f"{image_id}.png")
        _palette_png(classes, root / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def segmentation_config(tmp: Path, voc_root: Path, models: dict | None = None, **sections) -> dict:
    """A config evaluating ``models`` (default: one random tiny ViT) on the VOC-layout scenes at
    ``voc_root``, its results and state under ``tmp``. ``sections``: top-level keys; a mapping
    updates the section's own (one level: ``datasets={"scenes": ...}`` replaces that entry).
    Write it with ``write_config``."""
    cfg = {
        "run_name": "test",
        "results_dir": str(tmp / "results"),
        "state_dir": str(tmp / "state"),
        "device": "cpu",
        "models": models or {"tiny": {"source": "random", "backbone": TINY_ARCH, "seed": 0}},
        "datasets": {"scenes": {"format": "voc", "root": str(voc_root), "split": "val"}},
        "evaluation": {"resolution": 64, "batch_size": 2, "num_workers": 0},
        "similarity": {"bins": 20},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def handmade_sample():
    """16 x 16 labels on a 4 x 4 grid (4 px per token)."""
    a = np.zeros((16, 16), bool)
    a[0:8, 0:8] = True  # tokens (0,0) (0,1) (1,0) (1,1) exactly
    c = np.zeros((16, 16), bool)
    c[0:6, 10:16] = True  # 36 px inside tokens (0,2) (0,3) (1,2) (1,3), which hold 64 px
    tiny = np.zeros((16, 16), bool)
    tiny[14:16, 0:2] = True  # 4 px = 0.25 token: skipped
    void = np.zeros((16, 16), bool)
    void[8, :] = True  # 16 void px in row 8 (token row 2), none on a or c
    objects = (SegObject(1, 5, a), SegObject(2, 7, c), SegObject(3, 9, tiny))
    return Sample("hand", np.zeros((16, 16, 3), np.uint8), objects, void)


def handmade_features():
    feats = np.zeros((4, 4, 3), np.float32)
    feats[..., 2] = 1  # background direction
    feats[0:2, 0:2] = [1, 0, 0]  # object a's tokens
    feats[0:2, 2:4] = [0, 1, 0]  # tokens around object c
    return feats


def save_in_format(state: dict, fmt: str, path: Path) -> None:
    """The same weights in each source format's layout."""
    import argparse

    import torch

    wrapped = {
        "mmc": {
            "format": "mmc",
            "format_version": 1,
            "arch": TINY_ARCH,
            "teacher": {f"backbone.{k}": v for k, v in state.items()},
            "student": {f"backbone.{k}": v for k, v in state.items()},
            "epoch": 1,
            "step": 1,
            "config": {},
            "versions": {},
        },
        "dino": {
            "teacher": {f"backbone.{k}": v for k, v in state.items()},
            "student": {f"module.backbone.{k}": v for k, v in state.items()},
            "dino_loss": {},
            "args": argparse.Namespace(arch="vit_tiny"),
            "epoch": 1,
        },
        "ibot": {"state_dict": state},
        "mae": {
            "model": {**state, "mask_token": torch.zeros(1, 1, 8), "decoder_embed.weight": torch.zeros(8, 48)}
        },
        "mocov3": {
            "arch": "vit_tiny",
            "state_dict": {f"module.base_encoder.{k}": v for k, v in state.items()},
        },
        "timm": state,
    }[fmt]
    torch.save(wrapped, path)
