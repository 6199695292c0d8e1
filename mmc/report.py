"""``mmc report``: the pages of numbers that the Snakemake HTML report shows inline.

- ``summary.md``: the run and the config, the checkpoint selected for each experiment (file, sha256,
  reason), and the Markdown result tables;
- ``summary.html``: the same, with the tables as HTML, organised per dataset;
- ``tables_<dataset>.html``: one dataset's segmentation and similarity tables.

The HTML tables render every column of ``tables/*.csv`` (whatever columns ``mmc tables`` writes: the
intervals' bounds, the spread across seeds, the difference from the reference), one row per model
(its aggregate over seeds; per-seed rows too for a model with several seeds), numbers to four
significant digits, and in bold what the Markdown table bolds: the best of a ranked column when its
interval overlaps no other row's (docs/evaluation.md#intervals). The Snakemake report (``snakemake --report``) shows HTML results inline, where
CSV and Markdown would only be download links.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmc.errors import MMCError


def _seed(selection: dict) -> str:
    """The training seed of a selection record (docs/workflow.md#seeds); a dash in older records."""
    seed = selection.get("seed")
    return "–" if seed is None else str(int(seed))


def summary_markdown(cfg: Any, config_file: str, selections: Sequence[dict], tables: Sequence[str]) -> str:
    lines = [f"# {cfg.run_name}", "", f"Configuration: `{config_file}`.", ""]
    if selections:
        lines += [
            "## Selected checkpoints",
            "",
            "| experiment | seed | checkpoint | sha256 | reason |",
            "|---|---|---|---|---|",
        ]
        for s in selections:
            lines.append(
                f"| {s['experiment']} | {_seed(s)} | `{s['checkpoint']}` | `{s['sha256'][:12]}` | {s['reason']} |"
            )
        lines.append("")
    lines += ["## Results", ""]
    for table in tables:
        lines += [table.strip(), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML
STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #1d2330; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 24px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border-bottom: 1px solid #d9dce3; padding: 3px 9px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f2f6; font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
p.note { font-size: 13px; color: #4a5160; max-width: 60em; }
"""

TABLE_TITLES = {
    "segmentation": "Zero-shot prompt-patch segmentation",
    "similarity": "Prompt-token similarity: same object (intra) vs others (inter)",
}


def _escape(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def format_cell(value: Any) -> str:
    """A CSV value for the page: integers as such, other numbers to 4 significant digits, a sha256
    shortened to 12 characters, missing values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{float(value):.4g}"
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def ranked_columns(demo_tau: float = 0.9) -> dict[str, Any]:
    """CSV column -> its :class:`mmc.tables.Column`, for the columns whose best value may be bold (as in
    mmc tables: the highest, when its interval overlaps no other row's; docs/evaluation.md#intervals)."""
    from mmc.tables import SIMILARITY_COLUMNS, segmentation_columns

    return {c.key: c for c in [*segmentation_columns(demo_tau), *SIMILARITY_COLUMNS] if c.ranked}


def shown_rows(rows):
    """The rows of one dataset that the page shows: each model's aggregate row (``seed`` = all) and,
    for a model with several seeds, its per-seed rows; a table without a ``seed`` column whole."""
    from mmc.tables import ALL_SEEDS

    if "seed" not in rows.columns:
        return rows
    aggregate = rows["seed"].astype(str) == ALL_SEEDS
    if "n_seeds" not in rows.columns:
        return rows[aggregate]
    # a per-seed row has n_seeds 1: the model's aggregate row says how many seeds it has
    several = set(rows.loc[aggregate & (rows["n_seeds"].fillna(0).astype(int) > 1), "model"])
    return rows[aggregate | rows["model"].isin(several)]


def html_table(frame, dataset: str, ranked: dict[str, Any]) -> str:
    """One dataset's rows of a tidy table (``tables/*.csv``, :func:`shown_rows`): every other column."""
    from mmc.tables import ALL_SEEDS, bold_rows

    rows = frame[frame["dataset"] == dataset] if "dataset" in frame.columns else frame
    rows = shown_rows(rows)
    columns = [c for c in frame.columns if c not in ("dataset", "model")]
    records = rows.to_dict("records")
    # bold is decided among the aggregate rows, as in the Markdown and LaTeX tables
    compared = [i for i, r in enumerate(records) if "seed" not in r or str(r["seed"]) == ALL_SEEDS]
    bold = {
        key: {compared[j] for j in bold_rows([records[i] for i in compared], column)}
        for key, column in ranked.items()
        if key in columns
    }
    head = "".join(f"<th>{_escape(c)}</th>" for c in ["model", *columns])
    body = []
    for i, row in enumerate(records):
        cells = [f"<td>{_escape(row.get('model', ''))}</td>"]
        for column in columns:
            text = _escape(format_cell(row[column]))
            marked = i in bold.get(column, ())
            cells.append(f"<td><b>{text}</b></td>" if marked else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def dataset_section(tables: dict[str, Any], dataset: str, ranked: dict[str, str], level: int = 2) -> str:
    parts = [f"<h{level}>{_escape(dataset)}</h{level}>"]
    for name, frame in tables.items():
        parts.append(f"<h{level + 1}>{_escape(TABLE_TITLES.get(name, name))} (<code>{name}.csv</code>)</h{level + 1}>")
        parts.append(html_table(frame, dataset, ranked))
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def datasets_of(tables: dict[str, Any], preferred: Sequence[str]) -> list[str]:
    """Every dataset of ``preferred`` (the config's, in its order), then any other the tables have."""
    present = {str(d) for frame in tables.values() if "dataset" in frame.columns for d in frame["dataset"]}
    return [*preferred, *sorted(present - set(preferred))]


def summary_html(
    cfg: Any, config_file: str, selections: Sequence[dict], tables: dict[str, Any], datasets: Sequence[str]
) -> str:
    ranked = ranked_columns(float(cfg.evaluation.demo_threshold))
    body = [f"<h1>{_escape(cfg.run_name)}</h1>", f"<p>Configuration: <code>{_escape(config_file)}</code>.</p>"]
    if selections:
        body.append("<h2>Selected checkpoints</h2>")
        rows = "".join(
            f"<tr><td>{_escape(s['experiment'])}</td><td>{_seed(s)}</td><td><code>{_escape(s['checkpoint'])}</code></td>"
            f"<td><code>{_escape(s['sha256'][:12])}</code></td><td>{_escape(s['reason'])}</td></tr>"
            for s in selections
        )
        body.append(
            "<table><thead><tr><th>experiment</th><th>seed</th><th>checkpoint</th><th>sha256</th><th>reason</th></tr>"
            "</thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    body.append(
        '<p class="note">Every number below is a column of <code>tables/segmentation.csv</code> or '
        "<code>tables/similarity.csv</code> (four significant digits here; full precision there), "
        "the best of a ranked column in bold when its interval overlaps no other row's. Each dataset also "
        "has its figures and an interactive prompt explorer in the report's category of that name.</p>"
    )
    for dataset in datasets:
        body.append(dataset_section(tables, dataset, ranked))
    return html_page(f"{cfg.run_name}: summary", "\n".join(body))


def dataset_html(cfg: Any, tables: dict[str, Any], dataset: str) -> str:
    ranked = ranked_columns(float(cfg.evaluation.demo_threshold))
    note = (
        '<p class="note">One row per model (seed = all: the aggregate over its seeds), and per seed for a '
        "model with several; every column of the CSV tables (four significant digits; full precision in the "
        "CSV); the best of a ranked column in bold when its interval overlaps no other row's.</p>"
    )
    return html_page(f"{cfg.run_name}: {dataset}", dataset_section(tables, dataset, ranked, level=1) + note)


def read_tables(paths: Sequence[str]) -> dict[str, Any]:
    """``{name: DataFrame}`` of ``tables/<name>.csv`` files (sha256 columns kept as text)."""
    import pandas as pd

    tables = {}
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype={"checkpoint_sha256": str, "model": str, "dataset": str})
        except (OSError, ValueError) as e:
            raise MMCError(f"{path}: cannot read a result table ({e})") from None
        if "model" not in frame.columns:
            raise MMCError(f"{path}: no 'model' column: expected a table written by mmc tables")
        tables[Path(path).stem] = frame
    return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the workflow's YAML config file")
    parser.add_argument("--selections", nargs="*", default=[], help="JSON files of mmc select")
    parser.add_argument("--tables", nargs="+", required=True, help="Markdown tables of mmc tables")
    parser.add_argument("--csv", nargs="*", default=[], help="CSV tables of mmc tables (for the HTML pages)")
    parser.add_argument("--out", required=True, help="the Markdown summary to write")
    parser.add_argument(
        "--html-dir", help="where to write summary.html and tables_<dataset>.html (default: beside --out)"
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking
    from mmc.files import require_files, write_text_atomic

    cfg = config.load(args.config)
    require_files(args.selections, "--selections")
    require_files(args.tables, "--tables")
    with tracking.job("report", cfg) as rec:
        selections, tables = [], []
        for path in args.selections:
            try:
                selections.append(json.loads(Path(path).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise MMCError(f"{path}: cannot read a selection record ({e})") from None
            rec.consumed(path)
        for path in args.tables:
            tables.append(Path(path).read_text())
            rec.consumed(path)
        write_text_atomic(args.out, summary_markdown(cfg, args.config, selections, tables))
        rec.produced(args.out)
        frames = read_tables(args.csv)
        for path in args.csv:
            rec.consumed(path)
        html_dir = Path(args.html_dir) if args.html_dir else Path(args.out).parent
        datasets = datasets_of(frames, cfg.evaluation.datasets)
        pages = {html_dir / "summary.html": summary_html(cfg, args.config, selections, frames, datasets)}
        for dataset in datasets:
            pages[html_dir / f"tables_{dataset}.html"] = dataset_html(cfg, frames, dataset)
        for path, text in pages.items():
            write_text_atomic(path, text)
            rec.produced(path)
    print(args.out)
    return 0
