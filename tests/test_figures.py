"""mmc figures: each figure is drawn from result files in the stage formats, deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from result_files import objects_frame, segment_summary, similarity_result
from workflow_helpers import write_config

from mmc.data.readers import Sample, SegObject
from mmc.evaluation.summary import read_similarity_result
from mmc.figures import plot_miou_vs_threshold, plot_qualitative, plot_similarity_histograms


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_curves_and_histograms(tmp_path):
    models = ["mmc", "ablation", "random"]
    summaries = [segment_summary(m, "voc", i) for i, m in enumerate(models)]
    paths = plot_miou_vs_threshold(summaries, "voc", tmp_path / "curve")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert _png(paths[0]).std() > 0  # something was drawn
    svg = paths[1].read_text()
    assert all(m in svg for m in models)  # one labelled curve per model
    again = plot_miou_vs_threshold(summaries, "voc", tmp_path / "curve2")
    assert again[0].read_bytes() == paths[0].read_bytes()  # same data, same bytes
    assert again[1].read_bytes() == paths[1].read_bytes()

    results = [similarity_result(m, "voc", i) for i, m in enumerate(models)]
    paths = plot_similarity_histograms(results, "voc", tmp_path / "hist")
    svg = paths[1].read_text()
    assert svg.count("overlap ") == len(models)  # one panel per model, each titled with its overlap
    one = plot_similarity_histograms(results[:1], "voc", tmp_path / "hist1")
    assert Image.open(one[0]).size[0] < Image.open(paths[0]).size[0]


def test_qualitative_marks_prompts_on_the_images(tmp_path):
    h = w = 48
    samples = []
    for i in range(2):
        image = np.full((h, w, 3), 40 * i, np.uint8)
        masks = []
        for k in range(2):
            mask = np.zeros((h, w), bool)
            mask[5 + 5 * k : 20 + 5 * k, 7 + 5 * k : 22 + 5 * k] = True
            masks.append(SegObject(object_id=k + 1, class_id=1, mask=mask))
        samples.append(
            Sample(image_id=f"img_{i}", image=image, objects=tuple(masks), void=np.zeros((h, w), bool))
        )
    frames = {m: objects_frame(m, "voc", ["img_0", "img_1"]) for m in ("mmc", "random")}
    paths = plot_qualitative(samples, frames, {"mmc": 0.5, "random": 0.3}, "voc", tmp_path / "qual")
    assert [p.suffix for p in paths] == [".png"]
    drawn = _png(paths[0])
    assert drawn.shape[0] > 100 and drawn.std() > 0
    # An empty model list or no samples still yields a (blank) figure rather than an error.
    assert plot_qualitative([], {}, {}, "voc", tmp_path / "empty")[0].exists()


@pytest.mark.parametrize("model_count", [1, 3])
def test_histogram_inputs_round_trip_through_json(tmp_path, model_count):
    results = [similarity_result(f"m{i}", "d", i) for i in range(model_count)]
    loaded = []
    for i, result in enumerate(results):  # written and read back as mmc similarity and mmc figures do
        (tmp_path / f"{i}.json").write_text(result.to_json())
        loaded.append(read_similarity_result(tmp_path / f"{i}.json"))
    assert loaded == results
    first = plot_similarity_histograms(loaded, "d", tmp_path / "h")
    again = plot_similarity_histograms(results, "d", tmp_path / "h2")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Synthetic scenes (real files written by the data stage's generator)."""
    import dataclasses

    from mmc import config
    from mmc.data import synthetic

    root = tmp_path_factory.mktemp("scenes") / "synthetic"
    spec = synthetic.SyntheticSpec.from_config(config.section_defaults("synthetic"))
    synthetic.generate(root, dataclasses.replace(spec, images=8, unlabelled_images=0, size=64))
    return root / "VOCdevkit" / "VOC2012"


def figures_config(tmp_path: Path, scenes: Path, **evaluation) -> dict:
    """A random tiny ViT on the synthetic ``scenes`` (dataset ``d``); ``evaluation``: its options."""
    return {
        "run_name": "t",
        "device": "cpu",
        "results_dir": str(tmp_path / "results"),
        "state_dir": str(tmp_path / "state"),
        "tracking": {"enabled": False},
        "models": {
            "random": {
                "source": "random",
                "backbone": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 64},
            }
        },
        "datasets": {"d": {"format": "synthetic", "root": str(scenes), "max_images": 8}},
        "evaluation": {"datasets": ["d"], "resolution": 64, "num_workers": 0, **evaluation},
        "similarity": {"bins": 20},
    }


