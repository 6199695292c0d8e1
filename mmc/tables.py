"""``mmc tables``: the paper-style comparison tables, as CSV, Markdown and LaTeX.

Inputs are the per-(model, dataset) summaries of ``mmc segment`` (``summary.json``) and
``mmc similarity`` (``similarity.json``), read with :mod:`mmc.evaluation.summary`. Each table is
written three ways:

- ``<name>.csv``: tidy, one row per model and dataset, every number at full precision;
- ``<name>.md`` and ``<name>.tex``: one row per model, a column group per dataset, the best value
  of each column in bold (the highest, or the lowest where lower is better).

Tables: ``segmentation`` (mIoU at the best single threshold and that threshold, at the demo
threshold, and with the oracle per-object threshold) and ``similarity`` (mean intra- and
inter-object similarity, histogram overlap, best balanced accuracy).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmc.errors import MMCError
from mmc.evaluation.protocol import tau_key


@dataclass(frozen=True)
class Column:
    key: str  # a field of the summary files
    label: str
    percent: bool = False  # shown x100
    digits: int = 1
    better: str | None = "higher"  # "higher", "lower" or None (not ranked)

    def format(self, value: float) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value * 100 if self.percent else value:.{self.digits}f}"


SEGMENTATION_KEYS = (
    "n_objects",
    "n_skipped",
    "best_tau",
    "best_miou",
    "demo_tau",
    "miou_at_demo_tau",
    "oracle_miou",
    "checkpoint_sha256",
)
SIMILARITY_KEYS = (
    "n_intra",
    "n_inter",
    "mean_intra",
    "mean_inter",
    "overlap",
    "best_balanced_accuracy",
    "best_threshold",
    "checkpoint_sha256",
)


def segmentation_columns(demo_tau: float) -> list[Column]:
    return [
        Column("best_miou", "mIoU (best τ)", percent=True),
        Column("best_tau", "best τ", digits=2, better=None),
        Column("miou_at_demo_tau", f"mIoU (τ={tau_key(demo_tau)})", percent=True),
        Column("oracle_miou", "oracle mIoU", percent=True),
    ]


SIMILARITY_COLUMNS = [
    Column("mean_intra", "intra", digits=3, better=None),
    Column("mean_inter", "inter", digits=3, better=None),
    Column("overlap", "overlap ↓", digits=3, better="lower"),
    Column("best_balanced_accuracy", "bal. acc.", percent=True),
]


def tidy_frame(
    records: Sequence[Any], keys: Sequence[str], models: Sequence[str] = (), datasets: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per (model, dataset) of ``records`` (read with :mod:`mmc.evaluation.summary`, so no
    pair twice), columns ``keys``; ordered as in the config (unknown names after, sorted)."""
    frame = pd.DataFrame([{k: getattr(r, k) for k in ("model", "dataset", *keys)} for r in records])
    if frame.empty:
        return pd.DataFrame(columns=["model", "dataset", *keys])
    frame["model"] = pd.Categorical(frame["model"], _order(models, frame["model"]))
    frame["dataset"] = pd.Categorical(frame["dataset"], _order(datasets, frame["dataset"]))
    frame = frame.sort_values(["dataset", "model"]).reset_index(drop=True)
    return frame.astype({"model": str, "dataset": str})


def _order(preferred: Sequence[str], present: Iterable[str]) -> list[str]:
    present = set(present)
    return [n for n in preferred if n in present] + sorted(present - set(preferred))


def wide_cells(
    frame: pd.DataFrame, columns: Sequence[Column]
) -> tuple[list[str], list[str], list[list[tuple[str, bool]]]]:
    """Rows = models, column groups = datasets; each cell is (text, is_best_of_its_column)."""
    models = list(dict.fromkeys(frame["model"]))
    datasets = list(dict.fromkeys(frame["dataset"]))
    by_pair = {(r.model, r.dataset): r for r in frame.itertuples(index=False)}
    rows: list[list[tuple[str, bool]]] = [[] for _ in models]
    for dataset in datasets:
        for column in columns:
            values = [
                getattr(by_pair[(m, dataset)], column.key) if (m, dataset) in by_pair else None
                for m in models
            ]
            best = _best(values, column.better)
            for i, value in enumerate(values):
                rows[i].append((column.format(value), best is not None and value == best))
    return models, datasets, rows


