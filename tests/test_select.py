"""mmc select: policies, kept epochs, init_checkpoint, the written record (real files, real CLI)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import REPO, write_config

from mmc import config
from mmc.errors import MMCError
from mmc.select import choose, epoch_checkpoints, kept_epochs, select


def select_config(tmp_path: Path, **extra) -> dict:
    """Experiment mmc (3 epochs, 1 and 2 kept) and short (1 epoch), results under ``tmp_path``;
    ``extra``: more top-level keys."""
    return {
        "run_name": "t",
        "results_dir": str(tmp_path / "results"),
        "tracking": {"enabled": False},
        "pretrain": {"optim": {"epochs": 3}, "checkpoint": {"save_epochs": [1, 2]}},
        "experiments": {"mmc": {}, "short": {"optim": {"epochs": 1}, "checkpoint": {"save_epochs": [1]}}},
        **extra,
    }


def fake_run(directory: Path, epochs) -> dict[int, Path]:
    """Epoch files with distinct contents (select hashes them; it never unpickles under `last`)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for e in epochs:
        files[e] = directory / f"epoch_{e:04d}.pth"
        files[e].write_bytes(f"checkpoint of epoch {e}".encode())
    return files


def reference_choice(policy, scores):
    """Written independently: scan epochs in order, keep the best seen (>= keeps the later)."""
    best = None
    for epoch in sorted(scores):
        if policy == "last" or best is None or scores[epoch] >= scores[best]:
            best = epoch
    return best


@pytest.mark.parametrize(
    "scores",
    [
        {1: 0.2, 2: 0.5, 3: 0.4},
        {1: 0.5, 2: 0.5, 3: 0.1},
        {4: 0.1},
        {1: 0.3, 10: 0.3, 3: 0.3},
        {2: -1.0, 7: -2.0},
    ],
)
@pytest.mark.parametrize("policy", ["last", "best:miou"])
def test_choose_matches_reference(policy, scores):
    epoch, reason = choose(policy, scores if policy != "last" else dict.fromkeys(scores))
    assert epoch == reference_choice(policy, scores)
    assert policy in reason and str(epoch) in reason


def test_choose_rejects_empty_and_unscored():
    with pytest.raises(MMCError, match="no candidate"):
        choose("last", {})
    with pytest.raises(MMCError, match="needs a score"):
        choose("best:miou", {1: 0.3, 2: None})


def test_kept_epochs_are_save_epochs_within_the_run_plus_the_last(tmp_path):
    cfg = config.load(write_config(tmp_path, select_config(tmp_path)))
    assert kept_epochs(cfg.experiments["mmc"]) == [1, 2, 3]
    assert kept_epochs(cfg.experiments["short"]) == [1]


def test_missing_epoch_file_is_named(tmp_path):
    fake_run(tmp_path / "run", [1, 3])
    with pytest.raises(MMCError, match=r"epoch_0002\.pth"):
        epoch_checkpoints(tmp_path / "run", [1, 2, 3])
    with pytest.raises(MMCError, match="pretraining output directory"):
        epoch_checkpoints(tmp_path / "absent", [1])


def test_last_policy_record(tmp_path):
    cfg = config.load(write_config(tmp_path, select_config(tmp_path)))
    files = fake_run(tmp_path / "run", [1, 2, 3, 4])  # epoch 4 is not kept by config: ignored
    record = select(cfg, "mmc", tmp_path / "run")
    assert record["checkpoint"] == str(files[3]) and record["epoch"] == 3
    assert record["sha256"] == hashlib.sha256(files[3].read_bytes()).hexdigest()
    assert [c["epoch"] for c in record["candidates"]] == [1, 2, 3]
    assert record["policy"] == "last" and "last" in record["reason"]


