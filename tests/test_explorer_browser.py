"""The prompt explorer in a real headless Chromium: clicks on the page give the evaluation's masks.

Two randomly initialised ViTs of different patch sizes (so different grids side by side) are
evaluated with the real `mmc segment` on synthetic scenes; `mmc explorer` writes the page. In
Chromium a real mouse click on the large image places the prompt on the pixel that `mmc segment`
scored for an object, the threshold slider moves over the evaluation's tau grid, and the mask the
page renders is read back from its canvas and compared:

- pixel for pixel with :func:`mmc.evaluation.protocol.predicted_mask` of the page's own similarity
  map (:func:`mmc.explorer.encode.similarity_map` of the features decoded from the page): the
  page's mask rule is the evaluation's, for ``nearest`` and ``bilinear`` upsampling;
- with the evaluation's mask for that prompt (:func:`mmc.figures.predicted_masks`, the masks
  `mmc segment` scored): identical wherever the evaluation's similarity is farther from tau than
  the page's stated tolerance, and identical everywhere for the taus where no pixel is that close,
  where the page's IoU is then the ``iou_<tau>`` of ``objects.parquet``.

Screenshots of the page after the clicks are saved under the test's temporary directory.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import Browser, browser_or_skip
from workflow_helpers import write_config

from mmc import config
from mmc.cli import main
from mmc.data.readers import open_reader
from mmc.evaluation.features import dataset_features
from mmc.evaluation.job import configured_model
from mmc.evaluation.metrics import iou
from mmc.evaluation.protocol import iou_column, predicted_mask, prompt_similarities, thresholds_of
from mmc.explorer.cli import make_explorer
from mmc.explorer.encode import EncodedFeatures, similarity_map
from mmc.figures import predicted_masks

pytestmark = pytest.mark.slow
DATASET = "scenes"
MODELS = {
    "vit_p8": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 64},
    "vit_p16": {"patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 64},
}
# float32 matrix products of different shapes (all tokens vs one image's prompts) round differently
FLOAT32_SLACK = 1e-6


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    browser_or_skip()
    tmp = tmp_path_factory.mktemp("explorer")
    data = tmp / "synthetic"
    subprocess.run(
        [sys.executable, "-m", "mmc", "data", "synthetic", "--out", str(data), "--images", "12",
         "--unlabelled", "0", "--size", "96", "--seed", "3"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    raw = {
        "run_name": "explorer-test",
        "results_dir": str(tmp / "results"),
        "state_dir": str(tmp / "state"),
        "device": "cpu",
        "models": {name: {"source": "random", "backbone": arch} for name, arch in MODELS.items()},
        "datasets": {DATASET: {"format": "synthetic", "root": str(data / "VOCdevkit" / "VOC2012"), "split": "val"}},
        "evaluation": {"datasets": [DATASET], "resolution": 96, "batch_size": 4, "num_workers": 0, "min_object_patches": 1},
        "tracking": {"enabled": False},
        "report": {"explorer_images": 4},
    }
    path = write_config(tmp, raw)
    out = tmp / "results" / "segment"
    for model in MODELS:
        assert main(["segment", "--config", str(path), "--model", model, "--dataset", DATASET,
                     "--out", str(out / model)]) == 0  # fmt: skip
    page = tmp / "results" / "explorer" / f"{DATASET}.html"
    args = ["--summaries", *(str(out / m / "summary.json") for m in MODELS)]
    args += ["--objects", *(str(out / m / "objects.parquet") for m in MODELS)]
    assert main(["explorer", "--config", str(path), "--dataset", DATASET, *args, "--out", str(page)]) == 0
    return tmp, path, page


def page_data(page: Path) -> dict:
    text = page.read_text()
    match = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def decoded(entry: dict) -> EncodedFeatures:
    """The features as the page holds them (the inverse of mmc.explorer.page.features_entry)."""
    dtype = {8: "<i1", 16: "<i2"}[entry["bits"]]
    q = np.frombuffer(base64.b64decode(entry["q"]), dtype=dtype).reshape(-1, entry["rank"])
    shifts = np.asarray(entry["shifts"], dtype=np.int64)
    return EncodedFeatures(tuple(entry["grid"]), q, shifts, entry["e_max"], 0, entry["eps"])


def click_pixel(browser: Browser, selector: str, y: int, x: int, h: int, w: int) -> None:
    """A real click on the centre of label pixel (y, x) of the element ``selector`` (h x w pixels)."""
    left, top, width, height = browser.run(
        "const e = document.querySelector(arguments[0]); e.scrollIntoView({block: 'center'});"
        "const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];",
        selector,
    )
    browser.click(left + (x + 0.5) * width / w, top + (y + 0.5) * height / h)


def set_tau(browser: Browser, tau: float) -> None:
    browser.run(
        "const s = document.getElementById('tau'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        f"{tau:.2f}",
    )


def rendered_mask(browser: Browser, model: str, h: int, w: int) -> np.ndarray:
    """The mask as drawn: the alpha channel of the model's mask canvas."""
    alpha = browser.run(
        "const c = document.querySelector(`canvas.mask[data-model='${arguments[0]}']`);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let out = ''; for (let i = 3; i < d.length; i += 4) out += d[i] ? '1' : '0';"
        "return [c.width, c.height, out];",
        model,
    )
    assert alpha[:2] == [w, h]
    return np.frombuffer(alpha[2].encode(), dtype=np.uint8).reshape(h, w) == ord("1")


