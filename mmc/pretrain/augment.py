"""Multi-crop views: parameters drawn on the CPU per sample, geometry on the CPU, photometry batched.

The views are the DINO/iBOT recipe (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", arXiv 2104.14294): RandomResizedCrop (bicubic), horizontal flip, colour jitter in a
random order (probability ``color_jitter_p``), grayscale, Gaussian blur, solarisation, ImageNet
normalisation; two global views with asymmetric blur/solarisation and optional local views.

The work is split in three so that the CPU does only what must happen per image:

1. :func:`draw_view_params` draws *every* random choice of a view (crop box, flip, whether and how
   to jitter, the order of the four jitter operations, grayscale, blur sigma, solarisation) from a
   numpy generator seeded by the sample's seed, into one row of :data:`PARAMS` floats.
2. :func:`crop_resize` cuts and resizes the crop (antialiased bicubic on uint8, the same filter as
   PIL's) and flips it: a uint8 (H, W, 3) view, 4x smaller than float32 on its way to the device.
3. :func:`photometric` applies the photometric operations and the normalisation to a whole batch
   of uint8 views on the training device. It is a pure function of (uint8 views, parameter rows),
   so a sample's pixels depend only on its seed, not on the worker, the rank or the batch.

The operations follow torchvision's tensor semantics (``torchvision.transforms.functional``):
each one is tested against it with fixed parameters, and the drawn parameters are tested against
the configured distributions (``tests/test_pretrain_augment.py``). The one difference with the
former PIL pipeline is that intermediate images stay in float instead of being rounded to uint8
after every operation, and the blur is a 13-tap Gaussian (PIL approximates one with box filters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before falling back to a central crop
BLUR_SIGMA = (0.1, 2.0)  # DINO's Gaussian blur radius range
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA[1])  # kernel half-width: 3 sigma of the widest blur
SOLARIZE_THRESHOLD = 128 / 255  # RandomSolarize(128) on 8-bit images
LOCAL_BLUR_P = 0.5  # DINO's local-crop setting (docs/method.md#views)

# Columns of a view's parameter row (float32; integers are exact up to 2**24).
TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10)
ORDER = slice(10, 14)  # the jitter operations in the order they are applied (0..3 as below)
GRAY, SIGMA, SOLARIZE = 14, 15, 16
PARAMS = 17
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
FACTOR_COLUMN = (BRIGHTNESS, CONTRAST, SATURATION, HUE)
IDENTITY_FACTOR = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class ViewSpec:
    """Everything random about one kind of view, with the probabilities of the config."""

    size: int
    scale: tuple[float, float]
    flip_p: float
    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue strengths
    jitter_p: float
    gray_p: float
    blur_p: float
    solarize_p: float
    ratio: tuple[float, float] = CROP_RATIO


def view_specs(pcfg) -> tuple[list[ViewSpec], ViewSpec, int]:
    """(the two global views' specs, the local views' spec, the number of local views)."""
    data, aug = pcfg.data, pcfg.augment
    common = {"flip_p": aug.flip_p, "jitter": tuple(aug.color_jitter), "jitter_p": aug.color_jitter_p,
              "gray_p": aug.grayscale_p}  # fmt: skip
    scale = tuple(data.global_crop_scale)
    globals_ = [
        ViewSpec(data.global_crop_size, scale, blur_p=aug.blur_p[v], solarize_p=aug.solarize_p[v], **common)
        for v in range(2)
    ]
    local = ViewSpec(data.local_crop_size, tuple(data.local_crop_scale), blur_p=LOCAL_BLUR_P, solarize_p=0.0, **common)
    return globals_, local, int(data.local_crops)


# ---------------------------------------------------------------------------------------- CPU
def crop_box(rng: np.random.Generator, width: int, height: int, scale, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area ~ U(scale) of the image, log aspect ~ U(log ratio).

    Up to CROP_ATTEMPTS draws are tried; the first box that fits is kept, else the largest
    central box whose aspect ratio lies in ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif image_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_view_params(rng: np.random.Generator, width: int, height: int, spec: ViewSpec) -> np.ndarray:
    """One view's parameter row (PARAMS float32) for an image of ``width`` x ``height`` pixels.

    Every draw is made whether or not its operation applies, so the number of draws per view
    varies only with the crop's attempts.
    """
    row = np.zeros(PARAMS, dtype=np.float32)
    row[[TOP, LEFT, HEIGHT, WIDTH]] = crop_box(rng, width, height, spec.scale, spec.ratio)
    row[FLIP] = rng.random() < spec.flip_p
    row[JITTER] = rng.random() < spec.jitter_p
    row[ORDER] = rng.permutation(4)
    for op, strength in enumerate(spec.jitter):
        column = FACTOR_COLUMN[op]
        low, high = (-strength, strength) if op == 3 else (max(0.0, 1.0 - strength), 1.0 + strength)
        value = rng.uniform(low, high)
        # strength 0 is torchvision's "no such jitter": the identity factor, skipped on the device
        row[column] = value if (row[JITTER] and strength > 0) else IDENTITY_FACTOR[op]
    row[GRAY] = rng.random() < spec.gray_p
    blur = rng.random() < spec.blur_p
    sigma = rng.uniform(*BLUR_SIGMA)
    row[SIGMA] = sigma if blur else 0.0
    row[SOLARIZE] = rng.random() < spec.solarize_p
    return row


def crop_resize(image, row: np.ndarray, size: int):
    """The view's crop of ``image`` (uint8 (H, W, 3) tensor), resized to size x size and flipped.

    Antialiased bicubic on uint8, the filter of PIL's resize (torch's channels-last uint8 kernel
    is several times faster than PIL's). Returns a uint8 (size, size, 3) tensor.
    """
    import torch
    import torch.nn.functional as F

    top, left, h, w = (int(v) for v in row[[TOP, LEFT, HEIGHT, WIDTH]])
    region = image[top : top + h, left : left + w].permute(2, 0, 1).unsqueeze(0)
    region = region.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(region, size=(size, size), mode="bicubic", antialias=True) if (h, w) != (size, size) else region
    if row[FLIP]:
        out = out.flip(-1)
    return out[0].permute(1, 2, 0).contiguous()


# ------------------------------------------------------------------------------------- device
@dataclass(frozen=True)
class Plan:
    """Which views each photometric step touches, as index tensors (computed from CPU parameters,
    so that applying them on a GPU needs no device-to-host synchronisation)."""

    jitter: tuple[tuple, ...]  # [position][op] -> indices of views applying op at that position
    gray: object
    blur: object
    solarize: object

    def to(self, device) -> Plan:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Plan(tuple(tuple(move(i) for i in ops) for ops in self.jitter), move(self.gray), move(self.blur),
                    move(self.solarize))  # fmt: skip


def photometric_plan(params) -> Plan:
    """The :class:`Plan` of a (N, PARAMS) parameter tensor (on the CPU)."""
    import torch

    params = params.cpu()
    jitter = params[:, JITTER] > 0
    order = params[:, ORDER].long()

    def where(mask):
        return torch.nonzero(mask).flatten()

    positions = []
    for position in range(4):
        ops = []
        for op in range(4):
            active = jitter & (order[:, position] == op) & (params[:, FACTOR_COLUMN[op]] != IDENTITY_FACTOR[op])
            ops.append(where(active))
        positions.append(tuple(ops))
    return Plan(tuple(positions), where(params[:, GRAY] > 0), where(params[:, SIGMA] > 0), where(params[:, SOLARIZE] > 0))


def grayscale(x):
    """(N, 3, H, W) float -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _per_view(factor):
    return factor.view(-1, 1, 1, 1)


