"""Multi-crop views of SPEC §1: two global crops (asymmetric blur/solarize) and optional local crops.

torchvision's transforms draw from torch's global generator; :func:`make_views` runs them inside a
forked RNG seeded per sample, so a sample's views depend only on its seed (not on the worker, the
rank or what ran before), which is what makes resume and DDP runs reproducible.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _blur_kernel(size: int) -> int:
    """About 10 % of the crop side, odd (23 px at 224, as DINO's PIL radius 0.1-2.0 roughly covers)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _view_transform(size: int, scale, aug, blur_p: float, solarize_p: float):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=aug.flip_p),
            T.RandomApply([T.ColorJitter(*aug.color_jitter)], p=aug.color_jitter_p),
            T.RandomGrayscale(p=aug.grayscale_p),
            T.RandomApply([T.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p),
            T.RandomSolarize(128, p=solarize_p),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class MultiCrop:
    """Callable: PIL image -> (global views, local views), each a list of (3, H, W) tensors."""

    LOCAL_BLUR_P = 0.5  # DINO's local-crop setting; the spec does not name one

    def __init__(self, pcfg):
        data, aug = pcfg.data, pcfg.augment
        self.globals = [
            _view_transform(data.global_crop_size, data.global_crop_scale, aug, aug.blur_p[v], aug.solarize_p[v])
            for v in range(2)
        ]
        self.local = _view_transform(data.local_crop_size, data.local_crop_scale, aug, self.LOCAL_BLUR_P, 0.0)
        self.num_local = int(data.local_crops)

    def __call__(self, image, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            global_views = [t(image) for t in self.globals]
            local_views = [self.local(image) for _ in range(self.num_local)]
        return global_views, local_views
