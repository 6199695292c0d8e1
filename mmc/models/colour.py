"""The learning-free floor of the zero-shot protocol: per-patch colour statistics (``source: colour``).

Each patch of ``patch_size`` pixels of the evaluation input is described by 6 numbers, the mean and
the standard deviation (over its pixels, population form) of R, G and B in [0, 1]; the vectors of
one image are centred (their mean over the image's patches subtracted), then L2-normalised like every
feature (a vector that is exactly zero after centring stays zero: similarity 0 to everything). It
goes through the same ``mmc segment`` / ``mmc similarity`` code as a ViT's patch tokens
(:func:`mmc.evaluation.features.patch_features` dispatches on it, :func:`is_colour_network`), so a model
that does not beat it on a dataset has not been shown to use more than colour there
(docs/evaluation.md#the-colour-floor).
"""

from __future__ import annotations

import dataclasses
import functools

FEATURE_DIM = 6


@dataclasses.dataclass(frozen=True)
class ColourArch:
    """What a colour model is, in the place of a ViT's :class:`~mmc.models.ViTArch`."""

    patch_size: int

    @property
    def embed_dim(self) -> int:
        """Width of a feature vector (what a ViT's ``embed_dim`` is to its tokens)."""
        return FEATURE_DIM

    def as_dict(self) -> dict:
        return {"patch_size": self.patch_size, "features": "rgb mean and std per patch", "dim": FEATURE_DIM}


def colour_statistics(rgb, patch_size: int):
    """(B, 3, H, W) RGB in [0, 1], sides multiples of ``patch_size`` -> (B, H/p, W/p, 6) float32:
    per patch (mean R, G, B, std R, G, B), centred over the image's patches, L2-normalised."""
    import torch

    batch, channels, height, width = rgb.shape
    p = int(patch_size)
    if height % p or width % p:
        raise ValueError(f"input {height}x{width} is not a whole number of {p}-pixel patches")
    x = rgb.float().reshape(batch, channels, height // p, p, width // p, p)
    mean = x.mean(dim=(3, 5))
    std = x.var(dim=(3, 5), correction=0).sqrt()
    stats = torch.cat([mean, std], dim=1).permute(0, 2, 3, 1)  # (B, gh, gw, 6)
    stats = stats - stats.mean(dim=(1, 2), keepdim=True)
    # contiguous, as a ViT's tokens and a cache entry are: the same values in the same layout
    return torch.nn.functional.normalize(stats, dim=-1).contiguous()


@functools.cache
def _module_class() -> type:
    import torch

    class ColourStatistics(torch.nn.Module):
        """Per-patch colour statistics as a module without parameters: ``forward`` is
        :func:`colour_statistics` (built here so that importing this module does not import torch)."""

        def __init__(self, patch_size: int):
            super().__init__()
            self.patch_size = int(patch_size)

        def forward(self, rgb):
            return colour_statistics(rgb, self.patch_size)

    return ColourStatistics


def colour_network(patch_size: int):
    """The colour floor as a ``torch.nn.Module`` (``ColourStatistics``) for ``patch_size``."""
    return _module_class()(patch_size)


def is_colour_network(network) -> bool:
    """Whether ``network`` is the colour floor (the evaluation's features dispatch on it)."""
    return isinstance(network, _module_class())
