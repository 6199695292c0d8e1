"""Analytic matmul FLOPs of one MMC training step (2 FLOPs per multiply-add).

Counted: patch embedding, attention (QKV, scores, weighted values, projection), MLPs, and the heads
of the active losses. Not counted: norms, softmax, activations, the optimiser (all O(params) or
O(tokens x dim), a few per cent at ViT-S scale). Backward = 2 x forward for the student; the teacher
runs forward only.
"""

from __future__ import annotations


def vit_forward_flops(tokens: int, patches: int, patch_size: int, dim: int, depth: int, mlp_ratio: float) -> int:
    embed = patches * 3 * patch_size * patch_size * dim
    per_block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim
    per_block += 2 * tokens * dim * int(dim * mlp_ratio)
    return 2 * (embed + depth * per_block)


def _dino_head_macs(dim: int, d) -> int:
    return dim * d.hidden_dim + d.hidden_dim * d.hidden_dim + d.hidden_dim * d.bottleneck_dim + d.bottleneck_dim * d.out_dim


def step_flops(pcfg, batch: int) -> dict[str, int]:
    """Forward FLOPs of student and teacher and the total step FLOPs for ``batch`` images (2 global views)."""
    b, w = pcfg.backbone, pcfg.loss
    grid = pcfg.data.global_crop_size // b.patch_size
    patches = grid * grid
    tokens = patches + 1
    views = 2 * batch
    backbone = vit_forward_flops(tokens, patches, b.patch_size, b.embed_dim, b.depth, b.mlp_ratio)
    student = teacher = views * backbone
    if w.w_mim > 0:
        student += views * 2 * patches * b.embed_dim * 3 * b.patch_size**2
    if w.w_distill > 0:
        head = 2 * _dino_head_macs(b.embed_dim, pcfg.distill)
        student += views * tokens * head
        teacher += views * (tokens if pcfg.distill.mode == "patch" else 1) * head
    if w.w_contrast > 0:
        c = pcfg.contrast
        projector = 2 * (b.embed_dim * c.hidden_dim + c.hidden_dim * c.hidden_dim + c.hidden_dim * c.dim)
        predictor = 2 * (c.dim * c.hidden_dim + c.hidden_dim * c.dim)
        student += views * (projector + predictor)
        teacher += views * projector
        student += 2 * 2 * batch * batch * c.dim  # two q @ k^T of (B x d) @ (d x B)
    if w.w_distill == 0 and w.w_contrast == 0:
        teacher = 0
    local = pcfg.data.local_crops if w.w_distill > 0 else 0
    if local:
        lgrid = pcfg.data.local_crop_size // b.patch_size
        lpatches = lgrid * lgrid
        lbackbone = vit_forward_flops(lpatches + 1, lpatches, b.patch_size, b.embed_dim, b.depth, b.mlp_ratio)
        student += local * batch * (lbackbone + 2 * _dino_head_macs(b.embed_dim, pcfg.distill))
    return {"student_forward": student, "teacher_forward": teacher, "step": 3 * student + teacher}
