"""mmc tables: tidy CSV numbers equal the inputs; Markdown/LaTeX mark the right best values."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from result_files import write_results

from mmc.errors import MMCError
from mmc.tables import make_tables

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["mmc", "mmc_no_contrast", "random"]
DATASETS = ["voc", "coco"]


def test_csv_holds_every_number_in_config_order(tmp_path):
    files = write_results(tmp_path, MODELS[::-1], DATASETS)  # written in another order
    make_tables(files["summaries"], files["similarity"], tmp_path / "tables", MODELS, DATASETS)
    seg = pd.read_csv(tmp_path / "tables" / "segmentation.csv")
    assert list(zip(seg["dataset"], seg["model"], strict=True)) == [(d, m) for d in DATASETS for m in MODELS]
    for path in files["summaries"]:
        source = json.loads(Path(path).read_text())
        row = seg[(seg["model"] == source["model"]) & (seg["dataset"] == source["dataset"])].iloc[0]
        for key in ("best_miou", "best_tau", "miou_at_demo_tau", "oracle_miou", "n_objects", "n_skipped"):
            assert row[key] == pytest.approx(source[key], rel=1e-12)
    sim = pd.read_csv(tmp_path / "tables" / "similarity.csv")
    assert len(sim) == len(MODELS) * len(DATASETS)
    assert set(sim.columns) >= {"mean_intra", "mean_inter", "overlap", "best_balanced_accuracy"}


def _cells(markdown: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row] for row in rows[2:]]


def test_markdown_and_latex_bold_the_best(tmp_path):
    files = write_results(tmp_path, MODELS, DATASETS)
    make_tables(files["summaries"], files["similarity"], tmp_path / "t", MODELS, DATASETS)
    seg = pd.read_csv(tmp_path / "t" / "segmentation.csv")
    md = (tmp_path / "t" / "segmentation.md").read_text()
    rows = _cells(md)
    assert [r[0] for r in rows] == MODELS
    # Column 1 is voc's "mIoU (best τ)": the bold cell is the row of the highest best_miou on voc.
    voc = seg[seg["dataset"] == "voc"].set_index("model")["best_miou"]
    bold = [r[0] for r in rows if r[1].startswith("**")]
    assert bold == [voc.idxmax()]
    assert rows[MODELS.index("random")][1].strip("*") == f"{voc['random'] * 100:.1f}"
    # Overlap: lower is better.
    sim = pd.read_csv(tmp_path / "t" / "similarity.csv")
    sim_rows = _cells((tmp_path / "t" / "similarity.md").read_text())
    overlap_col = 3  # model, intra, inter, overlap
    voc_overlap = sim[sim["dataset"] == "voc"].set_index("model")["overlap"]
    assert [r[0] for r in sim_rows if r[overlap_col].startswith("**")] == [voc_overlap.idxmin()]
    # LaTeX: one row per model, every row with the same number of cells, one bold per ranked column.
    tex = (tmp_path / "t" / "segmentation.tex").read_text()
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert [line.split("&")[0].strip() for line in body] == [m.replace("_", r"\_") for m in MODELS]
    assert {line.count("&") for line in body} == {4 * len(DATASETS)}
    assert len(re.findall(r"\\textbf", tex)) == 3 * len(DATASETS)  # best τ is not ranked
    assert r"\begin{tabular}{lrrrrrrrr}" in tex


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({"model": "m", "dataset": "d"}))
    with pytest.raises(MMCError, match=r"summary\.json: missing key\(s\) n_objects, n_skipped, thresholds"):
        make_tables([bad], [], tmp_path / "t")
    bad.write_text("{not json")
    with pytest.raises(MMCError, match=r"summary\.json: cannot read the summary\.json of mmc segment"):
        make_tables([bad], [], tmp_path / "t")
    files = write_results(tmp_path, ["m"], ["d"])
    with pytest.raises(MMCError, match="model 'm' on dataset 'd' also in"):
        make_tables(files["summaries"] * 2, files["similarity"], tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_cli(tmp_path):
    files = write_results(tmp_path, MODELS, DATASETS)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "run_name": "t",
                "results_dir": str(tmp_path),
                "tracking": {"enabled": False},
                "models": {m: {"source": "random"} for m in MODELS},
                "datasets": {d: {"format": "voc", "root": str(tmp_path / d)} for d in DATASETS},
                "evaluation": {"datasets": DATASETS},
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "mmc",
        "tables",
        "--config",
        str(cfg),
        "--summaries",
        *files["summaries"],
        "--similarity",
        *files["similarity"],
        "--out",
        str(tmp_path / "tables"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert written == sorted(f"{t}.{e}" for t in ("segmentation", "similarity") for e in ("csv", "md", "tex"))
