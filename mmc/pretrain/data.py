"""Pretraining data: per-sample seeded views and masks, and a resumable global-batch sampler.

Everything random about sample ``index`` in ``epoch`` derives from ``sample_seed(seed, epoch, index)``,
and the global batch of step ``s`` is a slice of a per-epoch permutation seeded by ``(seed, epoch)``.
So the data of a step is the same for 1 or N ranks, any number of workers, and after a resume: the
sampler state is just the step.

Work is split between the DataLoader workers and the training device (docs/pretrain.md, "Data
loading"): workers read and decode the image, draw every augmentation parameter from the sample's
seed, cut and resize the crops and draw the masks; they send uint8 crops and a small parameter
tensor. :func:`to_device` copies them (from pinned memory) and applies the photometric
augmentations and the normalisation batched on the device (:func:`mmc.pretrain.augment.photometric`).
With ``data.decode: device`` the workers send the encoded JPEG bytes instead, and the device also
decodes (nvJPEG through ``torchvision.io.decode_jpeg`` on CUDA) and crops.

One DataLoader serves the whole run (:func:`make_run_loader`): its batch sampler spans the epochs
from the resume step on, so the workers are started once and never rebuilt.
"""

from __future__ import annotations

import random
import signal
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mmc.errors import MMCError
from mmc.pretrain import augment
from mmc.pretrain.masking import masked_positions, view_masks

PERMUTATION = -1  # pseudo-index of the per-epoch permutation seed
FORMATS = ("auto", "folder", "shards")
DECODERS = ("worker", "device")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index + 1]).generate_state(1, np.uint64)[0] >> 1)


def open_source(path: str, data_format: str = "auto"):
    """An image source with ``len``, ``read(i)`` (bytes), ``size(i)`` and ``describe(i)``."""
    from mmc.data import shards
    from mmc.data.image_folder import ImageFolder

    if data_format not in FORMATS:
        raise MMCError(f"pretrain data.format: {data_format!r} is not one of {', '.join(FORMATS)}")
    if not Path(path).is_dir():
        raise MMCError(f"pretrain data.path {path}: not found (an image folder or a shard directory; ImageNet-1k is "
                       "not downloaded: see docs/datasets.md, `mmc data prepare imagenet`)")  # fmt: skip
    if data_format == "shards" or (data_format == "auto" and shards.is_shard_dir(path)):
        return shards.ShardSource(path)
    return ImageFolder(path)


def _pixels(data: bytes, where: str) -> torch.Tensor:
    """uint8 (H, W, 3) tensor of an encoded image (read-only memory: nothing writes to it)."""
    from mmc.data.image_folder import decode_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return torch.from_numpy(decode_rgb(data, where))


class HostBatch(NamedTuple):
    """What the workers send (``data.decode: worker``); V global and L local views of B images."""

    global_crops: torch.Tensor  # uint8 (V, B, H, W, 3)
    global_params: torch.Tensor  # float32 (V, B, augment.PARAMS)
    local_crops: torch.Tensor  # uint8 (L, B, h, w, 3)
    local_params: torch.Tensor  # float32 (L, B, augment.PARAMS)
    masks: torch.Tensor  # bool (V, B, N)


class EncodedBatch(NamedTuple):
    """What the workers send with ``data.decode: device``: crops are cut on the device."""

    images: list  # per image: encoded JPEG bytes (uint8 1-D), or decoded uint8 (H, W, 3) if not a plain JPEG
    global_params: torch.Tensor  # float32 (V, B, augment.PARAMS)
    local_params: torch.Tensor  # float32 (L, B, augment.PARAMS)
    masks: torch.Tensor  # bool (V, B, N)
    sizes: tuple[int, int]  # (global crop size, local crop size)