def evaluation_values(cfg, model: str, sample, token: tuple[int, int], shape) -> np.ndarray:
    """The value each pixel is thresholded on in the evaluation, for the prompt ``token``."""
    from mmc.evaluation import metrics

    (_, features), = dataset_features(cfg, configured_model(cfg, model), [sample], DATASET)
    sims = prompt_similarities(features.numpy(), [token])[..., 0]
    if cfg.evaluation.upsample == "nearest":
        return metrics.upsample_nearest(sims.astype(np.float64), shape)
    return metrics.upsample_bilinear(sims, shape).astype(np.float64)


def check_page(browser, cfg, page: Path, segment: Path, shots: Path, name: str, scored_iou: bool = True) -> dict:
    """Click a scored prompt, sweep the slider, compare every rendered mask; returns counts.

    ``scored_iou``: `mmc segment` ran with ``cfg``'s upsampling, so its ``iou_<tau>`` apply."""
    data = page_data(page)
    samples = list(open_reader(cfg.datasets[DATASET]))[: cfg.report.explorer_images]
    objects = {m: pd.read_parquet(segment / m / "objects.parquet") for m in MODELS}
    index = 1  # not the image the page opens on: the thumbnail click must switch images
    sample, image = samples[index], data["images"][index]
    h, w = image["h"], image["w"]
    scored = [o for o in image["objects"] if o["prompt"]]
    assert scored, "the chosen image has no scored object"
    obj = scored[0]
    y, x = obj["prompt"]

    browser.open(page)
    browser.wait_for("return document.body.dataset.rendered")
    click_pixel(browser, f".thumb[data-index='{index}']", y, x, h, w)
    browser.wait_for(f"return explorer.state.image === {index}")
    click_pixel(browser, "#main-image", y, x, h, w)  # the large image: exact pixel
    assert browser.run("return [explorer.state.y, explorer.state.x]") == [y, x]

    counts = {"taus": 0, "exact_taus": 0, "band_pixels": 0}
    target = next(o.mask for o in sample.objects if o.object_id == obj["id"])
    for m, model in enumerate(n["name"] for n in data["models"]):  # the config's order
        enc = decoded(image["features"][m])
        gh, gw = enc.grid
        token = (min(int((y + 0.5) * gh / h), gh - 1), min(int((x + 0.5) * gw / w), gw - 1))
        page_map = similarity_map(enc, token)
        frame = objects[model]
        frame = frame[frame["image_id"].astype(str) == str(sample.image_id)]
        row = frame[frame["object_id"] == obj["id"]].iloc[0]
        assert (int(row["prompt_row"]), int(row["prompt_col"])) == token
        values = evaluation_values(cfg, model, sample, token, (h, w))
        band = enc.eps + FLOAT32_SLACK
        for tau in thresholds_of(cfg.evaluation):
            set_tau(browser, tau)
            shown = rendered_mask(browser, model, h, w)
            # the page's rule is predicted_mask, pixel for pixel, on the page's own map
            assert np.array_equal(shown, predicted_mask(page_map, (h, w), tau, cfg.evaluation.upsample)), (model, tau)
            # and the evaluation's mask wherever the evaluation's value is not within the tolerance of tau
            scored_mask = predicted_masks(cfg, model, None, DATASET, [sample], frame, tau)[
                (str(sample.image_id), obj["id"])
            ]
            near = np.abs(values - tau) <= band
            assert np.array_equal(shown[~near], scored_mask[~near]), (model, tau)
            counts["taus"] += 1
            counts["band_pixels"] += int(near.sum())
            result = browser.run("return explorer.state.results[arguments[0]]", model)
            if not near.any():
                counts["exact_taus"] += 1
                assert np.array_equal(shown, scored_mask)
                if scored_iou:
                    assert result["iou"] == pytest.approx(row[iou_column(tau)], abs=1e-12)

            assert result["iou"] == pytest.approx(iou(shown, target, sample.void), abs=1e-12)
    shot = browser.screenshot(shots / f"explorer_{name}.png")
    print(f"\nexplorer screenshot ({name}): {shot}")
    return counts


