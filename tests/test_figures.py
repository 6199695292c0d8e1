"""mmc figures: each figure is drawn from result files in the stage formats, deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from result_files import objects_frame, segment_summary, similarity_result

from mmc.data.readers import Sample, SegObject
from mmc.figures import (
    bin_edges,
    normalised,
    plot_miou_vs_threshold,
    plot_qualitative,
    plot_similarity_histograms,
    threshold_curve,
)


def test_threshold_curve_is_sorted_by_tau():
    summary = {"miou_by_tau": {"0.50": 0.3, "0.00": 0.1, "0.95": 0.05, "0.10": 0.2}}
    taus, mious = threshold_curve(summary)
    assert taus.tolist() == [0.0, 0.1, 0.5, 0.95]
    assert mious.tolist() == [0.1, 0.2, 0.3, 0.05]


def test_bin_edges_accepts_edges_or_a_count():
    result = similarity_result("m", "d", 0, bins=8)
    assert np.allclose(bin_edges(result), np.linspace(-1, 1, 9))
    assert np.allclose(bin_edges({**result, "bins": 8}), np.linspace(-1, 1, 9))
    assert np.allclose(normalised([1, 3, 0]), [0.25, 0.75, 0.0])


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
    loaded = [json.loads(json.dumps(r)) for r in results]  # exactly what mmc similarity writes
    assert plot_similarity_histograms(loaded, "d", tmp_path / "h")[0].exists()


def test_predicted_masks_reproduce_the_scored_ious(tmp_path):
    """The qualitative masks are the evaluation's: their IoU equals the one mmc segment scored."""
    import dataclasses

    import yaml

    from mmc import config
    from mmc.data import synthetic
    from mmc.data.readers import open_reader
    from mmc.figures import predicted_masks
    from mmc.models import model_for
    from mmc.segment import evaluate

    root = tmp_path / "synthetic"
    spec = synthetic.SyntheticSpec.from_config(config.section_defaults("synthetic"))
    synthetic.generate(root, dataclasses.replace(spec, images=8, unlabelled_images=0, size=64))
    raw = {
        "run_name": "t",
        "device": "cpu",
        "results_dir": str(tmp_path / "results"),
        "tracking": {"enabled": False},
        "models": {
            "random": {
                "source": "random",
                "backbone": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 64},
            }
        },
        "datasets": {
            "d": {"format": "synthetic", "root": str(root / "VOCdevkit" / "VOC2012"), "max_images": 3}
        },
        "evaluation": {"datasets": ["d"], "resolution": 64, "num_workers": 0},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = config.load(tmp_path / "c.yaml")
    table, _, _ = evaluate(cfg, model_for(cfg, "random"), "d", "random")
    samples = list(open_reader(cfg.datasets["d"]))
    assert len(table) > 0
    for tau in (0.3, 0.6):
        masks = predicted_masks(cfg, "random", None, samples, table, tau)
        assert len(masks) == len(table)
        for sample in samples:
            valid = ~sample.void
            for obj in sample.objects:
                row = table[
                    (table["image_id"].astype(str) == str(sample.image_id))
                    & (table["object_id"] == obj.object_id)
                ]
                if row.empty:
                    continue
                pred = masks[(str(sample.image_id), obj.object_id)]
                union = ((pred | obj.mask) & valid).sum()
                iou = ((pred & obj.mask) & valid).sum() / union if union else 1.0
                assert iou == pytest.approx(row[f"iou_{tau:.2f}"].iloc[0], abs=1e-9)
