"""The MMC losses against independently written (loop, numpy, float64) formulas on tiny tensors."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmc.pretrain import losses

RTOL = 1e-5


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def np_softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x))


def ce(target: np.ndarray, student_logits: np.ndarray, ts: float) -> float:
    return float(-(target * np_log_softmax(student_logits / ts)).sum())


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_patchify_matches_a_loop(gen):
    images = torch.randn(2, 3, 8, 12, generator=gen)
    p = 4
    out = losses.patchify(images, p).numpy()
    x = images.numpy()
    for b in range(2):
        n = 0
        for gy in range(2):
            for gx in range(3):
                expected = [x[b, c, gy * p + py, gx * p + px] for py in range(p) for px in range(p) for c in range(3)]
                np.testing.assert_allclose(out[b, n], expected)
                n += 1


def masks_with_an_empty_image():
    # (V=2, B=3, N=4): image 1 of view 0 and image 2 of view 1 have no masked token; counts differ
    return torch.tensor([[[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]]).bool()


@pytest.mark.parametrize("kind", ["l1", "mse_norm"])
def test_mim_loss_averages_over_masked_pixels_only(gen, kind):
    mask = masks_with_an_empty_image()
    pred = torch.randn(2, 3, 4, 6, generator=gen)
    target = torch.randn(2, 3, 4, 6, generator=gen)
    errors = []
    for v in range(2):
        for b in range(3):
            for n in range(4):
                if not mask[v, b, n]:
                    continue
                t = target[v, b, n].double().numpy()
                p = pred[v, b, n].double().numpy()
                if kind == "l1":
                    errors.extend(abs(p - t))
                else:
                    t = (t - t.mean()) / math.sqrt(t.var() + 1e-6)
                    errors.extend((p - t) ** 2)
    expected = sum(errors) / len(errors)
    got = losses.mim_loss(pred, target, mask, kind).item()
    assert got == pytest.approx(expected, rel=RTOL)
    # the unmasked positions really are ignored
    pred2 = pred.clone()
    pred2[~mask] += 100.0
    assert losses.mim_loss(pred2, target, mask, kind).item() == pytest.approx(got, rel=RTOL)


def test_mim_loss_without_any_masked_token_is_zero_with_a_graph(gen):
    pred = torch.randn(2, 3, 4, 6, generator=gen, requires_grad=True)
    loss = losses.mim_loss(pred, torch.randn(2, 3, 4, 6, generator=gen), torch.zeros(2, 3, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(pred.grad == 0)


def test_teacher_probs_centre_and_temperature(gen):
    logits, center = torch.randn(3, 5, generator=gen), torch.randn(5, generator=gen)
    got = losses.teacher_probs(logits, center, 0.04).numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i], np_softmax((logits[i] - center).double().numpy() / 0.04), rtol=1e-5, atol=1e-7)


def test_distill_cls_loss_pairs_every_student_view_with_the_other_teacher_views(gen):
    vs, vt, b, k, ts = 4, 2, 3, 7, 0.1  # 2 global + 2 local student views
    s = torch.randn(vs, b, k, generator=gen)
    t = torch.softmax(torch.randn(vt, b, k, generator=gen), dim=-1)
    terms = []
    for j in range(vt):
        for i in range(vs):
            if i == j:
                continue
            terms.append(np.mean([ce(t[j, n].double().numpy(), s[i, n].double().numpy(), ts) for n in range(b)]))
    assert losses.distill_cls_loss(s, t, ts).item() == pytest.approx(np.mean(terms), rel=RTOL)
    assert len(terms) == 6


def test_distill_patch_loss_normalisation_skips_images_without_masked_tokens(gen):
    mask = masks_with_an_empty_image()
    s = torch.randn(2, 3, 4, 5, generator=gen)
    t = torch.softmax(torch.randn(2, 3, 4, 5, generator=gen), dim=-1)
    per_image, all_tokens = [], []
    for v in range(2):
        for b in range(3):
            token_ce = [ce(t[v, b, n].double().numpy(), s[v, b, n].double().numpy(), 0.1) for n in range(4) if mask[v, b, n]]
            all_tokens.extend(token_ce)
            if token_ce:
                per_image.append(sum(token_ce) / len(token_ce))
    assert len(per_image) == 4  # two of the six (view, image) pairs have nothing masked
    expected = sum(per_image) / len(per_image)
    got = losses.distill_patch_loss(s, t, mask, 0.1).item()
    assert got == pytest.approx(expected, rel=RTOL)
    # and it is not the token-weighted mean, nor a mean that counts empty images as zeros
    assert abs(got - np.mean(all_tokens)) > 1e-3
    assert abs(got - sum(per_image) / 6) > 1e-3


def test_distill_patch_loss_with_nothing_masked_is_zero(gen):
    s = torch.randn(2, 3, 4, 5, generator=gen, requires_grad=True)
    t = torch.softmax(torch.randn(2, 3, 4, 5, generator=gen), dim=-1)
    loss = losses.distill_patch_loss(s, t, torch.zeros(2, 3, 4, dtype=torch.bool), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


def test_cls_to_patch_targets_every_patch_with_the_other_views_teacher_cls(gen):
    s = torch.randn(2, 3, 4, 5, generator=gen)
    t_cls = torch.softmax(torch.randn(2, 3, 5, generator=gen), dim=-1)
    terms = []
    for i, j in ((0, 1), (1, 0)):
        terms.append(
            np.mean([ce(t_cls[j, b].double().numpy(), s[i, b, n].double().numpy(), 0.1) for b in range(3) for n in range(4)])
        )
    assert losses.distill_cls_to_patch_loss(s, t_cls, 0.1).item() == pytest.approx(np.mean(terms), rel=RTOL)


def test_updated_center_is_an_ema_of_the_batch_mean(gen):
    center, logits = torch.randn(5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen)
    flat = logits.double().numpy().reshape(-1, 5)
    expected = 0.9 * center.double().numpy() + 0.1 * flat.mean(axis=0)
    np.testing.assert_allclose(losses.updated_center(center, logits, 0.9).numpy(), expected, rtol=1e-5)


def np_info_nce(q: np.ndarray, k: np.ndarray, temp: float) -> float:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for b in range(len(q)):
        sims = [float(q[b] @ k[j]) / temp for j in range(len(k))]
        total += -(sims[b] - math.log(sum(math.exp(x) for x in sims)))
    return total / len(q) * 2 * temp


@pytest.mark.parametrize("temp", [0.2, 1.0])
def test_contrast_loss_is_symmetric_infonce_times_2t(gen, temp):
    q = torch.randn(2, 5, 8, generator=gen)
    k = torch.randn(2, 5, 8, generator=gen)
    expected = np_info_nce(q[0].double().numpy(), k[1].double().numpy(), temp) + np_info_nce(
        q[1].double().numpy(), k[0].double().numpy(), temp
    )
    assert losses.contrast_loss(q, k, temp).item() == pytest.approx(expected, rel=RTOL)
    with pytest.raises(ValueError, match="two global views"):
        losses.contrast_loss(q[:1], k[:1], temp)


def pcfg(w_mim=1.0, w_distill=1.0, w_contrast=1.0, mode="patch"):
    return SimpleNamespace(
        loss=SimpleNamespace(w_mim=w_mim, w_distill=w_distill, w_contrast=w_contrast),
        mim=SimpleNamespace(loss="l1"),
        distill=SimpleNamespace(mode=mode, student_temp=0.1),
        contrast=SimpleNamespace(temperature=0.2),
    )


def fake_outputs(gen, v=2, b=3, n=4, k=5, d=6, p=12, mode="patch"):
    masks = masks_with_an_empty_image()
    m = int(masks.sum())
    patch_shape = (m, k) if mode == "patch" else (v, b, n, k)
    student = {
        "recon": torch.randn(m, p, generator=gen),
        "dino_cls": torch.randn(v, b, k, generator=gen),
        "dino_patch": torch.randn(*patch_shape, generator=gen),
        "query": torch.randn(v, b, d, generator=gen),
    }
    teacher = {
        "dino_cls": torch.randn(v, b, k, generator=gen),
        "dino_patch": torch.randn(m, k, generator=gen),
        "key": torch.randn(v, b, d, generator=gen),
    }
    return student, teacher, torch.randn(m, p, generator=gen), masks


@pytest.mark.parametrize("mode", ["patch", "cls_to_patch"])
def test_mmc_loss_is_the_weighted_sum_and_zero_weights_switch_losses_off(gen, mode):
    student, teacher, targets, masks = fake_outputs(gen, mode=mode)
    centers = {"cls": torch.zeros(5), "patch": torch.zeros(5)}
    full = losses.mmc_loss(student, teacher, targets, masks, centers, 0.04, pcfg(0.5, 2.0, 3.0, mode))
    assert set(full) == {"mim", "distill_cls", "distill_patch", "distill", "contrast", "loss"}
    expected = 0.5 * full["mim"] + 2.0 * (full["distill_cls"] + full["distill_patch"]) + 3.0 * full["contrast"]
    assert full["loss"].item() == pytest.approx(expected.item(), rel=RTOL)
    mim_only = losses.mmc_loss(student, None, targets, masks, centers, 0.04, pcfg(1.0, 0.0, 0.0, mode))
    assert set(mim_only) == {"mim", "loss"} and mim_only["loss"].item() == pytest.approx(full["mim"].item())
    pair = losses.mmc_loss(student, teacher, None, masks, centers, 0.04, pcfg(0.0, 1.0, 1.0, mode))
    assert "mim" not in pair
    with pytest.raises(ValueError, match="every loss weight is 0"):
        losses.mmc_loss(student, teacher, targets, masks, centers, 0.04, pcfg(0.0, 0.0, 0.0, mode))


@pytest.mark.parametrize("mode", ["patch", "cls_to_patch"])
def test_mmc_loss_on_the_masked_outputs_equals_the_full_tensor_losses(gen, mode):
    """The step's masked-token inputs give the losses of the full (V, B, N, ...) reference functions."""
    v, b, n, k, p = 2, 3, 4, 5, 12
    masks = masks_with_an_empty_image()
    recon, targets = torch.randn(v, b, n, p, generator=gen), torch.randn(v, b, n, p, generator=gen)
    s_patch, t_patch = torch.randn(v, b, n, k, generator=gen), torch.randn(v, b, n, k, generator=gen)
    s_cls, t_cls = torch.randn(v, b, k, generator=gen), torch.randn(v, b, k, generator=gen)
    centers = {"cls": torch.randn(k, generator=gen), "patch": torch.randn(k, generator=gen)}
    student = {"recon": recon[masks], "dino_cls": s_cls, "dino_patch": s_patch[masks] if mode == "patch" else s_patch}
    teacher = {"dino_cls": t_cls, "dino_patch": t_patch[masks]}
    got = losses.mmc_loss(student, teacher, targets[masks], masks, centers, 0.04, pcfg(1.0, 1.0, 0.0, mode))
    assert got["mim"].item() == pytest.approx(losses.mim_loss(recon, targets, masks).item(), rel=RTOL)
    t_cls_probs = losses.teacher_probs(t_cls, centers["cls"], 0.04)
    assert got["distill_cls"].item() == pytest.approx(losses.distill_cls_loss(s_cls, t_cls_probs, 0.1).item(), rel=RTOL)
    if mode == "patch":
        t_probs = losses.teacher_probs(t_patch, centers["patch"], 0.04)
        expected = losses.distill_patch_loss(s_patch, t_probs, masks, 0.1)
    else:
        expected = losses.distill_cls_to_patch_loss(s_patch, t_cls_probs, 0.1)
    assert got["distill_patch"].item() == pytest.approx(expected.item(), rel=RTOL)


