"""The colour floor (`source: colour`): its features against a numpy computation written from the
definition in docs/evaluation.md, and its way through the same `mmc segment` / `mmc similarity` code."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from segmentation_fixtures import TINY_ARCH, make_voc, segmentation_config
from workflow_helpers import write_config

from mmc import config
from mmc.cli import main
from mmc.data.readers import open_reader
from mmc.errors import MMCError
from mmc.evaluation.features import dataset_features
from mmc.evaluation.job import configured_model

COLOUR = {"colour": {"source": "colour", "backbone": {"patch_size": 8}}}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data") / "VOC2012", n_images=3)


def numpy_colour_features(image: np.ndarray, side: int, patch: int) -> np.ndarray:
    """From the definition: PIL bilinear resize to side x side, RGB / 255, per patch the mean and the
    population std of each channel, minus their mean over the image's patches, unit length."""
    pil = Image.fromarray(image)
    if pil.size != (side, side):
        pil = pil.resize((side, side), Image.BILINEAR)
    rgb = np.asarray(pil, dtype=np.float64) / 255.0
    grid = side // patch
    out = np.zeros((grid, grid, 6))
    for row in range(grid):
        for col in range(grid):
            block = rgb[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch].reshape(-1, 3)
            out[row, col, :3] = block.mean(axis=0)
            out[row, col, 3:] = np.sqrt(((block - block.mean(axis=0)) ** 2).mean(axis=0))
    out -= out.reshape(-1, 6).mean(axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


@pytest.mark.parametrize(("resolution", "dtype"), [(64, "float32"), (48, "float32"), (96, "float32"), (64, "float16")])
def test_features_match_the_definition(voc, tmp_path, resolution, dtype):
    evaluation = {"resolution": resolution, "feature_dtype": dtype}
    cfg = config.load(write_config(tmp_path, segmentation_config(tmp_path, voc, models=COLOUR, evaluation=evaluation)))
    # float32: the definition's values; float16 (the default stored precision): those values rounded
    # to 11 significant bits, at most half a unit in the last place (2^-11) for values in [-1, 1]
    atol = 2e-5 if dtype == "float32" else 2e-5 + 2.0**-11
    model = configured_model(cfg, "colour")
    assert model.loaded.format == "colour" and model.sha256 is None and model.seed is None
    samples = list(open_reader(cfg.datasets["scenes"]))
    got = list(dataset_features(cfg, model, samples, "scenes"))
    assert len(got) == len(samples) == 3
    for sample, features in got:
        expected = numpy_colour_features(sample.image, resolution, 8)
        assert features.shape == (resolution // 8, resolution // 8, 6)
        np.testing.assert_allclose(features.numpy(), expected, atol=atol)
        norms = np.linalg.norm(features.numpy(), axis=-1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-5 if dtype == "float32" else 2e-3)


def test_uniform_patches_of_one_colour_are_identical_and_others_differ():
    """Two patches of the same flat colour have similarity 1; a patch of another colour less."""
    import torch

    from mmc.models.colour import colour_statistics

    image = torch.zeros(1, 3, 16, 24)
    image[:, 0, :, :8] = 0.8  # a red patch column
    image[:, 2, :, 8:] = 0.6  # blue elsewhere
    feats = colour_statistics(image, 8)[0]  # (2, 3, 6)
    sims = torch.einsum("d,hwd->hw", feats[0, 1], feats)
    assert sims[1, 1] == pytest.approx(1.0) and sims[0, 2] == pytest.approx(1.0)
    assert sims[0, 0] < 0  # centred: the one red column points away from the blue ones
    with pytest.raises(ValueError, match="whole number of 8-pixel patches"):
        colour_statistics(torch.zeros(1, 3, 12, 16), 8)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_segment_and_similarity_run_the_colour_floor_through_the_same_code(voc, tmp_path):
    models = {**COLOUR, "tiny": {"source": "random", "backbone": TINY_ARCH}}
    cfg = write_config(tmp_path, segmentation_config(tmp_path, voc, models=models))
    common = ["--config", cfg, "--model", "colour", "--dataset", "scenes"]
    assert run_cli("segment", *common, "--out", tmp_path / "seg") == 0
    assert run_cli("similarity", *common, "--out", tmp_path / "sim") == 0
    summary = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert summary["model"] == "colour" and summary["seed"] is None and summary["checkpoint_sha256"] is None
    assert summary["settings"]["pos_embed_resize"] == "none" and summary["settings"]["patch_size"] == 8
    assert summary["features"] == {"computed": 3, "cached": 0}
    similarity = json.loads((tmp_path / "sim" / "similarity.json").read_text())
    assert similarity["features"] == {"computed": 0, "cached": 3}  # the cache serves the colour floor too
    table = pd.read_parquet(tmp_path / "seg" / "objects.parquet")
    assert len(table) == summary["n_objects"] > 0 and table["seed"].isna().all()
    # the flat-coloured rectangles of the fixture are found by colour alone
    assert summary["best_miou"] > 0.5
    # the cache key tells the floor from a ViT with the same patch size: distinct cache directories
    assert run_cli("segment", "--config", cfg, "--model", "tiny", "--dataset", "scenes", "--out", tmp_path / "t") == 0
    state = tmp_path / "state" / "features"
    assert sorted(p.name for p in state.iterdir()) == ["colour", "tiny"]
    assert len(list((state / "tiny" / "seed0" / "scenes").iterdir())) == 1
    with pytest.raises(MMCError, match=r"--seed 1: model 'colour' \(source colour\) is evaluated once"):
        configured_model(config.load(cfg), "colour", seed=1)


def test_similarities_do_not_depend_on_the_features_memory_layout():
    """The same features in another layout (a channel-last view, as the colour statistics once were,
    against a cache entry's contiguous copy) give the same similarities bit for bit: summed in float64."""
    from mmc.evaluation.protocol import cosine_to, prompt_similarities

    rng = np.random.default_rng(0)
    for dim in (6, 96):
        planes = rng.standard_normal((dim, 8, 8)).astype(np.float16).astype(np.float32)
        view = planes.transpose(1, 2, 0)  # (8, 8, dim), not C-contiguous
        copy = np.ascontiguousarray(view)
        assert not view.flags["C_CONTIGUOUS"]
        tokens = [(0, 0), (3, 5), (7, 7)]
        assert np.array_equal(prompt_similarities(view, tokens), prompt_similarities(copy, tokens))
        flat_view, flat_copy = view.reshape(64, dim), copy.reshape(64, dim)
        got = cosine_to(flat_view, flat_view[[9]])
        assert got.dtype == np.float32 and np.array_equal(got, cosine_to(flat_copy, flat_copy[[9]]))
        expected = (flat_copy.astype(np.float64) @ flat_copy[9].astype(np.float64)).astype(np.float32)
        assert np.array_equal(got[:, 0], expected)
