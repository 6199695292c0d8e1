"""The three MMC losses (docs/method.md#losses) as pure functions of tensors.

Shapes: V views, B images of this micro-batch, N patch tokens, M masked tokens (over all views and
images, in the order of ``mask.nonzero()``), K prototypes, P pixels per patch (p*p*3).

Normalisation. A loss is a sum over this micro-batch's terms divided by a count over the **global
batch of the optimiser step** (every rank, every micro-batch), times the world size: DDP averages
gradients over ranks and accumulation adds micro-batches, so the update equals the one of a single
process on the whole global batch. The counts are a :class:`GlobalCounts`; without one, they are
taken from this call's inputs (all-reduced when a process group exists): plain means on one process.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from mmc.pretrain.diagnostics import entropy
from mmc.pretrain.distributed import all_gather_cat, all_reduce_sum, rank, world_size
from mmc.pretrain.masking import masked_positions


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major grid order, pixels as (py, px, c)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


# ----------------------------------------------------------------------------- normalisation
@dataclasses.dataclass(frozen=True)
class GlobalCounts:
    """Counts over the global batch of one optimiser step, and where this micro-batch sits in it.

    images: images in the global batch; masked_tokens: masked patch tokens over all its views;
    masked_views: (view, image) pairs with at least one masked token (float tensors, no gradient);
    key_offset: index of this micro-batch's first image among the global contrast keys;
    world: the number of processes whose gradients DDP averages.
    """

    images: torch.Tensor
    masked_tokens: torch.Tensor
    masked_views: torch.Tensor
    key_offset: int
    world: int

    @staticmethod
    def of_masks(masks: torch.Tensor, key_offset: int | None = None) -> GlobalCounts:
        """Counts of the global batch whose local part has ``masks`` (V, B, N): one all-reduce, no host sync."""
        local = torch.stack(
            [
                torch.full((), float(masks.shape[1]), device=masks.device),
                masks.sum().float(),
                (masks.sum(dim=-1) > 0).sum().float(),
            ]
        )
        total = all_reduce_sum(local)
        offset = rank() * masks.shape[1] if key_offset is None else key_offset
        return GlobalCounts(total[0], total[1], total[2], offset, world_size())


def _global_mean(total: torch.Tensor, count: torch.Tensor, world: int) -> torch.Tensor:
    """``total`` (this micro-batch's sum) over the global ``count``, times the world size.

    A count of 0 means nothing was selected, so ``total`` is an empty sum (0, with a graph): the
    clamp avoids 0/0 without reading the count on the host.
    """
    return total * world / count.clamp(min=1.0)


def _local(counts: GlobalCounts | None, masks: torch.Tensor) -> GlobalCounts:
    return counts if counts is not None else GlobalCounts.of_masks(masks)


# ----------------------------------------------------------------------------- L_mim
def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Reconstruction error averaged over the pixels of masked patches only.

    pred, target: (..., N, P); mask: (..., N) bool. ``kind``: ``l1`` on the pixels, or ``mse_norm``
    (MAE): squared error against the target normalised per patch (mean 0, variance 1, eps 1e-6).
    """
    counts = GlobalCounts.of_masks(mask.reshape(-1, 1, mask.shape[-1]))
    return masked_mim_loss(pred[mask], target[mask], counts, kind)


def masked_mim_loss(pred: torch.Tensor, target: torch.Tensor, counts: GlobalCounts, kind: str = "l1") -> torch.Tensor:
    """:func:`mim_loss` on the masked patches only: pred, target (M, P), in the masks' order."""
    if kind == "l1":
        err = (pred - target).abs()
    elif kind == "mse_norm":
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        err = (pred - (target - mean) / (var + 1e-6).sqrt()) ** 2
    else:
        raise ValueError(f"mim loss kind must be 'l1' or 'mse_norm', got {kind!r}")
    return _global_mean(err.sum(), counts.masked_tokens * pred.shape[-1], counts.world)


# ----------------------------------------------------------------------------- L_distill
def teacher_probs(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution (DINO), in float32.

    Kept in float32 under autocast: at a temperature of 0.04 a bfloat16 rounding of
    (logits - centre) / T moves the exponent by up to ~0.1, i.e. ~10 % in a probability.
    """
    with _no_autocast(logits):
        return _teacher_block(logits, center, temp, torch.float32)


def student_log_probs(student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """log softmax(s / T_s) over the last dimension, in the dtype of ``student_logits``.

    Under bfloat16/float16 autocast the logits arrive in that dtype and the log-softmax stays in it
    (float32 accumulation inside the kernel, half the memory traffic): at T_s = 0.1 its rounding is
    of the order of the logits' own (tests/test_pretrain_losses.py bounds the loss and gradient error
    against float64). Autocast is switched off around it because CUDA autocast would run it in float32.
    """
    with _no_autocast(student_logits):
        return F.log_softmax(student_logits / student_temp, dim=-1)


def soft_cross_entropy(target_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """-sum_k t_k log softmax(s / T_s)_k over the last dimension (summed in float32)."""
    log_probs = student_log_probs(student_logits, student_temp)
    return -(target_probs * log_probs).sum(dim=-1, dtype=torch.float32)


def _image_mean(values: torch.Tensor, counts: GlobalCounts | None, per_image: int = 1) -> torch.Tensor:
    """Mean over the images of the global batch of ``values`` (this micro-batch's images x ``per_image``)."""
    if counts is None:
        return values.mean()
    return _global_mean(values.sum(), counts.images * per_image, counts.world)


def distill_cls_loss(
    student_cls: torch.Tensor, teacher_cls_probs: torch.Tensor, student_temp: float, counts: GlobalCounts | None = None
) -> torch.Tensor:
    """[CLS] cross-entropy across views: student view i against teacher view j, i != j.

    student_cls: (Vs, B, K) logits, the first Vt of which are the global views the teacher saw;
    teacher_cls_probs: (Vt, B, K). Mean over images, then over the (i, j) pairs.
    """
    vt, vs = teacher_cls_probs.shape[0], student_cls.shape[0]
    pairs = [(j, i) for j in range(vt) for i in range(vs) if i != j]
    if not pairs:
        raise ValueError("distillation needs at least two views (no cross-view pair)")
    log_probs = student_log_probs(student_cls, student_temp).float()  # once per view, not once per pair
    terms = [_image_mean(-(teacher_cls_probs[j] * log_probs[i]).sum(dim=-1), counts) for j, i in pairs]
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
    student_masked: torch.Tensor,
    teacher_masked_probs: torch.Tensor,
    mask: torch.Tensor,
    student_temp: float,
    counts: GlobalCounts | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`distill_patch_loss` on the masked tokens only, gathered in ``mask``'s order: (M, K) each.

    Only masked tokens enter this loss, so only their K-way distributions are computed.
    ``positions``: ``masked_positions(mask)`` if the caller has them (no host synchronisation).
    """
    ce = soft_cross_entropy(teacher_masked_probs, student_masked, student_temp)  # (M,)
    return masked_token_mean(ce, mask, counts, positions)


def masked_token_mean(
    values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts | None = None, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """iBOT's patch-loss normalisation of per-token ``values`` (M,), in ``mask``'s order: for each
    (view, image) the mean over its masked tokens, then the mean over the (view, image) pairs of the
    global batch that have at least one masked token; pairs without one contribute nothing."""
    counts = _local(counts, mask)
    if positions is None:
        positions = masked_positions(mask)
    per_view = mask.sum(dim=-1)  # (V, B)
    # each token weighs 1 / (masked tokens of its view); its (view, image) is its position // N
    per_token_weight = (1.0 / per_view.clamp(min=1).to(values.dtype)).reshape(-1)[positions // mask.shape[-1]]
    return _global_mean((values * per_token_weight).sum(), counts.masked_views, counts.world)


# Elements of one float32 temporary of distill_cross_entropy's row blocks: 2 MiB on a CPU, so that a
# block's softmaxes stay in the core's cache instead of streaming (M, K) float32 tensors through
# memory several times; 256 MiB elsewhere (a handful of kernel launches, bounded temporaries).
_BLOCK_ELEMENTS = {"cpu": 1 << 19}
_DEFAULT_BLOCK_ELEMENTS = 1 << 26


def distill_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
    with_entropy: bool = False,
    block_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row cross-entropy of the student against the centred, sharpened teacher, fused.

    Row m: ``-sum_k softmax((teacher_m - center) / T_t)_k * log softmax(student_m / T_s)_k``, i.e.
    ``soft_cross_entropy(teacher_probs(teacher, center, T_t), student, T_s)``; student_logits,
    teacher_logits: (M, K); returns (M,) in float32 (float64 for float64 logits) and, with
    ``with_entropy``, the teacher distributions' entropies (M,) (no gradient), else None.

    Both softmaxes run in float32 whatever the logits' dtype, ``block_rows`` rows at a time (default:
    ``_BLOCK_ELEMENTS``), and the backward recomputes them from the logits,
    d ce / d student = (softmax(student / T_s) - teacher_probs) / T_s: no (M, K) float32 tensor is
    materialised, nor kept for the backward. Against the unfused form (float32 teacher softmax,
    student log-softmax in the autocast dtype) it is more precise under 16-bit autocast, keeps less
    memory for the backward and, on a CPU, is faster (docs/pretrain.md; measured by
    ``benchmarks/profile_pretrain.py --patch-loss``).
    """
    ce, entropies = _DistillCrossEntropy.apply(
        student_logits, teacher_logits, center, teacher_temp, student_temp, with_entropy, block_rows
    )
    return ce, (entropies if with_entropy else None)


class _DistillCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, center, teacher_temp, student_temp, with_entropy, block_rows):
        rows, block = student_logits.shape[0], _block_rows(student_logits, block_rows)
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        ce = torch.empty(rows, dtype=dtype, device=student_logits.device)
        entropies = torch.empty(rows if with_entropy else 0, dtype=dtype, device=student_logits.device)
        with _no_autocast(student_logits):
            for a in range(0, rows, block):
                target = _teacher_block(teacher_logits[a : a + block], center, teacher_temp, dtype)
                log_probs = F.log_softmax(_student_block(student_logits[a : a + block], student_temp, dtype), dim=-1)
                if with_entropy:
                    entropies[a : a + block] = entropy(target)
                ce[a : a + block] = -target.mul_(log_probs).sum(dim=-1)
        ctx.save_for_backward(student_logits, teacher_logits, center)
        ctx.temps, ctx.block, ctx.dtype = (teacher_temp, student_temp), block, dtype
        ctx.mark_non_differentiable(entropies)
        return ce, entropies

    @staticmethod
    def backward(ctx, grad_ce, _grad_entropies):
        student_logits, teacher_logits, center = ctx.saved_tensors
        (teacher_temp, student_temp), block, dtype = ctx.temps, ctx.block, ctx.dtype
        grad = torch.empty_like(student_logits)
        scale = (grad_ce.to(dtype) / student_temp).unsqueeze(-1)
        with _no_autocast(student_logits):
            for a in range(0, student_logits.shape[0], block):
                target = _teacher_block(teacher_logits[a : a + block], center, teacher_temp, dtype)
                probs = F.softmax(_student_block(student_logits[a : a + block], student_temp, dtype), dim=-1)
                grad[a : a + block] = probs.sub_(target).mul_(scale[a : a + block])
        return grad, None, None, None, None, None, None


def _block_rows(logits: torch.Tensor, block_rows: int | None) -> int:
    if block_rows is None:
        elements = _BLOCK_ELEMENTS.get(logits.device.type, _DEFAULT_BLOCK_ELEMENTS)
        block_rows = elements // max(1, logits.shape[-1])
    return max(1, block_rows)


def _teacher_block(logits: torch.Tensor, center: torch.Tensor, temp: float, dtype: torch.dtype) -> torch.Tensor:
    """softmax((logits - center) / temp) computed in ``dtype``: :func:`teacher_probs` (float32) and
    the rows of one block of :class:`_DistillCrossEntropy`."""
    return F.softmax(torch.sub(logits.to(dtype), center).div_(temp), dim=-1)


def _student_block(logits: torch.Tensor, temp: float, dtype: torch.dtype) -> torch.Tensor:
    """The student's logits / temp in ``dtype``, a new tensor (the forward takes its log-softmax,
    the backward its softmax)."""
    return torch.div(logits.to(dtype), temp)


def distill_cls_to_patch_loss(
    student_patch: torch.Tensor, teacher_cls_probs: torch.Tensor, student_temp: float, counts: GlobalCounts | None = None
) -> torch.Tensor:
    """``cls_to_patch``: the teacher [CLS] distribution of view j targets every patch of student view i != j.

    student_patch: (V, B, N, K) logits; teacher_cls_probs: (V, B, K). Mean over tokens and images,
    then over the (i, j) pairs.
    """
    views, tokens = student_patch.shape[0], student_patch.shape[2]
    terms = []
    for i in range(views):
        log_probs = student_log_probs(student_patch[i], student_temp)  # (B, N, K)
        for j in range(views):
            if i != j:
                ce = -(teacher_cls_probs[j].unsqueeze(1) * log_probs).sum(dim=-1, dtype=torch.float32)  # (B, N)
                terms.append(_image_mean(ce, counts, per_image=tokens))
    if not terms:
        raise ValueError("cls_to_patch distillation needs at least two global views")
    return torch.stack(terms).mean()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher's mean output over every leading dimension of ``teacher_logits`` (global batch)."""
    flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    total = all_reduce_sum(flat.sum(dim=0, dtype=torch.float32))
    count = all_reduce_sum(torch.full((), float(flat.shape[0]), device=flat.device))
    return center_from_sum(center, total, count, momentum)


@torch.no_grad()
def center_from_sum(center: torch.Tensor, total: torch.Tensor, count, momentum: float) -> torch.Tensor:
    """EMA of a mean given as a (global) float32 sum over ``count`` outputs: the reduced statistic."""
    return center * momentum + (total / count) * (1.0 - momentum)


# ----------------------------------------------------------------------------- L_contrast
def info_nce(
    query: torch.Tensor, all_keys: torch.Tensor, temperature: float, key_offset: int, counts: GlobalCounts | None = None
) -> torch.Tensor:
    """MoCo v3 InfoNCE of queries (B, d) against every key of the global batch (B_global, d).

    The positive of query b is key ``key_offset + b``; the loss is multiplied by 2T (MoCo v3).
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(all_keys.float(), dim=-1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + key_offset
    if counts is None:
        return F.cross_entropy(logits, labels) * (2.0 * temperature)
    total = F.cross_entropy(logits, labels, reduction="sum")
    return _global_mean(total, counts.images, counts.world) * (2.0 * temperature)


def contrast_loss(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float, counts: GlobalCounts | None = None
) -> torch.Tensor:
    """Symmetrised over two views as in MoCo v3: ctr(q1, k2) + ctr(q2, k1).

    queries: (2, B, d) of this micro-batch. keys: (2, B, d) of this rank's batch, all-gathered here;
    or, with ``counts``, (2, B_global, d) already gathered, the positives at ``counts.key_offset``.
    """
    if queries.shape[0] != 2 or keys.shape[0] != 2:
        raise ValueError(f"contrast expects exactly two global views, got {queries.shape[0]} and {keys.shape[0]}")
    if counts is None:
        keys = torch.stack([all_gather_cat(keys[0]), all_gather_cat(keys[1])])
        offset = rank() * queries.shape[1]
    else:
        offset = counts.key_offset
    return info_nce(queries[0], keys[1], temperature, offset, counts) + info_nce(
        queries[1], keys[0], temperature, offset, counts
    )


# ----------------------------------------------------------------------------- total
def mmc_loss(
    student: dict,
    teacher: dict | None,
    targets: torch.Tensor | None,
    masks: torch.Tensor,
    centers: dict[str, torch.Tensor],
    teacher_temp: float,
    pcfg,
    counts: GlobalCounts | None = None,
    entropies: bool = False,
    positions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All active components and their weighted sum under ``"loss"``.

    student (:class:`mmc.pretrain.model.MMCNetwork` outputs): {"recon": (M, P), "dino_cls": (2, B, K),
    "dino_patch": (M, K) in ``patch`` mode or (2, B, N, K) in ``cls_to_patch`` mode, "dino_local":
    (L, B, K), "query": (2, B, d)}; teacher: {"dino_cls": (2, B, K), "dino_patch": (M, K) (``patch``),
    "key": (2, B, d), or with ``counts`` the global keys (2, B_global, d)}; targets: (M, P) clean
    pixels of the masked patches; masks: (2, B, N). Entries of switched-off losses are absent.
    ``entropies``: also the teacher distributions' entropies as sums, "entropy_cls" and
    "entropy_patch" (``patch`` mode), each with its number of distributions under "...@count".
    ``positions``: ``masked_positions(masks)`` if the caller has them.
    """
    counts = _local(counts, masks)
    w = pcfg.loss
    out: dict[str, torch.Tensor] = {}
    total = None
    if w.w_mim > 0:
        out["mim"] = masked_mim_loss(student["recon"], targets, counts, pcfg.mim.loss)
        total = w.w_mim * out["mim"]
    if w.w_distill > 0:
        t_cls = teacher_probs(teacher["dino_cls"], centers["cls"], teacher_temp)
        s_cls = student["dino_cls"]
        if "dino_local" in student:
            s_cls = torch.cat([s_cls, student["dino_local"]])
        out["distill_cls"] = distill_cls_loss(s_cls, t_cls, pcfg.distill.student_temp, counts)
        if pcfg.distill.mode == "patch":
            ce, patch_entropies = distill_cross_entropy(
                student["dino_patch"], teacher["dino_patch"], centers["patch"], teacher_temp,
                pcfg.distill.student_temp, with_entropy=entropies,
            )  # fmt: skip
            out["distill_patch"] = masked_token_mean(ce, masks, counts, positions)
        else:
            out["distill_patch"] = distill_cls_to_patch_loss(student["dino_patch"], t_cls, pcfg.distill.student_temp, counts)
        if entropies:
            out["entropy_cls"] = entropy(t_cls).sum()
            out["entropy_cls@count"] = torch.full((), float(t_cls.shape[0] * t_cls.shape[1]), device=t_cls.device)
            if pcfg.distill.mode == "patch":
                out["entropy_patch"] = patch_entropies.sum()
                out["entropy_patch@count"] = torch.full((), float(ce.shape[0]), device=ce.device)
        out["distill"] = out["distill_cls"] + out["distill_patch"]
        term = w.w_distill * out["distill"]
        total = term if total is None else total + term
    if w.w_contrast > 0:
        out["contrast"] = contrast_loss(student["query"], teacher["key"], pcfg.contrast.temperature, counts)
        term = w.w_contrast * out["contrast"]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("every loss weight is 0: set at least one of loss.w_mim, w_distill, w_contrast > 0")
    out["loss"] = total
    return out


def _no_autocast(tensor: torch.Tensor):
    if not torch.is_autocast_enabled(tensor.device.type):
        return contextlib.nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)