@pytest.mark.parametrize("mode", ["patch", "cls_to_patch"])
def test_micro_batches_with_global_counts_sum_to_the_whole_batch_loss_and_gradient(gen, mode):
    """Gradient accumulation: the losses of micro-batches, normalised by the counts of the whole
    batch and scored against all of its keys, add up to the loss of the whole batch (and so do the
    gradients). Includes a micro-batch whose views have no masked token."""
    v, b, n, k, d, p = 2, 6, 4, 5, 6, 12
    masks = torch.cat([masks_with_an_empty_image(), masks_with_an_empty_image().flip(1)], dim=1)  # (2, 6, 4)
    masks[:, 2:4] = False  # the second micro-batch (images 2-3) has no masked token at all
    recon, targets = torch.randn(v, b, n, p, generator=gen), torch.randn(v, b, n, p, generator=gen)
    s_cls, t_cls = torch.randn(v, b, k, generator=gen), torch.randn(v, b, k, generator=gen)
    s_patch = torch.randn(v, b, n, k, generator=gen)
    t_patch = torch.randn(v, b, n, k, generator=gen)
    queries, keys = torch.randn(v, b, d, generator=gen), torch.randn(v, b, d, generator=gen)
    centers = {"cls": torch.randn(k, generator=gen), "patch": torch.randn(k, generator=gen)}
    cfg = pcfg(1.0, 1.0, 1.0, mode)

    def loss_of(part, counts, leaves):
        m = masks[:, part]
        student = {
            "recon": leaves["recon"][:, part][m], "dino_cls": leaves["s_cls"][:, part],
            "dino_patch": leaves["s_patch"][:, part][m] if mode == "patch" else leaves["s_patch"][:, part],
            "query": leaves["queries"][:, part],
        }  # fmt: skip
        teacher = {"dino_cls": t_cls[:, part], "dino_patch": t_patch[:, part][m], "key": keys if counts else keys[:, part]}
        return losses.mmc_loss(student, teacher, targets[:, part][m], m, centers, 0.04, cfg, counts)

    def leaves():
        return {name: t.clone().requires_grad_() for name, t in
                (("recon", recon), ("s_cls", s_cls), ("s_patch", s_patch), ("queries", queries))}  # fmt: skip

    whole_leaves = leaves()
    whole = loss_of(slice(0, b), None, whole_leaves)
    whole["loss"].backward()
    counts = losses.GlobalCounts.of_masks(masks)
    micro_leaves = leaves()
    summed = {}
    for start in range(0, b, 2):
        part = slice(start, start + 2)
        micro = loss_of(part, dataclasses.replace(counts, key_offset=start), micro_leaves)
        micro["loss"].backward()
        for name, value in micro.items():
            summed[name] = summed.get(name, 0.0) + value.item()
    for name, value in whole.items():
        assert summed[name] == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    for name in whole_leaves:
        torch.testing.assert_close(micro_leaves[name].grad, whole_leaves[name].grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_student_log_softmax_stays_within_stated_tolerances_of_float64(gen, dtype):
    """Under autocast the student log-softmax runs in the autocast dtype on that dtype's logits.

    Stated tolerances against a float64 reference computed from the same (rounded) logits: the
    cross-entropy within 1e-3 relative, its gradient within 2 % of the largest gradient entry; the
    float32 path is within 1e-5 and 1e-4 respectively.
    """
    m, k = 64, 512
    # cosine-similarity logits (the head's output range) and a sharp, centred teacher target
    z = torch.nn.functional.normalize(torch.randn(m, 32, generator=gen), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(k, 32, generator=gen), dim=-1)
    logits = (z @ w.t()).to(dtype)
    target = torch.softmax((z + 0.3 * torch.randn(m, 32, generator=gen)) @ w.t() / 0.04, dim=-1)

    def loss_and_grad(x):
        x = x.clone().requires_grad_()
        loss = losses.soft_cross_entropy(target, x, 0.1).mean()
        loss.backward()
        return loss.item(), x.grad.double()

    ref_x = logits.double().requires_grad_()
    ref = -(target.double() * torch.log_softmax(ref_x / 0.1, dim=-1)).sum(-1).mean()
    ref.backward()
    for x, loss_tol, grad_tol in ((logits, 1e-3, 0.02), (logits.float(), 1e-5, 1e-4)):
        loss, grad = loss_and_grad(x)
        assert loss == pytest.approx(ref.item(), rel=loss_tol)
        assert (grad - ref_x.grad).abs().max() <= grad_tol * ref_x.grad.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert losses.student_log_probs(logits, 0.1).dtype == dtype  # not cast up, not cast to bf16


def np_distill_ce(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, tt: float, ts: float):
    """Per-row cross-entropy and teacher entropy, float64, one row at a time; and d(sum of
    weight * ce)/d student from the closed form (softmax(s / T_s) - t) / T_s."""
    rows = []
    for s_row, t_row in zip(student.astype(np.float64), teacher.astype(np.float64), strict=True):
        target = np_softmax((t_row - center) / tt)
        rows.append((ce(target, s_row, ts), float(-(target * np.log(target)).sum()), target))
    return rows


@pytest.mark.parametrize("block_rows", [None, 1, 3])
def test_distill_cross_entropy_matches_the_float64_formula_in_every_block_split(gen, block_rows):
    m, k, tt, ts = 7, 11, 0.04, 0.1
    student = torch.randn(m, k, generator=gen).requires_grad_()
    teacher, center = torch.randn(m, k, generator=gen), 0.1 * torch.randn(k, generator=gen)
    weight = torch.rand(m, generator=gen)
    got, entropies = losses.distill_cross_entropy(student, teacher, center, tt, ts, with_entropy=True, block_rows=block_rows)
    (got * weight).sum().backward()
    expected = np_distill_ce(student.detach().numpy(), teacher.numpy(), center.double().numpy(), tt, ts)
    np.testing.assert_allclose(got.detach().numpy(), [row[0] for row in expected], rtol=RTOL)
    np.testing.assert_allclose(entropies.numpy(), [row[1] for row in expected], rtol=RTOL, atol=1e-6)
    for i, (_, _, target) in enumerate(expected):
        closed_form = (np_softmax(student[i].detach().double().numpy() / ts) - target) / ts * weight[i].item()
        np.testing.assert_allclose(student.grad[i].numpy(), closed_form, rtol=1e-4, atol=1e-6)
    assert not entropies.requires_grad
    assert losses.distill_cross_entropy(student, teacher, center, tt, ts)[1] is None


def test_distill_cross_entropy_gradient_passes_gradcheck_in_float64(gen):
    student = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher, center = torch.randn(5, 6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen)

    def fn(x):
        return losses.distill_cross_entropy(x, teacher, center, 0.07, 0.1, block_rows=2)[0]

    assert torch.autograd.gradcheck(fn, (student,))


def test_distill_cross_entropy_equals_the_unfused_losses_and_survives_a_retained_graph(gen):
    """The patch loss of the step (fused) against teacher_probs + soft_cross_entropy (unfused),
    loss and gradient, in float32; a second backward over the retained graph (the per-term
    gradient diagnostics) gives the same gradient."""
    student, teacher = torch.randn(9, 16, generator=gen), torch.randn(9, 16, generator=gen)
    center = torch.randn(16, generator=gen)
    fused_x, unfused_x = student.clone().requires_grad_(), student.clone().requires_grad_()
    fused = losses.distill_cross_entropy(fused_x, teacher, center, 0.04, 0.1, block_rows=4)[0]
    unfused = losses.soft_cross_entropy(losses.teacher_probs(teacher, center, 0.04), unfused_x, 0.1)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    (first,) = torch.autograd.grad(fused.sum(), fused_x, retain_graph=True)
    fused.sum().backward()
    unfused.sum().backward()
    torch.testing.assert_close(fused_x.grad, unfused_x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first, fused_x.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_distill_cross_entropy_on_16_bit_logits_is_closer_to_float64_than_the_unfused_form(gen, dtype):
    """Under autocast the head's logits arrive in 16 bits. The fused loss computes both softmaxes in
    float32 from them: stated tolerances against float64 on the same rounded logits are 1e-5
    relative for the loss and 1 % of the largest entry for the gradient (returned in the logits'
    dtype), and both errors are below the unfused form's (16-bit student log-softmax)."""
    m, k = 64, 512
    z = torch.nn.functional.normalize(torch.randn(m, 32, generator=gen), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(k, 32, generator=gen), dim=-1)
    student = (z @ w.t()).to(dtype)
    teacher = ((z + 0.3 * torch.randn(m, 32, generator=gen)) @ w.t()).to(dtype)
    center = 0.01 * torch.randn(k, generator=gen)
    ref_x = student.double().requires_grad_()
    t_ref = torch.softmax((teacher.double() - center.double()) / 0.04, dim=-1)
    ref = -(t_ref * torch.log_softmax(ref_x / 0.1, dim=-1)).sum(-1).mean()
    ref.backward()
    errors = {}
    for name in ("fused", "unfused"):
        x = student.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "fused":
                loss = losses.distill_cross_entropy(x, teacher, center, 0.04, 0.1)[0].mean()
            else:
                loss = losses.soft_cross_entropy(losses.teacher_probs(teacher, center, 0.04), x, 0.1).mean()
        loss.backward()
        assert x.grad.dtype == dtype
        errors[name] = (abs(loss.item() - ref.item()) / ref.item(),
                        ((x.grad.double() - ref_x.grad).abs().max() / ref_x.grad.abs().max()).item())  # fmt: skip
    assert errors["fused"][0] <= 1e-5 and errors["fused"][1] <= 0.01, errors
    assert errors["fused"][0] < errors["unfused"][0] and errors["fused"][1] < errors["unfused"][1], errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_distill_cross_entropy_on_cuda_equals_the_cpu(gen, dtype):
    """The CUDA path (one block of rows by default) against the CPU's blocks, loss and gradient."""
    student, teacher = torch.randn(300, 1024, generator=gen).to(dtype), torch.randn(300, 1024, generator=gen).to(dtype)
    center = 0.1 * torch.randn(1024, generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        x = student.to(device).requires_grad_()
        ce, entropies = losses.distill_cross_entropy(x, teacher.to(device), center.to(device), 0.04, 0.1, with_entropy=True)
        ce.sum().backward()
        results.append((ce.cpu(), entropies.cpu(), x.grad.float().cpu()))
    (cpu_ce, cpu_entropy, cpu_grad), (cuda_ce, cuda_entropy, cuda_grad) = results
    torch.testing.assert_close(cuda_ce, cpu_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cuda_entropy, cpu_entropy, rtol=1e-5, atol=1e-5)
    assert (cuda_grad - cpu_grad).abs().max() <= (1e-5 if dtype == torch.float32 else 0.01) * cpu_grad.abs().max()


def test_center_from_sum_is_the_ema_of_the_mean(gen):
    center, logits = torch.randn(5, generator=gen), torch.randn(7, 5, generator=gen)
    got = losses.center_from_sum(center, logits.sum(0), torch.tensor(7.0), 0.9)
    np.testing.assert_allclose(got.numpy(), 0.9 * center.numpy() + 0.1 * logits.double().numpy().mean(0), rtol=1e-6)
