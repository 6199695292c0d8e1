"""``mmc figures``: the paper-style figures, one of each kind per evaluation dataset.

- ``miou_vs_threshold_<dataset>.{png,svg}``: mIoU against the threshold tau, one curve per model,
  its best tau marked and its oracle mIoU as a dashed line of the same colour;
- ``similarity_histograms_<dataset>.{png,svg}``: intra- vs inter-object similarity distributions,
  one panel per model;
- ``qualitative_<dataset>.png``: a few images, one row per model: each object's predicted mask at
  the model's best tau (filled), its ground truth (outlined), its prompt point and its IoU.

Curves and histograms are drawn from the files of ``mmc segment`` and ``mmc similarity``. The
qualitative figure recomputes the similarity maps of its few images with the evaluation's own
feature code (``mmc.features``), so its masks are the ones the metrics scored. Matplotlib runs
headless (Agg).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmc.errors import MMCError

QUALITATIVE_IMAGES = 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "mmc"  # stable SVG ids: same data, same bytes
    import matplotlib.pyplot as plt

    return plt


def _save(fig, base: Path, formats: Sequence[str]) -> list[Path]:
    from mmc.files import atomic_path

    paths = []
    for ext in formats:
        path = base.with_name(f"{base.name}.{ext}")
        with atomic_path(path) as tmp:
            # Fixed metadata: the same data gives byte-identical files (reproducible reruns).
            meta = {"Software": None} if ext == "png" else {"Date": None, "Creator": None}
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight", metadata=meta)
        paths.append(path)
    _pyplot().close(fig)
    return paths


def threshold_curve(summary: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tau, mIoU) sorted by tau, from a summary's ``miou_by_tau`` ({"0.00": x, ...})."""
    points = sorted((float(t), float(v)) for t, v in summary["miou_by_tau"].items())
    taus, mious = zip(*points, strict=True) if points else ((), ())
    return np.asarray(taus), np.asarray(mious)


def plot_miou_vs_threshold(summaries: Sequence[dict], dataset: str, base: Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, summary in enumerate(summaries):
        colour = f"C{i % 10}"
        taus, mious = threshold_curve(summary)
        ax.plot(taus, mious * 100, color=colour, marker=".", label=summary["model"])
        ax.plot([summary["best_tau"]], [summary["best_miou"] * 100], color=colour, marker="*", markersize=12)
        ax.axhline(summary["oracle_miou"] * 100, color=colour, linestyle="--", linewidth=0.8)
    ax.set_xlabel("threshold τ")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{dataset}: mIoU vs threshold (★ best τ, dashed: oracle)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, base, ("png", "svg"))


def bin_edges(result: dict) -> np.ndarray:
    """Histogram edges: ``bins`` is either the edges themselves or a bin count on [-1, 1]."""
    bins = result["bins"]
    if isinstance(bins, int):
        return np.linspace(-1.0, 1.0, bins + 1)
    edges = np.asarray(bins, dtype=float)
    if len(edges) == len(result["hist_intra"]):  # bin centres or left edges: close the last bin
        step = edges[1] - edges[0] if len(edges) > 1 else 2.0
        edges = np.append(edges, edges[-1] + step)
    return edges


def normalised(hist: Sequence[float]) -> np.ndarray:
    hist = np.asarray(hist, dtype=float)
    total = hist.sum()
    return hist / total if total > 0 else hist


def plot_similarity_histograms(results: Sequence[dict], dataset: str, base: Path) -> list[Path]:
    plt = _pyplot()
    n = max(len(results), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), sharey=True, squeeze=False, layout="constrained")
    for ax, result in zip(axes[0], results, strict=False):
        edges = bin_edges(result)
        for key, label, colour in (("hist_intra", "intra", "C0"), ("hist_inter", "inter", "C3")):
            ax.stairs(normalised(result[key]), edges, fill=True, alpha=0.45, color=colour, label=label)
        ax.set_title(f"{result['model']}\noverlap {result['overlap']:.3f}", fontsize="medium")
        ax.set_xlabel("cosine similarity to the prompt")
        ax.set_xlim(-1, 1)
    axes[0][0].set_ylabel("fraction of token pairs")
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{dataset}: intra- vs inter-object similarity")
    return _save(fig, base, ("png", "svg"))


