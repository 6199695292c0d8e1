"""The real producers feed the evaluation: `mmc data synthetic` scenes and `mmc pretrain` checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pretrain_support import TINY_PRETRAIN, env
from workflow_helpers import write_config

from mmc import config
from mmc.cli import main
from mmc.config import deep_merge
from mmc.evaluation.segment import evaluate_checkpoint
from mmc.models import load_backbone

# Two real pretraining runs (~10-40 s on 2 shared cores).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    data = tmp / "synthetic"
    subprocess.run(
        [sys.executable, "-m", "mmc", "data", "synthetic", "--out", str(data), "--images", "6", "--unlabelled", "8",
         "--size", "64", "--seed", "1"],
        env=env(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    cfg = {
        "run_name": "eval-pipeline",
        "results_dir": str(tmp / "results"),
        "state_dir": str(tmp / "state"),
        "device": "cpu",
        "pretrain": deep_merge(
            TINY_PRETRAIN, {"data": {"path": str(data / "unlabelled")}, "optim": {"epochs": 1}}
        ),
        "experiments": {"mmc": {}, "mim_only": {"loss": {"w_distill": 0.0, "w_contrast": 0.0}}},
        "models": {
            # no backbone: the experiment's architecture is asserted, not the entry's default ViT-S
            "mmc": {"source": "experiment", "experiment": "mmc"},
            "mim_only": {"source": "experiment", "experiment": "mim_only"},
        },
        "datasets": {
            "scenes": {"format": "synthetic", "root": str(data / "VOCdevkit" / "VOC2012"), "split": "val"}
        },
        "evaluation": {"resolution": 96, "batch_size": 4, "num_workers": 0},
        "similarity": {"bins": 20},
    }
    path = write_config(tmp, cfg)
    for experiment in ("mmc", "mim_only"):
        subprocess.run(
            [sys.executable, "-m", "mmc", "pretrain", "--config", str(path), "--experiment", experiment,
             "--out", str(tmp / "ckpt" / experiment)],
            env=env(), check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return tmp, path


def test_pretrain_checkpoints_load_strictly_with_the_teacher(pipeline):
    tmp, _ = pipeline
    path = tmp / "ckpt" / "mmc" / "epoch_0001.pth"
    loaded = load_backbone(path)
    assert loaded.format == "mmc" and loaded.weights == "teacher"
    teacher = torch.load(path, map_location="cpu", weights_only=True)["teacher"]
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, teacher[f"backbone.{key}"]), key
    assert load_backbone(tmp / "ckpt" / "mim_only" / "epoch_0001.pth").weights.startswith("student")


def test_segment_and_similarity_on_synthetic_scenes_with_pretrained_checkpoints(pipeline):
    tmp, cfg = pipeline
    for model in ("mmc", "mim_only"):
        ckpt = tmp / "ckpt" / model / "epoch_0001.pth"
        common = ["--config", str(cfg), "--model", model, "--dataset", "scenes", "--checkpoint", str(ckpt)]
        assert main(["segment", *common, "--out", str(tmp / "seg" / model)]) == 0
        assert main(["similarity", *common, "--out", str(tmp / "sim" / model)]) == 0
        summary = json.loads((tmp / "seg" / model / "summary.json").read_text())
        similarity = json.loads((tmp / "sim" / model / "similarity.json").read_text())
        assert summary["n_objects"] > 0 and 0 <= summary["best_miou"] <= summary["oracle_miou"] <= 1
        assert similarity["features"]["computed"] == 0  # segment's forward passes were reused
        assert summary["checkpoint_sha256"] == similarity["checkpoint_sha256"]
    selected = evaluate_checkpoint(config.load(cfg), tmp / "ckpt" / "mmc" / "epoch_0001.pth", "scenes")
    reference = json.loads((tmp / "seg" / "mmc" / "summary.json").read_text())
    assert selected.miou_by_tau == reference["miou_by_tau"]