class PretrainDataset(Dataset):
    """Items are addressed by ``(epoch, index)``; see :class:`HostBatch` / :class:`EncodedBatch`."""

    def __init__(self, pcfg, seed: int):
        data = pcfg.data
        if data.decode not in DECODERS:
            raise MMCError(f"pretrain data.decode: {data.decode!r} is not one of {', '.join(DECODERS)}")
        self.source = open_source(data.path, data.format)
        self.global_specs, self.local_spec, self.num_local = augment.view_specs(pcfg)
        self.decode = data.decode
        self.seed = seed
        size, patch = data.global_crop_size, pcfg.backbone.patch_size  # a multiple (mmc.config)
        self.grid = (size // patch, size // patch)
        m = pcfg.mask
        self.mask_args = (tuple(m.ratio), int(m.min_block_patches), tuple(m.aspect_ratio))

    def __len__(self) -> int:
        return len(self.source)

    def _params(self, rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        global_params = np.stack([augment.draw_view_params(rng, width, height, s) for s in self.global_specs])
        local_params = np.stack(
            [augment.draw_view_params(rng, width, height, self.local_spec) for _ in range(self.num_local)]
        ) if self.num_local else np.zeros((0, augment.PARAMS), np.float32)  # fmt: skip
        return global_params, local_params

    def _masks(self, seed: int) -> torch.Tensor:
        ratio, min_block, aspect = self.mask_args
        return view_masks(2, self.grid, ratio, min_block, aspect, torch.Generator().manual_seed(seed))

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        rng = np.random.Generator(np.random.PCG64(seed))
        data = self.source.read(index)
        if self.decode == "device":
            width, height, plain_jpeg = self._header(index, data)
            global_params, local_params = self._params(rng, width, height)
            if plain_jpeg:
                image = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:  # nvJPEG reads baseline/progressive RGB or grey JPEGs only: the rest is decoded here
                image = _pixels(data, self.source.describe(index))
            return image, torch.from_numpy(global_params), torch.from_numpy(local_params), self._masks(seed)
        pixels = _pixels(data, self.source.describe(index))
        height, width = pixels.shape[:2]
        global_params, local_params = self._params(rng, width, height)
        global_crops = torch.stack([augment.crop_resize(pixels, p, s.size) for p, s in zip(global_params, self.global_specs, strict=True)])
        local_size = self.local_spec.size
        local_crops = torch.stack([augment.crop_resize(pixels, p, local_size) for p in local_params]) if self.num_local else (
            torch.zeros((0, local_size, local_size, 3), dtype=torch.uint8))  # fmt: skip
        return global_crops, torch.from_numpy(global_params), local_crops, torch.from_numpy(local_params), self._masks(seed)

    def _header(self, index: int, data: bytes) -> tuple[int, int, bool]:
        from mmc.data.image_folder import image_header
        from mmc.data.shards import ShardSource

        if isinstance(self.source, ShardSource):  # from the index: no parsing
            return self.source.size(index)
        return image_header(data, self.source.describe(index))

    def collate(self, items):
        """Stack the items of one batch (views first: (V, B, ...))."""
        if self.decode == "device":
            images, global_params, local_params, masks = zip(*items, strict=True)
            return EncodedBatch(list(images), torch.stack(global_params, 1), torch.stack(local_params, 1),
                                torch.stack(masks, 1), (self.global_specs[0].size, self.local_spec.size))  # fmt: skip
        global_crops, global_params, local_crops, local_params, masks = zip(*items, strict=True)
        return HostBatch(*(torch.stack(part, 1) for part in (global_crops, global_params, local_crops, local_params, masks)))


# ------------------------------------------------------------------------------------- device
def _views(crops: torch.Tensor, params: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (V, B, 3, H, W) crops (any memory layout) + (V, B, P) params -> float32 normalised views."""
    views, batch = crops.shape[:2]
    flat_params = params.flatten(0, 1)
    plan = augment.photometric_plan(flat_params)  # from the CPU copy: no device synchronisation
    out = augment.photometric(crops.flatten(0, 1), flat_params.to(device, non_blocking=True), plan)
    return out.unflatten(0, (views, batch))


def to_device(batch, device: torch.device):
    """A host batch -> (global views (V, B, 3, H, W) float32 normalised, [local views (B, 3, h, w)], masks (V, B, N)).

    Also accepts a batch that is already (views, local views, masks) tensors (benchmarks): those
    are only moved.
    """
    if isinstance(batch, HostBatch):
        global_crops = batch.global_crops.to(device, non_blocking=True).permute(0, 1, 4, 2, 3)
        global_views = _views(global_crops, batch.global_params, device)
        local_crops = batch.local_crops.to(device, non_blocking=True).permute(0, 1, 4, 2, 3)
        local_views = list(_views(local_crops, batch.local_params, device).unbind(0)) if len(local_crops) else []
        return global_views, local_views, batch.masks.to(device, non_blocking=True)
    if isinstance(batch, EncodedBatch):
        global_crops, local_crops = decode_and_crop(batch, device)
        global_views = _views(global_crops, batch.global_params, device)
        local_views = list(_views(local_crops, batch.local_params, device).unbind(0)) if len(local_crops) else []
        return global_views, local_views, batch.masks.to(device, non_blocking=True)
    global_views, local_views, masks = batch
    return (global_views.to(device, non_blocking=True), [v.to(device, non_blocking=True) for v in local_views],
            masks.to(device, non_blocking=True))  # fmt: skip


def micro_batch_positions(batch, micro_batch: int, device: torch.device) -> list[torch.Tensor]:
    """For each micro-batch of ``micro_batch`` images, the masked positions of its masks (V, b, N)
    (:func:`mmc.pretrain.masking.masked_positions`), computed from the batch's host masks and sent
    to ``device``: the step's masked-token gathers then never read a count back from the device."""
    masks = batch.masks if isinstance(batch, (HostBatch, EncodedBatch)) else batch[2]
    parts = masks.split(micro_batch, dim=1)
    return [masked_positions(part.cpu()).to(device, non_blocking=True) for part in parts]


def decode_and_crop(batch: EncodedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the batch's images on ``device`` and cut its crops: uint8 (V, B, 3, S, S) and (L, B, 3, s, s).

    JPEGs are decoded together (nvJPEG's batched decode on CUDA); the resize is the same
    antialiased bicubic as on the CPU path, in float, rounded back to uint8.
    """
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [i for i, image in enumerate(batch.images) if image.dim() == 1]
    images: list = [None] * len(batch.images)
    if encoded:
        decoded = decode_jpeg([batch.images[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(encoded, decoded, strict=True):
            images[i] = image
    for i, image in enumerate(batch.images):
        if image.dim() == 3:
            images[i] = image.to(device, non_blocking=True).permute(2, 0, 1)

    def crops(params: torch.Tensor, size: int) -> torch.Tensor:
        out = torch.empty((*params.shape[:2], 3, size, size), dtype=torch.uint8, device=device)
        for v, b in np.ndindex(*params.shape[:2]):
            row = params[v, b].numpy()
            top, left, h, w = (int(x) for x in row[[augment.TOP, augment.LEFT, augment.HEIGHT, augment.WIDTH]])
            region = images[b][:, top : top + h, left : left + w].unsqueeze(0).float()
            resized = F.interpolate(region, size=(size, size), mode="bicubic", antialias=True)[0]
            resized = resized.round_().clamp_(0, 255)
            out[v, b] = resized.flip(-1) if row[augment.FLIP] else resized
        return out

    global_size, local_size = batch.sizes
    return crops(batch.global_params, global_size), crops(batch.local_params, local_size)


# ------------------------------------------------------------------------------------ sampling
def epoch_permutation(num_items: int, epoch: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, PERMUTATION))
    return torch.randperm(num_items, generator=generator).tolist()


def _check_divisible(global_batch: int, world: int) -> None:
    if global_batch % world:
        raise MMCError(f"optim.batch_size {global_batch} is not divisible by the number of processes {world}")


def epoch_batches(num_items: int, global_batch: int, epoch: int, seed: int, rank: int, world: int) -> list[list]:
    """This rank's part of every global batch of ``epoch`` (last incomplete batch dropped)."""
    _check_divisible(global_batch, world)
    order = epoch_permutation(num_items, epoch, seed)
    per_rank = global_batch // world
    batches = []
    for start in range(0, num_items - global_batch + 1, global_batch):
        part = order[start + rank * per_rank : start + (rank + 1) * per_rank]
        batches.append([(epoch, i) for i in part])
    return batches


class RunBatchSampler:
    """This rank's batches of steps ``start_step .. total_steps - 1``, across epochs.

    Step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` of
    :func:`epoch_batches`; permutations are computed when their epoch begins.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, rank: int, world: int, start_step: int,
                 total_steps: int):  # fmt: skip
        _check_divisible(global_batch, world)
        self.num_items, self.global_batch, self.seed, self.rank, self.world = num_items, global_batch, seed, rank, world
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = num_items // global_batch

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        per_rank = self.global_batch // self.world
        epoch, order = None, None
        for step in range(self.start_step, self.total_steps):
            step_epoch, k = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                epoch, order = step_epoch, epoch_permutation(self.num_items, step_epoch, self.seed)
            start = k * self.global_batch + self.rank * per_rank
            yield [(epoch, i) for i in order[start : start + per_rank]]


def seed_worker(worker_id: int) -> None:
    """numpy and random in each worker from torch's per-worker seed (torch is seeded by the loader).

    Workers ignore SIGTERM: SLURM signals every process of the job, and a worker dying before the
    main process reaches its step boundary would crash the run instead of checkpointing it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_run_loader(dataset: PretrainDataset, global_batch: int, seed: int, rank: int, world: int,
                    start_step: int, total_steps: int, num_workers: int, device: torch.device):  # fmt: skip
    """The one DataLoader of a run: steps ``start_step`` .. ``total_steps - 1`` of this rank, in order."""
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_sampler=RunBatchSampler(len(dataset), global_batch, seed, rank, world, start_step, total_steps),
        num_workers=num_workers,
        collate_fn=dataset.collate,
        worker_init_fn=seed_worker,
        # the loader's own generator, so creating it never consumes the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
