"""Analytic matmul FLOPs of one MMC training step (2 FLOPs per multiply-add).

Counted: patch embedding, attention (QKV, scores, weighted values, projection), MLPs, and the heads
of the active losses on the tokens they really run on (the step computes what a loss reads). Not counted: norms, softmax, activations, the optimiser (all O(params) or
O(tokens x dim), a few per cent at ViT-S scale). The student's backward is 2 x its forward (the
gradients of each matmul's two operands) less what has no gradient to compute: the images into the
patch embedding and the teacher's keys in the contrast scores (one operand each); the teacher runs
forward only.
"""

from __future__ import annotations


def patch_embed_flops(patches: int, patch_size: int, dim: int) -> int:
    """The patch embedding of one image (a stride-``patch_size`` convolution over 3 channels)."""
    return 2 * patches * 3 * patch_size * patch_size * dim


def vit_forward_flops(tokens: int, patches: int, patch_size: int, dim: int, depth: int, mlp_ratio: float) -> int:
    per_block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim
    per_block += 2 * tokens * dim * int(dim * mlp_ratio)
    return patch_embed_flops(patches, patch_size, dim) + 2 * depth * per_block


def vit_backward_flops(tokens: int, patches: int, patch_size: int, dim: int, depth: int, mlp_ratio: float) -> int:
    """The backward of :func:`vit_forward_flops` (one image): 2x it, less the images' gradient,
    which is never computed (only the patch embedding's weight gets one there)."""
    forward = vit_forward_flops(tokens, patches, patch_size, dim, depth, mlp_ratio)
    return 2 * forward - patch_embed_flops(patches, patch_size, dim)


def _dino_mlp_macs(dim: int, d) -> int:
    return dim * d.hidden_dim + d.hidden_dim * d.hidden_dim + d.hidden_dim * d.bottleneck_dim


def _dino_head_macs(dim: int, d) -> int:
    return _dino_mlp_macs(dim, d) + d.bottleneck_dim * d.out_dim


def nominal_masked_tokens(pcfg, batch: int) -> int:
    """Masked tokens of ``batch`` images over both global views at the mean of ``mask.ratio``."""
    grid = pcfg.data.global_crop_size // pcfg.backbone.patch_size
    return 2 * batch * round(sum(pcfg.mask.ratio) / 2 * grid * grid)


def step_flops(pcfg, batch: int, masked_tokens: int | None = None) -> dict[str, int]:
    """Forward FLOPs of student and teacher, the student's backward, and the total step FLOPs for
    ``batch`` images (2 global views).

    ``masked_tokens``: masked patch tokens over both views of the batch (default
    :func:`nominal_masked_tokens`). The reconstruction head, and in ``patch`` mode the student's
    DINO head and the teacher's prototype layer, run on the masked tokens only (docs/pretrain.md).
    """
    b, w = pcfg.backbone, pcfg.loss
    grid = pcfg.data.global_crop_size // b.patch_size
    patches = grid * grid
    tokens = patches + 1
    views = 2 * batch
    masked = nominal_masked_tokens(pcfg, batch) if masked_tokens is None else int(masked_tokens)
    backbone = vit_forward_flops(tokens, patches, b.patch_size, b.embed_dim, b.depth, b.mlp_ratio)
    student = teacher = views * backbone
    no_gradient = views * patch_embed_flops(patches, b.patch_size, b.embed_dim)  # the images' gradient
    if w.w_mim > 0:
        student += masked * 2 * b.embed_dim * 3 * b.patch_size**2
    if w.w_distill > 0:
        d = pcfg.distill
        head = 2 * _dino_head_macs(b.embed_dim, d)
        if d.mode == "patch":
            student += (views + masked) * head
            teacher += views * tokens * 2 * _dino_mlp_macs(b.embed_dim, d)  # bottleneck of every token
            teacher += (views + masked) * 2 * d.bottleneck_dim * d.out_dim  # logits of [CLS] and masked tokens
            teacher += 2 * d.bottleneck_dim * d.out_dim  # the patch centre's sum through the prototypes
        else:
            student += views * tokens * head
            teacher += views * head
    if w.w_contrast > 0:
        c = pcfg.contrast
        projector = 2 * (b.embed_dim * c.hidden_dim + c.hidden_dim * c.hidden_dim + c.hidden_dim * c.dim)
        predictor = 2 * (c.dim * c.hidden_dim + c.hidden_dim * c.dim)
        student += views * (projector + predictor)
        teacher += views * projector
        scores = 2 * 2 * batch * batch * c.dim  # two q @ k^T of (B x d) @ (d x B)
        student += scores
        no_gradient += scores  # the keys' gradient (the teacher's)
    if w.w_distill == 0 and w.w_contrast == 0:
        teacher = 0
    local = pcfg.data.local_crops if w.w_distill > 0 else 0
    if local:
        lgrid = pcfg.data.local_crop_size // b.patch_size
        lpatches = lgrid * lgrid
        lbackbone = vit_forward_flops(lpatches + 1, lpatches, b.patch_size, b.embed_dim, b.depth, b.mlp_ratio)
        student += local * batch * (lbackbone + 2 * _dino_head_macs(b.embed_dim, pcfg.distill))
        no_gradient += local * batch * patch_embed_flops(lpatches, b.patch_size, b.embed_dim)
    backward = 2 * student - no_gradient
    return {"student_forward": student, "student_backward": backward, "teacher_forward": teacher,
            "step": student + backward + teacher}  # fmt: skip