def test_rendered_masks_are_the_evaluations(evaluated, tmp_path):
    _, path, page = evaluated
    cfg = config.load(path)
    with Browser(tmp_path / "chromium", width=1400, height=1100) as browser:
        segment = page.parent.parent / "segment"
        counts = check_page(browser, cfg, page, segment, tmp_path, "nearest")
        # with 16-bit full-rank features only a few taus can have a pixel within the tolerance
        assert counts["exact_taus"] >= counts["taus"] // 2, counts

        # a point on the background: no IoU, still the page's own rule
        data = page_data(page)
        image = data["images"][0]
        sample = next(iter(open_reader(cfg.datasets[DATASET])))
        background = ~sample.void & ~np.any([o.mask for o in sample.objects], axis=0)
        y, x = map(int, np.argwhere(background)[len(np.argwhere(background)) // 2])
        browser.run("return explorer.select(0, 0, 0)")
        browser.wait_for("return explorer.state.image === 0")
        click_pixel(browser, "#main-image", y, x, image["h"], image["w"])
        assert browser.run("return [explorer.state.y, explorer.state.x]") == [y, x]
        set_tau(browser, 0.5)
        for m, model in enumerate(n["name"] for n in data["models"]):
            enc = decoded(image["features"][m])
            gh, gw = enc.grid
            token = (min(int((y + 0.5) * gh / image["h"]), gh - 1), min(int((x + 0.5) * gw / image["w"]), gw - 1))
            expected = predicted_mask(similarity_map(enc, token), (image["h"], image["w"]), 0.5, "nearest")
            assert np.array_equal(rendered_mask(browser, model, image["h"], image["w"]), expected)
            assert browser.run("return explorer.state.results[arguments[0]].iou", model) is None

        # bilinear upsampling: the same features (the cache), the other rule
        bilinear = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, upsample="bilinear"))
        out = page.parent / "bilinear" / f"{DATASET}.html"
        make_explorer(
            bilinear, DATASET, [str(segment / m / "summary.json") for m in MODELS],
            [str(segment / m / "objects.parquet") for m in MODELS], {}, out,
        )  # fmt: skip
        counts = check_page(browser, bilinear, out, segment, tmp_path, "bilinear", scored_iou=False)
        assert counts["exact_taus"] >= 1, counts


def test_the_page_is_self_contained_and_reproducible(evaluated, tmp_path):
    _, path, page = evaluated
    text = page.read_text()
    # nothing is fetched: no external script, style, image or link
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    cfg = config.load(path)
    segment = page.parent.parent / "segment"
    again = tmp_path / "again.html"
    make_explorer(
        cfg, DATASET, [str(segment / m / "summary.json") for m in MODELS],
        [str(segment / m / "objects.parquet") for m in MODELS], {}, again,
    )  # fmt: skip
    assert again.read_bytes() == page.read_bytes()  # same inputs, same bytes
    data = page_data(page)
    assert [m["name"] for m in data["models"]] == list(cfg.models)
    assert len(data["images"]) == cfg.report.explorer_images
    assert [len(i["features"]) for i in data["images"]] == [len(MODELS)] * cfg.report.explorer_images
