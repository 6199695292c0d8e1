"""Backbones and checkpoints: one ViT (``vit``), the source formats (``formats``), strict loading
(``loading``), position embeddings at other resolutions (``pos_embed``).

Every model is one timm ``VisionTransformer`` built by :func:`build_vit` from a :class:`ViTArch`.
Files are untrusted pickles: they are read with ``torch.load(weights_only=True)`` and an allow-list
(:data:`mmc.models.formats.ALLOWED_GLOBALS`), never unpickled blindly. Heavy imports (torch, timm)
happen inside the functions.
"""

from mmc.models.colour import ColourArch, colour_network, colour_statistics, is_colour_network
from mmc.models.formats import (
    CONVERTERS,
    FORMATS,
    Converted,
    detect_format,
    non_finite_tensor,
    read_checkpoint,
)
from mmc.models.loading import LoadedModel, check_model_request, load_backbone, model_for, random_backbone
from mmc.models.pos_embed import GridPosEmbed, method_for, pos_embed_for, resize_pos_embed
from mmc.models.vit import ARCH_KEYS, ViTArch, block_tokens, build_vit

__all__ = [
    "ARCH_KEYS",
    "CONVERTERS",
    "FORMATS",
    "ColourArch",
    "Converted",
    "GridPosEmbed",
    "LoadedModel",
    "ViTArch",
    "block_tokens",
    "build_vit",
    "check_model_request",
    "colour_network",
    "colour_statistics",
    "detect_format",
    "is_colour_network",
    "load_backbone",
    "method_for",
    "model_for",
    "non_finite_tensor",
    "pos_embed_for",
    "random_backbone",
    "read_checkpoint",
    "resize_pos_embed",
]