def _best(values: list, better: str | None):
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if better is None or len(finite) < 2:
        return None
    return max(finite) if better == "higher" else min(finite)


def to_markdown(frame: pd.DataFrame, columns: Sequence[Column]) -> str:
    models, datasets, rows = wide_cells(frame, columns)
    header = ["model"] + [f"{d}: {c.label}" for d in datasets for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for model, cells in zip(models, rows, strict=True):
        texts = [f"**{t}**" if best else t for t, best in cells]
        lines.append("| " + " | ".join([model, *texts]) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$"}
    text = "".join(replacements.get(ch, ch) for ch in text)
    return text.replace("τ", r"$\tau$").replace("↓", r"$\downarrow$")


def to_latex(frame: pd.DataFrame, columns: Sequence[Column], caption: str, label: str) -> str:
    """A booktabs table: a header row of datasets over a row of metric names."""
    models, datasets, rows = wide_cells(frame, columns)
    n = len(columns)
    spec = "l" + "r" * (n * len(datasets))  # booktabs: no vertical rules
    groups = " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_latex_escape(d)}}}" for d in datasets)
    rules = " ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(datasets)))
    labels = " & ".join(_latex_escape(c.label) for _ in datasets for c in columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        rf" & {groups} \\",
        rules,
        rf"model & {labels} \\",
        r"\midrule",
    ]
    for model, cells in zip(models, rows, strict=True):
        texts = [rf"\textbf{{{t}}}" if best else t for t, best in cells]
        lines.append(" & ".join([_latex_escape(model), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    frame: pd.DataFrame, columns: Sequence[Column], out: Path, name: str, caption: str
) -> list[Path]:
    from mmc.files import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    write_text_atomic(paths[1], f"**{caption}**\n\n" + to_markdown(frame, columns))
    write_text_atomic(paths[2], to_latex(frame, columns, caption, f"tab:{name}"))
    return paths


def make_tables(
    summaries: Sequence[str | Path],
    similarity: Sequence[str | Path],
    out: Path,
    models: Sequence[str] = (),
    datasets: Sequence[str] = (),
) -> list[Path]:
    from mmc.evaluation.summary import read_segmentation_summaries, read_similarity_results

    seg = tidy_frame(read_segmentation_summaries(summaries), SEGMENTATION_KEYS, models, datasets)
    sim = tidy_frame(read_similarity_results(similarity), SIMILARITY_KEYS, models, datasets)
    demo = sorted(set(seg["demo_tau"])) if len(seg) else [0.9]
    if len(demo) > 1:
        raise MMCError(f"segment summaries disagree on the demo threshold: {demo}")
    seg_caption = "Zero-shot prompt-patch segmentation, mIoU (%)"
    sim_caption = "Prompt-token similarity to tokens of the same object (intra) and of others (inter)"
    return [
        *write_table(seg, segmentation_columns(float(demo[0])), out, "segmentation", seg_caption),
        *write_table(sim, SIMILARITY_COLUMNS, out, "similarity", sim_caption),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="the workflow's YAML config file (gives the row order)"
    )
    parser.add_argument("--summaries", nargs="+", required=True, help="summary.json files of mmc segment")
    parser.add_argument(
        "--similarity", nargs="+", required=True, help="similarity.json files of mmc similarity"
    )
    parser.add_argument("--out", required=True, help="directory for segmentation.* and similarity.*")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking
    from mmc.files import require_files

    cfg = config.load(args.config)
    require_files(args.summaries, "--summaries")
    require_files(args.similarity, "--similarity")
    with tracking.job("tables", cfg) as rec:
        for path in [*args.summaries, *args.similarity]:
            rec.consumed(path)
        paths = make_tables(
            args.summaries, args.similarity, Path(args.out), list(cfg.models), cfg.evaluation.datasets
        )
        for path in paths:
            rec.produced(path)
            rec.log_artifact(path)
    print("\n".join(map(str, paths)))
    return 0