def test_init_checkpoint_skips_pretraining(tmp_path):
    import torch

    from mmc.models import ViTArch

    init = tmp_path / "given.pth"
    cfg = config.load(write_config(tmp_path, select_config(tmp_path, experiments={"mmc": {"init_checkpoint": str(init)}})))
    arch = ViTArch.from_config(cfg.experiments["mmc"].backbone).as_dict()
    torch.save({"format": "mmc", "arch": arch, "teacher": {}}, init)
    record = select(cfg, "mmc", init)
    assert record["checkpoint"] == str(init)
    assert record["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert "init_checkpoint" in record["reason"]
    init.unlink()
    with pytest.raises(MMCError, match="init_checkpoint"):
        select(cfg, "mmc", init)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"format": "mmc", "arch": {"embed_dim": 96}}, r"experiments\.mmc\.init_checkpoint: .* another architecture .*embed_dim 96 vs 384"),
        ({"format": "dino", "arch": {}}, r"experiments\.mmc\.init_checkpoint: .* not an MMC checkpoint"),
        (None, r"not a readable checkpoint"),
    ],
)
def test_init_checkpoint_architecture_is_checked_by_select(tmp_path, content, expected):
    import torch

    from mmc.models import ViTArch

    init = tmp_path / "given.pth"
    cfg = config.load(write_config(tmp_path, select_config(tmp_path, experiments={"mmc": {"init_checkpoint": str(init)}})))
    if content is None:
        init.write_bytes(b"not a checkpoint")
    else:
        arch = {**ViTArch.from_config(cfg.experiments["mmc"].backbone).as_dict(), **content["arch"]} if content["arch"] else {}
        torch.save({**content, "arch": arch}, init)
    with pytest.raises(MMCError, match=expected):
        select(cfg, "mmc", init)


def test_unknown_experiment(tmp_path):
    cfg = config.load(write_config(tmp_path, select_config(tmp_path)))
    with pytest.raises(MMCError, match="not a key of experiments"):
        select(cfg, "nope", tmp_path)


def test_cli_writes_the_record(tmp_path):
    cfg_path = write_config(tmp_path, select_config(tmp_path))
    fake_run(tmp_path / "run", [1, 2, 3])
    out = tmp_path / "results" / "select" / "mmc.json"
    cmd = [sys.executable, "-m", "mmc", "select", "--config", str(cfg_path), "--experiment", "mmc"]
    done = subprocess.run(
        [*cmd, "--checkpoints", str(tmp_path / "run"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record["epoch"] == 3 and record["experiment"] == "mmc"
    # A bad path is one clear line, not a traceback.
    done = subprocess.run(
        [*cmd, "--checkpoints", str(tmp_path / "none"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "none" in done.stderr


def test_best_policy_scores_the_checkpoints_as_mmc_segment_does(tmp_path, monkeypatch, capsys):
    from segmentation_fixtures import TINY_ARCH, make_voc, save_in_format

    from mmc.cli import main
    from mmc.models import random_backbone

    voc = make_voc(tmp_path / "VOC2012", n_images=2)
    (tmp_path / "run").mkdir()
    files = {epoch: tmp_path / "run" / f"epoch_{epoch:04d}.pth" for epoch in (1, 2, 3)}
    for epoch, path in files.items():
        save_in_format(random_backbone(TINY_ARCH, epoch).state_dict(), "mmc", path)
    sections = {
        "state_dir": str(tmp_path / "state"),
        "datasets": {"sel": {"format": "voc", "root": str(voc)}},
        "models": {
            f"e{e}": {"source": "file", "path": str(p), "format": "mmc", "backbone": TINY_ARCH}
            for e, p in files.items()
        },
        "evaluation": {"resolution": 64, "num_workers": 0},
        "selection": {"policy": "best:miou", "dataset": "sel"},
    }
    path = write_config(tmp_path, select_config(tmp_path, **sections))
    monkeypatch.setenv("MMC_PROGRESS", "lines")
    monkeypatch.setenv("MMC_PROGRESS_INTERVAL", "0")
    record = select(config.load(path), "mmc", tmp_path / "run")
    shown = capsys.readouterr().err  # progress per image of each scored checkpoint
    assert all(f"select: epoch_{e:04d}.pth on sel: 2/2 images (100%)" in shown for e in files), shown
    monkeypatch.setenv("MMC_PROGRESS", "off")
    scores = {}
    for epoch in files:
        out = tmp_path / "segment" / str(epoch)
        args = ["--config", str(path), "--model", f"e{epoch}", "--dataset", "sel", "--out", str(out)]
        assert main(["segment", *args]) == 0
        scores[epoch] = json.loads((out / "summary.json").read_text())["best_miou"]
    assert {c["epoch"]: c["score"] for c in record["candidates"]} == scores
    assert len(set(scores.values())) == 3 and record["epoch"] == reference_choice("best:miou", scores)
    assert record["selection_dataset"] == "sel" and record["sha256"] == hashlib.sha256(
        files[record["epoch"]].read_bytes()
    ).hexdigest()
    # No object large enough: no score, and a clear error rather than a crash or a silent choice.
    sections["evaluation"] = {**sections["evaluation"], "min_object_patches": 1000}
    strict = config.load(write_config(tmp_path, select_config(tmp_path, **sections)))
    with pytest.raises(MMCError, match=r"no object of the selection dataset 'sel' was evaluated"):
        select(strict, "mmc", tmp_path / "run")
