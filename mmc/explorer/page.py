"""Assembling the explorer page: images, annotations and encoded features into one HTML file.

Everything the page needs is inside it (CSS, JavaScript, JPEG images and data as base64), so it
opens from a file, from the Snakemake report or from an e-mail attachment, with no network. The same
inputs give the same bytes.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from mmc.explorer.encode import EncodedFeatures, b64

JPEG_QUALITY = 90
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PageModel:
    """A model's column of the page: its name, its best tau on the dataset (None when unknown) and
    its encoded features, one per image of the page, in order."""

    name: str
    best_tau: float | None
    features: Sequence[EncodedFeatures]


def _packed(mask: np.ndarray) -> str:
    return b64(zlib.compress(np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes(), 9))


def _jpeg(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return b64(buffer.getvalue())


def image_entry(sample: Any, prompts: dict[int, tuple[int, int]] | None = None) -> dict:
    """The page's record of one ``mmc.data.readers.Sample``: the JPEG, the void mask and every
    object's mask (bit-packed, deflated), with the evaluated prompt pixel of each object that
    ``mmc segment`` scored (``prompts``: object id -> (y, x))."""
    prompts = prompts or {}
    h, w = sample.void.shape
    return {
        "id": str(sample.image_id),
        "h": int(h),
        "w": int(w),
        "jpeg": _jpeg(sample.image),
        "void": _packed(sample.void),
        "objects": [
            {
                "id": int(obj.object_id),
                "class_id": int(obj.class_id),
                "mask": _packed(obj.mask),
                "prompt": list(map(int, prompts[int(obj.object_id)])) if int(obj.object_id) in prompts else None,
            }
            for obj in sample.objects
        ],
    }


def features_entry(enc: EncodedFeatures) -> dict:
    return {
        "grid": [int(enc.grid[0]), int(enc.grid[1])],
        "bits": enc.bits,
        "rank": enc.rank,
        "e_max": int(enc.e_max),
        "shifts": [int(s) for s in enc.shifts],
        "eps": float(enc.eps if enc.eps is not None else 0.0),
        "q": b64(enc.payload()),
    }


def _colormap() -> list[str]:
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.linspace(0.0, 1.0, 256))
    return ["#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in row[:3])) for row in rgba]


def _asset(name: str) -> str:
    return resources.files("mmc.explorer").joinpath(name).read_text(encoding="utf-8")


def page_data(
    *,
    run: str,
    dataset: str,
    upsample: str,
    thresholds: Sequence[float],
    demo_tau: float,
    images: Sequence[dict],
    models: Sequence[PageModel],
) -> dict:
    entries = [
        {**image, "features": [features_entry(m.features[i]) for m in models]} for i, image in enumerate(images)
    ]
    return {
        "format": "mmc-explorer",
        "version": FORMAT_VERSION,
        "run": run,
        "dataset": dataset,
        "upsample": upsample,
        "tau_min": float(min(min(thresholds), demo_tau)),
        "tau_max": float(max(max(thresholds), demo_tau)),
        "demo_tau": float(demo_tau),
        "colormap": _colormap(),
        "models": [
            {
                "name": m.name,
                "best_tau": None if m.best_tau is None else float(m.best_tau),
                "bits": max((f.bits for f in m.features), default=0),
                "rank": max((f.rank for f in m.features), default=0),
                "dim": max((f.dim for f in m.features), default=0),
                "eps": max((float(f.eps or 0.0) for f in m.features), default=0.0),
            }
            for m in models
        ],
        "images": entries,
    }


def render(data: dict) -> str:
    """The HTML page of ``data`` (:func:`page_data`)."""
    colours = data["colormap"]
    gradient = "linear-gradient(to right, " + ", ".join(colours[i] for i in (0, 64, 128, 192, 255)) + ")"
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    fields = {
        "dataset": _html_escape(data["dataset"]),
        "upsample": data["upsample"],
        "gradient": gradient,
        "n_images": str(len(data["images"])),
        "css": _asset("explorer.css"),
        "js": _asset("explorer.js"),
        "data": text,
    }
    # one pass over the template: inserted text is never scanned for placeholders
    return re.sub(r"\{(\w+)\}", lambda m: fields[m.group(1)], _asset("explorer.html"))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