def plot_qualitative(
    samples: Sequence[Any],
    objects_by_model: dict[str, Any],
    best_tau: dict[str, float],
    dataset: str,
    base: Path,
    predicted: dict[str, dict[tuple[str, int], np.ndarray]] | None = None,
) -> list[Path]:
    """Rows: models; columns: ``samples`` (mmc.data.readers.Sample).

    ``predicted[model][(image_id, object_id)]`` is an object's predicted mask (bool, label size).
    """
    predicted = predicted or {}
    plt = _pyplot()
    models = list(objects_by_model)
    rows, cols = max(len(models), 1), max(len(samples), 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.8 * cols, 2.8 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, model in enumerate(models):
        frame = objects_by_model[model]
        iou_column = f"iou_{best_tau[model]:.2f}"
        for c, sample in enumerate(samples):
            ax = axes[r][c]
            ax.imshow(sample.image)
            rows_of_image = frame[frame["image_id"].astype(str) == str(sample.image_id)]
            for k, obj in enumerate(sample.objects):
                colour = f"C{k % 10}"
                mask = predicted.get(model, {}).get((str(sample.image_id), obj.object_id))
                if mask is not None:
                    ax.imshow(
                        np.ma.masked_where(~mask, mask), cmap=_solid(colour), alpha=0.45, vmin=0, vmax=1
                    )
                ax.contour(obj.mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
                match = rows_of_image[rows_of_image["object_id"] == obj.object_id]
                if match.empty:
                    continue  # skipped as too small
                row = match.iloc[0]
                ax.plot(row["prompt_x"], row["prompt_y"], marker="x", color="white", markersize=8, mew=2.5)
                ax.plot(row["prompt_x"], row["prompt_y"], marker="x", color=colour, markersize=7, mew=1.5)
                if iou_column in row.index:
                    ax.annotate(
                        f"{row[iou_column]:.2f}",
                        (row["prompt_x"], row["prompt_y"]),
                        xytext=(4, 4),
                        textcoords="offset points",
                        color="white",
                        fontsize=7,
                        bbox={"boxstyle": "round,pad=0.1", "fc": colour, "alpha": 0.8, "lw": 0},
                    )
            if c == 0:
                ax.set_title(f"{model} (τ={best_tau[model]:.2f})", fontsize="small", loc="left")
    fig.suptitle(
        f"{dataset}: predicted masks at the best τ (filled), ground truth (outlined), prompts (×), IoU"
    )
    return _save(fig, base, ("png",))


def _solid(colour: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([colour, colour])


def predicted_masks(cfg: Any, model_name: str, checkpoint: str | None, samples, frame, tau: float) -> dict:
    """Each evaluated object's mask at threshold ``tau``, computed as the evaluation computes it."""
    import torch

    from mmc import metrics
    from mmc.features import eval_size, patch_features, preprocess, resolve_device
    from mmc.models import model_for, pos_embed_for

    ev = cfg.evaluation
    device = resolve_device(cfg.device)
    loaded = model_for(cfg, model_name, checkpoint)
    model = loaded.model.to(device).eval()
    patch = loaded.arch.patch_size
    pos_embed = pos_embed_for(loaded, ev.pos_embed_resize)
    masks = {}
    for sample in samples:
        rows = frame[frame["image_id"].astype(str) == str(sample.image_id)]
        if rows.empty:
            continue
        size = eval_size(*sample.image.shape[:2], ev.resolution, patch, ev.keep_aspect)
        with torch.inference_mode():
            x = preprocess(sample.image, size)[None].to(device)
            features = patch_features(model, x, ev.layer, pos_embed=pos_embed)[0]
        features = features.cpu().numpy()
        shape = sample.void.shape
        for row in rows.itertuples(index=False):
            sims = features @ features[int(row.prompt_row), int(row.prompt_col)]
            if ev.upsample == "bilinear":
                mask = metrics.upsample_bilinear(sims, shape) >= tau
            else:
                mask = metrics.upsample_nearest(sims >= tau, shape)
            masks[(str(row.image_id), int(row.object_id))] = np.asarray(mask, dtype=bool)
    return masks


def qualitative_samples(dataset_cfg: Any, image_ids: set[str], count: int) -> list[Any]:
    """The first ``count`` samples of the dataset that were evaluated (appear in ``image_ids``)."""
    from mmc.data.readers import open_reader

    chosen = []
    for sample in open_reader(dataset_cfg):
        if str(sample.image_id) in image_ids:
            chosen.append(sample)
            if len(chosen) == count:
                break
    return chosen


def _load_json(paths: Sequence[str | Path]) -> list[dict]:
    loaded = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MMCError(f"{path}: cannot read a JSON summary ({e})") from None
        for key in ("model", "dataset"):
            if key not in record:
                raise MMCError(f"{path}: missing key {key!r}")
        loaded.append(record)
    return loaded


def _ordered(records: list[dict], models: Sequence[str]) -> list[dict]:
    rank = {m: i for i, m in enumerate(models)}
    return sorted(records, key=lambda r: (rank.get(r["model"], len(rank)), r["model"]))


def make_figures(
    cfg: Any,
    summaries: Sequence[str],
    objects: Sequence[str],
    similarity: Sequence[str],
    out: Path,
    checkpoints: dict[str, str] | None = None,
):
    """All figures; ``checkpoints`` (model -> file) are needed for the predicted masks only."""
    import pandas as pd

    models = list(cfg.models)
    seg = _load_json(summaries)
    sim = _load_json(similarity)
    tables = {}
    for path in objects:
        frame = pd.read_parquet(path)
        if frame.empty:
            continue
        missing = {"model", "dataset", "image_id", "object_id", "prompt_y", "prompt_x"} - set(frame.columns)
        if missing:
            raise MMCError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        tables[(frame["model"].iloc[0], frame["dataset"].iloc[0])] = frame
    paths = []
    for dataset in cfg.evaluation.datasets:
        seg_d = _ordered([s for s in seg if s["dataset"] == dataset], models)
        sim_d = _ordered([s for s in sim if s["dataset"] == dataset], models)
        paths += plot_miou_vs_threshold(seg_d, dataset, out / f"miou_vs_threshold_{dataset}")
        paths += plot_similarity_histograms(sim_d, dataset, out / f"similarity_histograms_{dataset}")
        by_model = {
            s["model"]: tables[(s["model"], dataset)] for s in seg_d if (s["model"], dataset) in tables
        }
        best = {s["model"]: float(s["best_tau"]) for s in seg_d}
        ids = set().union(*(set(f["image_id"].astype(str)) for f in by_model.values())) if by_model else set()
        samples = qualitative_samples(cfg.datasets[dataset], ids, QUALITATIVE_IMAGES) if ids else []
        predicted = {}
        if checkpoints is not None:
            for model, frame in by_model.items():
                if cfg.models[model].source != "random" and model not in checkpoints:
                    raise MMCError(
                        f"--checkpoint {model}=PATH is needed to draw the masks of model {model!r}"
                    )
                predicted[model] = predicted_masks(
                    cfg, model, checkpoints.get(model), samples, frame, best[model]
                )
        paths += plot_qualitative(samples, by_model, best, dataset, out / f"qualitative_{dataset}", predicted)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the workflow's YAML config file")
    parser.add_argument("--summaries", nargs="+", required=True, help="summary.json files of mmc segment")
    parser.add_argument("--objects", nargs="+", required=True, help="objects.parquet files of mmc segment")
    parser.add_argument(
        "--similarity", nargs="+", required=True, help="similarity.json files of mmc similarity"
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="a model's weights, for the predicted masks of the qualitative figure (repeat per model; "
        "models of source random need none)",
    )
    parser.add_argument("--out", required=True, help="directory for the figures")
    parser.set_defaults(func=_main)


def _checkpoint_map(pairs: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        model, sep, path = pair.partition("=")
        if not sep or not model or not path:
            raise MMCError(f"--checkpoint {pair!r}: expected MODEL=PATH")
        mapping[model] = path
    return mapping


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking

    cfg = config.load(args.config)
    with tracking.job("figures", cfg) as rec:
        for path in [*args.summaries, *args.objects, *args.similarity]:
            rec.consumed(path)
        checkpoints = _checkpoint_map(args.checkpoint)
        for path in checkpoints.values():
            rec.consumed(path)
        paths = make_figures(cfg, args.summaries, args.objects, args.similarity, Path(args.out), checkpoints)
        for path in paths:
            rec.produced(path)
            rec.log_artifact(path)
    print("\n".join(map(str, paths)))
    return 0
