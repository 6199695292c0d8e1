"""The split augmentation pipeline: device ops against torchvision, drawn parameters against the config.

Operations that are deterministic given their parameters are compared with
``torchvision.transforms.functional`` on the same float tensors; the parameters drawn on the CPU
are compared with the configured distributions by exact or asymptotic tests at fixed seeds (so the
tests are deterministic: a failure means the distribution changed, not bad luck).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from scipy import stats

from mmc.pretrain import augment as A
from mmc.pretrain.data import sample_seed

ALPHA = 1e-3  # significance level of every distribution test (fixed seeds: the outcome never varies)
DRAWS = 4000


def natural_image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth image with texture (uint8 H x W x 3), all colours and grey levels represented."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(coarse).astype(int) + rng.integers(-25, 26, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """(6, 3, 48, 64) float images in [0, 1], one of them grey and one saturated at 0 and 1."""
    batch = torch.stack([torch.from_numpy(natural_image(seed=s)).permute(2, 0, 1) for s in range(6)]).float() / 255
    batch[4] = batch[4].mean(0, keepdim=True)
    batch[5] = (batch[5] > 0.5).float()
    return batch


# ------------------------------------------------------------------------ ops against torchvision
@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (A.adjust_brightness, TF.adjust_brightness, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (A.adjust_contrast, TF.adjust_contrast, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (A.adjust_saturation, TF.adjust_saturation, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (A.adjust_hue, TF.adjust_hue, [-0.1, -0.05, 0.0, 0.03, 0.1, 0.5]),
    ],
)
def test_jitter_ops_match_torchvision_per_image_factors(images, ours, theirs, factors):
    got = ours(images.clone(), torch.tensor(factors))
    for i, factor in enumerate(factors):
        torch.testing.assert_close(got[i], theirs(images[i], factor), atol=2e-6, rtol=0)


def test_grayscale_blur_solarize_normalize_match_torchvision(images):
    torch.testing.assert_close(A.grayscale(images), TF.rgb_to_grayscale(images), atol=1e-6, rtol=0)
    sigmas = torch.tensor([0.1, 0.5, 0.9, 1.3, 1.7, 2.0])
    blurred = A.gaussian_blur(images, sigmas)
    for i, sigma in enumerate(sigmas.tolist()):
        size = 2 * A.BLUR_RADIUS + 1
        torch.testing.assert_close(blurred[i], TF.gaussian_blur(images[i], [size, size], [sigma, sigma]), atol=1e-6, rtol=0)
    torch.testing.assert_close(A.solarize(images), TF.solarize(images, A.SOLARIZE_THRESHOLD), atol=0, rtol=0)
    torch.testing.assert_close(A.normalize(images), TF.normalize(images, A.IMAGENET_MEAN, A.IMAGENET_STD))


def test_blur_and_solarize_agree_with_the_former_pil_operations():
    """PIL's blur (box-filter approximation, radius = sigma) and solarise on 8-bit images."""
    pixels = natural_image(64, 64)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    for sigma in (0.5, 1.0, 2.0):
        pil = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(sigma))).astype(np.float64)
        ours = A.gaussian_blur(x, torch.tensor([sigma]))[0].permute(1, 2, 0).numpy() * 255
        inner = (slice(8, -8), slice(8, -8))  # the borders are extended differently
        assert np.abs(ours[inner] - pil[inner]).mean() < 1.5, sigma
    pil = np.asarray(ImageOps.solarize(Image.fromarray(pixels), 128))
    assert np.array_equal((A.solarize(x)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), pil)


