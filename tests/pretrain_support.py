"""Helpers shared by the pretraining tests: a tiny image folder, tiny configs (:func:`pretrain_config`),
reading checkpoints."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from workflow_helpers import REPO

from mmc.config import deep_merge
from mmc.data import synthetic

# A ViT small enough that one step takes ~0.1 s on 2 cores: 32 px crops, 8 px patches (4 x 4 grid).
TINY_PRETRAIN = {
    "backbone": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "drop_path": 0.1},
    "data": {"num_workers": 0, "global_crop_size": 32},
    "mask": {"min_block_patches": 4},
    # a wide bottleneck keeps the initial distillation loss at chance (log K), as at full scale
    "distill": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 256, "teacher_temp_warmup_epochs": 1},
    "contrast": {"dim": 16, "hidden_dim": 32},
    "optim": {"epochs": 4, "batch_size": 8, "warmup_epochs": 1, "base_lr": 0.005},
    "precision": "float32",
    "deterministic": True,
    "log_every_steps": 1,
    "checkpoint": {"every_steps": 2, "keep_last": 2},
}


def make_image_folder(root: Path, images: int, size: int = 48) -> Path:
    spec = synthetic.SyntheticSpec(
        images=1, unlabelled_images=images, size=size, seed=0, val_fraction=0.5,
        objects=(1, 3), object_scale=(0.2, 0.5), void_width=1,
    )  # fmt: skip
    return synthetic.generate(root, spec) / "unlabelled"


def pretrain_config(tmp: Path, images: Path, overrides: dict | None = None, tracking: bool = False, **top) -> dict:
    """A config pretraining :data:`TINY_PRETRAIN` (``overrides`` merged in) on ``images``, its
    results and state under ``tmp``; ``top``: more top-level keys. Write it with ``write_config``."""
    pretrain = deep_merge(copy.deepcopy(TINY_PRETRAIN), {"data": {"path": str(images)}})
    if overrides:
        pretrain = deep_merge(pretrain, overrides)
    return {
        "run_name": "pretrain-test",
        "results_dir": str(tmp / "results"),
        "state_dir": str(tmp / "state"),
        "device": "cpu",
        "tracking": {"enabled": tracking},
        "pretrain": pretrain,
        "experiments": {"mmc": {}},
        **top,
    }


def env() -> dict:
    # one thread: on a shared 2-core machine, OpenMP spin-waiting makes tiny models 4x slower
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def pretrain_cmd(config: Path, out: Path, experiment: str = "mmc") -> list[str]:
    return [sys.executable, "-m", "mmc", "pretrain", "--config", str(config), "--experiment", experiment, "--out", str(out)]


def run_pretrain(config: Path, out: Path, experiment: str = "mmc", timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(pretrain_cmd(config, out, experiment), env=env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{name} differs"
