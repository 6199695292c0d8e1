"""How far each position-embedding resize moves the features from timm's, at an evaluation resolution.

Synthetic weights (no downloads): a ViT-S/16 trained at 224 px with three kinds of position
embeddings, the way the sources store them:

- ``learned``: timm's initialisation (truncated normal, std 0.02), as DINO/iBOT/MMC/timm files hold
  learned embeddings;
- ``mae sin-cos``: MAE's fixed 2-D sin-cos embeddings (its checkpoints store them);
- ``mocov3 sin-cos``: MoCo v3's fixed 2-D sin-cos embeddings.

For each, every applicable method of ``evaluation.pos_embed_resize`` is run on the same images and
compared with ``timm`` (what the evaluation did for every format before the option existed):
the largest absolute difference of an L2-normalised feature component, and the mean cosine
distance (1 - cos) of the patch features.

    PYTHONPATH=. python benchmarks/pos_embed_resize.py --resolution 480 --images 2 --threads 2
"""

from __future__ import annotations

import argparse

import torch

from mmc.evaluation.features import patch_features
from mmc.models import GridPosEmbed, random_backbone
from mmc.models.pos_embed import METHODS, sincos_2d

VIT_S16 = {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0, "img_size": 224}


def backbone(kind: str):
    vit = random_backbone(VIT_S16, 0)
    if kind != "learned":
        with torch.no_grad():
            vit.pos_embed[0, 0] = 0
            vit.pos_embed[0, 1:] = sincos_2d(14, 14, 384, kind.split()[0])
    return vit


def smooth_images(count: int, size: int) -> torch.Tensor:
    """Normalised images with structure at several scales (blurred noise), not i.i.d. pixels."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(count, 3, size // 32, size // 32, generator=generator)
    fine = torch.randn(count, 3, size // 8, size // 8, generator=generator)
    up = torch.nn.functional.interpolate
    return up(coarse, size=(size, size), mode="bicubic") + 0.3 * up(fine, size=(size, size), mode="bilinear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=480)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = smooth_images(args.images, args.resolution)
    grid = args.resolution // 16
    print(f"ViT-S/16 trained at 224 px (14x14), features at {args.resolution} px ({grid}x{grid}), {args.images} images")
    print(f"{'embeddings':<16} {'method':<8} {'max |f - f_timm|':>18} {'mean 1 - cos':>14}")
    for kind in ("learned", "mae sin-cos", "mocov3 sin-cos"):
        vit = backbone(kind)
        timm = patch_features(vit, x, pos_embed=GridPosEmbed(vit, "timm"))
        for method in METHODS:
            if method == "timm" or (method == "sincos" and kind == "learned"):
                continue
            feats = patch_features(vit, x, pos_embed=GridPosEmbed(vit, method))
            diff = (feats - timm).abs().max().item()
            cos = 1 - (feats * timm).sum(-1).mean().item()
            print(f"{kind:<16} {method:<8} {diff:>18.2e} {cos:>14.2e}")


if __name__ == "__main__":
    main()
