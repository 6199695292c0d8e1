"""Backbones and checkpoints: one ViT (``vit``), the source formats (``formats``), strict loading
(``loading``).

Every model is one timm ``VisionTransformer`` built by :func:`build_vit` from a :class:`ViTArch`.
Files are untrusted pickles: they are read with ``torch.load(weights_only=True)`` and an allow-list
(:data:`mmc.models.formats.ALLOWED_GLOBALS`), never unpickled blindly. Heavy imports (torch, timm)
happen inside the functions.
"""

from mmc.models.formats import CONVERTERS, FORMATS, Converted, detect_format, read_checkpoint
from mmc.models.loading import LoadedModel, load_backbone, model_for, random_backbone
from mmc.models.vit import ARCH_KEYS, ViTArch, build_vit

__all__ = [
    "ARCH_KEYS",
    "CONVERTERS",
    "FORMATS",
    "Converted",
    "LoadedModel",
    "ViTArch",
    "build_vit",
    "detect_format",
    "load_backbone",
    "model_for",
    "random_backbone",
    "read_checkpoint",
]