def assert_masks_have_the_scored_ious(masks, samples, table, tau) -> int:
    """Every row of ``table`` on ``samples`` has a mask whose IoU is its ``iou_<tau>``, exactly."""
    from mmc.evaluation.metrics import iou
    from mmc.evaluation.protocol import iou_column

    checked = 0
    for sample in samples:
        for obj in sample.objects:
            row = table[
                (table["image_id"].astype(str) == str(sample.image_id)) & (table["object_id"] == obj.object_id)
            ]
            if row.empty:
                continue  # skipped as too small
            pred = masks[(str(sample.image_id), obj.object_id)]
            assert pred.dtype == bool and pred.shape == obj.mask.shape
            assert iou(pred, obj.mask, sample.void) == row[iou_column(tau)].iloc[0]
            checked += 1
    return checked


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_predicted_masks_reproduce_the_scored_ious(tmp_path, scenes, upsample):
    """The qualitative masks are the evaluation's: their IoU equals the one mmc segment scored."""
    from mmc import config
    from mmc.data.readers import open_reader
    from mmc.evaluation.job import configured_model
    from mmc.evaluation.segment import evaluate
    from mmc.figures import masks_off_score, predicted_masks

    cfg = config.load(write_config(tmp_path / "c.yaml", figures_config(tmp_path, scenes, upsample=upsample)))
    table, _, _ = evaluate(cfg, configured_model(cfg, "random"), "d")
    samples = list(open_reader(cfg.datasets["d"]))
    assert len(table) > 0
    for tau in (0.3, 0.6):
        masks = predicted_masks(cfg, "random", None, "d", samples, table, tau)
        assert len(masks) == len(table)
        assert assert_masks_have_the_scored_ious(masks, samples, table, tau) == len(table)
        assert masks_off_score(masks, samples, table, tau) == []
    # a mask that is not the scored one is reported (as features rounded differently would give)
    (image_id, object_id), mask = next(iter(masks.items()))
    sample = next(s for s in samples if str(s.image_id) == image_id)
    obj = next(o for o in sample.objects if o.object_id == object_id)
    flipped = mask.copy()
    flipped[np.unravel_index(np.argmax(obj.mask & ~sample.void), mask.shape)] ^= True  # one object pixel
    assert masks_off_score({**masks, (image_id, object_id): flipped}, samples, table, 0.6) == [(image_id, object_id)]


def test_figure_masks_in_bfloat16_are_the_scored_ones(tmp_path, scenes, capsys):
    """With ``precision: bfloat16`` the drawn mask of every object has the IoU of objects.parquet at
    the model's best tau (and at every other tau of the grid): the figure takes the features of
    ``mmc segment`` (same precision, same cache), not a float32 recomputation of its own, whose
    masks differ at some thresholds."""
    import pandas as pd
    import torch

    from mmc import config
    from mmc.cli import main
    from mmc.cpu_precision import cpu_runs_natively
    from mmc.evaluation.features import patch_features, preprocess
    from mmc.evaluation.job import configured_model
    from mmc.evaluation.summary import read_segmentation_summary
    from mmc.figures import QUALITATIVE_IMAGES, predicted_masks, qualitative_samples

    path = write_config(tmp_path / "c.yaml", figures_config(tmp_path, scenes, precision="bfloat16", resolution=128))
    cfg = config.load(path)
    common = ["--config", str(path), "--model", "random", "--dataset", "d"]
    capsys.readouterr()
    assert main(["segment", *common, "--out", str(tmp_path / "seg")]) == 0
    assert main(["similarity", *common, "--out", str(tmp_path / "sim")]) == 0
    # on a CPU without bfloat16 matmuls each stage says why it is slow and what to set instead
    warned = capsys.readouterr().err.count("warning: evaluation.precision: bfloat16 on a CPU without native")
    assert warned == (0 if cpu_runs_natively("bfloat16") else 2)
    table = pd.read_parquet(tmp_path / "seg" / "objects.parquet")
    summary = read_segmentation_summary(tmp_path / "seg" / "summary.json")
    assert summary.settings["precision"] == "bfloat16" and summary.n_objects == len(table) > 0
    samples = qualitative_samples(cfg.datasets["d"], set(table["image_id"]), QUALITATIVE_IMAGES)
    drawn = table[table["image_id"].isin([s.image_id for s in samples])]
    for tau in [summary.best_tau, *summary.thresholds]:
        masks = predicted_masks(cfg, "random", None, "d", samples, table, tau)
        assert assert_masks_have_the_scored_ious(masks, samples, table, tau) == len(drawn) > 0

    # bfloat16 matters here: float32 features of the same image are not the scored ones.
    network = configured_model(cfg, "random").network.eval()
    x = preprocess(samples[0].image, (128, 128))[None]
    with torch.inference_mode():
        full = patch_features(network, x, precision="float32")
        half = patch_features(network, x, precision="bfloat16")
    assert not torch.equal(full, half)

    # The command draws them: every figure, from the files of the two stages.
    out = tmp_path / "figures"
    done = main(
        ["figures", "--config", str(path), "--summaries", str(tmp_path / "seg" / "summary.json"),
         "--objects", str(tmp_path / "seg" / "objects.parquet"),
         "--similarity", str(tmp_path / "sim" / "similarity.json"), "--out", str(out)]
    )  # fmt: skip
    assert done == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "miou_vs_threshold_d.png",
        "miou_vs_threshold_d.svg",
        "qualitative_d.png",
        "similarity_histograms_d.png",
        "similarity_histograms_d.svg",
    ]
