"""Reading images and label maps for the dataset readers, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mmc.errors import MMCError


def load_rgb(path: Path) -> np.ndarray:
    """uint8 H x W x 3 RGB (greyscale and palette images are converted)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise MMCError(f"{path}: image file not found") from None
    except OSError as e:
        raise MMCError(f"{path}: cannot read the image ({e})") from None


def load_labels(path: Path) -> np.ndarray:
    """uint8 H x W label map from an indexed (palette) or greyscale PNG: the stored indices, not colours."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise MMCError(
                    f"{path}: expected an indexed (palette) or greyscale PNG label map, got mode {image.mode}"
                )
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise MMCError(f"{path}: label file not found") from None
    except OSError as e:
        raise MMCError(f"{path}: cannot read the label map ({e})") from None


def check_same_size(image: np.ndarray, labels: np.ndarray, where: str) -> None:
    if image.shape[:2] != labels.shape[:2]:
        raise MMCError(f"{where}: image is {image.shape[1]}x{image.shape[0]} but its labels are {labels.shape[1]}x{labels.shape[0]}")
