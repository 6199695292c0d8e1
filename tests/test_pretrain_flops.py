"""The analytic FLOP count against torch's own FLOP counter on a real forward and backward pass (heads on
the masked tokens)."""

from __future__ import annotations

import pytest
import torch
from timm.layers import set_fused_attn
from torch.utils.flop_counter import FlopCounterMode

from mmc import config
from mmc.pretrain.flops import step_flops
from mmc.pretrain.model import build_pair


@pytest.mark.parametrize("mode", ["patch", "cls_to_patch"])
def test_step_flops_match_torch_flop_counter(mode):
    raw = {
        "run_name": "t",
        "pretrain": {
            "backbone": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32},
            "data": {"global_crop_size": 32},
            "distill": {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16, "mode": mode},
            "contrast": {"dim": 16, "hidden_dim": 40},
        },
    }
    pcfg = config.freeze(config.resolve(raw)).experiments["mmc"]
    batch = 3
    # explicit q @ k^T and attn @ v matmuls: the counter does not see inside CPU fused attention
    set_fused_attn(False)
    try:
        student, teacher = build_pair(pcfg)
    finally:
        set_fused_attn(True)
    views = torch.randn(2, batch, 3, 32, 32)
    masks = torch.rand(2, batch, 16, generator=torch.Generator().manual_seed(0)) < 0.4
    with FlopCounterMode(display=False) as s_count:
        s_out = student(views, masks)
    with FlopCounterMode(display=False) as t_count, torch.no_grad():
        t_out = teacher(views, masks)
    with FlopCounterMode(display=False) as nce_count:
        scores = [
            torch.nn.functional.normalize(s_out["query"][0], dim=-1) @ t_out["key"][1].t(),
            torch.nn.functional.normalize(s_out["query"][1], dim=-1) @ t_out["key"][0].t(),
        ]
    # every student output and score feeds a loss in the step, so all of them get a gradient
    loss = sum(s_out[name].float().square().sum() for name in ("recon", "dino_cls", "dino_patch", "query"))
    loss = loss + sum(score.square().sum() for score in scores)
    with FlopCounterMode(display=False) as backward_count:
        loss.backward()
    analytic = step_flops(pcfg, batch, masked_tokens=int(masks.sum()))
    assert 0 < int(masks.sum()) < masks.numel()
    assert analytic["student_forward"] == s_count.get_total_flops() + nce_count.get_total_flops()
    assert analytic["teacher_forward"] == t_count.get_total_flops()
    # less than 2x the forward: no gradient for the images (patch embedding) or the teacher's keys
    assert analytic["student_backward"] == backward_count.get_total_flops()
    assert analytic["student_backward"] < 2 * analytic["student_forward"]
    assert analytic["step"] == sum(analytic[part] for part in ("student_forward", "student_backward", "teacher_forward"))


def test_vit_flops_match_torch_flop_counter():
    """The backbone alone (the benchmarks' peer-style steps): forward, and backward without the images' gradient."""
    from timm.models.vision_transformer import VisionTransformer

    from mmc.pretrain.flops import vit_backward_flops, vit_forward_flops

    set_fused_attn(False)
    try:
        vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    finally:
        set_fused_attn(True)
    images = torch.randn(3, 3, 32, 32)
    with FlopCounterMode(display=False) as forward:
        tokens = vit.forward_features(images)
    with FlopCounterMode(display=False) as backward:
        tokens.square().sum().backward()
    shape = (17, 16, 8, 32, 2, 4.0)
    assert forward.get_total_flops() == 3 * vit_forward_flops(*shape)
    assert backward.get_total_flops() == 3 * vit_backward_flops(*shape)
