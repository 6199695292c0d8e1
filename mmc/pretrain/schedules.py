"""Per-iteration schedules: pure functions of the global step returning Python floats.

A resumed run evaluates exactly the values an uninterrupted one would, and checkpoints never need
to store schedule state.
"""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total_steps``); ``end`` afterwards."""
    if total_steps <= 0 or step >= total_steps:
        return float(end)
    progress = step / total_steps
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, end: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine to ``end``.

    The warm-up reaches ``peak`` at step ``warmup_steps`` (step 0 uses peak / warmup_steps, so the
    first update is not wasted on a zero learning rate).
    """
    if step < warmup_steps:
        return float(peak * (step + 1) / warmup_steps)
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, end)


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then constant ``end``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * step / warmup_steps)


def pretrain_schedules(step: int, steps_per_epoch: int, pcfg) -> dict[str, float]:
    """Every scheduled value (docs/method.md#schedules) at global ``step`` for the pretrain config ``pcfg``."""
    optim, distill = pcfg.optim, pcfg.distill
    total = optim.epochs * steps_per_epoch
    peak_lr = optim.base_lr * optim.batch_size / 256.0
    return {
        "lr": warmup_cosine(step, total, round(optim.warmup_epochs * steps_per_epoch), peak_lr, optim.min_lr),
        "wd": cosine(step, total, optim.weight_decay[0], optim.weight_decay[1]),
        "momentum": cosine(step, total, optim.ema_momentum[0], optim.ema_momentum[1]),
        "teacher_temp": linear_warmup(
            step, round(distill.teacher_temp_warmup_epochs * steps_per_epoch), distill.teacher_temp[0], distill.teacher_temp[1]
        ),
    }
