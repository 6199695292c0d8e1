"""Pure maths of the zero-shot protocol (docs/evaluation.md), on numpy arrays.

Conventions shared by every function here (docs/method.md#conventions):
- a label pixel (y, x) of an H x W label map belongs to the patch (row, col) of a gh x gw grid given
  by ``evaluation.pixel_to_patch``: ``center`` (default) = centre-aligned nearest neighbour,
  ``row = floor((y + 0.5) * gh / H)``; ``floor`` = ``row = floor(y * gh / H)``. Upsampling a patch
  map, placing a prompt token and token membership all use this one mapping;
- IoU excludes void pixels from prediction and ground truth; an empty prediction of an empty target
  scores 1;
- a threshold ``tau`` predicts ``score >= tau``.
"""

from __future__ import annotations

import math

import numpy as np

# ----------------------------------------------------------------------------- grid geometry
PIXEL_TO_PATCH = ("center", "floor")


def grid_index(size: int, grid: int, pixel_to_patch: str = "center") -> np.ndarray:
    """For each of ``size`` label pixels along one axis, the index of its patch among ``grid``:
    ``floor((i + 0.5) * grid / size)`` (``center``) or ``floor(i * grid / size)`` (``floor``)."""
    index = np.arange(size)
    if pixel_to_patch == "center":
        patch = ((index + 0.5) * grid / size).astype(np.int64)
    elif pixel_to_patch == "floor":
        patch = index * grid // size  # integers: exact
    else:
        raise ValueError(f"unknown pixel_to_patch {pixel_to_patch!r} (expected one of {PIXEL_TO_PATCH})")
    return np.minimum(patch, grid - 1)


def patch_of_pixel(
    y: int, x: int, shape: tuple[int, int], grid: tuple[int, int], pixel_to_patch: str = "center"
) -> tuple[int, int]:
    """The (row, col) patch of label pixel (y, x), by the mapping of :func:`grid_index`."""
    (h, w), (gh, gw) = shape, grid
    return int(grid_index(h, gh, pixel_to_patch)[y]), int(grid_index(w, gw, pixel_to_patch)[x])


def patch_ids(shape: tuple[int, int], grid: tuple[int, int], pixel_to_patch: str = "center") -> np.ndarray:
    """H x W map of flat patch indices (row * gw + col)."""
    rows = grid_index(shape[0], grid[0], pixel_to_patch)
    cols = grid_index(shape[1], grid[1], pixel_to_patch)
    return rows[:, None] * grid[1] + cols[None, :]


def upsample_nearest(grid_map: np.ndarray, shape: tuple[int, int], pixel_to_patch: str = "center") -> np.ndarray:
    """(..., gh, gw) -> (..., H, W): each pixel takes the value of its patch (:func:`grid_index`)."""
    rows = grid_index(shape[0], grid_map.shape[-2], pixel_to_patch)
    cols = grid_index(shape[1], grid_map.shape[-1], pixel_to_patch)
    return grid_map[..., rows[:, None], cols[None, :]]


