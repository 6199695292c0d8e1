"""Block-wise masking on the patch grid (BEiT/iBOT style), driven by an explicit generator.

A mask of ``round(ratio * H * W)`` patches at most is built from rectangular blocks. Each block's
area is drawn from U(min_block, budget) (budget = patches still to mask) and its aspect ratio
log-uniformly from ``aspect_range``; a block covers at least min(min_block, budget) patches and is
accepted when it masks between 1 and ``budget`` new patches (blocks may overlap). When no block fits in ``max_attempts`` tries the mask stops growing: as in BEiT, a view
whose budget is smaller than one block can stay unmasked, which the losses handle explicitly.
"""

from __future__ import annotations

import math

import torch


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator).item())


def block_mask(
    grid: tuple[int, int],
    ratio: float,
    min_block: int,
    aspect_range: tuple[float, float],
    generator: torch.Generator,
    max_attempts: int = 10,
) -> torch.Tensor:
    """A boolean (H, W) mask with at most ``round(ratio * H * W)`` True entries."""
    height, width = grid
    mask = torch.zeros(height, width, dtype=torch.bool)
    target = round(ratio * height * width)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    count = 0
    while count < target:
        budget = target - count
        added = 0
        for _ in range(max_attempts):
            area = _uniform(generator, min_block, budget)  # min_block > budget gives a value in between
            aspect = math.exp(_uniform(generator, log_lo, log_hi))
            block_h = round(math.sqrt(area * aspect))
            block_w = round(math.sqrt(area / aspect))
            if not (1 <= block_h <= height and 1 <= block_w <= width):
                continue
            if block_h * block_w < min(min_block, budget):  # rounding must not shrink a block below min
                continue
            top = _randint(generator, height - block_h + 1)
            left = _randint(generator, width - block_w + 1)
            window = mask[top : top + block_h, left : left + block_w]
            new = int((~window).sum())
            if 0 < new <= budget:
                window.fill_(True)
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def view_masks(
    num_views: int,
    grid: tuple[int, int],
    ratio_range: tuple[float, float],
    min_block: int,
    aspect_range: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """(num_views, H*W) masks; each view draws its own ratio from U(ratio_range)."""
    masks = []
    for _ in range(num_views):
        ratio = _uniform(generator, ratio_range[0], ratio_range[1])
        masks.append(block_mask(grid, ratio, min_block, aspect_range, generator).flatten())
    return torch.stack(masks)


def masked_positions(masks: torch.Tensor) -> torch.Tensor:
    """Flat row-major indices of the True entries of ``masks``: ``take_masked(x, positions, masks.ndim)``
    equals ``x[masks]`` (same rows, same order).

    The training step computes them once per micro-batch on the host copy of the masks (the loader
    draws masks on the CPU) and every masked-token gather uses them: boolean indexing on a GPU
    reads the number of selected entries back to the host, a device synchronisation per use.
    """
    return torch.nonzero(masks.reshape(-1)).squeeze(1)


def take_masked(x: torch.Tensor, positions: torch.Tensor, mask_ndim: int) -> torch.Tensor:
    """The rows of ``x`` (its first ``mask_ndim`` dimensions shaped like the masks) at ``positions``
    (:func:`masked_positions`): an integer gather, with no host synchronisation on any device."""
    return x.flatten(0, mask_ndim - 1)[positions]
