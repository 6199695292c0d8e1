"""The device side of the loader on a CUDA device: photometric ops and nvJPEG decoding (``data.decode: device``).

Skipped without CUDA. On a GPU machine, ``benchmarks/gpu_loader.sh`` runs these tests and the GPU
benchmark in one go.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pretrain_support import TINY_PRETRAIN, make_image_folder

from mmc import config as config_mod
from mmc.data import shards
from mmc.pretrain import augment
from mmc.pretrain.data import PretrainDataset, decode_and_crop, make_run_loader, to_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU path of the loader)")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    images = make_image_folder(root / "syn", 32, size=96)
    items, source, classes = shards.folder_items(images)
    shards.write_shards(items, root / "shards", source, shard_bytes=50_000, classes=classes, log=lambda m: None)
    return root / "shards"


def dataset(path, decode: str) -> PretrainDataset:
    raw = config_mod.deep_merge(copy.deepcopy(TINY_PRETRAIN), {
        "data": {"path": str(path), "decode": decode, "global_crop_size": 64, "local_crops": 2, "local_crop_size": 32},
        "backbone": {"img_size": 64}, "augment": {"solarize_p": [0.5, 0.5]},
    })  # fmt: skip
    cfg = config_mod.freeze(config_mod.resolve({"run_name": "t", "tracking": {"enabled": False}, "pretrain": raw}))
    return PretrainDataset(cfg.experiments["mmc"], seed=7)


def first_batch(data: PretrainDataset, device: torch.device):
    return next(iter(make_run_loader(data, 16, 7, 0, 1, 0, 1, num_workers=2, device=device)))


def test_photometric_on_cuda_matches_the_cpu_and_is_deterministic(shard_dir):
    batch = first_batch(dataset(shard_dir, "worker"), CUDA)
    assert batch.global_crops.is_pinned()
    cpu_views, cpu_locals, _ = to_device(batch, CPU)
    torch.use_deterministic_algorithms(True)
    try:
        views, locals_, masks = to_device(batch, CUDA)
        again, _, _ = to_device(batch, CUDA)
    finally:
        torch.use_deterministic_algorithms(False)
    assert views.device.type == "cuda" and masks.device.type == "cuda"
    assert torch.equal(views, again)
    torch.testing.assert_close(views.cpu(), cpu_views, atol=1e-4, rtol=0)
    for got, want in zip(locals_, cpu_locals, strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)
    flat = batch.global_params.flatten(0, 1)
    crops = batch.global_crops.flatten(0, 1).permute(0, 3, 1, 2)
    torch.testing.assert_close(augment.photometric(crops.to(CUDA), flat.to(CUDA)).cpu(), cpu_views.flatten(0, 1), atol=1e-4, rtol=0)


def test_nvjpeg_decode_and_crop_match_the_worker_crops(shard_dir):
    host = first_batch(dataset(shard_dir, "worker"), CUDA)
    encoded = first_batch(dataset(shard_dir, "device"), CUDA)
    global_crops, local_crops = decode_and_crop(encoded, CUDA)
    assert global_crops.device.type == "cuda" and global_crops.dtype == torch.uint8
    for crops, reference in ((global_crops, host.global_crops), (local_crops, host.local_crops)):
        difference = (crops.permute(0, 1, 3, 4, 2).cpu().int() - reference.int()).abs()
        assert difference.float().mean() < 1.0 and difference.max() <= 16  # nvJPEG's IDCT, float resize rounding
    views, _, _ = to_device(encoded, CUDA)
    torch.testing.assert_close(views.cpu(), to_device(host, CPU)[0], atol=0.3, rtol=0)
    assert torch.equal(views, to_device(encoded, CUDA)[0])  # the same bytes decode to the same pixels