def reference_photometric(view: torch.Tensor, row: np.ndarray) -> torch.Tensor:
    """One view through torchvision's functional ops, in the order of the former pipeline."""
    x = view.float() / 255
    if row[A.JITTER]:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in row[A.ORDER].astype(int):
            factor = float(row[A.FACTOR_COLUMN[op]])
            if factor != A.IDENTITY_FACTOR[op]:
                x = ops[op](x, factor)
    if row[A.GRAY]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if row[A.SIGMA]:
        size = 2 * A.BLUR_RADIUS + 1
        x = TF.gaussian_blur(x, [size, size], [float(row[A.SIGMA])] * 2)
    if row[A.SOLARIZE]:
        x = TF.solarize(x, A.SOLARIZE_THRESHOLD)
    return TF.normalize(x, A.IMAGENET_MEAN, A.IMAGENET_STD)


def test_batched_photometric_equals_torchvision_view_by_view():
    spec = A.ViewSpec(32, (0.2, 1.0), 0.5, (0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.3, blur_p=0.5, solarize_p=0.4)
    rows, views = [], []
    for i in range(24):  # every jitter order occurs with these seeds' draws, as do all switches
        rng = np.random.Generator(np.random.PCG64(sample_seed(3, 0, i)))
        rows.append(A.draw_view_params(rng, 40, 36, spec))
        views.append(torch.from_numpy(natural_image(32, 32, seed=i)).permute(2, 0, 1))
    params, batch = torch.from_numpy(np.stack(rows)), torch.stack(views)
    assert params[:, A.JITTER].sum() > 0 and params[:, A.SOLARIZE].sum() > 0 and (params[:, A.SIGMA] > 0).sum() > 0
    got = A.photometric(batch, params)
    for i in range(len(rows)):
        torch.testing.assert_close(got[i], reference_photometric(batch[i], rows[i]), atol=1e-5, rtol=0)
    # a view's pixels do not depend on the other views of its batch
    torch.testing.assert_close(A.photometric(batch[5:9], params[5:9]), got[5:9], atol=1e-6, rtol=0)


def test_cpu_crop_matches_pil_crop_and_bicubic_resize():
    pixels = natural_image(60, 80)
    image = torch.from_numpy(pixels)
    row = np.zeros(A.PARAMS, np.float32)
    row[[A.TOP, A.LEFT, A.HEIGHT, A.WIDTH]] = (5, 7, 50, 61)
    got = A.crop_resize(image, row, 32)
    assert got.dtype == torch.uint8 and got.shape == (32, 32, 3)
    pil = np.asarray(Image.fromarray(pixels).crop((7, 5, 68, 55)).resize((32, 32), Image.BICUBIC)).astype(int)
    difference = np.abs(got.numpy().astype(int) - pil)
    assert difference.max() <= 2 and difference.mean() < 0.3
    row[A.FLIP] = 1
    assert torch.equal(A.crop_resize(image, row, 32), got.flip(1))


# ------------------------------------------------------------------- drawn parameters vs config
SPEC = A.ViewSpec(224, (0.25, 1.0), 0.5, (0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.1, solarize_p=0.2)


def draws(spec: A.ViewSpec, width: int, height: int, n: int = DRAWS) -> np.ndarray:
    """n parameter rows drawn as the dataset draws them (sample seeds of epoch 0)."""
    return np.stack(
        [A.draw_view_params(np.random.Generator(np.random.PCG64(sample_seed(0, 0, i))), width, height, spec) for i in range(n)]
    )


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return draws(SPEC, 500, 375)  # ImageNet's typical 4:3 image


def test_crop_boxes_are_distributed_as_torchvision_random_resized_crop(rows):
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    theirs = np.array([RandomResizedCrop.get_params(torch.empty(3, 375, 500), [0.25, 1.0], [3 / 4, 4 / 3])
                       for _ in range(DRAWS)], dtype=float)  # fmt: skip
    ours = rows[:, [A.TOP, A.LEFT, A.HEIGHT, A.WIDTH]].astype(float)
    for name, a, b in (
        ("area fraction", ours[:, 2] * ours[:, 3] / (500 * 375), theirs[:, 2] * theirs[:, 3] / (500 * 375)),
        ("log aspect", np.log(ours[:, 3] / ours[:, 2]), np.log(theirs[:, 3] / theirs[:, 2])),
        ("vertical centre", ours[:, 0] + ours[:, 2] / 2, theirs[:, 0] + theirs[:, 2] / 2),
        ("horizontal centre", ours[:, 1] + ours[:, 3] / 2, theirs[:, 1] + theirs[:, 3] / 2),
    ):
        assert stats.ks_2samp(a, b).pvalue > ALPHA, name
    assert (ours[:, 0] + ours[:, 2] <= 375).all() and (ours[:, 1] + ours[:, 3] <= 500).all() and (ours >= 0).all()


def test_crop_scale_and_aspect_are_uniform_where_every_draw_fits():
    # a 1000 px square with scale <= 0.25: no draw is rejected, so area ~ U(scale), log aspect ~ U(log ratio)
    spec = A.ViewSpec(96, (0.05, 0.25), 0.5, (0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5, solarize_p=0.0)
    rows = draws(spec, 1000, 1000)
    h, w = rows[:, A.HEIGHT].astype(float), rows[:, A.WIDTH].astype(float)
    assert stats.kstest(h * w / 1e6, stats.uniform(0.05, 0.20).cdf).pvalue > ALPHA
    low, high = math.log(3 / 4), math.log(4 / 3)
    assert stats.kstest(np.log(w / h), stats.uniform(low, high - low).cdf).pvalue > ALPHA


@pytest.mark.parametrize(("column", "p"), [(A.FLIP, 0.5), (A.JITTER, 0.8), (A.GRAY, 0.2), (A.SOLARIZE, 0.2)])
def test_switch_probabilities_are_the_configured_ones(rows, column, p):
    hits = int((rows[:, column] > 0).sum())
    assert stats.binomtest(hits, DRAWS, p).pvalue > ALPHA


def test_blur_probability_and_sigma_range(rows):
    blurred = rows[:, A.SIGMA] > 0
    assert stats.binomtest(int(blurred.sum()), DRAWS, SPEC.blur_p).pvalue > ALPHA
    sigma_rows = draws(A.ViewSpec(224, (0.25, 1.0), 0.5, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, blur_p=1.0, solarize_p=0), 500, 375)
    low, high = A.BLUR_SIGMA
    assert stats.kstest(sigma_rows[:, A.SIGMA], stats.uniform(low, high - low).cdf).pvalue > ALPHA


def test_jitter_factors_are_uniform_on_torchvision_ranges_and_identity_when_not_applied(rows):
    applied = rows[:, A.JITTER] > 0
    for column, (low, high) in zip(A.FACTOR_COLUMN, [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)], strict=True):
        assert stats.kstest(rows[applied, column], stats.uniform(low, high - low).cdf).pvalue > ALPHA, column
    assert (rows[~applied][:, list(A.FACTOR_COLUMN)] == np.array(A.IDENTITY_FACTOR)).all()


def test_jitter_order_is_uniform_over_the_24_permutations(rows):
    orders = [tuple(r) for r in rows[:, A.ORDER].astype(int)]
    permutations = list(itertools.permutations(range(4)))
    assert set(orders) == set(permutations)
    counts = [orders.count(p) for p in permutations]
    assert stats.chisquare(counts).pvalue > ALPHA


def test_a_zero_strength_switches_that_jitter_off():
    spec = A.ViewSpec(32, (0.5, 1.0), 0.5, (0.4, 0.0, 0.2, 0.0), jitter_p=1.0, gray_p=0, blur_p=0, solarize_p=0)
    rows = draws(spec, 64, 64, n=50)
    assert (rows[:, A.CONTRAST] == 1.0).all() and (rows[:, A.HUE] == 0.0).all()
    plan = A.photometric_plan(torch.from_numpy(rows))
    assert all(len(ops[1]) == 0 and len(ops[3]) == 0 for ops in plan.jitter)
    assert sum(len(ops[0]) for ops in plan.jitter) == 50  # brightness once per view, at its drawn position
