"""The rules of the zero-shot protocol that every consumer shares (docs/evaluation.md).

``mmc segment`` scores objects, ``mmc similarity`` pools token similarities and ``mmc figures`` draws
masks; all three take the tau grid, the prompts and the predicted mask from here, so what is drawn
is what was scored. Pure functions of numpy arrays and config values.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from mmc.errors import MMCError
from mmc.evaluation import metrics

UPSAMPLE_MODES = ("nearest", "bilinear")


# ----------------------------------------------------------------------------- the tau grid
def tau_key(tau: float) -> str:
    """How a tau is written in every result file: two decimals (``0.9`` -> ``"0.90"``)."""
    return f"{tau:.2f}"


def iou_column(tau: float) -> str:
    """The column of ``objects.parquet`` holding each object's IoU at ``tau`` (``"iou_0.90"``)."""
    return f"iou_{tau_key(tau)}"


def thresholds_of(evaluation: Any) -> list[float]:
    """The tau grid plus the demo tau, sorted; each must have a distinct column name."""
    taus = sorted(
        {round(float(t), 6) for t in evaluation.thresholds} | {round(float(evaluation.demo_threshold), 6)}
    )
    names = [tau_key(t) for t in taus]
    if len(set(names)) != len(names):
        raise MMCError(f"evaluation.thresholds: {taus} collide when written with two decimals")
    return taus


# ----------------------------------------------------------------------------- prompts
def prompt_rng(seed: int, image_id: str, object_id: int) -> np.random.Generator:
    """A generator that depends only on (seed, image, object): prompts do not shift with order."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(image_id.encode()), object_id % 2**32])


def object_prompts(
    sample: Any,
    grid: tuple[int, int],
    prompt: str,
    min_patches: float,
    seed: int,
    *,
    pixel_to_patch: str = "center",
    prompt_border: str = "outside",
):
    """The prompts of one image (a ``mmc.data.readers.Sample``) on a ``grid`` of tokens.

    Returns ``(kept, skipped)``: per object large enough, in the reader's order,
    ``(object, (y, x) prompt pixel, (row, col) prompt token)``; and the number of objects covering
    fewer than ``min_patches`` tokens (or empty), which are skipped. ``pixel_to_patch`` and
    ``prompt_border`` are ``evaluation.pixel_to_patch`` and ``evaluation.prompt_border``
    (:func:`mmc.evaluation.metrics.grid_index`, :func:`mmc.evaluation.metrics.prompt_point`).
    """
    h, w = sample.void.shape
    kept, skipped = [], 0
    for obj in sample.objects:
        area = int(np.count_nonzero(obj.mask))
        if area == 0 or area * grid[0] * grid[1] / (h * w) < min_patches:
            skipped += 1
            continue
        rng = prompt_rng(seed, sample.image_id, obj.object_id) if prompt == "random" else None
        y, x = metrics.prompt_point(obj.mask, prompt, rng, border=prompt_border)
        kept.append((obj, (y, x), metrics.patch_of_pixel(y, x, (h, w), grid, pixel_to_patch)))
    return kept, skipped


# ----------------------------------------------------------------------------- similarity and masks
def prompt_similarities(features: np.ndarray, tokens: list[tuple[int, int]]) -> np.ndarray:
    """(gh, gw, n): cosine similarity of every token to each prompt token ``(row, col)``.

    ``features`` are (gh, gw, D) and L2-normalised. One matrix product for all the prompts of an
    image; a caller that needs an image's maps bit for bit as scored passes the same prompts in the
    same order. The products are summed in float64 and rounded to float32 (:func:`cosine_to`).
    """
    grid_h, grid_w, dim = features.shape
    flat = features.reshape(-1, dim)
    index = [r * grid_w + c for r, c in tokens]
    return cosine_to(flat, flat[index]).reshape(grid_h, grid_w, len(index))


def cosine_to(flat: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """(N, D) x (n, D) -> (N, n) float32 dot products, summed in float64 then rounded.

    A float32 matrix product may sum in another order depending on where the arrays lie in memory
    (BLAS kernels peel unaligned heads), so the same features read from the cache and just computed
    could give similarities a last bit apart (seen with the 6-dimensional colour floor). Summed in
    float64, orders differ by ~1e-16, far below float32's resolution: the rounded values agree.
    """
    wide = np.asarray(flat, dtype=np.float64)
    return (wide @ np.asarray(prompts, dtype=np.float64).T).astype(np.float32)


def predicted_mask(
    similarity_grid: np.ndarray,
    shape: tuple[int, int],
    tau: float,
    upsample: str,
    pixel_to_patch: str = "center",
) -> np.ndarray:
    """An object's predicted mask (bool, ``shape``) from its prompt's (gh, gw) similarity map.

    ``nearest``: threshold on the grid, then nearest upsampling (each pixel takes the token it
    belongs to by ``pixel_to_patch``, :func:`mmc.evaluation.metrics.grid_index`); ``bilinear``:
    upsample the map bilinearly (half-pixel centres, whatever ``pixel_to_patch``), then threshold. A
    pixel is predicted when its similarity ``>= tau``, compared in float64 as the IoU curve of
    ``mmc segment`` compares (a float32 comparison would round ``tau``).
    """
    check_upsample(upsample)
    grid = np.asarray(similarity_grid)
    if upsample == "nearest":
        return metrics.upsample_nearest(grid.astype(np.float64) >= tau, shape, pixel_to_patch)
    return metrics.upsample_bilinear(grid, shape).astype(np.float64) >= tau


def check_upsample(upsample: str) -> None:
    if upsample not in UPSAMPLE_MODES:
        raise MMCError(f"evaluation.upsample: {upsample!r} is not one of {', '.join(UPSAMPLE_MODES)}")
