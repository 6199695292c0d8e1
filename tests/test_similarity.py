"""`mmc similarity`: token membership, intra/inter pooling by hand, and the command's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from segmentation_fixtures import handmade_features, handmade_sample, make_voc, segmentation_config
from workflow_helpers import write_config

from mmc import config
from mmc.cli import main
from mmc.evaluation.similarity import analyse, image_similarities


def pooled_similarities(config_path):
    """Intra and inter similarities of model ``tiny`` on ``scenes``, pooled over the images."""
    from mmc.data.readers import open_reader
    from mmc.evaluation.features import iter_features
    from mmc.evaluation.job import configured_model

    cfg = config.load(config_path)
    network = configured_model(cfg, "tiny").network
    reader = open_reader(cfg.datasets["scenes"])
    intra, inter = [], []
    for sample, feats in iter_features(network, reader, resolution=64, batch_size=cfg.evaluation.batch_size):
        a, b = image_similarities(feats.numpy(), sample)
        intra.append(a)
        inter.append(b)
    return np.concatenate(intra).astype(np.float64), np.concatenate(inter).astype(np.float64)


def brute_force_balanced_accuracy(intra, inter):
    """max over t of (P(intra >= t) + P(inter < t)) / 2, t over every value and +inf; lowest t."""
    best, best_t = -1.0, None
    for t in [*sorted(set(intra) | set(inter)), np.inf]:
        accuracy = (np.mean(intra >= t) + np.mean(inter < t)) / 2
        if accuracy > best:
            best, best_t = accuracy, t
    return best, best_t


def test_intra_and_inter_by_hand():
    # 16 px per token. Object c (rows 0-5, cols 10-15) covers tokens (0,2) 8/16, (0,3) 16/16,
    # (1,2) 4/16, (1,3) 8/16; its prompt (2, 12) is token (0,3). Rows 2-3 are >= 12/16 background.
    # Prompt a: intra = 3 other a tokens (sim 1); inter = the 12 other tokens, all sim 0.
    # Prompt c: intra = (0,2), (1,3) (exactly 0.5 counts, sim 1); inter = (1,2) (background, but
    # carrying c's feature: sim 1), a's 4 tokens and the 8 background tokens of rows 2-3 (sim 0).
    intra, inter = image_similarities(handmade_features(), handmade_sample(), min_patches=2)
    assert intra.tolist() == [1.0] * 5
    assert sorted(inter.tolist()) == [0.0] * 24 + [1.0]
    result = analyse(intra, inter, bins=4)
    assert result["n_intra"] == 5 and result["n_inter"] == 25
    assert result["mean_intra"] == 1.0 and result["mean_inter"] == pytest.approx(1 / 25)
    assert result["hist_intra"] == [0, 0, 0, 1] and result["hist_inter"] == pytest.approx(
        [0, 0, 24 / 25, 1 / 25]
    )
    assert result["overlap"] == pytest.approx(1 / 25)
    # t = 1: every intra, and 24 of 25 inter, on the right side
    assert (
        result["best_balanced_accuracy"] == pytest.approx((1 + 24 / 25) / 2)
        and result["best_threshold"] == 1.0
    )
    assert result["bins"] == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_membership_threshold_moves_tokens_between_sets():
    # At 0.6 the half-c tokens (0,2) and (1,3) belong to nothing: c keeps no intra token, and they
    # leave both prompts' inter sets (a: 10 inter, c: 13 inter).
    intra, inter = image_similarities(handmade_features(), handmade_sample(), min_patches=2, membership=0.6)
    assert len(intra) == 3 and len(inter) == 10 + 13
    intra, inter = image_similarities(handmade_features(), handmade_sample(), min_patches=2, membership=0.5)
    assert len(intra) == 5 and len(inter) == 25


def test_similarity_cli_writes_json_and_figures_and_reuses_segment_features(tmp_path):
    voc = make_voc(tmp_path / "VOC2012", n_images=2)
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc))
    args = ["--config", str(cfg), "--model", "tiny", "--dataset", "scenes"]
    assert main(["segment", *args, "--out", str(tmp_path / "seg")]) == 0
    assert main(["similarity", *args, "--out", str(tmp_path / "sim")]) == 0
    result = json.loads((tmp_path / "sim" / "similarity.json").read_text())
    assert result["features"] == {"computed": 0, "cached": 2}  # the segment job's forward passes
    for key in (
        "model",
        "dataset",
        "n_intra",
        "n_inter",
        "mean_intra",
        "mean_inter",
        "overlap",
        "best_balanced_accuracy",
        "best_threshold",
        "bins",
        "hist_intra",
        "hist_inter",
        "checkpoint_sha256",
    ):
        assert key in result
    assert len(result["bins"]) == 21 and sum(result["hist_intra"]) == pytest.approx(1.0)
    # The numbers are those of the pooled similarities, recomputed here with plain formulas (the
    # features through the same batches, so bit for bit the ones the command used).
    intra, inter = pooled_similarities(cfg)
    assert (result["n_intra"], result["n_inter"]) == (len(intra), len(inter))
    assert result["mean_intra"] == pytest.approx(intra.mean()) and result["mean_inter"] == pytest.approx(inter.mean())
    edges = np.linspace(-1, 1, 21)
    p, q = (np.histogram(np.clip(v, -1, 1), edges)[0] / len(v) for v in (intra, inter))
    assert result["overlap"] == pytest.approx(np.minimum(p, q).sum(), abs=1e-12)
    accuracy, threshold = brute_force_balanced_accuracy(intra, inter)
    assert result["best_balanced_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["best_threshold"] == threshold
    with Image.open(tmp_path / "sim" / "histogram.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert "<svg" in (tmp_path / "sim" / "histogram.svg").read_text()[:500]
    # Without the cache the numbers are the same.
    nocache = write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation={"feature_cache": False}))
    assert (
        main(
            [
                "similarity",
                "--config",
                str(nocache),
                "--model",
                "tiny",
                "--dataset",
                "scenes",
                "--out",
                str(tmp_path / "s2"),
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "s2" / "similarity.json").read_text())
    assert again["features"] == {"computed": 2, "cached": 0}
    assert {k: again[k] for k in ("mean_intra", "mean_inter", "overlap")} == {
        k: result[k] for k in ("mean_intra", "mean_inter", "overlap")
    }
    # Same numbers, same figures: the histograms of the two runs are byte-identical.
    for name in ("histogram.png", "histogram.svg"):
        assert (tmp_path / "s2" / name).read_bytes() == (tmp_path / "sim" / name).read_bytes(), name


def test_histogram_plot_is_byte_reproducible(tmp_path):
    from result_files import similarity_result

    from mmc.evaluation.similarity import plot

    result = similarity_result("m", "d", 0)
    first = plot(result, "m on d", tmp_path / "a" / "histogram")
    second = plot(result, "m on d", tmp_path / "b" / "histogram")
    assert [p.name for p in first] == ["histogram.png", "histogram.svg"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    svg = first[1].read_text()
    assert "<svg" in svg and "dc:date" not in svg and "Matplotlib v" not in svg  # no date, no version
    with Image.open(first[0]) as png:
        assert png.format == "PNG" and "Software" not in png.info
    # Other data, other bytes: the comparison above can fail.
    other = plot(similarity_result("m", "d", 1), "m on d", tmp_path / "c" / "histogram")
    assert other[1].read_bytes() != first[1].read_bytes()
