"""Compact patch features for the prompt explorer, and the similarity the page computes from them.

The explorer page (docs/report.md) computes every similarity map itself, so it carries features, not
maps. For one image of one model, the L2-normalised features ``F`` (N tokens x D) are replaced by
their coordinates in the image's own principal directions, ``P = F V_k`` (N x k, the k largest
singular directions of ``F``; ``P Pᵀ`` is the best rank-k approximation of the Gram matrix ``F Fᵀ``,
and equals it when ``k = min(N, D)``), quantised to integers ``q`` with a power-of-two scale per
column: ``P[:, j] ≈ q[:, j] · 2^-e_j``.

The page's similarity of tokens ``t`` and ``s`` is ``Σ_j q_tj q_sj 4^(e_max - e_j) · 4^-e_max``: every
term and partial sum is an integer below 2^53, so the sum is exact in any order, and the final
scaling by a power of two is exact. JavaScript doubles and :func:`page_similarities` therefore give
the same bits, and the page's masks can be checked pixel for pixel against
:func:`mmc.evaluation.protocol.predicted_mask` applied to :func:`page_similarities`.

How far the page's maps are from the evaluation's own is measured, not assumed: ``eps`` of an
:class:`EncodedFeatures` is the largest difference, over every pair of tokens of the image, between
the page's similarity and the evaluation's (``prompt_similarities`` of the float32 features).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmc.errors import MMCError

# Integer widths the page decodes; the largest magnitude of each (symmetric, so -q is representable).
QMAX = {8: 127, 16: 32767}
EXACT = 2**53  # doubles hold every integer below this exactly


@dataclass(frozen=True)
class EncodedFeatures:
    """One image's features as the page holds them.

    ``q``: (N, k) int8 or int16, row-major tokens of a ``grid`` (gh, gw); ``shifts``: (k,) the
    ``e_max - e_j`` of each column (so column j's weight is ``4**shifts[j]``); ``e_max``: the finest
    column exponent; ``dim``: D of the features; ``eps``: the measured largest difference from the
    evaluation's similarities (None until measured).
    """

    grid: tuple[int, int]
    q: np.ndarray
    shifts: np.ndarray
    e_max: int
    dim: int
    eps: float | None = None

    @property
    def bits(self) -> int:
        return 8 * self.q.dtype.itemsize

    @property
    def rank(self) -> int:
        return int(self.q.shape[1])

    def payload(self) -> bytes:
        """The bytes the page stores: ``q`` little-endian, row-major."""
        return np.ascontiguousarray(self.q.astype(self.q.dtype.newbyteorder("<"))).tobytes()


def max_shift(rank: int, bits: int) -> int:
    """The largest ``e_max - e_j`` that keeps ``rank`` terms of ``qmax² · 4^shift`` below 2^53."""
    qmax = QMAX[bits]
    shift = 0
    while max(rank, 1) * qmax * qmax * 4 ** (shift + 1) < EXACT:
        shift += 1
    return shift


def encode_features(features: np.ndarray, rank: int, bits: int) -> EncodedFeatures:
    """(gh, gw, D) L2-normalised features -> their rank-``min(rank, N, D)`` integer coordinates."""
    if bits not in QMAX:
        raise MMCError(f"explorer features: {bits}-bit integers are not supported (have: 8, 16)")
    grid_h, grid_w, dim = features.shape
    flat = np.asarray(features, dtype=np.float64).reshape(grid_h * grid_w, dim)
    k = max(1, min(int(rank), *flat.shape))
    u, s, _ = np.linalg.svd(flat, full_matrices=False)
    coords = u[:, :k] * s[:k]  # = flat @ V_k
    peak = np.abs(coords).max(axis=0)
    qmax = QMAX[bits]
    with np.errstate(divide="ignore"):
        exps = np.where(peak > 0, np.floor(np.log2(qmax / np.where(peak > 0, peak, 1.0))), np.nan)
    finite = exps[np.isfinite(exps)]
    e_min = int(finite.min()) if finite.size else 0
    # a column too fine for the exact-sum range is stored at the finest allowed scale instead
    exps = np.where(np.isfinite(exps), np.minimum(exps, e_min + max_shift(k, bits)), e_min).astype(int)
    e_max = int(exps.max())
    q = np.clip(np.rint(np.ldexp(coords, exps[None, :])), -qmax, qmax)
    dtype = np.int8 if bits == 8 else np.int16
    return EncodedFeatures((grid_h, grid_w), q.astype(dtype), (e_max - exps).astype(np.int64), e_max, dim)


def page_similarities(enc: EncodedFeatures, tokens: Sequence[int] | None = None) -> np.ndarray:
    """The page's similarities (float64): (N, len(tokens)) columns for prompt tokens (flat indices
    ``row * gw + col``), or (N, N) for all. Bit-identical to the page's JavaScript (see module doc)."""
    q = enc.q.astype(np.float64)
    weighted = q * np.ldexp(1.0, 2 * enc.shifts)[None, :]  # integers q·4^shift, exact
    chosen = q if tokens is None else q[list(tokens)]
    sums = weighted @ chosen.T  # integer terms and partial sums below 2^53: exact in any order
    return np.ldexp(sums, -2 * enc.e_max)


