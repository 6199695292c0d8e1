"""The one ViT of the project: its six numbers (:class:`ViTArch`) and its builder (:func:`build_vit`).

Pretraining (student and teacher backbones), the random baseline and every loaded checkpoint build
their backbone here, and MMC checkpoints record :meth:`ViTArch.as_dict` as their ``arch``
(docs/architecture.md). :func:`block_tokens` is the evaluation forward, with the position
embeddings of each patch grid given by the caller (:mod:`mmc.models.pos_embed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from mmc.errors import MMCError

ARCH_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "img_size")


@dataclasses.dataclass(frozen=True)
class ViTArch:
    """The numbers that define a backbone; ``img_size`` is the training resolution (its patch grid is
    the grid the position embeddings were learnt on)."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    img_size: int

    @classmethod
    def from_config(cls, backbone: Any) -> ViTArch:
        """From a ``backbone`` config section (frozen dataclass), a mapping, or a ViTArch."""
        if isinstance(backbone, ViTArch):
            return backbone
        if isinstance(backbone, Mapping):
            values = {k: backbone.get(k) for k in ARCH_KEYS}
        else:
            values = {k: getattr(backbone, k, None) for k in ARCH_KEYS}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise MMCError(f"backbone description lacks {missing} (expected all of {list(ARCH_KEYS)})")
        return cls(
            patch_size=int(values["patch_size"]),
            embed_dim=int(values["embed_dim"]),
            depth=int(values["depth"]),
            num_heads=int(values["num_heads"]),
            mlp_ratio=float(values["mlp_ratio"]),
            img_size=int(values["img_size"]),
        )

    def as_dict(self) -> dict:
        """The ``arch`` dict of an MMC checkpoint (keys in :data:`ARCH_KEYS` order)."""
        return {k: getattr(self, k) for k in ARCH_KEYS}

    @property
    def grid(self) -> int:
        """Side of the patch grid at the training resolution."""
        return self.img_size // self.patch_size


def build_vit(
    arch: Any,
    *,
    drop_path: float = 0.0,
    no_embed_class: bool = False,
    qkv_bias: bool = True,
    init_weights: bool = True,
):
    """An untrained timm ``VisionTransformer`` with these numbers: no classifier head, and
    ``dynamic_img_size=True`` so that any input whose sides are multiples of the patch size runs
    (local crops in pretraining; evaluation resolutions). ``drop_path`` is stochastic depth.
    ``init_weights=False`` skips timm's weight initialisation (truncated normals: most of the build
    time) for a model whose every weight is loaded next, strictly."""
    from timm.models.vision_transformer import VisionTransformer

    a = ViTArch.from_config(arch)
    if a.embed_dim % a.num_heads:
        raise MMCError(f"embed_dim {a.embed_dim} is not divisible by num_heads {a.num_heads}")
    return VisionTransformer(
        img_size=a.img_size,
        patch_size=a.patch_size,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        qkv_bias=qkv_bias,
        no_embed_class=no_embed_class,
        num_classes=0,
        drop_path_rate=drop_path,
        dynamic_img_size=True,
        weight_init="" if init_weights else "skip",
    )


def block_tokens(vit, images, index: int, pos_embed: Callable[[int, int], Any]):
    """Patch tokens of block ``index`` after the final norm, (B, gh * gw, D), prefix tokens dropped.

    The same operations in the same order as timm's ``forward_intermediates(..., norm=True)``
    (a test checks equality), except that the position embeddings of the input's patch grid come from
    ``pos_embed(gh, gw)`` instead of timm's own resampling, and blocks after ``index`` are not run.
    """
    import torch

    x = vit.patch_embed(images)  # (B, gh, gw, D): dynamic_img_size keeps the grid
    batch, grid_h, grid_w, dim = x.shape
    pos = pos_embed(grid_h, grid_w)
    x = x.view(batch, -1, dim)
    prefix = [t.expand(batch, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    if vit.no_embed_class:  # the embeddings cover the patches only: add, then prepend [CLS]
        x = x + pos
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
    else:
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        x = x + pos
    x = vit.pos_drop(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    for block in vit.blocks[: index + 1]:
        x = block(x)
    return vit.norm(x)[:, vit.num_prefix_tokens :]
