"""The pretraining loader: exact order across epochs, workers and resume; folder == shards; device decode."""

from __future__ import annotations

import copy

import pytest
import torch
from pretrain_support import TINY_PRETRAIN, load, make_image_folder, pretrain_config, run_pretrain
from workflow_helpers import write_config

from mmc import config as config_mod
from mmc.data import shards
from mmc.pretrain import augment
from mmc.pretrain.data import (
    EncodedBatch,
    HostBatch,
    PretrainDataset,
    RunBatchSampler,
    decode_and_crop,
    epoch_batches,
    make_run_loader,
    to_device,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "syn", 24, size=48)


@pytest.fixture(scope="module")
def shard_dir(images, tmp_path_factory):
    items, source, classes = shards.folder_items(images)
    out = tmp_path_factory.mktemp("shards") / "out"
    shards.write_shards(items, out, source, shard_bytes=8000, classes=classes, log=lambda m: None)
    return out


def experiment_config(path, **data):
    """The frozen config of experiment mmc: the tiny ViT, ``data`` from ``path``."""
    raw = config_mod.deep_merge(copy.deepcopy(TINY_PRETRAIN), {"data": {"path": str(path), **data}, "augment": {"solarize_p": [0.5, 0.5]}})
    raw = config_mod.deep_merge(raw, {"data": {"local_crops": 2, "local_crop_size": 16}})
    cfg = config_mod.freeze(config_mod.resolve({"run_name": "t", "device": "cpu", "tracking": {"enabled": False}, "pretrain": raw}))
    return cfg.experiments["mmc"]


def batches(dataset, workers: int, start: int = 0, total: int = 9, rank: int = 0, world: int = 1) -> list:
    loader = make_run_loader(dataset, 8, seed=3, rank=rank, world=world, start_step=start, total_steps=total,
                             num_workers=workers, device=CPU)  # fmt: skip
    return list(loader)


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y)
        elif isinstance(x, list):
            assert len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
        else:
            assert x == y


def test_run_sampler_is_the_epochs_batches_from_the_resume_step_and_ranks_split_each_batch():
    every = [b for epoch in range(3) for b in epoch_batches(20, 8, epoch, 5, 0, 1)]  # 2 steps per epoch
    assert list(RunBatchSampler(20, 8, 5, 0, 1, 0, 6)) == every
    assert list(RunBatchSampler(20, 8, 5, 0, 1, 3, 6)) == every[3:] and len(RunBatchSampler(20, 8, 5, 0, 1, 3, 6)) == 3
    halves = [list(RunBatchSampler(20, 8, 5, r, 2, 1, 6)) for r in range(2)]
    assert [a + b for a, b in zip(*halves, strict=True)] == every[1:]
    assert {i for _, i in every[0] + every[1]} < set(range(20)) and len({i for _, i in every[0] + every[1]}) == 16


def test_batches_do_not_depend_on_workers_resume_or_source_format(images, shard_dir):
    folder = PretrainDataset(experiment_config(images), seed=3)
    reference = batches(folder, workers=0)  # 3 steps per epoch: 3 epochs
    assert len(reference) == 9
    first = reference[0]
    assert isinstance(first, HostBatch)
    assert first.global_crops.shape == (2, 8, 32, 32, 3) and first.global_crops.dtype == torch.uint8
    assert first.local_crops.shape == (2, 8, 16, 16, 3) and first.global_params.shape == (2, 8, augment.PARAMS)
    assert first.masks.shape == (2, 8, 16) and first.masks.dtype == torch.bool
    for got, want in zip(batches(folder, workers=2), reference, strict=True):
        assert_same(got, want)
    for got, want in zip(batches(folder, workers=1, start=4), reference[4:], strict=True):
        assert_same(got, want)
    sharded = PretrainDataset(experiment_config(shard_dir), seed=3)
    assert type(sharded.source).__name__ == "ShardSource"
    for got, want in zip(batches(sharded, workers=2), reference, strict=True):
        assert_same(got, want)
    # two ranks' halves are the single process's batch
    halves = [batches(folder, workers=0, rank=r, world=2) for r in range(2)]
    for a, b, want in zip(*halves, reference, strict=True):
        assert torch.equal(torch.cat([a.global_crops, b.global_crops], 1), want.global_crops)


