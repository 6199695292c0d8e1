"""The report's HTML tables (mmc.report): the CSV's rows and columns, bold as in the Markdown tables."""

from __future__ import annotations

import re

import pandas as pd

from mmc.report import format_cell, html_table, ranked_columns, summary_markdown


def table(rows: list[dict]) -> pd.DataFrame:
    base = {"dataset": "d", "n_seeds": 0, "best_miou_seed_sd": float("nan")}
    return pd.DataFrame([{**base, **row} for row in rows])


def bold_cells(html: str) -> list[str]:
    return re.findall(r"<td><b>([^<]*)</b></td>", html)


def row_models(html: str) -> list[str]:
    return re.findall(r"<tr><td>([^<]*)</td>", html)


def test_bold_only_when_the_best_interval_overlaps_no_other():
    ranked = ranked_columns(0.9)
    assert "best_miou" in ranked and "best_tau" not in ranked and "overlap" not in ranked
    apart = table([
        {"model": "a", "seed": "all", "best_miou": 0.60, "best_miou_lo": 0.55, "best_miou_hi": 0.65},
        {"model": "b", "seed": "all", "best_miou": 0.40, "best_miou_lo": 0.35, "best_miou_hi": 0.45},
    ])  # fmt: skip
    assert bold_cells(html_table(apart, "d", ranked)) == [format_cell(0.60)]
    overlapping = apart.assign(best_miou_hi=[0.65, 0.58])  # b's interval reaches a's
    assert bold_cells(html_table(overlapping, "d", ranked)) == []


def test_aggregate_rows_and_the_seeds_of_models_with_several():
    # as mmc tables writes them: a per-seed row has n_seeds 1, its model's aggregate row the count
    frame = table([
        {"model": "one", "seed": "all", "n_seeds": 1, "best_miou": 0.5, "best_miou_lo": 0.4, "best_miou_hi": 0.6},
        {"model": "one", "seed": "0", "n_seeds": 1, "best_miou": 0.5, "best_miou_lo": 0.4, "best_miou_hi": 0.6},
        {"model": "two", "seed": "all", "n_seeds": 2, "best_miou": 0.9, "best_miou_lo": 0.85, "best_miou_hi": 0.95},
        {"model": "two", "seed": "0", "n_seeds": 1, "best_miou": 0.8, "best_miou_lo": 0.7, "best_miou_hi": 0.9},
        {"model": "two", "seed": "1", "n_seeds": 1, "best_miou": 1.0, "best_miou_lo": 0.9, "best_miou_hi": 1.0},
        {"model": "floor", "seed": "all", "best_miou": 0.2, "best_miou_lo": 0.1, "best_miou_hi": 0.3},
    ])  # fmt: skip
    html = html_table(frame, "d", ranked_columns(0.9))
    assert row_models(html) == ["one", "two", "two", "two", "floor"]
    # bold is decided among the aggregate rows: two's seed 1 (1.0) is not compared
    assert bold_cells(html) == [format_cell(0.9)]


def test_the_summary_lists_the_seed_of_each_selection(tmp_path):
    class Cfg:
        run_name = "r"

    selection = {"experiment": "mmc", "seed": 2, "checkpoint": "c.pth", "sha256": "0" * 64, "reason": "last"}
    text = summary_markdown(Cfg(), "c.yaml", [selection, {**selection, "seed": None}], [])
    assert "| mmc | 2 | `c.pth` |" in text and "| mmc | – | `c.pth` |" in text
