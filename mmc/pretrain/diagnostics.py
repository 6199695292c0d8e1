"""Training diagnostics that are cheap enough to leave on (docs/pretrain.md, "Diagnostics").

Pure functions of tensors (entropies) and a small host-side watcher that warns when a distribution
stays near uniform, the collapse mode of self-distillation where the teacher's targets carry no
information ("Emerging Properties in Self-Supervised Vision Transformers", DINO, arXiv 2104.14294,
"Avoiding collapse": the uniform collapse, entropy -> log K).
"""

from __future__ import annotations

import math

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each distribution along the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1, dtype=torch.float32)


class CollapseWatch:
    """Warns once per episode when an entropy stays within ``tolerance`` of log K for ``span_steps`` steps.

    ``observe`` is fed the logged steps in order; an episode is a run of consecutive observations at
    or above (1 - tolerance) * log K, and it is reported when its first and latest steps are at
    least ``span_steps`` apart. A value below the threshold ends the episode.
    """

    def __init__(self, num_prototypes: int, tolerance: float, span_steps: int):
        self.uniform = math.log(num_prototypes)
        self.threshold = (1.0 - tolerance) * self.uniform
        self.tolerance, self.span = tolerance, span_steps
        self.since: dict[str, int] = {}
        self.reported: set[str] = set()

    def observe(self, name: str, step: int, value: float) -> str | None:
        if not value >= self.threshold:  # also ends an episode on NaN
            self.since.pop(name, None)
            self.reported.discard(name)
            return None
        start = self.since.setdefault(name, step)
        if self.span <= 0 or step - start < self.span or name in self.reported:
            return None
        self.reported.add(name)
        return (
            f"warning: {name} has stayed within {self.tolerance:.0%} of uniform (log K = {self.uniform:.4g} nats) "
            f"from step {start} to step {step} (now {value:.4g}): the teacher's targets carry almost no "
            f"information (collapse to uniform)"
        )
