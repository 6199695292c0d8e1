"""Pretraining data: per-sample seeded views and masks, and a resumable global-batch sampler.

Everything random about sample ``index`` in ``epoch`` derives from ``sample_seed(seed, epoch, index)``,
and the global batch of step ``s`` is a slice of a per-epoch permutation seeded by ``(seed, epoch)``.
So the data of a step is the same for 1 or N ranks, any number of workers, and after a resume: the
sampler state is just (epoch, step within the epoch).
"""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
from torch.utils.data import Dataset

from mmc.data.image_folder import ImageFolder
from mmc.errors import MMCError
from mmc.pretrain.augment import MultiCrop
from mmc.pretrain.masking import view_masks

PERMUTATION = -1  # pseudo-index of the per-epoch permutation seed


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index + 1]).generate_state(1, np.uint64)[0] >> 1)


class PretrainDataset(Dataset):
    """Items are addressed by ``(epoch, index)``; each yields (global views, local views, masks (2, N))."""

    def __init__(self, pcfg, seed: int):
        self.folder = ImageFolder(pcfg.data.path)
        self.crops = MultiCrop(pcfg)
        self.seed = seed
        size, patch = pcfg.data.global_crop_size, pcfg.backbone.patch_size  # a multiple (mmc.config)
        self.grid = (size // patch, size // patch)
        m = pcfg.mask
        self.mask_args = (tuple(m.ratio), int(m.min_block_patches), tuple(m.aspect_ratio))

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        global_views, local_views = self.crops(self.folder.load(index), seed)
        generator = torch.Generator().manual_seed(seed)
        ratio, min_block, aspect = self.mask_args
        masks = view_masks(2, self.grid, ratio, min_block, aspect, generator)
        return torch.stack(global_views), local_views, masks


def collate(items):
    """-> global views (2, B, 3, H, W), local views [(B, 3, h, w)], masks (2, B, N)."""
    global_views = torch.stack([g for g, _, _ in items], dim=1)
    locals_ = [torch.stack([loc[i] for _, loc, _ in items]) for i in range(len(items[0][1]))]
    masks = torch.stack([m for _, _, m in items], dim=1)
    return global_views, locals_, masks


def epoch_batches(num_items: int, global_batch: int, epoch: int, seed: int, rank: int, world: int) -> list[list]:
    """This rank's part of every global batch of ``epoch`` (last incomplete batch dropped)."""
    if global_batch % world:
        raise MMCError(f"optim.batch_size {global_batch} is not divisible by the number of processes {world}")
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, PERMUTATION))
    order = torch.randperm(num_items, generator=generator).tolist()
    per_rank = global_batch // world
    batches = []
    for start in range(0, num_items - global_batch + 1, global_batch):
        part = order[start + rank * per_rank : start + (rank + 1) * per_rank]
        batches.append([(epoch, i) for i in part])
    return batches


def seed_worker(worker_id: int) -> None:
    """numpy and random in each worker from torch's per-worker seed (torch is seeded by the loader).

    Workers ignore SIGTERM: SLURM signals every process of the job, and a worker dying before the
    main process reaches its step boundary would crash the run instead of checkpointing it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: PretrainDataset, batches: list[list], num_workers: int, seed: int, pin_memory: bool):
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        # the loader's own generator, so creating it never consumes the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )
