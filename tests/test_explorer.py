"""The explorer's compact features and its page: exact integer similarities, measured tolerance,
the size budget. (The page in a real browser: tests/test_explorer_browser.py.)"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from mmc.data.readers import Sample, SegObject
from mmc.data.synthetic import draw_scene
from mmc.errors import MMCError
from mmc.explorer.cli import MB, feature_share
from mmc.explorer.encode import (
    QMAX,
    EncodedFeatures,
    choose_representation,
    encode_features,
    entry_bytes,
    measured,
    page_similarities,
    similarity_map,
)
from mmc.explorer.page import PageModel, image_entry, page_data, render


def unit_features(rng, grid=(6, 5), dim=24, rank=None) -> np.ndarray:
    """L2-normalised features; ``rank``: of the token matrix (low-rank structure, as real features)."""
    n = grid[0] * grid[1]
    if rank is None:
        flat = rng.normal(size=(n, dim))
    else:
        flat = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, dim))
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    return flat.reshape(*grid, dim).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 16])
def test_page_similarity_is_the_exact_integer_sum(bits):
    rng = np.random.default_rng(bits)
    enc = encode_features(unit_features(rng), rank=12, bits=bits)
    assert np.abs(enc.q).max() <= QMAX[bits] and enc.q.dtype.itemsize * 8 == bits
    sims = page_similarities(enc)
    q = enc.q.astype(object)  # Python integers: no rounding anywhere
    for t, s in [(0, 0), (3, 17), (29, 1), (12, 12)]:
        exact = sum(int(q[t, j]) * int(q[s, j]) * 4 ** int(enc.shifts[j]) for j in range(enc.rank))
        assert sims[s, t] == math.ldexp(float(exact), -2 * enc.e_max)  # bit for bit
        assert abs(exact) < 2**53  # so doubles (the page's JavaScript) hold every partial sum exactly
    grid_w = enc.grid[1]
    assert np.array_equal(similarity_map(enc, (2, 3)).ravel(), sims[:, 2 * grid_w + 3])


def test_full_rank_16_bit_features_give_the_gram_matrix_within_the_measured_tolerance():
    rng = np.random.default_rng(0)
    features = unit_features(rng)
    enc = measured(encode_features(features, rank=10**6, bits=16), features)
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    gram = flat @ flat.T
    assert enc.rank == min(flat.shape)
    error = np.abs(page_similarities(enc) - gram).max()
    assert enc.eps == pytest.approx(error, abs=1e-6)  # eps is the measured distance (float32 aside)
    assert enc.eps < 1e-3


def test_low_rank_features_are_captured_by_their_rank():
    rng = np.random.default_rng(1)
    features = unit_features(rng, grid=(8, 8), dim=48, rank=6)
    exact = measured(encode_features(features, rank=6, bits=8), features)
    short = measured(encode_features(features, rank=3, bits=8), features)
    assert exact.rank == 6 and exact.eps < 0.05  # only 8-bit rounding left
    assert short.eps > exact.eps  # truncation error: measured, not assumed


def test_encoding_is_deterministic():
    rng = np.random.default_rng(2)
    features = unit_features(rng)
    a, b = encode_features(features, 8, 8), encode_features(features.copy(), 8, 8)
    assert a.payload() == b.payload() and np.array_equal(a.shifts, b.shifts) and a.e_max == b.e_max


def test_representation_fits_its_share():
    tokens = [900] * 24
    full = sum(entry_bytes(900, 384, 16) for _ in tokens)
    assert choose_representation(full, tokens, 384) == (16, 384)  # full rank when it fits
    bits, rank = choose_representation(full // 4, tokens, 384)
    assert bits == 8 and 0 < rank < 384
    assert sum(entry_bytes(n, rank, 8) for n in tokens) <= full // 4 < sum(entry_bytes(n, rank + 1, 8) for n in tokens)
    assert choose_representation(10**9, [16], 384) == (16, 16)  # never more than the tokens
    with pytest.raises(MMCError, match=r"report\.explorer_max_mb"):
        choose_representation(1000, tokens, 384)


def paper_images(count: int, size: int = 480) -> list[dict]:
    """Synthetic scenes at the paper's input size, as the page stores them."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        image, _, instance, objects = draw_scene(rng, size, (2, 5), (0.2, 0.5), 2)
        objs = tuple(SegObject(o.object_id, o.class_id, instance == o.object_id) for o in objects)
        sample = Sample(f"img_{i}", image, objs, instance == 255)
        images.append(image_entry(sample, {o.object_id: (size // 2, size // 2) for o in objs}))
    return images


@pytest.mark.parametrize("dim", [384, 768])  # ViT-S/16 and ViT-B/16
def test_a_paper_sized_page_stays_within_the_budget(dim):
    """8 models x 24 images at 480 px (a 30 x 30 grid): the default budget of 25 MB holds."""
    n_models, n_images, grid = 8, 24, (30, 30)
    images = paper_images(n_images)
    common = {"run": "paper", "dataset": "voc", "upsample": "nearest", "thresholds": [0.0, 0.95], "demo_tau": 0.9}
    share = feature_share(25, images, common, n_models, "voc")
    tokens = [grid[0] * grid[1]] * n_images
    bits, rank = choose_representation(share, tokens, dim)
    rng = np.random.default_rng(dim)
    qmax = QMAX[bits]
    models = []
    for m in range(n_models):
        features = [
            EncodedFeatures(
                grid,
                rng.integers(-qmax, qmax + 1, size=(tokens[0], rank)).astype(np.int8 if bits == 8 else np.int16),
                rng.integers(0, 12, size=rank),
                20,
                dim,
                0.012345678901234567,
            )
            for _ in range(n_images)
        ]
        models.append(PageModel(f"model_{m}", 0.55, features))
    start = time.perf_counter()
    size = len(render(page_data(images=images, models=models, **common)).encode())
    print(
        f"\npaper-sized explorer page (8 models x 24 images, 30x30 tokens, D={dim}): int{bits} rank {rank}, "
        f"{size / MB:.2f} MB (budget 25 MB; rendered in {time.perf_counter() - start:.1f} s)"
    )
    assert size <= 25 * MB
    assert bits == 8 and rank >= 64  # the budget leaves a useful rank
