"""mmc tables: intervals, seeds and references computed from the evaluation files; what is bold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from result_files import write_results
from workflow_helpers import REPO, write_config

from mmc.errors import MMCError
from mmc.evaluation.bootstrap import mean_interval
from mmc.evaluation.protocol import iou_column
from mmc.tables import BootstrapSettings, make_tables

MODELS = ["mmc", "init", "colour"]
DATASETS = ["voc", "coco"]
SEEDS = {"mmc": [0, 1, 2], "init": [0, 1, 2]}  # colour: evaluated once
REFERENCES = {"mmc": "init", "init": None, "colour": None}
SETTINGS = BootstrapSettings(resamples=1000, seed=3, confidence=0.95)


@pytest.fixture
def results(tmp_path):
    files = write_results(tmp_path, MODELS[::-1], DATASETS, SEEDS, {"mmc": 0.05, "init": 0.0, "colour": 0.2})
    make_tables(files["summaries"], files["similarity"], tmp_path / "t", MODELS, DATASETS,
                objects=files["objects"], references=REFERENCES, settings=SETTINGS)  # fmt: skip
    return tmp_path


def runs(root: Path, model: str, dataset: str):
    """(summary, objects) of each evaluation of a model, read straight from the files."""
    found = []
    for seed in SEEDS.get(model, [None]):
        folder = root / "segment" / (model if seed is None else f"{model}/seed{seed}") / dataset
        found.append((json.loads((folder / "summary.json").read_text()), pd.read_parquet(folder / "objects.parquet")))
    return found


def test_csv_rows_seeds_and_intervals(results):
    seg = pd.read_csv(results / "t" / "segmentation.csv", dtype={"seed": str})
    expected = []
    for d in DATASETS:
        for m in MODELS:
            expected += [(d, m, "all")] + [(d, m, str(s)) for s in SEEDS.get(m, [])]
    assert list(zip(seg["dataset"], seg["model"], seg["seed"], strict=True)) == expected
    for dataset in DATASETS:
        for model in MODELS:
            evaluations = runs(results, model, dataset)
            rows = seg[(seg["model"] == model) & (seg["dataset"] == dataset)].set_index("seed")
            per_seed = [s["best_miou"] for s, _ in evaluations]
            aggregate = rows.loc["all"]
            assert aggregate["best_miou"] == pytest.approx(np.mean(per_seed), abs=1e-12)
            if len(per_seed) > 1:
                assert aggregate["best_miou_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
                assert aggregate["n_seeds"] == 3
                for (summary, _), seed in zip(evaluations, SEEDS[model], strict=True):
                    assert rows.loc[str(seed), "best_miou"] == pytest.approx(summary["best_miou"], abs=1e-12)
                    assert rows.loc[str(seed), "best_tau"] == summary["best_tau"]
            else:
                assert np.isnan(aggregate["best_miou_seed_sd"]) and aggregate["n_seeds"] == 0
            # the interval of the seed mean: per object, the mean over seeds of its IoU at each seed's best tau
            per_object = np.mean([f[iou_column(s["best_tau"])].to_numpy() for s, f in evaluations], axis=0)
            interval = mean_interval(per_object, resamples=1000, seed=3, confidence=0.95)
            assert (aggregate["best_miou_lo"], aggregate["best_miou_hi"]) == pytest.approx((interval.lo, interval.hi))
            assert aggregate["best_miou_lo"] <= aggregate["best_miou"] <= aggregate["best_miou_hi"]
            demo = np.mean([f["iou_0.90"].to_numpy() for _, f in evaluations], axis=0)
            assert aggregate["miou_at_demo_tau"] == pytest.approx(demo.mean(), abs=1e-12)
            assert aggregate["resamples"] == 1000 and aggregate["confidence"] == 0.95


def test_difference_from_the_reference_is_paired_seed_by_seed(results):
    seg = pd.read_csv(results / "t" / "segmentation.csv", dtype={"seed": str})
    for dataset in DATASETS:
        mine, theirs = runs(results, "mmc", dataset), runs(results, "init", dataset)
        rows = seg[(seg["model"] == "mmc") & (seg["dataset"] == dataset)].set_index("seed")
        diffs = [
            m[iou_column(ms["best_tau"])].to_numpy() - r[iou_column(rs["best_tau"])].to_numpy()
            for (ms, m), (rs, r) in zip(mine, theirs, strict=True)
        ]
        interval = mean_interval(np.mean(diffs, axis=0), resamples=1000, seed=3, confidence=0.95)
        aggregate = rows.loc["all"]
        assert aggregate["reference"] == "init" and aggregate["n_paired"] == len(diffs[0])
        assert aggregate["delta_best_miou"] == pytest.approx(interval.point, abs=1e-12)
        assert (aggregate["delta_best_miou_lo"], aggregate["delta_best_miou_hi"]) == pytest.approx((interval.lo, interval.hi))
        assert aggregate["delta_best_miou_seed_sd"] == pytest.approx(np.std([d.mean() for d in diffs], ddof=1))
        for seed, d in zip(SEEDS["mmc"], diffs, strict=True):
            alone = mean_interval(d, resamples=1000, seed=3, confidence=0.95)
            assert (rows.loc[str(seed), "delta_best_miou_lo"], rows.loc[str(seed), "delta_best_miou_hi"]) == pytest.approx(
                (alone.lo, alone.hi)
            )
    no_reference = seg[seg["model"] == "colour"]
    assert no_reference["delta_best_miou"].isna().all() and (no_reference["reference"].isna()).all()


def _cells(markdown: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row] for row in rows[2:]]


def test_markdown_shows_intervals_spread_and_bolds_only_a_clear_best(results):
    rows = _cells((results / "t" / "segmentation.md").read_text())
    assert [r[:3] for r in rows] == [["mmc", "3", "init"], ["init", "3", "-"], ["colour", "-", "-"]]
    number = r"-?\d+\.\d"
    one = rf"^{number} \[{number}, {number}\]$"
    seeded = rf"^{number} ± {number} \[{number}, {number}\]$"
    assert re.match(one, rows[2][3].strip("*")) and re.match(seeded, rows[0][3].strip("*"))
    assert re.match(r"^\+\d+\.\d ± \d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]$", rows[0][5])  # Δ vs init
    # colour is shifted far above the others: its best mIoU is bold, and nothing else is
    bold = [(r[0], i) for r in rows for i, c in enumerate(r) if c.startswith("**")]
    assert ("colour", 3) in bold and all(model == "colour" for model, _ in bold)
    tex = (results / "t" / "segmentation.tex").read_text()
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert [line.split("&")[0].strip() for line in body] == MODELS
    assert {line.count("&") for line in body} == {2 + 6 * len(DATASETS)}
    assert r"$\pm$" in tex and r"\textbf{" in tex and r"\begin{tabular}{lll" in tex
    sim = _cells((results / "t" / "similarity.md").read_text())
    assert re.match(r"^\d\.\d{3} ± \d\.\d{3}$", sim[0][2]) and not any("**" in c for r in sim for c in r)


def test_overlapping_intervals_are_not_bold(tmp_path):
    files = write_results(tmp_path, ["a", "b"], ["voc"], None, {"a": 0.0, "b": 0.005})
    make_tables(files["summaries"], files["similarity"], tmp_path / "t", ["a", "b"], ["voc"],
                objects=files["objects"], settings=SETTINGS)  # fmt: skip
    seg = pd.read_csv(tmp_path / "t" / "segmentation.csv")
    assert seg.loc[1, "best_miou"] > seg.loc[0, "best_miou"]  # b is higher...
    assert seg.loc[1, "best_miou_lo"] < seg.loc[0, "best_miou_hi"]  # ...within the noise
    assert not any("**" in c for r in _cells((tmp_path / "t" / "segmentation.md").read_text()) for c in r)


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({"model": "m", "dataset": "d"}))
    with pytest.raises(MMCError, match=r"summary\.json: missing key\(s\) n_objects, n_skipped, thresholds"):
        make_tables([bad], [], tmp_path / "t", objects=[])
    files = write_results(tmp_path, ["m", "r"], ["d"])
    with pytest.raises(MMCError, match="model 'm' on dataset 'd' also in"):
        make_tables(files["summaries"] * 2, files["similarity"], tmp_path / "t", objects=files["objects"])
    with pytest.raises(MMCError, match=r"no objects\.parquet for the summary of model 'm'"):
        make_tables(files["summaries"], files["similarity"], tmp_path / "t", objects=files["objects"][1:])
    frame = pd.read_parquet(files["objects"][0])
    frame.loc[0, "oracle_iou"] = 0.0  # no longer what the summary says
    frame.to_parquet(files["objects"][0])
    with pytest.raises(MMCError, match="the mean oracle_miou of its objects"):
        make_tables(files["summaries"], files["similarity"], tmp_path / "t", objects=files["objects"])
    files = write_results(tmp_path / "x", ["m"], ["d"])
    with pytest.raises(MMCError, match="its reference 'r' was not evaluated there"):
        make_tables(files["summaries"], files["similarity"], tmp_path / "t", objects=files["objects"], references={"m": "r"})
    assert not (tmp_path / "t").exists()


def test_cli(tmp_path):
    files = write_results(tmp_path, MODELS, DATASETS, SEEDS)
    random = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 32}
    cfg = write_config(
        tmp_path,
        {
            "run_name": "t",
            "results_dir": str(tmp_path),
            "seeds": [0, 1, 2],
            "tracking": {"enabled": False},
            "models": {
                "mmc": {"source": "random", "backbone": random, "reference": "init"},
                "init": {"source": "random", "backbone": random},
                "colour": {"source": "colour", "backbone": {"patch_size": 8}},
            },
            "datasets": {d: {"format": "voc", "root": str(tmp_path / d)} for d in DATASETS},
            "evaluation": {"datasets": DATASETS},
            "tables": {"resamples": 1000, "resample_seed": 3},
        },
    )
    cmd = [sys.executable, "-m", "mmc", "tables", "--config", str(cfg), "--summaries", *files["summaries"],
           "--objects", *files["objects"], "--similarity", *files["similarity"], "--out", str(tmp_path / "tables")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert written == sorted(f"{t}.{e}" for t in ("segmentation", "similarity") for e in ("csv", "md", "tex"))
    seg = pd.read_csv(tmp_path / "tables" / "segmentation.csv", dtype={"seed": str})
    mmc = seg[(seg["model"] == "mmc") & (seg["seed"] == "all")]
    assert set(mmc["reference"]) == {"init"} and mmc["delta_best_miou"].notna().all()
    assert set(seg["resamples"]) == {1000} and set(seg["resample_seed"]) == {3}