def _blend(x, reference, factor):
    f = _per_view(factor)
    return (f * x + (1 - f) * reference).clamp_(0, 1)


def adjust_brightness(x, factor):
    return (x * _per_view(factor)).clamp_(0, 1)


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def adjust_hue(x, shift):
    """Rotate the hue of (N, 3, H, W) images in [0, 1] by ``shift`` (N,) turns, through HSV."""
    import torch

    r, g, b = x.unbind(1)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    grey = chroma == 0
    safe_chroma = torch.where(grey, torch.ones_like(chroma), chroma)
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    # hue in sixths of a turn: the sector of the maximal channel, offset by the other two
    hue = torch.where(
        value == r, (g - b) / safe_chroma, torch.where(value == g, 2 + (b - r) / safe_chroma, 4 + (r - g) / safe_chroma)
    )
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6 + _per_view(shift)[:, 0], 1.0) * 6
    # HSV -> RGB: channel n is V - V*S*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1
    k = torch.remainder(torch.stack([hue + 5, hue + 3, hue + 1], dim=1), 6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return (value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * ramp)).clamp_(0, 1)


JITTER_FUNCTIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_kernels(sigma, radius: int = BLUR_RADIUS):
    """(N, 2*radius+1) normalised Gaussian taps for each sigma (N,)."""
    import torch

    taps = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(-0.5 * (taps / sigma.unsqueeze(1)) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(x, sigma, radius: int = BLUR_RADIUS):
    """Separable Gaussian blur of (N, C, H, W) with one sigma per image, reflect padding."""
    import torch.nn.functional as F

    n, c, h, w = x.shape
    radius = min(radius, h - 1, w - 1)  # reflect padding needs a border smaller than the image
    if radius < 1:
        return x
    kernels = gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (N*C, K)
    taps = kernels.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect").reshape(1, n * c, h + 2 * radius, w + 2 * radius)
    rows = F.conv2d(padded, kernels.view(n * c, 1, 1, taps), groups=n * c)
    both = F.conv2d(rows, kernels.view(n * c, 1, taps, 1), groups=n * c)
    return both.view(n, c, h, w)


def solarize(x):
    import torch

    return torch.where(x >= SOLARIZE_THRESHOLD, 1 - x, x)


def normalize(x):
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def photometric(views, params, plan: Plan | None = None):
    """uint8 (N, 3, H, W) views and their (N, PARAMS) rows -> float32 normalised (N, 3, H, W).

    Colour jitter (the four operations in each view's drawn order), grayscale, blur, solarise and
    normalise, in the order of the former torchvision/PIL pipeline. ``plan`` (from the CPU copy of
    ``params``, see :func:`photometric_plan`) avoids a device synchronisation; without it, it is
    computed here. Only the views an operation applies to are computed.
    """
    import torch

    params = params.to(device=views.device, dtype=torch.float32)
    plan = (plan or photometric_plan(params)).to(views.device)
    x = views.to(torch.float32).div_(255).contiguous()
    for ops in plan.jitter:
        for op, index in enumerate(ops):
            if index.numel():
                x[index] = JITTER_FUNCTIONS[op](x[index], params[index, FACTOR_COLUMN[op]])
    if plan.gray.numel():
        x[plan.gray] = grayscale(x[plan.gray]).expand(-1, 3, -1, -1)
    if plan.blur.numel():
        x[plan.blur] = gaussian_blur(x[plan.blur], params[plan.blur, SIGMA])
    if plan.solarize.numel():
        x[plan.solarize] = solarize(x[plan.solarize])
    return normalize(x)
