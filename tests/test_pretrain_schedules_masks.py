"""Schedules (pure functions of the step) and block-wise masks against independent formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import ndimage

from mmc import config
from mmc.pretrain import masking, schedules


def test_cosine_endpoints_and_midpoint():
    assert schedules.cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert schedules.cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert schedules.cosine(250, 100, 0.04, 0.4) == pytest.approx(0.4)
    for step in range(0, 101, 7):  # independent formula: sin^2 form of the half cosine
        assert schedules.cosine(step, 100, 1.0, 3.0) == pytest.approx(1.0 + 2.0 * math.sin(math.pi * step / 200) ** 2)


def test_warmup_cosine_lr():
    values = [schedules.warmup_cosine(s, 100, 10, 1e-3, 1e-6) for s in range(100)]
    assert values[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert values[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert schedules.warmup_cosine(100, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert all(isinstance(v, float) for v in values)


def test_teacher_temperature_warmup_then_constant():
    assert schedules.linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert schedules.linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert schedules.linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert schedules.linear_warmup(99, 30, 0.04, 0.07) == pytest.approx(0.07)


def test_pretrain_schedules_follow_the_spec_defaults():
    pcfg = config.freeze(config.resolve({"run_name": "t"})).experiments["mmc"]
    spe = 10  # steps per epoch; 100 epochs
    first = schedules.pretrain_schedules(0, spe, pcfg)
    assert first["momentum"] == pytest.approx(0.996) and first["wd"] == pytest.approx(0.04)
    assert first["teacher_temp"] == pytest.approx(0.04)
    peak = schedules.pretrain_schedules(10 * spe, spe, pcfg)["lr"]
    assert peak == pytest.approx(5e-4 * 256 / 256)
    assert schedules.pretrain_schedules(30 * spe, spe, pcfg)["teacher_temp"] == pytest.approx(0.07)
    assert schedules.pretrain_schedules(100 * spe, spe, pcfg)["momentum"] == pytest.approx(1.0)


def largest_component(mask: torch.Tensor) -> int:
    labels, count = ndimage.label(mask.numpy())
    return max((int((labels == i).sum()) for i in range(1, count + 1)), default=0)


def test_block_mask_respects_budget_blocks_and_is_reproducible():
    ratios = []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        m = masking.block_mask((14, 14), 0.4, 16, (0.3, 1 / 0.3), g)
        assert m.dtype == torch.bool and m.shape == (14, 14)
        assert 16 <= m.sum() <= round(0.4 * 196)  # at least one block of >= 16 patches, within budget
        assert largest_component(m) >= 16  # made of blocks, not scattered patches
        ratios.append(m.float().mean().item())
        again = masking.block_mask((14, 14), 0.4, 16, (0.3, 1 / 0.3), torch.Generator().manual_seed(seed))
        assert torch.equal(m, again)
    assert sum(ratios) / len(ratios) > 0.3  # blocks fill most of the budget


def test_block_mask_budget_below_one_block_can_stay_empty():
    g = torch.Generator().manual_seed(0)
    m = masking.block_mask((8, 8), 0.05, 16, (0.3, 1 / 0.3), g)  # budget 3 < min block 16
    assert m.sum() <= 3


def test_view_masks_draw_a_ratio_per_view():
    g = torch.Generator().manual_seed(1)
    masks = masking.view_masks(2, (14, 14), (0.1, 0.5), 16, (0.3, 1 / 0.3), g)
    assert masks.shape == (2, 196)
    counts = [masking.view_masks(1, (14, 14), (0.1, 0.5), 16, (0.3, 1 / 0.3), g).sum().item() for _ in range(30)]
    assert len(set(counts)) > 5 and max(counts) <= round(0.5 * 196)


def test_resume_ignores_execution_keys_but_not_semantic_ones():
    from mmc.pretrain.train import _semantic_changes

    old = {"optim": {"epochs": 4, "base_lr": 1e-3}, "data": {"num_workers": 4, "path": "a"}, "checkpoint": {"every_steps": 10}}
    new = {"optim": {"epochs": 4, "base_lr": 2e-3}, "data": {"num_workers": 0, "path": "a"}, "checkpoint": {"every_steps": 5}}
    assert _semantic_changes(old, new) == ["optim.base_lr"]


@pytest.mark.parametrize("shape", [(2, 3, 16), (2, 1, 4), (3, 5)])
def test_masked_positions_gather_what_boolean_indexing_selects(shape):
    gen = torch.Generator().manual_seed(len(shape))
    masks = torch.rand(shape, generator=gen) < 0.4
    masks.reshape(-1)[:2] = torch.tensor([True, False])  # at least one masked token, one not
    features = torch.randn(*shape, 7, generator=gen, requires_grad=True)
    positions = masking.masked_positions(masks)
    # the flat row-major index of each True entry, counted by hand
    expected = [i for i, flag in enumerate(masks.reshape(-1).tolist()) if flag]
    assert positions.tolist() == expected
    gathered = masking.take_masked(features, positions, masks.ndim)
    assert torch.equal(gathered, features[masks])
    weights = torch.randn(gathered.shape, generator=gen)
    (grad,) = torch.autograd.grad((gathered * weights).sum(), features)
    (reference,) = torch.autograd.grad((features[masks] * weights).sum(), features)
    assert torch.equal(grad, reference)
    nothing = masking.masked_positions(torch.zeros(shape, dtype=torch.bool))
    assert masking.take_masked(features, nothing, masks.ndim).shape == (0, 7)
