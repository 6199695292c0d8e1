"""A generic image folder: ImageNet-style class sub-folders or a flat folder, read recursively.

For small data (the synthetic scenes, tests): opening lists the whole tree, which for ImageNet
means stat'ing 1.28 M files on every rank at every start; large data goes into shards instead
(:mod:`mmc.data.shards`, ``mmc data shard``). Labels are ignored (self-supervised pretraining);
files are listed once, sorted, so an index names the same image on every rank and after every
restart (and the same image as in shards written from this folder).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mmc.errors import MMCError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of an encoded image (greyscale, CMYK and palette are converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MMCError(f"{where}: cannot read the image ({e})") from None


def image_header(data: bytes, where: str) -> tuple[int, int, bool]:
    """(width, height, nvJPEG-decodable) from an encoded image's header; MMCError if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height, image.format == "JPEG" and image.mode in ("RGB", "L")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MMCError(f"{where}: not a readable image ({e})") from None


class ImageFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MMCError(f"{self.root}: image folder not found (pretrain data.path must be a directory of images)")
        self.files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise MMCError(
                f"{self.root}: no images found (expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}, "
                "flat or in class sub-folders)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def read(self, index: int) -> bytes:
        """The encoded image."""
        try:
            return self.files[index].read_bytes()
        except OSError as e:
            raise MMCError(f"{self.files[index]}: cannot read the image ({e.strerror or e})") from None

    def size(self, index: int) -> tuple[int, int, bool]:
        """(width, height, nvJPEG-decodable) from the image's header."""
        return image_header(self.read(index), str(self.files[index]))

    def load(self, index: int):
        """The image as an RGB PIL image."""
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise MMCError(f"{path}: cannot read the image ({e})") from None