def test_to_device_returns_normalised_views_and_sends_a_quarter_of_float32(images):
    batch = batches(PretrainDataset(experiment_config(images), seed=3), workers=0, total=1)[0]
    global_views, local_views, masks = to_device(batch, CPU)
    assert global_views.shape == (2, 8, 3, 32, 32) and global_views.dtype == torch.float32
    assert [v.shape for v in local_views] == [(8, 3, 16, 16)] * 2 and torch.equal(masks, batch.masks)
    flat = batch.global_params.flatten(0, 1)
    expected = augment.photometric(batch.global_crops.flatten(0, 1).permute(0, 3, 1, 2), flat).unflatten(0, (2, 8))
    torch.testing.assert_close(global_views, expected, atol=0, rtol=0)
    assert batch.global_crops.nbytes * 4 == global_views.nbytes  # uint8 instead of float32
    # ready-made tensors (benchmarks) pass through
    views, _, same_masks = to_device((global_views, local_views, masks), CPU)
    assert views is global_views and same_masks is masks


def test_device_decode_path_on_cpu_cuts_the_same_crops(images, shard_dir):
    """``data.decode: device`` (run here on the CPU: torchvision's decoder, float resize) vs the worker path."""
    worker = PretrainDataset(experiment_config(shard_dir), seed=3)
    device = PretrainDataset(experiment_config(shard_dir, decode="device"), seed=3)
    want = batches(worker, workers=0, total=2)
    got = batches(device, workers=2, total=2)
    for encoded, host in zip(got, want, strict=True):
        assert isinstance(encoded, EncodedBatch)
        assert torch.equal(encoded.global_params, host.global_params) and torch.equal(encoded.masks, host.masks)
        global_crops, local_crops = decode_and_crop(encoded, CPU)
        for crops, reference in ((global_crops, host.global_crops), (local_crops, host.local_crops)):
            difference = (crops.permute(0, 1, 3, 4, 2).int() - reference.int()).abs()
            assert difference.float().mean() < 0.5 and difference.max() <= 8  # decoder and resize rounding
        views, _, _ = to_device(encoded, CPU)
        torch.testing.assert_close(views, to_device(host, CPU)[0], atol=0.2, rtol=0)


def test_pretraining_on_shards_is_bitwise_the_run_on_their_folder(images, shard_dir, tmp_path):
    outs = []
    for name, path in (("folder", images), ("shards", shard_dir)):
        work = tmp_path / name
        work.mkdir()
        run_pretrain(write_config(work, pretrain_config(work, path, {"optim": {"epochs": 2}})), work / "out")
        outs.append(load(work / "out" / "epoch_0002.pth"))
    for part in ("student", "teacher"):
        for key, value in outs[0][part].items():
            assert torch.equal(value, outs[1][part][key]), key


def test_bad_data_settings_are_clear_errors(images, tmp_path):
    from mmc.errors import MMCError

    with pytest.raises(MMCError, match=r"no manifest\.json"):
        PretrainDataset(experiment_config(images, format="shards"), seed=0)
    (tmp_path / "x.txt").write_text("not an image")
    with pytest.raises(MMCError, match="no images found"):
        PretrainDataset(experiment_config(tmp_path, format="folder"), seed=0)
    with pytest.raises(MMCError, match=r"not found .*mmc data prepare imagenet"):
        PretrainDataset(experiment_config(tmp_path / "imagenet" / "train"), seed=0)


def test_gpu_benchmark_runs_the_real_loader_on_shards_in_its_cpu_smoke_mode(tmp_path):
    import json
    import subprocess
    import sys

    from pretrain_support import env
    from workflow_helpers import REPO

    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_pretrain.py"), "--device", "cpu", "--quick"],
                            env={**env(), "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_pretrain.json").read_text())
    assert report["loader"]["format"] == "shards" and report["loader"]["decode"] == "worker"
    assert report["loader_steps_timed"] == 2 and 0 <= report["data_wait_fraction"] <= 1
    assert report["images_per_s"] > 0 and report["step_only_images_per_s"] > 0 and report["mfu"] is None
