"""Does the method learn at all? The shortest real check: masked image modelling alone, trained
briefly on the synthetic scenes (where a category is a shape and a texture, never a colour), must
beat its own initial weights on the evaluation split by more than the paired bootstrap interval.

Everything is the project's own chain, as the workflow runs it: `mmc data synthetic`, `mmc pretrain`,
`mmc segment` and `mmc similarity` of the trained and the initial weights, `mmc tables`; the test
reads the interval from segmentation.csv. It fails if training stops moving the evaluated weights
in a useful direction (a broken loss, mask, optimiser or checkpoint), or if the comparison stops
being paired. docs/study.md#slow-test: how short a run suffices, for which seeds.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import subprocess

import pytest
import yaml
from workflow_helpers import MMC, REPO, write_config

from mmc import config as mmc_config


def _sweep_module():
    spec = importlib.util.spec_from_file_location("study", REPO / "benchmarks" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_scores_variants_on_the_selection_split_only(tmp_path):
    sweep = _sweep_module()
    study = yaml.safe_load((REPO / "config" / "study.yaml").read_text())
    path = write_config(tmp_path / "sweep.yaml", sweep.sweep_config(study, 3, tmp_path / "results" / "sweep"))
    cfg = mmc_config.load(path)
    assert list(cfg.evaluation.datasets) == [study["selection"]["dataset"]]
    assert study["selection"]["dataset"] not in study["evaluation"]["datasets"]
    assert list(cfg.seeds) == [study["seeds"][0]] and cfg.selection.policy == "last"
    base = cfg.experiments["base"]
    assert base.optim.epochs == 3
    for name, (_, override) in sweep.VARIANTS.items():
        exp = cfg.experiments[name]
        assert cfg.models[name].reference == "init" and cfg.models[name].experiment == name
        # a variant is the base plus its own override, nothing else
        expected = mmc_config.deep_merge(mmc_config.to_dict(base), override)
        assert mmc_config.to_dict(exp) == expected, name
    assert cfg.models["init"].checkpoint == "initial"


def test_last_epoch_means(tmp_path):
    rows = [{"step": s, "epoch": s // 4, "distill_cls": float(s), "mim": 1.0} for s in range(0, 12, 2)]
    metrics = tmp_path / "train_metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # epochs of 4 steps, steps 0-10 logged every 2: the last epoch (2) logged steps 8 and 10
    assert _sweep_module().last_epoch_means(metrics) == {"distill_cls": 9.0, "mim": 1.0}


# The demo's scenes and model (config/test.yaml); 32 steps of batch 32 (4 epochs of 256 images).
EPOCHS = 4


def _study_config(tmp, seed: int) -> dict:
    demo = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    data = tmp / "data"
    pretrain = copy.deepcopy(demo["pretrain"])
    pretrain["data"]["path"] = str(data / "synthetic" / "unlabelled")
    pretrain["optim"]["epochs"] = EPOCHS
    pretrain["checkpoint"] = {"every_steps": 0, "save_epochs": []}
    root = str(data / "synthetic" / "VOCdevkit" / "VOC2012")
    return {
        "run_name": "slow-study",
        "results_dir": str(tmp / "results"),
        "data_dir": str(data),
        "state_dir": str(tmp / "state"),
        "device": "cpu",
        "seeds": [seed],
        "synthetic": demo["synthetic"],
        "pretrain": pretrain,
        "experiments": {"mim_only": {"loss": {"w_distill": 0.0, "w_contrast": 0.0}}},
        "models": {
            "mim_only": {"source": "experiment", "experiment": "mim_only", "reference": "init"},
            "init": {"source": "experiment", "experiment": "mim_only", "checkpoint": "initial"},
        },
        "datasets": {"synthetic_val": {"format": "synthetic", "root": root, "split": "val"}},
        "evaluation": {**demo["evaluation"], "datasets": ["synthetic_val"]},
        "tracking": {"enabled": False},
    }


def _mmc(*args) -> None:
    done = subprocess.run([*MMC, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, f"mmc {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"


def evaluate_paired(tmp, config, seed: int, checkpoints: dict) -> dict:
    """`mmc segment` and `mmc similarity` of each model's checkpoint (``checkpoints``: model -> file),
    then `mmc tables`: the segmentation.csv rows by (model, seed)."""
    files: dict[str, list] = {"--summaries": [], "--objects": [], "--similarity": []}
    for model, checkpoint in checkpoints.items():
        segment, similarity = tmp / "segment" / model, tmp / "similarity" / model
        common = ["--config", config, "--model", model, "--dataset", "synthetic_val", "--checkpoint", checkpoint]
        _mmc("segment", *common, "--seed", seed, "--out", segment)
        _mmc("similarity", *common, "--seed", seed, "--out", similarity)
        files["--summaries"].append(segment / "summary.json")
        files["--objects"].append(segment / "objects.parquet")
        files["--similarity"].append(similarity / "similarity.json")
    tables = tmp / "tables"
    _mmc("tables", "--config", config, *[x for flag, paths in files.items() for x in (flag, *paths)], "--out", tables)
    return {(r["model"], r["seed"]): r for r in csv.DictReader((tables / "segmentation.csv").open())}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_mim_only_beats_its_initial_weights(tmp_path, seed):
    config = write_config(tmp_path, _study_config(tmp_path, seed))
    _mmc("data", "synthetic", "--config", config, "--out", tmp_path / "data" / "synthetic")
    trained = tmp_path / "pretrain"
    _mmc("pretrain", "--config", config, "--experiment", "mim_only", "--seed", seed, "--out", trained)
    checkpoints = {"mim_only": trained / f"epoch_{EPOCHS:04d}.pth", "init": trained / "epoch_0000.pth"}
    rows = evaluate_paired(tmp_path, config, seed, checkpoints)

    row = rows[("mim_only", "all")]
    assert row["reference"] == "init" and int(row["n_paired"]) > 100, row
    delta, lo, hi = (float(row[k]) for k in ("delta_best_miou", "delta_best_miou_lo", "delta_best_miou_hi"))
    assert lo <= delta <= hi
    # the whole interval above zero: better than the initial weights beyond the evaluation's noise
    assert lo > 0, f"MIM-only after {EPOCHS} epochs: Δ mIoU vs its initial weights {delta:+.4f} [{lo:+.4f}, {hi:+.4f}]"
