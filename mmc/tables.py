"""``mmc tables``: the comparison tables, with their uncertainty, as CSV, Markdown and LaTeX.

Inputs are the evaluations of ``mmc segment`` (``summary.json`` and ``objects.parquet``) and
``mmc similarity`` (``similarity.json``), read with :mod:`mmc.evaluation.summary`: one per model,
dataset and, for a seeded model, training seed. docs/evaluation.md#intervals defines every number:

- an mIoU is a mean over objects; its interval is the percentile bootstrap over those objects
  (:mod:`mmc.evaluation.bootstrap`: ``tables.resamples`` draws, ``tables.resample_seed``,
  ``tables.confidence``). The mIoU "at the best τ" is at the τ that is best **on these same
  objects** (chosen once, then held fixed in the resamples: the interval does not include the
  choice of τ); the one at the demo τ involves no choice;
- a model with several seeds shows the mean over its seeds, their spread (the standard deviation
  across seeds) and the interval of the seed mean (each draw resamples the objects of every seed);
- Δ is the difference from the model's ``reference`` (``models.M.reference``) on the objects both
  evaluated, paired seed by seed (``mmc.config.reference_seed``) and resampled together;
- a value is bold when it is the best of its column and its interval overlaps no other row's
  interval in that column; columns without intervals (τ, Δ, the similarity table) are never bold.

Files: ``<name>.csv`` is tidy (one row per model, dataset and seed, plus one ``seed = all`` row per
model and dataset with the aggregate; docs/workflow.md#outputs lists its columns); ``<name>.md``
and ``<name>.tex`` show the aggregate rows, one row per model and a column group per dataset.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmc.errors import MMCError
from mmc.evaluation.protocol import iou_column, tau_key

ALL_SEEDS = "all"  # the `seed` of the aggregate rows of the CSV files
# Per-object measures with intervals: the summary field, and the objects.parquet column of each run.
MEASURES = ("best_miou", "miou_at_demo_tau", "oracle_miou")
DELTAS = ("best_miou", "miou_at_demo_tau")  # compared with the reference


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class Run:
    """One evaluation: its summary and, per object (``(image_id, object_id)`` index), the IoU of each
    measure in :data:`MEASURES`."""

    summary: Any  # SegmentationSummary
    per_object: pd.DataFrame

    @property
    def seed(self) -> int | None:
        return self.summary.seed


# ----------------------------------------------------------------------------- reading
def _objects_key(frame: pd.DataFrame, path: Any) -> tuple[str, str, int | None]:
    seeds = frame["seed"].dropna().unique() if "seed" in frame.columns else []
    if len(set(frame["model"])) != 1 or len(set(frame["dataset"])) != 1 or len(seeds) > 1:
        raise MMCError(f"{path}: expected the objects of one model, dataset and seed")
    return str(frame["model"].iloc[0]), str(frame["dataset"].iloc[0]), int(seeds[0]) if len(seeds) else None


def _per_object(summary: Any, frame: pd.DataFrame, path: Any) -> pd.DataFrame:
    """The per-object IoUs behind the summary's three mIoUs, checked against the summary."""
    index = pd.MultiIndex.from_arrays([frame["image_id"].astype(str), frame["object_id"].astype(int)])
    columns = {"best_miou": summary.best_tau, "miou_at_demo_tau": summary.demo_tau}
    values = {}
    for measure, tau in columns.items():
        column = iou_column(tau)
        if column not in frame.columns:
            raise MMCError(f"{path}: no column {column} (the {measure} of its summary.json)")
        values[measure] = frame[column].to_numpy(float)
    values["oracle_miou"] = frame["oracle_iou"].to_numpy(float)
    table = pd.DataFrame(values, index=index)
    if table.index.duplicated().any():
        raise MMCError(f"{path}: an object appears twice")
    for measure in MEASURES:
        expected = getattr(summary, measure)
        if expected is None or not math.isclose(table[measure].mean(), expected, rel_tol=1e-9, abs_tol=1e-12):
            raise MMCError(
                f"{path}: the mean {measure} of its objects, {table[measure].mean():.6f}, is not the "
                f"{expected} of the summary.json of {summary.model} on {summary.dataset}: expected the files "
                "of one mmc segment run"
            )
    return table


