"""`mmc segment`, the VOC reader and the feature cache, on real files written here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from segmentation_fixtures import (
    TINY_ARCH,
    handmade_features,
    handmade_sample,
    make_voc,
    save_in_format,
    scene,
    segmentation_config,
)
from workflow_helpers import REPO, write_config

from mmc import config
from mmc.cli import main
from mmc.data.readers import open_reader
from mmc.data.voc import VOCReader
from mmc.errors import MMCError
from mmc.evaluation.segment import evaluate_checkpoint, evaluate_image
from mmc.models import random_backbone


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data") / "VOC2012", n_images=3)


# ----------------------------------------------------------------------------- reader
def test_voc_reader_objects_classes_and_void(voc):
    reader = VOCReader(voc, "val")
    assert len(reader) == 3
    sample = reader[1]
    _, instances, classes = scene(1)
    assert sample.image.shape == (48, 64, 3) and sample.image.dtype == np.uint8
    assert [o.object_id for o in sample.objects] == [1, 2, 3]
    assert (
        [o.class_id for o in sample.objects]
        == [int(classes[instances == i][0]) for i in (1, 2, 3)]
        == [1, 2, 3]
    )
    np.testing.assert_array_equal(sample.objects[0].mask, instances == 1)
    np.testing.assert_array_equal(sample.void, instances == 255)
    assert sample.objects[1].mask.sum() == 18 * 26 and sample.void.sum() == 20 * 28 - 18 * 26
    assert [s.image_id for s in VOCReader(voc, "val", max_images=2)] == ["2007_000000", "2007_000001"]


def test_voc_reader_through_the_config_interface(voc, tmp_path):
    cfg = config.load(
        write_config(tmp_path, segmentation_config(tmp_path, voc, datasets={"scenes": {"format": "voc", "root": str(voc), "max_images": 1}}))
    )
    assert len(open_reader(cfg.datasets["scenes"])) == 1


def test_voc_reader_errors(voc, tmp_path):
    with pytest.raises(MMCError, match=r"test.txt: split list not found"):
        VOCReader(voc, "test")
    make_voc(tmp_path / "devkit" / "VOCdevkit" / "VOC2012", n_images=1)
    with pytest.raises(MMCError, match=r"root should be the VOC2012 directory"):
        VOCReader(tmp_path / "devkit", "val")
    bad = make_voc(tmp_path / "bad" / "VOC2012", n_images=1)
    Image.new("RGB", (64, 48)).save(bad / "SegmentationObject" / "2007_000000.png")
    with pytest.raises(MMCError, match=r"2007_000000.png: expected an indexed \(palette\) or greyscale PNG label map"):
        VOCReader(bad)[0]
    Image.new("P", (60, 48)).save(bad / "SegmentationObject" / "2007_000000.png")
    with pytest.raises(MMCError, match="sizes differ"):
        VOCReader(bad)[0]
    (bad / "JPEGImages" / "2007_000000.jpg").unlink()
    with pytest.raises(MMCError, match=r"2007_000000\.jpg: image file not found"):
        VOCReader(bad)[0]


# ----------------------------------------------------------------------------- per image, by hand
def test_evaluate_image_by_hand():
    thresholds = [0.0, 0.5, 1.0]
    rows, skipped = evaluate_image(handmade_features(), handmade_sample(), thresholds)
    assert skipped == 2 and len(rows) == 1  # c covers 36 / 16 = 2.25 tokens < 3
    rows, skipped = evaluate_image(handmade_features(), handmade_sample(), thresholds, min_patches=2)
    assert skipped == 1
    a, c = rows
    # distance 4 at rows/cols 3-4 (the border counts as outside): first in raster order is (3, 3)
    assert (a["prompt_y"], a["prompt_x"]) == (3, 3) and (a["prompt_row"], a["prompt_col"]) == (0, 0)
    assert a["area"] == 64 and c["area"] == 36 and c["class_id"] == 7
    # tau 0: every similarity (0 or 1) passes, the whole valid image is predicted: 64 / (256 - 16)
    assert a["iou_0.00"] == pytest.approx(64 / 240)
    assert a["iou_0.50"] == 1.0 and a["iou_1.00"] == 1.0
    # c: its four tokens (64 px) are predicted, 36 px are the object
    assert c["iou_0.00"] == pytest.approx(36 / 240)
    assert c["iou_0.50"] == pytest.approx(36 / 64)
    assert c["oracle_iou"] == pytest.approx(36 / 64) and c["oracle_tau"] == pytest.approx(1.0)


def test_evaluate_image_bilinear_and_random_prompts():
    rows, _ = evaluate_image(
        handmade_features(), handmade_sample(), [0.5], upsample="bilinear", min_patches=2
    )
    assert 0 < rows[1]["iou_0.50"] <= 1
    first, _ = evaluate_image(
        handmade_features(), handmade_sample(), [0.5], prompt="random", seed=3, min_patches=2
    )
    again, _ = evaluate_image(
        handmade_features(), handmade_sample(), [0.5], prompt="random", seed=3, min_patches=2
    )
    assert [(r["prompt_y"], r["prompt_x"]) for r in first] == [(r["prompt_y"], r["prompt_x"]) for r in again]
    sample = handmade_sample()
    assert all(sample.objects[i].mask[r["prompt_y"], r["prompt_x"]] for i, r in enumerate(first))


# ----------------------------------------------------------------------------- command line
def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_segment_cli_on_a_random_tiny_vit(voc, tmp_path):
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc))
    assert (
        run_cli(
            "segment", "--config", cfg, "--model", "tiny", "--dataset", "scenes", "--out", tmp_path / "out"
        )
        == 0
    )
    table = pd.read_parquet(tmp_path / "out" / "objects.parquet")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    taus = [round(0.05 * i, 2) for i in range(20)]
    expected_columns = [
        "model",
        "dataset",
        "seed",  # null: a random model with its own seed is evaluated once
        "image_id",
        "object_id",
        "class_id",
        "area",
        "prompt_y",
        "prompt_x",
    ]
    expected_columns += [
        "prompt_row",
        "prompt_col",
        *[f"iou_{t:.2f}" for t in taus],
        "oracle_tau",
        "oracle_iou",
    ]
    assert list(table.columns) == expected_columns
    assert len(table) == 6 and summary["n_objects"] == 6 and summary["n_skipped"] == 3
    assert set(table["model"]) == {"tiny"} and set(table["class_id"]) == {1, 2}
    assert summary["thresholds"] == taus
    for t in taus:
        assert summary["miou_by_tau"][f"{t:.2f}"] == pytest.approx(table[f"iou_{t:.2f}"].mean())
    assert summary["best_miou"] == max(summary["miou_by_tau"].values())
    assert summary["miou_at_demo_tau"] == summary["miou_by_tau"]["0.90"] and summary["demo_tau"] == 0.9
    assert summary["oracle_miou"] == pytest.approx(table["oracle_iou"].mean())
    assert (table["oracle_iou"] >= table[[f"iou_{t:.2f}" for t in taus]].max(axis=1) - 1e-12).all()
    assert summary["checkpoint_sha256"] is None and summary["settings"]["resolution"] == 64
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert csv["tau"].tolist() == taus and csv["miou"].tolist() == pytest.approx(
        list(summary["miou_by_tau"].values())
    )
    record = json.loads(
        (tmp_path / "results" / "tracking" / "jobs" / "segment-model=tiny-dataset=scenes.json").read_text()
    )
    assert record["status"] == "FINISHED" and record["tags"]["model"] == "tiny"
    assert record["wildcards"] == {"model": "tiny", "dataset": "scenes"} and record["rule"] == "segment"
    metrics = {m["key"]: m["value"] for m in record["metrics"]}
    assert metrics["miou_tau_0.90"] == summary["miou_by_tau"]["0.90"] and metrics["n_skipped"] == 3
    assert set(record["files"]["produced"]) == {
        str(tmp_path / "out" / n) for n in ("objects.parquet", "summary.csv", "summary.json")
    }


def test_segment_cli_on_every_checkpoint_format_gives_the_same_numbers(voc, tmp_path):
    state = random_backbone(TINY_ARCH, 11).state_dict()
    models = {"tiny": {"source": "random", "backbone": TINY_ARCH}}
    summaries = {}
    for fmt in ("mmc", "dino", "ibot", "mae", "mocov3", "timm"):
        save_in_format(state, fmt, tmp_path / f"{fmt}.pth")
        models[fmt] = {"source": "file", "path": str(tmp_path / f"{fmt}.pth"), "backbone": TINY_ARCH}
    # one resize for all (64 px on a 32 px ViT): the formats' own defaults differ (tests/test_pos_embed.py)
    evaluation = {"feature_cache": False, "pos_embed_resize": "timm"}
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, models=models, evaluation=evaluation))
    for fmt in ("mmc", "dino", "ibot", "mae", "mocov3", "timm"):
        out = tmp_path / "out" / fmt
        assert run_cli("segment", "--config", cfg, "--model", fmt, "--dataset", "scenes", "--out", out) == 0
        summaries[fmt] = json.loads((out / "summary.json").read_text())
        assert summaries[fmt]["settings"]["pos_embed_resize"] == "timm"
        assert summaries[fmt]["checkpoint_sha256"] is not None
        sim_out = tmp_path / "sim" / fmt
        assert (
            run_cli("similarity", "--config", cfg, "--model", fmt, "--dataset", "scenes", "--out", sim_out)
            == 0
        )
        similarity = json.loads((sim_out / "similarity.json").read_text())
        assert similarity["checkpoint_sha256"] == summaries[fmt]["checkpoint_sha256"]
        assert (sim_out / "histogram.png").is_file() and (sim_out / "histogram.svg").is_file()
    reference = summaries["timm"]["miou_by_tau"]
    for fmt, summary in summaries.items():
        assert summary["miou_by_tau"] == reference, fmt
        assert (
            json.loads((tmp_path / "sim" / fmt / "similarity.json").read_text())["overlap"]
            == similarity["overlap"]
        )
    # --checkpoint overrides the model's source, and evaluate_checkpoint agrees with the command
    out = tmp_path / "out" / "override"
    assert (
        run_cli(
            "segment",
            "--config",
            cfg,
            "--model",
            "tiny",
            "--dataset",
            "scenes",
            "--out",
            out,
            "--checkpoint",
            tmp_path / "mmc.pth",
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["miou_by_tau"] == reference
    selected = evaluate_checkpoint(config.load(cfg), tmp_path / "mmc.pth", "scenes")
    assert selected.model == "selection" and selected.miou_by_tau == reference
    assert selected.n_objects == 6 and selected.checkpoint_sha256 == summaries["mmc"]["checkpoint_sha256"]


def test_segment_cli_errors_are_one_clear_line(voc, tmp_path, capsys):
    models = {
        "tiny": {"source": "random", "backbone": TINY_ARCH},
        "url": {"source": "url", "url": "https://x/y.pth"},
        "pinned": {
            "source": "file",
            "path": str(tmp_path / "w.pth"),
            "backbone": TINY_ARCH,
            "sha256": "0" * 64,
        },
        "moco": {
            "source": "file",
            "path": str(tmp_path / "w.pth"),
            "format": "mocov3",
            "backbone": TINY_ARCH,
        },
    }
    torch.save(random_backbone(TINY_ARCH, 0).state_dict(), tmp_path / "w.pth")
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, models=models))
    assert (
        run_cli("segment", "--config", cfg, "--model", "nope", "--dataset", "scenes", "--out", tmp_path / "o")
        == 2
    )
    assert "--model 'nope' is not a key of models" in capsys.readouterr().err
    assert (
        run_cli("segment", "--config", cfg, "--model", "tiny", "--dataset", "nope", "--out", tmp_path / "o")
        == 2
    )
    assert "--dataset 'nope' is not a key of datasets" in capsys.readouterr().err
    assert (
        run_cli("segment", "--config", cfg, "--model", "url", "--dataset", "scenes", "--out", tmp_path / "o")
        == 2
    )
    assert "pass the weights file with --checkpoint" in capsys.readouterr().err
    assert (
        run_cli(
            "segment", "--config", cfg, "--model", "pinned", "--dataset", "scenes", "--out", tmp_path / "o"
        )
        == 2
    )
    assert f"does not match models.pinned.sha256 {'0' * 64}" in capsys.readouterr().err
    assert (
        run_cli("segment", "--config", cfg, "--model", "moco", "--dataset", "scenes", "--out", tmp_path / "o")
        == 2
    )
    assert "not a mocov3 checkpoint: expected top-level keys ['state_dict']" in capsys.readouterr().err
    save_in_format(random_backbone(TINY_ARCH, 0).state_dict(), "mocov3", tmp_path / "w.pth")
    assert (
        run_cli("segment", "--config", cfg, "--model", "moco", "--dataset", "scenes", "--out", tmp_path / "o")
        == 2
    )
    err = capsys.readouterr().err
    assert f"{tmp_path / 'w.pth'}: evaluation.pos_embed_resize: sincos rebuilds fixed 2-D sin-cos" in err
    assert "(auto is sincos for format mocov3)" in err
    assert not (tmp_path / "o").exists()


def test_feature_cache_is_reused_and_checked_against_the_pixels(voc, tmp_path):
    import shutil

    data = tmp_path / "VOC2012"
    shutil.copytree(voc, data)
    cached = write_config(tmp_path, segmentation_config(tmp_path, data))
    args = ["--model", "tiny", "--dataset", "scenes"]
    assert run_cli("segment", "--config", cached, *args, "--out", tmp_path / "a") == 0
    (cache,) = (tmp_path / "state" / "features" / "tiny" / "scenes").iterdir()  # one directory per key
    entries = sorted(cache.iterdir())
    assert len(entries) == 3
    # 8 x 8 tokens x 48 float16 each: an entry stores its own tensor, not its batch's
    assert all(64 * 48 * 2 < e.stat().st_size < 64 * 48 * 2 + 1024 for e in entries)
    assert run_cli("segment", "--config", cached, *args, "--out", tmp_path / "b") == 0
    first, second = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert first["features"] == {"computed": 3, "cached": 0} and second["features"] == {
        "computed": 0,
        "cached": 3,
    }
    assert first["miou_by_tau"] == second["miou_by_tau"]
    # A changed image is recomputed, the others still come from the cache.
    image = np.array(Image.open(data / "JPEGImages" / "2007_000001.jpg"))
    Image.fromarray(255 - image).save(data / "JPEGImages" / "2007_000001.jpg")
    assert run_cli("segment", "--config", cached, *args, "--out", tmp_path / "c") == 0
    third = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert third["features"] == {"computed": 1, "cached": 2}
    # Other feature settings: a new key; the stale directory is removed, an unreadable entry recomputed.
    other = write_config(tmp_path, segmentation_config(tmp_path, data, evaluation={"resolution": 48}))
    assert run_cli("segment", "--config", other, *args, "--out", tmp_path / "d") == 0
    (new_cache,) = (tmp_path / "state" / "features" / "tiny" / "scenes").iterdir()
    assert new_cache != cache
    sorted(new_cache.iterdir())[0].write_bytes(b"garbage")
    assert run_cli("segment", "--config", other, *args, "--out", tmp_path / "e") == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["features"] == {
        "computed": 1,
        "cached": 2,
    }


def test_segment_runs_as_a_process(voc, tmp_path):
    cfg = write_config(
        tmp_path,
        segmentation_config(
            tmp_path,
            voc,
            evaluation={
                "upsample": "bilinear",
                "prompt": "random",
                "thresholds": [0.2, 0.625],
                "keep_aspect": True,
            },
        ),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmc",
            "segment",
            "--config",
            cfg,
            "--model",
            "tiny",
            "--dataset",
            "scenes",
            "--out",
            tmp_path / "p",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        # as in a job's log: a progress line per image (interval 0), then a last one
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MMC_PROGRESS_INTERVAL": "0"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("segment tiny on scenes: ")]
    assert lines[0].startswith("segment tiny on scenes: 1/") and "done in" in lines[-1], result.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["thresholds"] == [0.2, 0.625, 0.9]  # the demo tau is always evaluated
    assert summary["settings"]["upsample"] == "bilinear" and summary["settings"]["prompt"] == "random"
    assert summary["settings"]["keep_aspect"] is True and summary["n_objects"] == 6


def test_reading_threads_change_nothing_but_speed(voc, tmp_path):
    tables = []
    for workers in (0, 2):
        evaluation = {"num_workers": workers, "feature_cache": False, "batch_size": 2}
        cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation=evaluation))
        out = tmp_path / f"w{workers}"
        assert (
            run_cli("segment", "--config", cfg, "--model", "tiny", "--dataset", "scenes", "--out", out) == 0
        )
        tables.append(pd.read_parquet(out / "objects.parquet"))
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_prepared_keeps_reader_order_with_threads():
    from mmc.evaluation.features import prepared

    def slow_square(i):
        import time

        time.sleep(0.001 * (i % 3))  # later items often finish first
        return i * i

    expected = [i * i for i in range(40)]
    assert list(prepared(list(range(40)), slow_square, workers=3, window=5)) == expected  # indexable
    assert list(prepared((i for i in range(40)), slow_square, workers=3, window=5)) == expected  # a stream
    assert list(prepared(range(40), slow_square, workers=0, window=5)) == expected
