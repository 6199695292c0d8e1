"""The three MMC losses (docs/method.md#losses) as pure functions of tensors.

Shapes: V views, B images of this rank, N patch tokens, K prototypes, P pixels per patch (p*p*3).
Normalisations that depend on counts (masked tokens, images with masked tokens) use the count over
the **global** batch, scaled by the world size, so that DDP's gradient averaging yields exactly the
single-process loss on the same global batch. Without a process group they are plain means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmc.pretrain.distributed import all_gather_cat, all_reduce_sum, rank, world_size


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major grid order, pixels as (py, px, c)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def _global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total`` (this rank's sum) divided by the global ``count``, times the world size."""
    global_count = all_reduce_sum(count.float())
    if global_count.item() == 0:
        return total * 0.0  # keeps the graph; nothing to learn from this batch
    return total * world_size() / global_count


# ----------------------------------------------------------------------------- L_mim
def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Reconstruction error averaged over the pixels of masked patches only.

    pred, target: (..., N, P); mask: (..., N) bool. ``kind``: ``l1`` on the pixels, or ``mse_norm``
    (MAE): squared error against the target normalised per patch (mean 0, variance 1, eps 1e-6).
    """
    if kind == "l1":
        err = (pred - target).abs()
    elif kind == "mse_norm":
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        err = (pred - (target - mean) / (var + 1e-6).sqrt()) ** 2
    else:
        raise ValueError(f"mim loss kind must be 'l1' or 'mse_norm', got {kind!r}")
    weights = mask.to(err.dtype).unsqueeze(-1)
    return _global_mean((err * weights).sum(), mask.sum() * pred.shape[-1])


# ----------------------------------------------------------------------------- L_distill
def teacher_probs(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution (DINO)."""
    return F.softmax((logits.float() - center) / temp, dim=-1)