def read_runs(summaries: Sequence[str | Path], objects: Sequence[str | Path]) -> list[Run]:
    """Every evaluation, its summary joined with its ``objects.parquet`` (matched by model, dataset
    and seed); an evaluation without objects has none."""
    from mmc.evaluation.summary import read_segmentation_summaries

    frames: dict[tuple[str, str, int | None], tuple[pd.DataFrame, Any]] = {}
    for path in objects:
        frame = pd.read_parquet(path)
        if frame.empty:
            continue
        key = _objects_key(frame, path)
        if key in frames:
            raise MMCError(f"{path}: the objects of {key} also in {frames[key][1]}")
        frames[key] = (frame, path)
    runs = []
    for summary in read_segmentation_summaries(summaries):
        key = (summary.model, summary.dataset, summary.seed)
        if summary.n_objects == 0:
            empty = pd.DataFrame({m: pd.Series(dtype=float) for m in MEASURES})
            runs.append(Run(summary, empty))
            continue
        if key not in frames:
            raise MMCError(f"no objects.parquet for the summary of model {key[0]!r} on {key[1]!r} (seed {key[2]})")
        frame, path = frames[key]
        runs.append(Run(summary, _per_object(summary, frame, path)))
    return runs


# ----------------------------------------------------------------------------- statistics
def _seed_spread(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _interval_columns(name: str, values: pd.DataFrame | None, per_seed: Sequence[float], settings) -> dict:
    """``name``, ``name_lo``, ``name_hi``, ``name_seed_sd`` from per-object values (objects x seeds)."""
    from mmc.evaluation.bootstrap import mean_interval

    nan = float("nan")
    if values is None or values.empty:
        return {name: nan, f"{name}_lo": nan, f"{name}_hi": nan, f"{name}_seed_sd": nan}
    interval = mean_interval(
        values.mean(axis=1).to_numpy(), resamples=settings.resamples, seed=settings.seed, confidence=settings.confidence
    )
    return {
        name: interval.point,
        f"{name}_lo": interval.lo,
        f"{name}_hi": interval.hi,
        f"{name}_seed_sd": _seed_spread(per_seed),
    }


def _common(frames: Sequence[pd.Series]) -> pd.DataFrame:
    """Per-object values of several seeds (or pairs) side by side, on the objects all of them have."""
    return pd.concat(list(frames), axis=1, join="inner")


def _delta_pairs(model_runs: Sequence[Run], reference_runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    from mmc.config import reference_seed

    by_seed = {r.seed: r for r in reference_runs}
    seeds = None if list(by_seed) == [None] else tuple(s for s in by_seed if s is not None)
    pairs = []
    for run in model_runs:
        try:
            pairs.append((run, by_seed[reference_seed(seeds, run.seed)]))
        except KeyError:
            raise MMCError(
                f"model {run.summary.model!r} (seed {run.seed}) has no evaluation of its reference "
                f"{reference_runs[0].summary.model!r} to pair with (its seeds: {sorted(by_seed, key=str)})"
            ) from None
    return pairs


def segmentation_rows(
    runs: Sequence[Run],
    references: Mapping[str, str | None],
    settings: BootstrapSettings,
    models: Sequence[str] = (),
    datasets: Sequence[str] = (),
) -> pd.DataFrame:
    """The tidy segmentation table: per model and dataset, an aggregate row (``seed = all``) then one
    row per seed of a seeded model."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.summary.model, run.summary.dataset), []).append(run)
    model_order = _order(models, {m for m, _ in groups})
    dataset_order = _order(datasets, {d for _, d in groups})
    rows = []
    for dataset in dataset_order:
        for model in model_order:
            group = sorted(groups.get((model, dataset), []), key=lambda r: (r.seed is None, r.seed))
            if not group:
                continue
            reference = references.get(model)
            ref_runs = groups.get((reference, dataset), []) if reference else []
            if reference and not ref_runs:
                raise MMCError(f"model {model!r} on {dataset!r}: its reference {reference!r} was not evaluated there")
            pairs = _delta_pairs(group, ref_runs) if reference else []
            seeded = group[0].seed is not None
            subsets = [(ALL_SEEDS, group, pairs)]
            if seeded:
                subsets += [(r.seed, [r], [p for p in pairs if p[0] is r]) for r in group]
            for seed, chosen, chosen_pairs in subsets:
                rows.append(_row(model, dataset, seed, chosen, chosen_pairs, reference, seeded, settings))
    return pd.DataFrame(rows, columns=SEGMENTATION_COLUMNS)


def _row(model, dataset, seed, chosen: Sequence[Run], pairs, reference, seeded: bool, settings) -> dict:
    first = chosen[0].summary
    taus = sorted({r.summary.best_tau for r in chosen if r.summary.best_tau is not None})
    row: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "n_seeds": len(chosen) if seeded else 0,
        "reference": reference or "",
        "n_objects": len(_common([r.per_object["best_miou"] for r in chosen])),
        "n_skipped": int(first.n_skipped),
        "best_tau": taus[0] if len(taus) == 1 else float("nan"),
        "best_tau_min": taus[0] if taus else float("nan"),
        "best_tau_max": taus[-1] if taus else float("nan"),
        "demo_tau": float(first.demo_tau),
    }
    for measure in MEASURES:
        values = _common([r.per_object[measure] for r in chosen])
        per_seed = [getattr(r.summary, measure) for r in chosen if getattr(r.summary, measure) is not None]
        row.update(_interval_columns(measure, values, per_seed, settings))
    row["n_paired"] = 0
    for measure in DELTAS:
        name = f"delta_{measure}"
        if not pairs:
            row.update(_interval_columns(name, None, [], settings))
            continue
        diffs = _common([m.per_object[measure] - r.per_object[measure] for m, r in pairs]).dropna()
        per_pair = [float((m.per_object[measure] - r.per_object[measure]).dropna().mean()) for m, r in pairs]
        row.update(_interval_columns(name, diffs, per_pair, settings))
        row["n_paired"] = len(diffs)
    row["checkpoint_sha256"] = " ".join(r.summary.checkpoint_sha256 or "-" for r in chosen)
    row.update(resamples=settings.resamples, resample_seed=settings.seed, confidence=settings.confidence)
    return row


def _with_interval(name: str) -> list[str]:
    return [name, f"{name}_lo", f"{name}_hi", f"{name}_seed_sd"]


SEGMENTATION_COLUMNS = [
    "model", "dataset", "seed", "n_seeds", "reference", "n_objects", "n_skipped",
    "best_tau", "best_tau_min", "best_tau_max", "demo_tau",
    *[c for m in MEASURES for c in _with_interval(m)],
    "n_paired", *[c for m in DELTAS for c in _with_interval(f"delta_{m}")],
    "checkpoint_sha256", "resamples", "resample_seed", "confidence",
]  # fmt: skip

SIMILARITY_MEASURES = ("mean_intra", "mean_inter", "overlap", "best_balanced_accuracy", "best_threshold")


def similarity_rows(records: Sequence[Any], models: Sequence[str] = (), datasets: Sequence[str] = ()) -> pd.DataFrame:
    """The tidy similarity table: per model and dataset an aggregate row (the mean over seeds and the
    standard deviation across seeds, ``_seed_sd``) then one row per seed of a seeded model."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for record in records:
        groups.setdefault((record.model, record.dataset), []).append(record)
    rows = []
    for dataset in _order(datasets, {d for _, d in groups}):
        for model in _order(models, {m for m, _ in groups}):
            group = sorted(groups.get((model, dataset), []), key=lambda r: (r.seed is None, r.seed))
            if not group:
                continue
            seeded = group[0].seed is not None
            subsets = [(ALL_SEEDS, group)] + ([(r.seed, [r]) for r in group] if seeded else [])
            for seed, chosen in subsets:
                row: dict[str, Any] = {"model": model, "dataset": dataset, "seed": seed, "n_seeds": len(chosen) if seeded else 0}
                row["n_intra"] = int(sum(r.n_intra for r in chosen))
                row["n_inter"] = int(sum(r.n_inter for r in chosen))
                for measure in SIMILARITY_MEASURES:
                    values = [float(getattr(r, measure)) for r in chosen]
                    row[measure] = float(np.mean(values))
                    row[f"{measure}_seed_sd"] = _seed_spread(values)
                row["checkpoint_sha256"] = " ".join(r.checkpoint_sha256 or "-" for r in chosen)
                rows.append(row)
    columns = ["model", "dataset", "seed", "n_seeds", "n_intra", "n_inter"]
    columns += [c for m in SIMILARITY_MEASURES for c in (m, f"{m}_seed_sd")] + ["checkpoint_sha256"]
    return pd.DataFrame(rows, columns=columns)


def _order(preferred: Sequence[str], present: Iterable[str]) -> list[str]:
    present = set(present)
    return [n for n in preferred if n in present] + sorted(present - set(preferred))


# ----------------------------------------------------------------------------- presentation
@dataclass(frozen=True)
class Column:
    key: str  # a column of the tidy frame
    label: str
    percent: bool = False  # shown x100
    digits: int = 1
    interval: bool = False  # the frame has key_lo / key_hi; any column may have key_seed_sd
    signed: bool = False  # a difference: shown with its sign
    ranked: bool = False  # bold the best (highest) when its interval overlaps no other

    def value(self, row: Mapping, suffix: str = "") -> float:
        value = row.get(self.key + suffix)
        return float("nan") if value is None else float(value)


def _number(value: float, column: Column) -> str:
    if math.isnan(value):
        return "-"
    value = value * 100 if column.percent else value
    return f"{value:+.{column.digits}f}" if column.signed else f"{value:.{column.digits}f}"


def cell(row: Mapping, column: Column) -> str:
    """``41.9 [40.1, 43.6]``; with several seeds ``41.9 ± 0.8 [40.1, 43.6]`` (± the spread across
    seeds); best τ as ``0.65`` or, when seeds disagree, ``0.60-0.70``."""
    point = column.value(row)
    if column.key == "best_tau" and math.isnan(point):
        low, high = column.value(row, "_min"), column.value(row, "_max")
        return "-" if math.isnan(low) else f"{_number(low, column)}-{_number(high, column)}"
    text = _number(point, column)
    if text == "-":
        return text
    spread = column.value(row, "_seed_sd")
    if not math.isnan(spread):
        text += f" ± {_number(spread, Column(column.key, '', column.percent, column.digits))}"
    if not column.interval:
        return text
    return f"{text} [{_number(column.value(row, '_lo'), column)}, {_number(column.value(row, '_hi'), column)}]"


def bold_rows(rows: Sequence[Mapping], column: Column) -> set[int]:
    """The row to bold in ``column``: the highest value, when its interval overlaps no other row's."""
    if not column.ranked:
        return set()
    finite = [i for i, r in enumerate(rows) if not math.isnan(column.value(r))]
    if len(finite) < 2:
        return set()
    best = max(finite, key=lambda i: column.value(rows[i]))
    low = column.value(rows[best], "_lo")
    if all(low > column.value(rows[i], "_hi") for i in finite if i != best):
        return {best}
    return set()


def segmentation_columns(demo_tau: float) -> list[Column]:
    demo = tau_key(demo_tau)
    return [
        Column("best_miou", "mIoU (best τ)", percent=True, interval=True, ranked=True),
        Column("best_tau", "best τ", digits=2),
        Column("delta_best_miou", "Δ ref. (best τ)", percent=True, interval=True, signed=True),
        Column("miou_at_demo_tau", f"mIoU (τ={demo})", percent=True, interval=True, ranked=True),
        Column("delta_miou_at_demo_tau", f"Δ ref. (τ={demo})", percent=True, interval=True, signed=True),
        Column("oracle_miou", "oracle mIoU", percent=True, interval=True, ranked=True),
    ]


SIMILARITY_COLUMNS = [
    Column("mean_intra", "intra", digits=3),
    Column("mean_inter", "inter", digits=3),
    Column("overlap", "overlap ↓", digits=3),
    Column("best_balanced_accuracy", "bal. acc.", percent=True),
]


def wide_cells(
    frame: pd.DataFrame, columns: Sequence[Column], row_columns: Sequence[tuple[str, str]] = ()
) -> tuple[list[str], list[str], list[list[tuple[str, bool]]]]:
    """The aggregate rows (``seed = all``) as rows = models, column groups = datasets: the row-level
    cells (``row_columns``: (key, label)) first, then each cell (text, bold) per dataset and column.
    Only the interval columns carry ``_lo``/``_hi``; a column without them shows its value alone."""
    aggregate = frame[frame["seed"].astype(str) == ALL_SEEDS]
    models = list(dict.fromkeys(aggregate["model"]))
    datasets = list(dict.fromkeys(aggregate["dataset"]))
    by_pair = {(r["model"], r["dataset"]): r for r in aggregate.to_dict("records")}
    rows: list[list[tuple[str, bool]]] = [[] for _ in models]
    for i, model in enumerate(models):
        first = next(r for (m, _), r in by_pair.items() if m == model)
        for key, _ in row_columns:
            value = first.get(key)
            missing = value in (None, "", 0) or (isinstance(value, float) and math.isnan(value))
            text = "-" if missing else str(value)  # n_seeds 0: a model evaluated without a seed
            rows[i].append((text, False))
    for dataset in datasets:
        for column in columns:
            present = [by_pair.get((m, dataset)) for m in models]
            cells = [r if r is not None else {} for r in present]
            bold = bold_rows(cells, column)
            for i, row in enumerate(cells):
                rows[i].append((cell(row, column) if row else "-", i in bold))
    return models, datasets, rows


def to_markdown(frame: pd.DataFrame, columns: Sequence[Column], row_columns=()) -> str:
    models, datasets, rows = wide_cells(frame, columns, row_columns)
    header = ["model", *(label for _, label in row_columns)] + [f"{d}: {c.label}" for d in datasets for c in columns]
    align = [":---"] * (1 + len(row_columns)) + ["---:"] * (len(header) - 1 - len(row_columns))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for model, cells in zip(models, rows, strict=True):
        texts = [f"**{t}**" if best else t for t, best in cells]
        lines.append("| " + " | ".join([model, *texts]) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$"}
    text = "".join(replacements.get(ch, ch) for ch in text)
    for symbol, latex in (("τ", r"$\tau$"), ("↓", r"$\downarrow$"), ("Δ", r"$\Delta$"), ("±", r"$\pm$")):
        text = text.replace(symbol, latex)
    return text


def to_latex(frame: pd.DataFrame, columns: Sequence[Column], caption: str, label: str, row_columns=()) -> str:
    """A booktabs table: a header row of datasets over a row of metric names."""
    models, datasets, rows = wide_cells(frame, columns, row_columns)
    n, lead = len(columns), 1 + len(row_columns)
    spec = "l" * lead + "r" * (n * len(datasets))  # booktabs: no vertical rules
    groups = " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_latex_escape(d)}}}" for d in datasets)
    rules = " ".join(rf"\cmidrule(lr){{{lead + 1 + i * n}-{lead + (i + 1) * n}}}" for i in range(len(datasets)))
    labels = " & ".join(_latex_escape(c.label) for _ in datasets for c in columns)
    heads = " & ".join(["model", *(_latex_escape(label) for _, label in row_columns)])
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        rf"{' & ' * len(row_columns)} & {groups} \\",
        rules,
        rf"{heads} & {labels} \\",
        r"\midrule",
    ]
    for model, cells in zip(models, rows, strict=True):
        texts = [rf"\textbf{{{_latex_escape(t)}}}" if best else _latex_escape(t) for t, best in cells]
        lines.append(" & ".join([_latex_escape(model), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    frame: pd.DataFrame, columns: Sequence[Column], out: Path, name: str, caption: str, row_columns=()
) -> list[Path]:
    from mmc.files import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    write_text_atomic(paths[0], frame.to_csv(index=False))
    write_text_atomic(paths[1], f"**{caption}**\n\n" + to_markdown(frame, columns, row_columns))
    write_text_atomic(paths[2], to_latex(frame, columns, caption, f"tab:{name}", row_columns))
    return paths


SEGMENTATION_ROW_COLUMNS = [("n_seeds", "seeds"), ("reference", "reference")]


def make_tables(
    summaries: Sequence[str | Path],
    similarity: Sequence[str | Path],
    out: Path,
    models: Sequence[str] = (),
    datasets: Sequence[str] = (),
    *,
    objects: Sequence[str | Path],
    references: Mapping[str, str | None] | None = None,
    settings: BootstrapSettings = BootstrapSettings(),
) -> list[Path]:
    from mmc.evaluation.summary import read_similarity_results

    runs = read_runs(summaries, objects)
    seg = segmentation_rows(runs, references or {}, settings, models, datasets)
    sim = similarity_rows(read_similarity_results(similarity), models, datasets)
    demo = sorted({r.summary.demo_tau for r in runs}) or [0.9]
    if len(demo) > 1:
        raise MMCError(f"segment summaries disagree on the demo threshold: {demo}")
    level = f"{settings.confidence * 100:g} %"
    seg_caption = (
        f"Zero-shot prompt-patch segmentation, mIoU (%) [{level} bootstrap interval over objects, "
        f"{settings.resamples} resamples]; with several seeds, the mean ± the standard deviation across "
        "seeds; Δ ref.: difference from the model's reference on the same objects; bold: the best, when "
        "its interval overlaps no other"
    )
    sim_caption = (
        "Prompt-token similarity to tokens of the same object (intra) and of others (inter); with several "
        "seeds, the mean ± the standard deviation across seeds"
    )
    return [
        *write_table(seg, segmentation_columns(float(demo[0])), out, "segmentation", seg_caption, SEGMENTATION_ROW_COLUMNS),
        *write_table(sim, SIMILARITY_COLUMNS, out, "similarity", sim_caption, [("n_seeds", "seeds")]),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="the workflow's YAML config file (row order, references, bootstrap)"
    )
    parser.add_argument("--summaries", nargs="+", required=True, help="summary.json files of mmc segment")
    parser.add_argument("--objects", nargs="+", required=True, help="objects.parquet files of mmc segment")
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
    require_files(args.objects, "--objects")
    settings = BootstrapSettings(cfg.tables.resamples, cfg.tables.resample_seed, cfg.tables.confidence)
    references = {name: model.reference for name, model in cfg.models.items()}
    with tracking.job("tables", cfg) as rec:
        for path in [*args.summaries, *args.objects, *args.similarity]:
            rec.consumed(path)
        paths = make_tables(
            args.summaries, args.similarity, Path(args.out), list(cfg.models), cfg.evaluation.datasets,
            objects=args.objects, references=references, settings=settings,
        )  # fmt: skip
        for path in paths:
            rec.produced(path)
            rec.log_artifact(path)
    print("\n".join(map(str, paths)))
    return 0
