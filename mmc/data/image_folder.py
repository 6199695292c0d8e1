"""A generic image folder: ImageNet-style class sub-folders or a flat folder, read recursively.

Labels are ignored (self-supervised pretraining); files are listed once, sorted, so an index names
the same image on every rank and after every restart.
"""

from __future__ import annotations

from pathlib import Path

from mmc.errors import MMCError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


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

    def load(self, index: int):
        """The image as an RGB PIL image."""
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise MMCError(f"{path}: cannot read the image ({e})") from None
