"""Integrity of what the evaluation trusts: finite weights and features, the checkpoint it is given
against every record of it, and command-line mistakes that leave no job record behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from segmentation_fixtures import TINY_ARCH, make_voc, save_in_format, segmentation_config
from workflow_helpers import REPO, write_config

from mmc import records
from mmc.cli import main
from mmc.models import load_backbone, random_backbone

TINY_EXPERIMENT = {"mmc": {"backbone": {**TINY_ARCH, "drop_path": 0.0}}}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data") / "VOC2012", n_images=2)


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def tiny_state(seed: int = 0) -> dict:
    return {k: v.clone() for k, v in random_backbone(TINY_ARCH, seed).state_dict().items()}


def job_records(cfg_path: Path) -> list[str]:
    from mmc import config

    folder = records.record_dir(config.load(cfg_path))
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize(("fmt", "key"), [("mmc", "teacher.backbone.blocks.0.attn.qkv.weight"),
                                          ("timm", "blocks.0.attn.qkv.weight"),
                                          ("dino", "student.module.backbone.blocks.0.attn.qkv.weight")])  # fmt: skip
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_naming_the_key(tmp_path, fmt, key, bad):
    state = tiny_state()
    if fmt == "dino":  # the student (not evaluated) holds the bad value: the whole file is refused
        save_in_format(state, fmt, tmp_path / "w.pth")
        obj = torch.load(tmp_path / "w.pth", weights_only=False)
        obj["student"] = {k: v.clone() for k, v in obj["student"].items()}  # not shared with the teacher
        obj["student"]["module.backbone.blocks.0.attn.qkv.weight"][3, 5] = bad
        torch.save(obj, tmp_path / "w.pth")
    else:
        state["blocks.0.attn.qkv.weight"][3, 5] = bad
        save_in_format(state, fmt, tmp_path / "w.pth")
    with pytest.raises(Exception, match=rf"tensor {key} holds {int(bad != bad)} NaN and {int(bad == bad)} infinite"):
        load_backbone(tmp_path / "w.pth", fmt)


def test_segment_refuses_a_nan_checkpoint_and_publishes_nothing(voc, tmp_path, capsys):
    state = tiny_state()
    state["pos_embed"][0, 1, 0] = float("nan")
    save_in_format(state, "timm", tmp_path / "w.pth")
    models = {"m": {"source": "file", "path": str(tmp_path / "w.pth"), "backbone": TINY_ARCH}}
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, models=models))
    assert run_cli("segment", "--config", cfg, "--model", "m", "--dataset", "scenes", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "tensor pos_embed holds 1 NaN and 0 infinite values" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_non_finite_features_are_refused_before_any_metric(voc, tmp_path, capsys):
    state = tiny_state()
    state["patch_embed.proj.weight"].fill_(3e38)  # finite weights, but the first sum overflows float32
    save_in_format(state, "timm", tmp_path / "w.pth")
    models = {"m": {"source": "file", "path": str(tmp_path / "w.pth"), "backbone": TINY_ARCH}}
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, models=models))
    for command in ("segment", "similarity"):
        out = tmp_path / command
        assert run_cli(command, "--config", cfg, "--model", "m", "--dataset", "scenes", "--out", out) == 2
        err = capsys.readouterr().err
        assert "m: the features of image 2007_000000 hold" in err and "non-finite values" in err, err
        assert not out.exists()


# ----------------------------------------------------------------------------- checkpoint references
def experiment_config(tmp_path: Path, voc: Path) -> Path:
    models = {"mmc": {"source": "experiment", "experiment": "mmc"}}
    return write_config(tmp_path, segmentation_config(tmp_path, voc, models=models, experiments=TINY_EXPERIMENT))


def test_checkpoint_must_match_its_selection_record(voc, tmp_path, capsys):
    from mmc.files import sha256_file

    cfg = experiment_config(tmp_path, voc)
    selected, other = tmp_path / "epoch_0002.pth", tmp_path / "epoch_0001.pth"
    save_in_format(tiny_state(0), "mmc", selected)
    save_in_format(tiny_state(1), "mmc", other)
    record = tmp_path / "results/select/mmc/seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"experiment": "mmc", "checkpoint": str(selected), "sha256": sha256_file(selected)}))
    common = ["--config", cfg, "--model", "mmc", "--dataset", "scenes"]
    assert run_cli("segment", *common, "--out", tmp_path / "ok", "--checkpoint", selected) == 0
    capsys.readouterr()
    for command in ("segment", "similarity"):
        assert run_cli(command, *common, "--out", tmp_path / command, "--checkpoint", other) == 2
        err = capsys.readouterr().err
        assert f"sha256 {sha256_file(other)} differs from {sha256_file(selected)} recorded in the selection record" in err
        assert not (tmp_path / command).exists()


def dvc_add(repo: Path, path: Path) -> Path:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if not (repo / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", str(path.relative_to(repo))], cwd=repo, env=env, check=True)
    return path.with_name(path.name + ".dvc")


def test_published_checkpoint_must_match_its_dvc_file(voc, tmp_path, capsys):
    import hashlib

    cfg = experiment_config(tmp_path, voc)
    published = tmp_path / "checkpoints/mmc.pth"
    published.parent.mkdir()
    save_in_format(tiny_state(0), "mmc", published)
    dvc_file = dvc_add(tmp_path, published)  # DVC's own md5 of the file
    common = ["--config", cfg, "--model", "mmc", "--dataset", "scenes", "--checkpoint", published]
    assert run_cli("segment", *common, "--out", tmp_path / "ok") == 0
    capsys.readouterr()
    recorded = hashlib.md5(published.read_bytes()).hexdigest()
    stat = published.stat()
    published.unlink()  # DVC may have linked it to its cache: replace, never write through
    save_in_format(tiny_state(1), "mmc", published)
    os.utime(published, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its modification time kept
    assert run_cli("segment", *common, "--out", tmp_path / "changed") == 2
    err = capsys.readouterr().err
    changed = hashlib.md5(published.read_bytes()).hexdigest()
    assert f"md5 {changed} differs from {recorded} recorded in the DVC file {dvc_file}" in err
    assert not (tmp_path / "changed").exists()


# ----------------------------------------------------------------------------- command-line mistakes
def test_mistyped_arguments_leave_no_job_record_and_no_parent_run(voc, tmp_path, capsys):
    save_in_format(tiny_state(0), "mmc", tmp_path / "w.pth")
    raw = segmentation_config(tmp_path, voc, models={"mmc": {"source": "experiment", "experiment": "mmc"},
                                                     "tiny": {"source": "random", "backbone": TINY_ARCH}},
                              experiments=TINY_EXPERIMENT)  # fmt: skip
    cfg = write_config(tmp_path, raw)
    (tmp_path / "run").mkdir()
    # the same run, with scenes as an evaluation dataset
    explorer_cfg = write_config(tmp_path / "explorer.yaml", {**raw, "evaluation": {**raw["evaluation"], "datasets": ["scenes"]}})
    out = ["--out", tmp_path / "o"]
    mistakes = [
        ["segment", "--config", cfg, "--model", "tinyy", "--dataset", "scenes", *out],
        ["segment", "--config", cfg, "--model", "tiny", "--dataset", "scene", *out],
        ["similarity", "--config", cfg, "--model", "mmc", "--dataset", "scenes", *out],  # no --checkpoint
        ["similarity", "--config", cfg, "--model", "mmc", "--dataset", "scenes", "--checkpoint", tmp_path / "w.pt", *out],
        ["select", "--config", cfg, "--experiment", "mcm", "--checkpoints", tmp_path / "run", "--out", tmp_path / "s.json"],
        ["select", "--config", cfg, "--experiment", "mmc", "--checkpoints", tmp_path / "runs", "--out", tmp_path / "s.json"],
        ["tables", "--config", cfg, "--summaries", tmp_path / "nope.json", "--objects", tmp_path / "nope.parquet",
         "--similarity", tmp_path / "nope2.json", *out],
        ["figures", "--config", cfg, "--summaries", tmp_path / "nope.json", "--objects", tmp_path / "o.parquet",
         "--similarity", tmp_path / "s.json", *out],
        ["figures", "--config", cfg, "--summaries", tmp_path / "w.pth", "--objects", tmp_path / "w.pth",
         "--similarity", tmp_path / "w.pth", "--checkpoint", "tiny", *out],
        ["report", "--config", cfg, "--selections", tmp_path / "nope.json", "--tables", tmp_path / "w.pth", "--out", tmp_path / "r.md"],
        ["explorer", "--config", cfg, "--dataset", "scene", "--summaries", tmp_path / "w.pth", "--objects",
         tmp_path / "w.pth", "--checkpoint", f"mmc={tmp_path / 'w.pth'}", "--out", tmp_path / "e.html"],
        ["explorer", "--config", explorer_cfg, "--dataset", "scenes", "--summaries", tmp_path / "nope.json",
         "--objects", tmp_path / "w.pth", "--checkpoint", f"mmc={tmp_path / 'w.pth'}", "--out", tmp_path / "e.html"],
        ["explorer", "--config", explorer_cfg, "--dataset", "scenes", "--summaries", tmp_path / "w.pth",
         "--objects", tmp_path / "w.pth", "--checkpoint", f"mmc={tmp_path / 'w.pt'}", "--out", tmp_path / "e.html"],
        ["explorer", "--config", explorer_cfg, "--dataset", "scenes", "--summaries", tmp_path / "w.pth",
         "--objects", tmp_path / "w.pth", "--checkpoint", f"mcm={tmp_path / 'w.pth'}", "--out", tmp_path / "e.html"],
    ]  # fmt: skip
    for argv in mistakes:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error:" in err, (argv, err)
    assert job_records(cfg) == []
    # and so `mmc track load` finds nothing to load: no parent run appears in MLflow
    assert run_cli("track", "load", "--config", cfg) == 0
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'results/tracking/mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments]) if experiments else []
    assert runs == []


# ----------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("full", ["outputs", "records"])
def test_segment_on_a_full_disk_is_one_line_naming_the_file(voc, tmp_path, full):
    """The outputs (--out) or the job records ({results_dir}) on a full file system: exit 2, one
    line naming the file and the free space, nothing half-written."""
    from full_disk import fill, small_file_system

    with small_file_system(tmp_path / "disk", "512k") as disk:
        places = {"outputs": (None, disk / "out"), "records": ("results_dir", tmp_path / "out")}
        key, out = places[full]
        top = {key: str(disk / key)} if key else {}
        cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, **top))
        fill(disk, leave=4096)
        done = run_segment(cfg, out)
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith("mmc segment: error: cannot write ") and " MB free on the file system of " in lines[0]
        assert str(disk) in lines[0]
        assert "No space left on device" in lines[0] or "torch.save could not write the file" in lines[0]
        assert not (out / "summary.json").exists()
        assert [p.name for p in disk.rglob("*") if p.is_file() and p.name != "filler"] == []


def test_segment_with_the_feature_cache_on_a_full_disk_goes_on_without_it(voc, tmp_path):
    """The feature cache ({state_dir}) is only a cache (written by a background thread): on a full
    file system the job still publishes its results (exit 0), the warning names the cache folder and
    the free space, and no half-written cache entry is left behind."""
    from full_disk import fill, small_file_system

    with small_file_system(tmp_path / "disk", "512k") as disk:
        cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, state_dir=str(disk / "state_dir")))
        fill(disk, leave=4096)
        out = tmp_path / "out"
        done = run_segment(cfg, out)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr
        warning = next(line for line in done.stderr.splitlines() if "could not cache the features of " in line)
        assert str(disk / "state_dir") in warning and "No space left on device" in warning, warning
        assert " MB free on the file system of " in warning, warning
        assert (out / "summary.json").is_file()
        assert [p.name for p in disk.rglob("*") if p.is_file() and p.name != "filler"] == []


def run_segment(cfg: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmc", "segment", "--config", str(cfg), "--model", "tiny", "--dataset", "scenes",
         "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("full", ["out", "state"])
def test_pretrain_disk_full_while_writing_a_checkpoint(tmp_path, full):
    """The issue's case: a checkpoint does not fit (the resume state's, written with torch.save, or
    the copy into --out). Exit 2 and one line naming the file and the free space, not a torch
    traceback; every checkpoint already there is intact."""
    import shutil

    from full_disk import small_file_system
    from pretrain_support import env, make_image_folder, pretrain_cmd, pretrain_config

    images = make_image_folder(tmp_path / "images", 16, size=40)
    overrides = {"optim": {"epochs": 2}, "checkpoint": {"save_epochs": [1]}}
    cfg = write_config(tmp_path, pretrain_config(tmp_path, images, overrides, tracking=True))
    probe = subprocess.run(pretrain_cmd(cfg, tmp_path / "probe"), env=env(), capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    size = (tmp_path / "probe/epoch_0001.pth").stat().st_size
    shutil.rmtree(tmp_path / "state")  # start afresh, not from the probe's resume state
    # --out holds the initial weights (epoch_0000), then epoch 1: room for both, not for epoch 2
    room = size * 5 // 2 if full == "out" else size * 3 // 2
    with small_file_system(tmp_path / "disk", f"{room // 1024 + 8}k") as disk:
        out = disk / "run" if full == "out" else tmp_path / "run"
        if full == "state":
            cfg = write_config(tmp_path, pretrain_config(tmp_path, images, overrides, tracking=True, state_dir=str(disk / "state")))
        done = subprocess.run(pretrain_cmd(cfg, out), env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "inline_container" not in done.stderr
        error = done.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"mmc pretrain: error: cannot write {disk}/\S+\.pth: .* \(\d+\.\d MB free on the file "
                            rf"system of {disk}\S* when the write failed\); .*", error), error
        if full == "out":  # the first epoch was copied out whole before the second did not fit
            assert "epoch_0002.pth: No space left on device" in error
            assert (out / "epoch_0001.pth").read_bytes() == (tmp_path / "probe/epoch_0001.pth").read_bytes()
        else:
            assert "torch.save could not write the file" in error
        left = list(disk.rglob("*.pth"))
        assert all(isinstance(torch.load(p, weights_only=True), dict) for p in left)  # none half-written
        assert not list(disk.rglob(".*tmp-*"))
    record = json.loads((tmp_path / "results/tracking/jobs/pretrain-experiment=mmc.json").read_text())
    assert record["status"] == "FAILED" and "cannot write" in record["tags"]["mmc.error"]