def soft_cross_entropy(target_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """-sum_k t_k log softmax(s / T_s)_k over the last dimension."""
    return -(target_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


def distill_cls_loss(student_cls: torch.Tensor, teacher_cls_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """[CLS] cross-entropy across views: student view i against teacher view j, i != j.

    student_cls: (Vs, B, K) logits, the first Vt of which are the global views the teacher saw;
    teacher_cls_probs: (Vt, B, K). Mean over images, then over the (i, j) pairs.
    """
    terms = []
    for j in range(teacher_cls_probs.shape[0]):
        for i in range(student_cls.shape[0]):
            if i != j:
                terms.append(soft_cross_entropy(teacher_cls_probs[j], student_cls[i], student_temp).mean())
    if not terms:
        raise ValueError("distillation needs at least two views (no cross-view pair)")
    return torch.stack(terms).mean()


def distill_patch_loss(
    student_patch: torch.Tensor, teacher_patch_probs: torch.Tensor, mask: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Patch cross-entropy at the masked positions of the same view (iBOT).

    student_patch: (V, B, N, K) logits; teacher_patch_probs: (V, B, N, K); mask: (V, B, N) bool.
    Normalisation: for each (view, image) the mean over its masked tokens, then the mean over the
    (view, image) pairs that have at least one masked token; pairs without one contribute nothing.
    """
    return masked_distill_patch_loss(student_patch[mask], teacher_patch_probs[mask], mask, student_temp)


def masked_distill_patch_loss(
    student_masked: torch.Tensor, teacher_masked_probs: torch.Tensor, mask: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """:func:`distill_patch_loss` on the masked tokens only, gathered in ``mask``'s order: (M, K) each.

    Softmaxes over K prototypes for every patch token dominate the step's non-matmul time on CPU;
    only masked tokens enter this loss, so only they are normalised.
    """
    ce = soft_cross_entropy(teacher_masked_probs, student_masked, student_temp)  # (M,)
    counts = mask.sum(dim=-1)  # (V, B)
    per_token_weight = (1.0 / counts.clamp(min=1).to(ce.dtype)).unsqueeze(-1).expand(mask.shape)[mask]
    return _global_mean((ce * per_token_weight).sum(), (counts > 0).sum())


def distill_cls_to_patch_loss(
    student_patch: torch.Tensor, teacher_cls_probs: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """``cls_to_patch``: the teacher [CLS] distribution of view j targets every patch of student view i != j.

    student_patch: (V, B, N, K) logits; teacher_cls_probs: (V, B, K). Mean over tokens and images,
    then over the (i, j) pairs.
    """
    views = student_patch.shape[0]
    terms = []
    for i in range(views):
        for j in range(views):
            if i != j:
                target = teacher_cls_probs[j].unsqueeze(1).expand_as(student_patch[i])
                terms.append(soft_cross_entropy(target, student_patch[i], student_temp).mean())
    if not terms:
        raise ValueError("cls_to_patch distillation needs at least two global views")
    return torch.stack(terms).mean()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher's mean output over every leading dimension of ``teacher_logits`` (global batch)."""
    flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
    total = all_reduce_sum(flat.sum(dim=0))
    count = all_reduce_sum(torch.tensor(float(flat.shape[0]), device=flat.device))
    return center * momentum + (total / count) * (1.0 - momentum)


# ----------------------------------------------------------------------------- L_contrast
def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3 InfoNCE of this rank's queries (B, d) against the global keys (gathered, in rank order).

    The positive of query b is key ``rank * B + b``; the loss is multiplied by 2T (MoCo v3).
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(all_gather_cat(keys.float()), dim=-1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


def contrast_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetrised over two views as in MoCo v3: ctr(q1, k2) + ctr(q2, k1). queries, keys: (2, B, d)."""
    if queries.shape[0] != 2 or keys.shape[0] != 2:
        raise ValueError(f"contrast expects exactly two global views, got {queries.shape[0]} and {keys.shape[0]}")
    return info_nce(queries[0], keys[1], temperature) + info_nce(queries[1], keys[0], temperature)


# ----------------------------------------------------------------------------- total
def mmc_loss(
    student: dict,
    teacher: dict | None,
    targets: torch.Tensor | None,
    masks: torch.Tensor,
    centers: dict[str, torch.Tensor],
    teacher_temp: float,
    pcfg,
) -> dict[str, torch.Tensor]:
    """All active components and their weighted sum under ``"loss"``.

    student: {"recon": (2, B, N, P), "dino": (2, B, 1+N, K), "dino_local": (L, B, K), "query": (2, B, d)}
    (entries of switched-off losses absent); teacher: {"dino": (2, B, 1+N or 1, K), "key": (2, B, d)};
    targets: (2, B, N, P) clean patchified pixels; masks: (2, B, N).
    """
    w = pcfg.loss
    out: dict[str, torch.Tensor] = {}
    total = None
    if w.w_mim > 0:
        out["mim"] = mim_loss(student["recon"], targets, masks, pcfg.mim.loss)
        total = w.w_mim * out["mim"]
    if w.w_distill > 0:
        t_dino = teacher["dino"]
        # split, not two slices: with both parts used, its backward is one concatenation, where
        # each slice's backward would zero-fill a full (V, B, 1+N, K) gradient
        s_cls, s_patch = student["dino"].split([1, student["dino"].shape[2] - 1], dim=2)
        s_cls = s_cls.squeeze(2)
        t_cls = teacher_probs(t_dino[:, :, 0], centers["cls"], teacher_temp)
        if "dino_local" in student:
            s_cls = torch.cat([s_cls, student["dino_local"]])
        out["distill_cls"] = distill_cls_loss(s_cls, t_cls, pcfg.distill.student_temp)
        if pcfg.distill.mode == "patch":
            t_patch = teacher_probs(t_dino[:, :, 1:][masks], centers["patch"], teacher_temp)
            out["distill_patch"] = masked_distill_patch_loss(
                s_patch[masks], t_patch, masks, pcfg.distill.student_temp
            )
        else:
            out["distill_patch"] = distill_cls_to_patch_loss(s_patch, t_cls, pcfg.distill.student_temp)
        out["distill"] = out["distill_cls"] + out["distill_patch"]
        term = w.w_distill * out["distill"]
        total = term if total is None else total + term
    if w.w_contrast > 0:
        out["contrast"] = contrast_loss(student["query"], teacher["key"], pcfg.contrast.temperature)
        term = w.w_contrast * out["contrast"]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("every loss weight is 0: set at least one of loss.w_mim, w_distill, w_contrast > 0")
    out["loss"] = total
    return out
