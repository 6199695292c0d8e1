"""Two-process DDP (gloo, CPU) under torchrun against a single process on the same global batch."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from pretrain_support import env, load, make_image_folder, metrics, pretrain_config, run_pretrain
from workflow_helpers import write_config

from mmc.pretrain.checkpoint import state_digest

# drop-path draws differ per rank by design, and per-process batch norm sees half the batch: both off.
# Micro-batches of 2: each rank accumulates 2 (no all-reduce in between), the single process 4; the
# per-term gradient diagnostics run every other step on both.
DDP_SAFE = {
    "optim": {"epochs": 2, "batch_size": 8, "micro_batch_size": 2},
    "diagnostics": {"every_steps": 2},
    "backbone": {"drop_path": 0.0},
    "contrast": {"head_norm": "layer"},
    "checkpoint": {"every_steps": 0},
}


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_a_single_process(tmp_path):
    images = make_image_folder(tmp_path / "syn", 32)  # 4 steps per epoch, 8 steps
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    run_pretrain(write_config(single_dir, pretrain_config(single_dir, images, DDP_SAFE)), single_dir / "out")
    config = write_config(ddp_dir, pretrain_config(ddp_dir, images, DDP_SAFE))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "mmc", "pretrain", "--config", str(config), "--experiment", "mmc", "--out", str(ddp_dir / "out"),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    final = load(ddp_dir / "out" / "epoch_0002.pth")
    match = re.search(r"weights identical on 2 ranks: sha256 ([0-9a-f]{64})", result.stderr)
    assert match, result.stderr[-2000:]
    assert match.group(1) == state_digest(final["student"], final["teacher"])  # what rank 0 wrote

    ddp_rows, single_rows = metrics(ddp_dir / "out" / "train_metrics.jsonl"), metrics(single_dir / "out" / "train_metrics.jsonl")
    assert len(ddp_rows) == len(single_rows) == 8
    for ddp, single in zip(ddp_rows, single_rows, strict=True):
        keys = ["loss", "mim", "distill_cls", "distill_patch", "contrast", "lr", "teacher_temp", "teacher_entropy_cls"]
        if single["step"] % 2 == 0:
            keys += ["backbone_grad_norm_mim", "backbone_grad_norm_distill_cls", "backbone_grad_norm_contrast"]
        for key in keys:
            assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), (ddp["step"], key)

    reference = load(single_dir / "out" / "epoch_0002.pth")
    for part in ("student", "teacher"):
        for name, value in reference[part].items():
            torch.testing.assert_close(final[part][name], value, rtol=1e-3, atol=1e-4, msg=f"{part}.{name}")
