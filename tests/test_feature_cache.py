"""The evaluation's features as kept: resizing, the stored precision, cache entries and the cache's
background writer, and that a warm cache reproduces a cold run bit for bit (real files, threads and
processes)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from segmentation_fixtures import make_voc, segmentation_config
from workflow_helpers import REPO, write_config

from mmc.cli import main
from mmc.evaluation.features import (
    FeatureCache,
    cache_enabled,
    decode_entry,
    encode_entry,
    resize_image,
    stored_features,
)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data") / "VOC2012", n_images=3)


# ----------------------------------------------------------------------------- resizing
def triangle_weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) bilinear resampling matrix with half-pixel centres. With ``antialias`` the
    triangle filter is widened by the scale when shrinking (PIL's and torch's antialiased bilinear);
    without, each output samples the two nearest inputs of ``(i + 1/2) n_in / n_out - 1/2``, clamped."""
    scale = n_in / n_out
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        if antialias:
            support = max(scale, 1.0)
            for j in range(n_in):
                out[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / support)
            out[i] /= out[i].sum()
        else:
            source = min(max(centre - 0.5, 0.0), n_in - 1)
            lo = math.floor(source)
            hi = min(lo + 1, n_in - 1)
            out[i, lo] += 1 - (source - lo)
            out[i, hi] += source - lo
    return out


@pytest.mark.parametrize(("shape", "size"), [((37, 53), (16, 24)), ((10, 13), (29, 31)), ((40, 30), (40, 17))])
def test_resize_methods_equal_the_resampling_formulas(shape, size):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)

    def reference(antialias):
        rows, cols = triangle_weights(shape[0], size[0], antialias), triangle_weights(shape[1], size[1], antialias)
        return np.einsum("ij,jkc,lk->cil", rows, image / 255.0, cols)

    for method, antialias, tolerance in (("float_antialias", True, 1e-5), ("float", False, 1e-5)):
        got = resize_image(image, size, method)
        assert got.dtype == torch.float32 and tuple(got.shape) == (3, *size)
        np.testing.assert_allclose(got.numpy(), reference(antialias), atol=tolerance, err_msg=method)
    # PIL filters in 8 bits (rounding after each of its two passes): within one step of the filter
    pil = resize_image(image, size, "pil").double().numpy()
    assert np.abs(pil - reference(True)).max() * 255 < 1.0
    np.testing.assert_allclose(pil * 255, np.round(pil * 255), atol=1e-4)  # 8-bit values
    # no method resamples an image that already has the size
    for method in ("pil", "float_antialias", "float"):
        assert torch.equal(resize_image(image, shape, method), torch.from_numpy(image / np.float32(255)).permute(2, 0, 1))


def test_resize_methods_differ_and_bad_names_are_refused():
    from mmc.errors import MMCError

    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    results = [resize_image(image, (24, 32), m) for m in ("pil", "float_antialias", "float")]
    assert not torch.equal(results[0], results[1]) and not torch.equal(results[1], results[2])
    with pytest.raises(MMCError, match=r"evaluation\.resize: 'bicubic' is not one of pil, float_antialias, float"):
        resize_image(image, (24, 32), "bicubic")


