"""Gradient clipping modes and per-loss-term gradient norms (pure functions over parameter lists)."""

from __future__ import annotations

import torch


def clip_per_param_(params, max_norm: float) -> torch.Tensor:
    """DINO/iBOT clipping: each parameter's gradient is scaled to norm <= ``max_norm`` on its own.

    Scale factor min(1, max_norm / (norm + 1e-6)) per tensor (DINO's ``clip_gradients``); returns
    the global norm before clipping (what ``clip_grad_norm_`` returns), for the logs.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    factors = torch._foreach_add(norms, 1e-6)
    torch._foreach_reciprocal_(factors)
    torch._foreach_mul_(factors, max_norm)
    torch._foreach_clamp_max_(factors, 1.0)
    torch._foreach_mul_(grads, factors)
    return total


def clip_(params, max_norm: float | None, mode: str) -> torch.Tensor:
    """Clip in place by ``mode``; return the global gradient norm before clipping.

    ``global``: all gradients scaled by min(1, max_norm / (norm + 1e-6)) (``clip_grad_norm_``);
    ``per_param``: :func:`clip_per_param_`; ``max_norm`` None: no clipping. On CPU a factor of 1 is
    skipped (reading the norm costs nothing there and the multiplication by 1.0 is exact); on an
    accelerator it is applied as a tensor, so that no host synchronisation is needed.
    """
    if mode not in ("global", "per_param"):
        raise ValueError(f"clip mode must be 'global' or 'per_param', got {mode!r}")
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if mode == "per_param" and max_norm:
        return clip_per_param_(params, max_norm)
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_norm and (total.device.type != "cpu" or float(max_norm) / (float(total) + 1e-6) < 1.0):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
