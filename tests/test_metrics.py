"""The protocol's maths on hand-made masks, and the vectorised forms against plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from mmc.evaluation import metrics


def test_grid_index_is_centre_aligned_nearest():
    assert metrics.grid_index(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    # (y + 0.5) * 2 / 5 = 0.2, 0.6, 1.0, 1.4, 1.8
    assert metrics.grid_index(5, 2).tolist() == [0, 0, 1, 1, 1]
    assert metrics.patch_of_pixel(2, 4, (5, 5), (2, 2)) == (1, 1)
    assert metrics.patch_of_pixel(1, 0, (5, 5), (2, 2)) == (0, 0)


def patch_reference(i: int, size: int, grid: int, pixel_to_patch: str) -> int:
    """Integer arithmetic: center = floor((2i + 1) grid / 2 size); floor = floor(i grid / size)."""
    if pixel_to_patch == "center":
        return min((2 * i + 1) * grid // (2 * size), grid - 1)
    return min(i * grid // size, grid - 1)


@pytest.mark.parametrize("pixel_to_patch", ["center", "floor"])
def test_grid_index_equals_integer_formulas(pixel_to_patch):
    for size in (1, 5, 7, 16, 33, 375, 500):
        for grid in (1, 2, 3, 4, 7, 30):
            got = metrics.grid_index(size, grid, pixel_to_patch)
            assert got.tolist() == [patch_reference(i, size, grid, pixel_to_patch) for i in range(size)]
    h, w, gh, gw = 11, 13, 3, 4
    for y in range(h):
        for x in range(w):
            expected = (patch_reference(y, h, gh, pixel_to_patch), patch_reference(x, w, gw, pixel_to_patch))
            assert metrics.patch_of_pixel(y, x, (h, w), (gh, gw), pixel_to_patch) == expected
            ids = metrics.patch_ids((h, w), (gh, gw), pixel_to_patch)
            assert ids[y, x] == expected[0] * gw + expected[1]


def test_floor_mapping_by_hand():
    # floor(y * 2 / 5) = 0, 0, 0, 1, 1 (centre-aligned: 0, 0, 1, 1, 1)
    assert metrics.grid_index(5, 2, "floor").tolist() == [0, 0, 0, 1, 1]
    grid = np.array([[1, 2], [3, 4]])
    assert metrics.upsample_nearest(grid, (5, 3), "floor").tolist() == [[1, 1, 2]] * 3 + [[3, 3, 4]] * 2
    assert metrics.upsample_nearest(grid, (5, 3)).tolist() == [[1, 2, 2]] * 2 + [[3, 4, 4]] * 3
    labels = np.array([[0, 1, 1], [0, 1, 1], [1, 1, 0]])  # 3 x 3 on a 2 x 2 grid
    # floor: token (0, 0) = pixels (0..1, 0..1): labels 0, 1, 0, 1
    np.testing.assert_allclose(metrics.token_fractions(labels, 2, (2, 2), "floor")[0], [0, 0.5, 0.5])
    # center: token (0, 0) = pixel (0, 0) only
    np.testing.assert_allclose(metrics.token_fractions(labels, 2, (2, 2))[0], [0, 1, 0])
    with pytest.raises(ValueError, match="pixel_to_patch"):
        metrics.grid_index(5, 2, "round")


def test_iou_by_hand():
    pred = np.zeros((4, 4), bool)
    pred[0:2, 0:2] = True  # 4 pixels
    gt = np.zeros((4, 4), bool)
    gt[0:2, 1:4] = True  # 6 pixels, 2 shared with pred
    assert metrics.iou(pred, gt) == pytest.approx(2 / 8)
    void = np.zeros((4, 4), bool)
    void[0, 0] = True  # a predicted, non-target pixel becomes void: union 7
    assert metrics.iou(pred, gt, void) == pytest.approx(2 / 7)
    void[0, 1] = True  # a shared pixel becomes void: 1 / 6
    assert metrics.iou(pred, gt, void) == pytest.approx(1 / 6)


def test_iou_empty_cases():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.iou(empty, full) == 0.0
    assert metrics.iou(full, empty) == 0.0
    assert metrics.iou(full, full, void=full) == 1.0  # everything void: nothing to get wrong


def brute_force_curve(sim_grid, gt, void, thresholds, upsample):
    """Per threshold: threshold (on the grid or after upsampling), then IoU. Loops, no tricks."""
    out = []
    h, w = gt.shape
    for tau in thresholds:
        if upsample == "nearest":
            grid_mask = sim_grid >= tau
            pred = np.zeros((h, w), bool)
            for y in range(h):
                for x in range(w):
                    r, c = metrics.patch_of_pixel(y, x, (h, w), sim_grid.shape)
                    pred[y, x] = grid_mask[r, c]
        else:
            pred = metrics.upsample_bilinear(sim_grid, (h, w)) >= tau
        out.append(metrics.iou(pred, gt, void))
    return np.array(out)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_iou_curve_equals_a_loop(upsample, seed):
    rng = np.random.default_rng(seed)
    grid = (3, 4)
    h, w = 10, 13
    sim = np.round(rng.uniform(-1, 1, grid), 2)  # rounded: ties with thresholds happen
    gt = rng.random((h, w)) < 0.4
    void = rng.random((h, w)) < 0.1
    gt &= ~void
    thresholds = np.round(np.arange(-1, 1.0001, 0.05), 2)
    valid = ~void
    if upsample == "nearest":
        pid = metrics.patch_ids((h, w), grid)
        pos = np.bincount(pid[gt & valid], minlength=12)
        neg = np.bincount(pid[valid & ~gt], minlength=12)
        scores = sim.ravel()
    else:
        up = metrics.upsample_bilinear(sim, (h, w))
        scores, pos, neg = up[valid], gt[valid].astype(float), (~gt[valid]).astype(float)
    got = metrics.iou_curve(scores, pos, neg, thresholds)
    np.testing.assert_allclose(got, brute_force_curve(sim, gt, void, thresholds, upsample), atol=1e-12)
    tau, best = metrics.oracle_iou(scores, pos, neg)
    every = brute_force_curve(
        sim, gt, void, np.unique(sim) if upsample == "nearest" else np.unique(scores), upsample
    )
    assert best == pytest.approx(every.max())
    assert best >= got.max() - 1e-12  # the oracle is at least as good as any grid threshold
    assert metrics.iou_curve(scores, pos, neg, [tau])[0] == pytest.approx(best)


def test_iou_curve_empty_target_and_prediction():
    scores = np.array([0.2, 0.4])
    pos = np.array([0.0, 0.0])
    neg = np.array([3.0, 1.0])
    # tau 0.5: nothing predicted, nothing to find -> 1; tau 0.3: 1 false pixel -> 0.
    assert metrics.iou_curve(scores, pos, neg, [0.5, 0.3]).tolist() == [1.0, 0.0]
    assert metrics.oracle_iou(scores, pos, neg)[1] == 1.0


def test_upsample_nearest_by_hand():
    grid = np.array([[1, 2], [3, 4]])
    assert metrics.upsample_nearest(grid, (3, 4)).tolist() == [[1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_upsample_bilinear_matches_torch():
    import torch

    grid = np.random.default_rng(0).random((2, 3, 5)).astype(np.float32)
    ours = metrics.upsample_bilinear(grid, (7, 11))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None], size=(7, 11), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(ours, ref[0].numpy(), atol=1e-6)


def test_center_prompt_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[2:7, 1:8] = True  # rows 2-6, cols 1-7: distance 3 at (4, 3), (4, 4), (4, 5)
    assert metrics.prompt_point(mask) == (4, 3)  # first in raster order
    full = np.ones((5, 5), bool)
    assert metrics.prompt_point(full) == (2, 2)  # the image border counts as outside
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False  # a hole: the centre of the box is not on the object
    y, x = metrics.prompt_point(ring)
    assert ring[y, x]


def test_center_prompt_equals_the_full_image_distance_transform():
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((30, 40), bool)
        for _ in range(3):
            y, x = rng.integers(0, 25), rng.integers(0, 35)
            mask[y : y + rng.integers(1, 12), x : x + rng.integers(1, 15)] = True
        full = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        assert metrics.prompt_point(mask) == np.unravel_index(np.argmax(full), mask.shape)


def brute_force_center_prompt(mask: np.ndarray, border: str) -> tuple[int, int]:
    """Max over object pixels of the Euclidean distance to the nearest non-object pixel: background
    pixels of the image, plus (``outside``) the ring of pixels just outside the image; first in
    raster order on ties. Written with plain loops and broadcasting, no distance transform."""
    h, w = mask.shape
    ys, xs = np.nonzero(~mask)
    background = list(zip(ys.tolist(), xs.tolist(), strict=True))
    if border == "outside":
        background += [(-1, x) for x in range(-1, w + 1)] + [(h, x) for x in range(-1, w + 1)]
        background += [(y, -1) for y in range(h)] + [(y, w) for y in range(h)]
    bg = np.array(background, dtype=np.float64).reshape(-1, 2)
    best, best_point = -1.0, None
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            d = np.sqrt(((bg - (y, x)) ** 2).sum(axis=1)).min() if len(bg) else np.inf
            if d > best:
                best, best_point = d, (y, x)
    return best_point


@pytest.mark.parametrize("border", ["outside", "ignore"])
def test_center_prompt_equals_a_brute_force_distance(border):
    rng = np.random.default_rng(5)
    for trial in range(40):
        h, w = int(rng.integers(3, 14)), int(rng.integers(3, 14))
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, h), rng.integers(0, w)
            mask[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = True  # often on a border
        if trial % 10 == 0:
            mask[:] = True
            mask[rng.integers(0, h), rng.integers(0, w)] = trial % 20 == 0  # one hole, or none
        assert metrics.prompt_point(mask, border=border) == brute_force_center_prompt(mask, border), (trial, mask)


def test_image_border_conventions_by_hand():
    mask = np.zeros((6, 10), bool)
    mask[0:6, 0:4] = True  # touches the top, bottom and left borders; background from column 4
    # outside: at most 2 from the left border (column -1), first reached at (1, 1) in raster order
    assert metrics.prompt_point(mask, border="outside") == (1, 1)
    assert metrics.prompt_point(mask, border="ignore") == (0, 0)  # 4 from column 4: every pixel of column 0
    assert metrics.prompt_point(np.ones((3, 4), bool), border="ignore") == (0, 0)  # no boundary at all: a tie
    with pytest.raises(ValueError, match="prompt border"):
        metrics.prompt_point(mask, border="inside")


def test_random_prompt_is_inside_and_seeded():
    mask = np.zeros((20, 20), bool)
    mask[5:9, 3:17] = True
    points = [metrics.prompt_point(mask, "random", np.random.default_rng(s)) for s in range(20)]
    assert all(mask[p] for p in points)
    assert len(set(points)) > 5
    assert metrics.prompt_point(mask, "random", np.random.default_rng(7)) == points[7]
    with pytest.raises(ValueError, match="seeded generator"):
        metrics.prompt_point(mask, "random")
    with pytest.raises(ValueError, match="empty mask"):
        metrics.prompt_point(np.zeros((3, 3), bool))


def test_token_fractions_by_hand():
    labels = np.array(
        [
            [0, 0, 1, 1],
            [0, 1, 1, 1],
            [-1, -1, 0, 0],
            [-1, 2, 0, 0],
        ]
    )
    frac = metrics.token_fractions(labels, 3, (2, 2))
    # columns: void, label 0, label 1, label 2; tokens in raster order
    expected = [
        [0, 0.75, 0.25, 0],
        [0, 0, 1, 0],
        [0.75, 0, 0, 0.25],
        [0, 1, 0, 0],
    ]
    np.testing.assert_allclose(frac, expected)


def test_histogram_overlap_by_hand():
    a = np.array([-0.9, -0.9, 0.5, 0.5])
    b = np.array([0.5, 0.5, 0.5, 0.9])
    # bins [-1, 0), [0, 1]: p_a = (0.5, 0.5), p_b = (0, 1) -> overlap 0.5
    assert metrics.histogram_overlap(a, b, 2) == pytest.approx(0.5)
    assert metrics.histogram_overlap(a, a, 7) == pytest.approx(1.0)
    assert metrics.histogram_overlap(np.array([-1.0]), np.array([1.0]), 4) == 0.0
    p, edges = metrics.histogram(np.array([1.0, 1.0000001, -1.0]), 4)  # edges and rounding included
    assert p.tolist() == [1 / 3, 0, 0, 2 / 3] and edges[0] == -1 and edges[-1] == 1


def test_best_balanced_accuracy_by_hand():
    pos = np.array([0.9, 0.8])
    neg = np.array([0.1, 0.85])
    # t = 0.8: TPR 1, TNR 0.5; t = 0.9: TPR 0.5, TNR 1 -> 0.75, lowest t on ties
    assert metrics.best_balanced_accuracy(pos, neg) == (0.75, 0.8)
    assert metrics.best_balanced_accuracy(np.array([0.5, 0.6]), np.array([0.1, 0.2])) == (1.0, 0.5)
    with pytest.raises(ValueError):
        metrics.best_balanced_accuracy(pos, np.array([]))


def test_best_balanced_accuracy_equals_a_loop():
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(0.5, 0.2, 60), 2)
    neg = np.round(rng.normal(0.2, 0.3, 90), 2)
    best = max((np.mean(pos >= t) + np.mean(neg < t)) / 2 for t in sorted(set(pos) | set(neg) | {np.inf}))
    assert metrics.best_balanced_accuracy(pos, neg)[0] == pytest.approx(best)
