"""``mmc figures``: the paper-style figures, one of each kind per evaluation dataset.

- ``miou_vs_threshold_<dataset>.{png,svg}``: mIoU against the threshold tau, one curve per model,
  its best tau marked and its oracle mIoU as a dashed line of the same colour;
- ``similarity_histograms_<dataset>.{png,svg}``: intra- vs inter-object similarity distributions,
  one panel per model;
- ``qualitative_<dataset>.png``: a few images, one row per model: each object's predicted mask at
  the model's best tau (filled), its ground truth (outlined), its prompt point and its IoU.

Each model is shown once (the workflow passes the evaluation of its first seed). Curves and
histograms are drawn from the files of ``mmc segment`` and ``mmc similarity`` (read with
:mod:`mmc.evaluation.summary`). The qualitative masks are the evaluation's own: features from
:func:`mmc.evaluation.features.dataset_features` (same precision, layer and feature cache as
``mmc segment``), the prompts of ``objects.parquet``, and :func:`mmc.evaluation.protocol.predicted_mask`,
so each drawn mask has the IoU that was scored. Figures are saved with :func:`mmc.plotting.save_figure`
(byte-reproducible).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmc.errors import MMCError
from mmc.evaluation.summary import SegmentationSummary, SimilarityResult
from mmc.plotting import pyplot, save_figure

QUALITATIVE_IMAGES = 4

log = logging.getLogger(__name__)


def plot_miou_vs_threshold(summaries: Sequence[SegmentationSummary], dataset: str, base: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, summary in enumerate(summaries):
        colour = f"C{i % 10}"
        taus, mious = summary.curve()
        ax.plot(taus, np.asarray(mious) * 100, color=colour, marker=".", label=summary.model)
        ax.plot([summary.best_tau], [summary.best_miou * 100], color=colour, marker="*", markersize=12)
        ax.axhline(summary.oracle_miou * 100, color=colour, linestyle="--", linewidth=0.8)
    ax.set_xlabel("threshold τ")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{dataset}: mIoU vs threshold (★ best τ, dashed: oracle)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, base, ("png", "svg"))


def plot_similarity_histograms(results: Sequence[SimilarityResult], dataset: str, base: Path) -> list[Path]:
    plt = pyplot()
    n = max(len(results), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), sharey=True, squeeze=False, layout="constrained")
    for ax, result in zip(axes[0], results, strict=False):
        edges = np.asarray(result.bins, dtype=float)
        for hist, label, colour in ((result.hist_intra, "intra", "C0"), (result.hist_inter, "inter", "C3")):
            ax.stairs(np.asarray(hist, dtype=float), edges, fill=True, alpha=0.45, color=colour, label=label)
        ax.set_title(f"{result.model}\noverlap {result.overlap:.3f}", fontsize="medium")
        ax.set_xlabel("cosine similarity to the prompt")
        ax.set_xlim(-1, 1)
    axes[0][0].set_ylabel("fraction of token pairs")
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{dataset}: intra- vs inter-object similarity")
    return save_figure(fig, base, ("png", "svg"))


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
    from mmc.evaluation.protocol import iou_column

    predicted = predicted or {}
    plt = pyplot()
    models = list(objects_by_model)
    rows, cols = max(len(models), 1), max(len(samples), 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.8 * cols, 2.8 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, model in enumerate(models):
        frame = objects_by_model[model]
        column = iou_column(best_tau[model])
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
                if column in row.index:
                    ax.annotate(
                        f"{row[column]:.2f}",
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
    return save_figure(fig, base, ("png",))


def _solid(colour: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([colour, colour])


def predicted_masks(
    cfg: Any,
    model_name: str,
    checkpoint: str | None,
    dataset_name: str,
    samples: Sequence[Any],
    frame,
    tau: float,
    seed: int | None = None,
) -> dict[tuple[str, int], np.ndarray]:
    """The mask at threshold ``tau`` of each object of ``frame`` (``objects.parquet`` of model
    ``model_name`` on ``dataset_name``) in ``samples``: ``{(image_id, object_id): bool mask}``.

    The features come through the evaluation's own path (the feature cache when it holds them), the
    similarity maps are computed for an image's prompts together, in table order, as ``mmc segment``
    computed them, and the mask is :func:`mmc.evaluation.protocol.predicted_mask`: so the IoU of
    each mask is the ``iou_<tau>`` of its row, bit for bit. ``seed``: the evaluation's training seed
    (seeded models), as in its summary.
    """
    from mmc.evaluation.features import dataset_features
    from mmc.evaluation.job import configured_model
    from mmc.evaluation.protocol import predicted_mask, prompt_similarities

    image_ids = frame["image_id"].astype(str)
    chosen = [s for s in samples if (image_ids == str(s.image_id)).any()]
    if not chosen:
        return {}
    model = configured_model(cfg, model_name, checkpoint, seed)
    masks = {}
    for sample, features in dataset_features(cfg, model, chosen, dataset_name):
        rows = frame[image_ids == str(sample.image_id)]
        tokens = [(int(r), int(c)) for r, c in zip(rows["prompt_row"], rows["prompt_col"], strict=True)]
        sims = prompt_similarities(features.numpy(), tokens)
        for k, object_id in enumerate(rows["object_id"]):
            mask = predicted_mask(
                sims[..., k], sample.void.shape, tau, cfg.evaluation.upsample, cfg.evaluation.pixel_to_patch
            )
            masks[(str(sample.image_id), int(object_id))] = mask
    return masks


def masks_off_score(
    masks: dict[tuple[str, int], np.ndarray], samples: Sequence[Any], frame, tau: float
) -> list[tuple[str, int]]:
    """The ``(image_id, object_id)`` of each drawn mask whose IoU is not the ``iou_<tau>`` that
    ``objects.parquet`` scored: features recomputed here rather than read from the feature cache can
    round differently (another device or batch), and the figure must not claim the scored IoU then."""
    from mmc.evaluation.metrics import iou
    from mmc.evaluation.protocol import iou_column

    by_id = {str(s.image_id): s for s in samples}
    scored = {
        (str(i), int(o)): float(v)
        for i, o, v in zip(frame["image_id"], frame["object_id"], frame[iou_column(tau)], strict=True)
    }
    off = []
    for (image_id, object_id), mask in masks.items():
        sample = by_id[image_id]
        obj = next(o for o in sample.objects if o.object_id == object_id)
        if iou(mask, obj.mask, sample.void) != scored[(image_id, object_id)]:
            off.append((image_id, object_id))
    return off


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


def _ordered(records: Sequence[Any], models: Sequence[str]) -> list[Any]:
    rank = {m: i for i, m in enumerate(models)}
    return sorted(records, key=lambda r: (rank.get(r.model, len(rank)), r.model))


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

    from mmc.evaluation.summary import read_segmentation_summaries, read_similarity_results

    models = list(cfg.models)
    seg = read_segmentation_summaries(summaries)
    sim = read_similarity_results(similarity)
    needed = {"model", "dataset", "image_id", "object_id", "prompt_y", "prompt_x", "prompt_row", "prompt_col"}
    tables = {}
    for path in objects:
        frame = pd.read_parquet(path)
        if frame.empty:
            continue
        missing = needed - set(frame.columns)
        if missing:
            raise MMCError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        tables[(frame["model"].iloc[0], frame["dataset"].iloc[0])] = frame
    paths = []
    for dataset in cfg.evaluation.datasets:
        seg_d = _ordered([s for s in seg if s.dataset == dataset], models)
        sim_d = _ordered([s for s in sim if s.dataset == dataset], models)
        paths += plot_miou_vs_threshold(seg_d, dataset, out / f"miou_vs_threshold_{dataset}")
        paths += plot_similarity_histograms(sim_d, dataset, out / f"similarity_histograms_{dataset}")
        by_model = {s.model: tables[(s.model, dataset)] for s in seg_d if (s.model, dataset) in tables}
        best = {s.model: float(s.best_tau) for s in seg_d}
        seeds = {s.model: s.seed for s in seg_d}
        if len(seeds) < len(seg_d):
            raise MMCError(
                f"figures show one evaluation per model and dataset; {dataset} has several of "
                f"{sorted({s.model for s in seg_d if [t.model for t in seg_d].count(s.model) > 1})} "
                "(pass one seed of each: the workflow passes the first)"
            )
        ids = set().union(*(set(f["image_id"].astype(str)) for f in by_model.values())) if by_model else set()
        samples = qualitative_samples(cfg.datasets[dataset], ids, QUALITATIVE_IMAGES) if ids else []
        predicted = {}
        if checkpoints is not None:
            for model, frame in by_model.items():
                if cfg.models[model].source not in ("random", "colour") and model not in checkpoints:
                    raise MMCError(
                        f"--checkpoint {model}=PATH is needed to draw the masks of model {model!r}"
                    )
                predicted[model] = predicted_masks(
                    cfg, model, checkpoints.get(model), dataset, samples, frame, best[model], seeds[model]
                )
                off = masks_off_score(predicted[model], samples, frame, best[model])
                if off:
                    log.warning(
                        "%s on %s: %d of %d drawn masks do not have the IoU scored by mmc segment (their "
                        "features were recomputed, not read from the feature cache, and rounded differently); "
                        "set evaluation.feature_cache: true to draw the scored masks",
                        model, dataset, len(off), len(predicted[model]),
                    )  # fmt: skip
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
        "models of source random and colour need none)",
    )
    parser.add_argument("--out", required=True, help="directory for the figures")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking
    from mmc.files import require_files

    cfg = config.load(args.config)
    from mmc.explorer.cli import checkpoint_map

    checkpoints = checkpoint_map(args.checkpoint)
    for flag in ("summaries", "objects", "similarity"):
        require_files(getattr(args, flag), f"--{flag}")
    require_files(checkpoints.values(), "--checkpoint")
    with tracking.job("figures", cfg) as rec:
        for path in [*args.summaries, *args.objects, *args.similarity]:
            rec.consumed(path)
        for path in checkpoints.values():
            rec.consumed(path)
        paths = make_figures(cfg, args.summaries, args.objects, args.similarity, Path(args.out), checkpoints)
        for path in paths:
            rec.produced(path)
            rec.log_artifact(path)
    print("\n".join(map(str, paths)))
    return 0
