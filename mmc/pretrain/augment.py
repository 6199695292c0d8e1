"""Multi-crop views of SPEC §1: two global crops (asymmetric blur/solarize) and optional local crops.

torchvision's transforms draw from torch's global generator; :func:`make_views` runs them inside a
forked RNG seeded per sample, so a sample's views depend only on its seed (not on the worker, the
rank or what ran before), which is what makes resume and DDP runs reproducible.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur with a radius drawn from U(0.1, 2.0) with probability ``p`` (DINO's recipe).

    PIL's blur is far cheaper on CPU than a torch convolution; the draws use torch's generator.
    """

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)):
        self.p, self.radius = p, radius

    def __call__(self, image):
        from PIL import ImageFilter

        if torch.rand(()).item() >= self.p:
            return image
        lo, hi = self.radius
        return image.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * torch.rand(()).item()))


def _view_transform(size: int, scale, aug, blur_p: float, solarize_p: float):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=aug.flip_p),
            T.RandomApply([T.ColorJitter(*aug.color_jitter)], p=aug.color_jitter_p),
            T.RandomGrayscale(p=aug.grayscale_p),
            GaussianBlur(blur_p),
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