# ----------------------------------------------------------------------------- stored precision
@pytest.mark.parametrize(("dtype", "mantissa_bits"), [("float16", 10), ("bfloat16", 7)])
def test_stored_precision_bounds_the_cosine_error(dtype, mantissa_bits):
    """Rounding each component of two unit vectors to ``m`` mantissa bits changes each product by a
    relative 2^-m at most (2^-(m+1) per factor), so their dot product by at most 2^-m * sum|a_i b_i|
    <= 2^-m (Cauchy-Schwarz)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(400, 384, generator=generator), dim=-1)
    features[0] = torch.nn.functional.normalize(torch.tensor([1.0] + [1e-6] * 383), dim=0)  # tiny components
    rounded = stored_features(features, dtype)
    assert rounded.dtype == getattr(torch, dtype)
    exact = features.double() @ features.double().T
    error = (rounded.double() @ rounded.double().T - exact).abs().max().item()
    assert 0 < error <= 2.0**-mantissa_bits
    assert torch.equal(stored_features(features, "float32"), features)


# ----------------------------------------------------------------------------- entries
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_entries_round_trip_and_refuse_damage(dtype):
    features = torch.randn(3, 5, 7).to(dtype)
    data = encode_entry({"key": "k", "image_id": "a", "digest": "d"}, features)
    meta, back = decode_entry(data)
    assert back.dtype == dtype and torch.equal(back, features)
    assert {k: meta[k] for k in ("key", "image_id", "digest", "shape")} == {
        "key": "k",
        "image_id": "a",
        "digest": "d",
        "shape": [3, 5, 7],
    }
    damaged = bytearray(data)
    damaged[-3] ^= 0x10  # one bit of the features
    with pytest.raises(ValueError, match="do not match the header"):
        decode_entry(damaged)
    with pytest.raises(ValueError, match="do not match the header"):
        decode_entry(data[:-1])  # truncated
    with pytest.raises(ValueError, match="not a feature cache entry"):
        decode_entry(b"\0" * len(data))  # what a crash can leave instead of the data
    with pytest.raises(ValueError, match="unreadable header"):
        decode_entry(data[:20])


# ----------------------------------------------------------------------------- the cache
def entries(cache: FeatureCache) -> list[Path]:
    return sorted(p for p in cache.dir.iterdir())


def test_cache_writes_in_the_background_and_close_waits_for_every_write(tmp_path):
    features = [torch.randn(4, 4, 8).half() for _ in range(50)]
    with FeatureCache(tmp_path / "cache", "k" * 64, queue_size=2) as cache:
        for i, f in enumerate(features):
            cache.put(f"img{i}", f"d{i}", f)  # blocks while 2 writes are queued, never loses one
    assert cache.written == 50 and cache.failed == 0
    files = entries(cache)
    assert len(files) == 50 and not [p for p in files if ".tmp-" in p.name]  # all renamed into place
    for i, f in enumerate(features):
        assert torch.equal(cache.get(f"img{i}", f"d{i}"), f)
    assert cache.get("img0", "another image") is None and cache.get("img50", "d50") is None
    other = FeatureCache(tmp_path / "cache", "x" * 64)  # another key: the old directory goes
    assert other.get("img0", "d0") is None and not cache.dir.exists()


def test_failed_writes_are_logged_not_fatal(tmp_path, caplog):
    cache = FeatureCache(tmp_path / "cache", "k" * 64)
    cache.dir.rmdir()
    cache.dir.write_text("a file where the cache directory was")  # every write now fails
    with caplog.at_level(logging.WARNING, logger="mmc.evaluation.features"):
        for i in range(5):
            cache.put(f"img{i}", "d", torch.zeros(2, 2, 3).half())
        cache.close()
    assert cache.failed == 5 and cache.written == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not cache the features of img0" in m for m in messages)
    assert any("could not cache the features of 5 image(s)" in m for m in messages)
    assert cache.get("img0", "d") is None  # and reading still works (finds nothing)
    (tmp_path / "bad").mkdir()
    bad = FeatureCache(tmp_path / "bad", "k" * 64)
    bad._path("img").write_bytes(b"garbage")  # an unreadable entry is a miss
    with caplog.at_level(logging.WARNING, logger="mmc.evaluation.features"):
        assert bad.get("img", "d") is None
    assert "ignoring unreadable cached features" in caplog.text


def test_queued_writes_finish_when_the_process_exits_without_closing(tmp_path):
    script = f"""
import torch
from mmc.evaluation.features import FeatureCache
cache = FeatureCache({str(tmp_path / "cache")!r}, "k" * 64, queue_size=4)
for i in range(40):
    cache.put(f"img{{i}}", "d", torch.full((8, 8, 16), float(i)).half())