def _bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def upsample_bilinear(grid_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(..., gh, gw) -> (..., H, W), bilinear with half-pixel centres (``align_corners=False``)."""
    lo, hi, w = _bilinear_axis(grid_map.shape[-2], shape[0])
    rows = grid_map[..., lo, :] * (1 - w)[:, None] + grid_map[..., hi, :] * w[:, None]
    lo, hi, w = _bilinear_axis(grid_map.shape[-1], shape[1])
    return rows[..., lo] * (1 - w) + rows[..., hi] * w


# ----------------------------------------------------------------------------- IoU
def iou(pred: np.ndarray, target: np.ndarray, void: np.ndarray | None = None) -> float:
    """IoU of two boolean masks, void pixels excluded; empty vs empty = 1."""
    valid = ~void if void is not None else np.ones_like(target, dtype=bool)
    inter = np.count_nonzero(pred & target & valid)
    union = np.count_nonzero((pred | target) & valid)
    return 1.0 if union == 0 else inter / union


def _count_at_or_above(
    sorted_scores: np.ndarray, cum_weights: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Sum of weights of scores >= each threshold; ``cum_weights`` has a leading 0."""
    start = np.searchsorted(sorted_scores, thresholds, side="left")
    return cum_weights[-1] - cum_weights[start]


def iou_curve(scores: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray, thresholds) -> np.ndarray:
    """IoU of ``score >= tau`` for every tau, where each score stands for weighted pixels.

    ``pos_weight[i]`` counts the target pixels with score ``scores[i]``, ``neg_weight[i]`` the
    non-target (non-void) ones: with nearest upsampling a score is a patch and its weights are pixel
    counts; with bilinear upsampling a score is one pixel.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    thresholds = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    cum_pos = np.concatenate([[0.0], np.cumsum(np.asarray(pos_weight, dtype=np.float64).ravel()[order])])
    cum_neg = np.concatenate([[0.0], np.cumsum(np.asarray(neg_weight, dtype=np.float64).ravel()[order])])
    inter = _count_at_or_above(s, cum_pos, thresholds)
    union = cum_pos[-1] + _count_at_or_above(s, cum_neg, thresholds)
    out = np.ones_like(thresholds)
    nonempty = union > 0
    out[nonempty] = inter[nonempty] / union[nonempty]
    return out


def oracle_iou(scores: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray) -> tuple[float, float]:
    """``(tau, iou)``: the best IoU over every threshold, and the highest threshold reaching it.

    Every distinct mask ``score >= tau`` is obtained with tau equal to one of the scores (or above
    all of them: the empty mask), so the search over those is exact. When only the empty mask
    reaches the best IoU, tau is ``inf``.
    """
    candidates = np.unique(np.asarray(scores, dtype=np.float64))
    ious = iou_curve(scores, pos_weight, neg_weight, candidates)
    empty = 1.0 if float(np.sum(pos_weight)) == 0 else 0.0
    best = int(np.flatnonzero(ious == ious.max())[-1]) if len(ious) else -1
    if best < 0 or empty > ious[best]:
        return math.inf, empty
    return float(candidates[best]), float(ious[best])


# ----------------------------------------------------------------------------- prompts
PROMPT_BORDERS = ("outside", "ignore")


def prompt_point(
    mask: np.ndarray, mode: str = "center", rng: np.random.Generator | None = None, border: str = "outside"
) -> tuple[int, int]:
    """A pixel on the object: ``center`` = the maximum of the Euclidean distance to the nearest
    non-object pixel (first in raster order on ties), ``random`` = uniform in the mask.

    ``border`` (``center`` only): ``outside`` = the image border counts as outside the object (as if
    the image were surrounded by background); ``ignore`` = only pixels of the image count, so an
    object cut off by the border gets its prompt nearer that border (and one covering the whole image,
    where every distance is infinite, gets the first pixel).
    """
    if not mask.any():
        raise ValueError("cannot place a prompt on an empty mask")
    if mode == "center":
        from scipy.ndimage import distance_transform_edt

        if border not in PROMPT_BORDERS:
            raise ValueError(f"unknown prompt border {border!r} (expected one of {PROMPT_BORDERS})")
        # On the bounding box padded by a ring of background: exact, since every background pixel
        # outside the box is at least as far as its projection onto that ring, which lies in the
        # image where the box does not touch its border (and is far cheaper than the whole image).
        # With `ignore`, ring sides outside the image are marked as object: no boundary there.
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        (y0, y1), (x0, x1) = (rows[0], rows[-1]), (cols[0], cols[-1])
        padded = np.pad(mask[y0 : y1 + 1, x0 : x1 + 1], 1)
        if border == "ignore":
            height, width = mask.shape
            padded[0, :] |= y0 == 0
            padded[-1, :] |= y1 == height - 1
            padded[:, 0] |= x0 == 0
            padded[:, -1] |= x1 == width - 1
            if padded.all():  # no boundary anywhere: every pixel ties
                return int(y0), int(x0)
        dist = distance_transform_edt(padded)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return int(y0 + y), int(x0 + x)
    if mode == "random":
        if rng is None:
            raise ValueError("prompt mode 'random' needs a seeded generator")
        ys, xs = np.nonzero(mask)
        i = int(rng.integers(len(ys)))
        return int(ys[i]), int(xs[i])
    raise ValueError(f"unknown prompt mode {mode!r} (expected center or random)")


# ----------------------------------------------------------------------------- similarity analysis
def token_fractions(
    labels: np.ndarray, n_labels: int, grid: tuple[int, int], pixel_to_patch: str = "center"
) -> np.ndarray:
    """(gh*gw, n_labels + 1): the fraction of each token's pixels carrying each label.

    ``labels`` is H x W with values -1 (void) or 0..n_labels-1; column 0 of the result is void,
    column j + 1 is label j. A pixel belongs to the token of :func:`grid_index`.
    """
    pid = patch_ids(labels.shape, grid, pixel_to_patch).ravel()
    n_tokens = grid[0] * grid[1]
    counts = np.bincount(pid * (n_labels + 1) + (labels.ravel() + 1), minlength=n_tokens * (n_labels + 1))
    counts = counts.reshape(n_tokens, n_labels + 1).astype(np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised histogram (sums to 1; zeros when empty) on fixed bins over [-1, 1]."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(values, -1.0, 1.0), bins=edges)
    total = counts.sum()
    return (counts / total if total else counts.astype(np.float64)), edges


def histogram_overlap(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Sum over bins of min(p_a, p_b) of the two normalised histograms (0 = disjoint, 1 = equal)."""
    pa, _ = histogram(a, bins)
    pb, _ = histogram(b, bins)
    return float(np.minimum(pa, pb).sum())


def best_balanced_accuracy(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """Best (TPR + TNR) / 2 of one rule ``score >= t`` separating ``pos`` from ``neg``, and its t
    (the lowest t on ties). Exact: t ranges over every observed score and +inf."""
    pos = np.sort(np.asarray(pos, dtype=np.float64).ravel())
    neg = np.sort(np.asarray(neg, dtype=np.float64).ravel())
    if not len(pos) or not len(neg):
        raise ValueError("balanced accuracy needs both intra and inter samples")
    candidates = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])
    tpr = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)
    tnr = np.searchsorted(neg, candidates, side="left") / len(neg)
    ba = (tpr + tnr) / 2
    best = int(np.argmax(ba))
    return float(ba[best]), float(candidates[best])
