"""The shared rules of the protocol: tau names, the predicted mask against formulas written here, and
the agreement of `mmc segment`'s fast IoU computation with that mask."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from segmentation_fixtures import TINY_ARCH, handmade_features, handmade_sample, make_voc

from mmc.errors import MMCError
from mmc.evaluation.metrics import iou
from mmc.evaluation.protocol import (
    iou_column,
    object_prompts,
    predicted_mask,
    prompt_similarities,
    tau_key,
    thresholds_of,
)
from mmc.evaluation.segment import evaluate_image


def test_tau_names_and_grid():
    assert tau_key(0.9) == "0.90" and tau_key(0.05) == "0.05" and tau_key(-0.5) == "-0.50"
    assert iou_column(0.9) == "iou_0.90" and iou_column(0) == "iou_0.00"
    evaluation = SimpleNamespace(thresholds=[0.5, 0.1, 0.5], demo_threshold=0.9)
    assert thresholds_of(evaluation) == [0.1, 0.5, 0.9]  # the demo tau is always in, once
    with pytest.raises(MMCError, match="collide when written with two decimals"):
        thresholds_of(SimpleNamespace(thresholds=[0.9, 0.901], demo_threshold=0.9))


# ----------------------------------------------------------------------------- references
def reference_nearest(grid: np.ndarray, shape, tau: float, pixel_to_patch: str = "center") -> np.ndarray:
    """Each pixel takes the token whose cell holds the pixel's centre, row = floor((y + 1/2) gh / H)
    (``center``), or its top-left corner, row = floor(y gh / H) (``floor``)."""
    gh, gw = grid.shape
    h, w = shape
    offset = 0.5 if pixel_to_patch == "center" else 0.0
    out = np.zeros(shape, bool)
    for y in range(h):
        for x in range(w):
            row = min(math.floor((y + offset) * gh / h), gh - 1)
            col = min(math.floor((x + offset) * gw / w), gw - 1)
            out[y, x] = grid[row, col] >= tau
    return out


def reference_bilinear_value(grid: np.ndarray, y: int, x: int, shape) -> float:
    """Bilinear interpolation with half-pixel centres: pixel y samples source row (y + 1/2) gh / H - 1/2,
    clamped to the grid (as `align_corners=False`)."""
    gh, gw = grid.shape
    h, w = shape

    def source(i, n_in, n_out):
        s = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        lo = math.floor(s)
        return lo, min(lo + 1, n_in - 1), s - lo

    r0, r1, fy = source(y, gh, h)
    c0, c1, fx = source(x, gw, w)
    top = grid[r0, c0] * (1 - fx) + grid[r0, c1] * fx
    bottom = grid[r1, c0] * (1 - fx) + grid[r1, c1] * fx
    return float(top * (1 - fy) + bottom * fy)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("grid_shape", "shape"), [((4, 4), (16, 16)), ((3, 5), (10, 17)), ((6, 4), (7, 29))])
def test_predicted_mask_nearest_equals_the_formula(seed, grid_shape, shape):
    grid = np.round(np.random.default_rng(seed).uniform(-1, 1, grid_shape), 2)  # ties with tau happen
    for tau in (-0.5, 0.0, 0.3, 0.31, 1.0):
        mask = predicted_mask(grid, shape, tau, "nearest")
        assert mask.dtype == bool and mask.shape == shape
        np.testing.assert_array_equal(mask, reference_nearest(grid, shape, tau))
        floor = predicted_mask(grid, shape, tau, "nearest", "floor")
        np.testing.assert_array_equal(floor, reference_nearest(grid, shape, tau, "floor"))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("grid_shape", "shape"), [((4, 4), (16, 16)), ((3, 5), (10, 17)), ((6, 4), (7, 29))])
def test_predicted_mask_bilinear_equals_the_formula(seed, grid_shape, shape):
    grid = np.random.default_rng(seed).uniform(-1, 1, grid_shape)
    values = np.array(
        [[reference_bilinear_value(grid, y, x, shape) for x in range(shape[1])] for y in range(shape[0])]
    )
    for tau in (-0.5, 0.0, 0.3, 0.7):
        mask = predicted_mask(grid, shape, tau, "bilinear")
        assert mask.dtype == bool and mask.shape == shape
        # the implementation interpolates with float32 weights: compare away from the threshold
        clear = np.abs(values - tau) > 1e-6
        assert clear.mean() > 0.98
        np.testing.assert_array_equal(mask[clear], (values >= tau)[clear])
    assert predicted_mask(grid, shape, -1.0, "bilinear").all()  # every value is >= -1


def test_predicted_mask_compares_in_float64():
    """A float32 similarity just below tau is not predicted (a float32 comparison would round tau up)."""
    below = np.float32(0.9) if float(np.float32(0.9)) < 0.9 else np.nextafter(np.float32(0.9), np.float32(0))
    grid = np.full((2, 2), below, np.float32)
    assert not predicted_mask(grid, (4, 4), 0.9, "nearest").any()
    assert not predicted_mask(grid, (4, 4), 0.9, "bilinear").any()
    with pytest.raises(MMCError, match=r"evaluation\.upsample: 'bicubic'"):
        predicted_mask(grid, (4, 4), 0.9, "bicubic")


# ----------------------------------------------------------------------------- segment agrees
def assert_rows_are_ious_of_predicted_masks(
    features, sample, rows, thresholds, upsample, pixel_to_patch="center", prompt_border="outside"
):
    kept, _ = object_prompts(
        sample, features.shape[:2], "center", 2, 0, pixel_to_patch=pixel_to_patch, prompt_border=prompt_border
    )
    assert [obj.object_id for obj, _, _ in kept] == [row["object_id"] for row in rows]
    assert [(y, x, r, c) for _, (y, x), (r, c) in kept] == [
        (row["prompt_y"], row["prompt_x"], row["prompt_row"], row["prompt_col"]) for row in rows
    ]
    sims = prompt_similarities(features, [token for _, _, token in kept])
    for k, (obj, _, _) in enumerate(kept):
        row = rows[k]
        for tau in thresholds:
            mask = predicted_mask(sims[..., k], sample.void.shape, tau, upsample, pixel_to_patch)
            assert iou(mask, obj.mask, sample.void) == row[iou_column(tau)], (obj.object_id, tau)
        if math.isfinite(row["oracle_tau"]):  # the oracle's threshold reaches the oracle's IoU
            mask = predicted_mask(sims[..., k], sample.void.shape, row["oracle_tau"], upsample, pixel_to_patch)
            assert iou(mask, obj.mask, sample.void) == pytest.approx(row["oracle_iou"], abs=1e-12)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_segment_ious_are_those_of_the_predicted_masks_by_hand(upsample):
    thresholds = [0.0, 0.5, 1.0]
    rows, _ = evaluate_image(handmade_features(), handmade_sample(), thresholds, upsample=upsample, min_patches=2)
    assert len(rows) == 2
    assert_rows_are_ious_of_predicted_masks(handmade_features(), handmade_sample(), rows, thresholds, upsample)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_segment_ious_are_those_of_the_predicted_masks_on_vit_features(tmp_path, upsample):
    """Real features (a random tiny ViT on scenes written to disk): every object, every tau."""
    from mmc.data.voc import VOCReader
    from mmc.evaluation.features import iter_features
    from mmc.models import random_backbone

    voc = make_voc(tmp_path / "VOC2012", n_images=3)
    thresholds = [round(0.05 * i, 2) for i in range(-4, 20)]
    checked = 0
    for sample, feats in iter_features(random_backbone(TINY_ARCH, 0), VOCReader(voc), resolution=64):
        features = feats.numpy()
        rows, _ = evaluate_image(features, sample, thresholds, upsample=upsample, min_patches=2)
        assert_rows_are_ious_of_predicted_masks(features, sample, rows, thresholds, upsample)
        checked += len(rows)
        conventions = {"pixel_to_patch": "floor", "prompt_border": "ignore"}
        rows, _ = evaluate_image(features, sample, thresholds, upsample=upsample, min_patches=2, **conventions)
        assert_rows_are_ious_of_predicted_masks(features, sample, rows, thresholds, upsample, **conventions)
    assert checked >= 6