print("queued")
"""  # no close(): the interpreter's exit must still finish every write
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0 and "queued" in result.stdout, result.stderr
    cache = FeatureCache(tmp_path / "cache", "k" * 64)
    assert len(entries(cache)) == 40
    assert all(torch.equal(cache.get(f"img{i}", "d"), torch.full((8, 8, 16), float(i)).half()) for i in range(40))


def test_cache_mode_auto_is_off_in_a_slurm_job():
    assert cache_enabled("auto", {}) is True
    assert cache_enabled("auto", {"SLURM_JOB_ID": "123"}) is False
    assert cache_enabled("auto", {"SLURM_JOB_ID": ""}) is True
    assert cache_enabled(True, {"SLURM_JOB_ID": "123"}) is True
    assert cache_enabled(False, {}) is False


# ----------------------------------------------------------------------------- through the commands
def segment(config: Path, out: Path) -> dict:
    args = ["segment", "--config", str(config), "--model", "tiny", "--dataset", "scenes", "--out", str(out)]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


def test_warm_cache_and_no_cache_reproduce_the_cold_run_bit_for_bit(voc, tmp_path):
    cached = write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation={"feature_cache": True, "batch_size": 2}))
    cold, warm = segment(cached, tmp_path / "cold"), segment(cached, tmp_path / "warm")
    uncached = write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation={"feature_cache": False, "batch_size": 3}))
    off = segment(uncached, tmp_path / "off")
    assert cold["features"] == {"computed": 3, "cached": 0} and warm["features"] == {"computed": 0, "cached": 3}
    assert off["features"] == {"computed": 3, "cached": 0}
    tables = [pd.read_parquet(tmp_path / d / "objects.parquet") for d in ("cold", "warm", "off")]
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    pd.testing.assert_frame_equal(tables[0], tables[2], check_exact=True)
    for key in ("miou_by_tau", "oracle_miou", "best_tau", "settings"):
        assert cold[key] == warm[key] == off[key], key
    assert cold["settings"]["feature_dtype"] == "float16" and cold["settings"]["resize"] == "pil"


def test_auto_cache_is_off_inside_slurm_and_on_outside(voc, tmp_path, monkeypatch):
    config = write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation={"feature_cache": "auto"}))
    features = tmp_path / "state" / "features"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert segment(config, tmp_path / "slurm")["features"] == {"computed": 3, "cached": 0}
    assert not features.exists()
    monkeypatch.delenv("SLURM_JOB_ID")
    segment(config, tmp_path / "local")
    assert segment(config, tmp_path / "again")["features"] == {"computed": 0, "cached": 3}
    assert len(list(features.glob("tiny/scenes/*/*.feat"))) == 3


def test_feature_settings_are_in_the_key_and_the_summaries(voc, tmp_path):
    base = write_config(tmp_path, segmentation_config(tmp_path, voc))
    first = segment(base, tmp_path / "a")
    (key_dir,) = (tmp_path / "state" / "features" / "tiny" / "scenes").iterdir()
    for evaluation in ({"resize": "float_antialias"}, {"feature_dtype": "float32"}):
        summary = segment(write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation=evaluation)), tmp_path / "b")
        assert summary["features"] == {"computed": 3, "cached": 0}  # another key: recomputed
        ((name, value),) = evaluation.items()
        assert summary["settings"][name] == value != first["settings"][name]
    assert not key_dir.exists()
    # conventions that do not change the features keep the cache and are recorded
    conventions = {"pixel_to_patch": "floor", "prompt_border": "ignore"}
    segment(write_config(tmp_path, segmentation_config(tmp_path, voc)), tmp_path / "c")  # (write_config rewrote the one config file)
    summary = segment(write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation=conventions)), tmp_path / "d")
    assert summary["features"] == {"computed": 0, "cached": 3}
    assert {k: summary["settings"][k] for k in conventions} == conventions
    assert first["settings"]["pixel_to_patch"] == "center" and first["settings"]["prompt_border"] == "outside"


def test_a_consumer_that_stops_early_leaves_only_complete_entries(voc, tmp_path):
    import threading

    from mmc import config
    from mmc.data.readers import open_reader
    from mmc.evaluation.features import dataset_features
    from mmc.evaluation.job import configured_model

    cfg = config.load(write_config(tmp_path, segmentation_config(tmp_path, voc, evaluation={"feature_cache": True, "batch_size": 3})))
    model = configured_model(cfg, "tiny")
    features = dataset_features(cfg, model, open_reader(cfg.datasets["scenes"]), "scenes")
    first_sample, first = next(features)
    features.close()  # e.g. the prompt explorer or the figures stop after the images they need
    assert not [t for t in threading.enumerate() if t.name == "mmc-feature-cache"]  # writer finished
    (key_dir,) = (tmp_path / "state" / "features" / "tiny" / "scenes").iterdir()
    files = list(key_dir.iterdir())
    assert len(files) == 1 and ".tmp-" not in files[0].name
    again = dict(
        (s.image_id, f) for s, f in dataset_features(cfg, model, open_reader(cfg.datasets["scenes"]), "scenes")
    )
    assert torch.equal(again[first_sample.image_id], first)