def similarity_map(enc: EncodedFeatures, token: tuple[int, int]) -> np.ndarray:
    """(gh, gw): the page's map for the prompt token ``(row, col)``."""
    grid_h, grid_w = enc.grid
    return page_similarities(enc, [token[0] * grid_w + token[1]])[:, 0].reshape(grid_h, grid_w)


def measured(enc: EncodedFeatures, features: np.ndarray) -> EncodedFeatures:
    """``enc`` with ``eps``: the largest |page - evaluation| over every pair of tokens, where the
    evaluation's similarities are :func:`mmc.evaluation.protocol.prompt_similarities` of the float32
    ``features`` with every token as a prompt."""
    from mmc.evaluation.protocol import prompt_similarities

    grid_h, grid_w, _ = features.shape
    tokens = [(r, c) for r in range(grid_h) for c in range(grid_w)]
    evaluation = prompt_similarities(np.asarray(features, dtype=np.float32), tokens).reshape(len(tokens), -1)
    eps = float(np.abs(page_similarities(enc) - evaluation.astype(np.float64)).max())
    return EncodedFeatures(enc.grid, enc.q, enc.shifts, enc.e_max, enc.dim, eps)


# ----------------------------------------------------------------------------- the size budget
def base64_length(n_bytes: int) -> int:
    return 4 * math.ceil(n_bytes / 3)


# JSON around one entry's payload: grid, rank, bits, e_max, eps and the brackets/keys (an upper bound)
ENTRY_OVERHEAD = 160


def entry_bytes(tokens: int, rank: int, bits: int) -> int:
    """Upper bound of one (model, image) entry in the page: base64 payload, shifts, JSON."""
    return base64_length(tokens * rank * bits // 8) + 4 * rank + ENTRY_OVERHEAD


def choose_representation(share: int, tokens: Sequence[int], dim: int) -> tuple[int, int]:
    """``(bits, rank)`` for one model's images (``tokens``: N of each) within ``share`` bytes.

    16-bit integers at full rank (``min(N, D)``: the Gram matrix exactly, up to rounding) when they
    fit; else 8-bit integers at the largest rank that fits. Raises when not even rank 1 fits.
    """
    full = max(min(n, dim) for n in tokens)
    if sum(entry_bytes(n, min(full, n, dim), 16) for n in tokens) <= share:
        return 16, full
    best = 0
    lo, hi = 1, full
    while lo <= hi:  # the size grows with the rank: the largest rank that fits
        mid = (lo + hi) // 2
        if sum(entry_bytes(n, min(mid, n, dim), 8) for n in tokens) <= share:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best == 0:
        raise MMCError(
            f"report.explorer_max_mb: {share} bytes per model cannot hold even rank-1 features of "
            f"{len(tokens)} images: expected a larger budget or fewer report.explorer_images"
        )
    return 8, best


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
