"""``mmc segment``: zero-shot prompt-patch segmentation (docs/evaluation.md).

Per image, features are computed once; per object, the prompt token's cosine similarity to every
token is thresholded at every tau of the grid at once (:func:`mmc.evaluation.metrics.iou_curve`) and
at the exact per-object oracle. The IoU at tau is that of :func:`mmc.evaluation.protocol.predicted_mask`
(tested), computed without building one mask per tau. Outputs (in ``--out``): ``objects.parquet`` (one
row per object), ``summary.csv`` (tau, miou) and ``summary.json``
(:class:`mmc.evaluation.summary.SegmentationSummary`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmc.data.readers import Sample
from mmc.errors import MMCError
from mmc.evaluation import metrics
from mmc.evaluation.job import (
    EvaluatedModel,
    add_evaluation_arguments,
    checkpoint_model,
    evaluation_job,
    require_finite,
)
from mmc.evaluation.protocol import (
    check_upsample,
    iou_column,
    object_prompts,
    prompt_similarities,
    tau_key,
    thresholds_of,
)
from mmc.evaluation.summary import SegmentationSummary

OBJECT_COLUMNS = ["image_id", "object_id", "class_id", "area", "prompt_y", "prompt_x", "prompt_row", "prompt_col"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.set_defaults(func=_main)


# ----------------------------------------------------------------------------- per image
def evaluate_image(
    features: np.ndarray,
    sample: Sample,
    thresholds: list[float],
    *,
    prompt: str = "center",
    upsample: str = "nearest",
    min_patches: float = 3,
    seed: int = 0,
    pixel_to_patch: str = "center",
    prompt_border: str = "outside",
) -> tuple[list[dict], int]:
    """Rows (one per evaluated object) and the number of skipped objects, for one image."""
    check_upsample(upsample)
    grid_h, grid_w, _ = features.shape
    h, w = sample.void.shape
    kept, skipped = object_prompts(
        sample,
        (grid_h, grid_w),
        prompt,
        min_patches,
        seed,
        pixel_to_patch=pixel_to_patch,
        prompt_border=prompt_border,
    )
    if not kept:
        return [], skipped
    sims = prompt_similarities(features, [token for _, _, token in kept])  # (gh, gw, objects)
    valid = ~sample.void
    if upsample == "nearest":
        # Thresholding then nearest upsampling = weighting each token by its pixels.
        pid = metrics.patch_ids((h, w), (grid_h, grid_w), pixel_to_patch)
        valid_per_token = np.bincount(pid[valid], minlength=grid_h * grid_w)
    rows = []
    for k, (obj, (y, x), (r, c)) in enumerate(kept):
        if upsample == "nearest":
            scores = sims[..., k].ravel()
            pos = np.bincount(pid[obj.mask & valid], minlength=grid_h * grid_w)
            neg = valid_per_token - pos
        else:
            # one object at a time: a full-resolution map per object of a crowded image is large
            scores = metrics.upsample_bilinear(sims[..., k], (h, w))[valid]
            pos = obj.mask[valid].astype(np.float64)
            neg = 1.0 - pos
        ious = metrics.iou_curve(scores, pos, neg, thresholds)
        oracle_tau, oracle_iou = metrics.oracle_iou(scores, pos, neg)
        row = {
            "image_id": sample.image_id,
            "object_id": obj.object_id,
            "class_id": obj.class_id,
            "area": int(np.count_nonzero(obj.mask)),
            "prompt_y": y,
            "prompt_x": x,
            "prompt_row": r,
            "prompt_col": c,
        }
        row.update({iou_column(t): float(v) for t, v in zip(thresholds, ious, strict=True)})
        row.update(
            oracle_tau=oracle_tau if math.isfinite(oracle_tau) else float("nan"), oracle_iou=oracle_iou
        )
        rows.append(row)
    return rows, skipped


# ----------------------------------------------------------------------------- a dataset
def evaluate(cfg: Any, model: EvaluatedModel, dataset_name: str, label: str | None = None):
    """(per-object DataFrame, number skipped, feature stats) for one model on one dataset; progress
    per image (:mod:`mmc.progress`) under ``label``."""
    import pandas as pd

    from mmc import progress
    from mmc.data.readers import open_reader
    from mmc.evaluation.features import dataset_features

    evaluation = cfg.evaluation
    thresholds = thresholds_of(evaluation)
    reader = open_reader(cfg.datasets[dataset_name])
    stats: dict = {}
    rows, skipped = [], 0
    label = label or f"segment {model.name or 'checkpoint'} on {dataset_name}"
    features = dataset_features(cfg, model, reader, dataset_name, stats)
    for sample, feats in progress.track(features, label, total=len(reader)):
        require_finite(feats, sample.image_id, model)
        image_rows, image_skipped = evaluate_image(
            feats.numpy(),
            sample,
            thresholds,
            prompt=evaluation.prompt,
            upsample=evaluation.upsample,
            min_patches=evaluation.min_object_patches,
            seed=cfg.seed,
            pixel_to_patch=evaluation.pixel_to_patch,
            prompt_border=evaluation.prompt_border,
        )
        rows.extend(image_rows)
        skipped += image_skipped
    columns = [*OBJECT_COLUMNS, *map(iou_column, thresholds), "oracle_tau", "oracle_iou"]
    table = pd.DataFrame(rows, columns=columns)
    return table, skipped, stats


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(
    cfg: Any,
    table,
    n_skipped: int,
    model: EvaluatedModel,
    model_name: str,
    dataset_name: str,
    features: dict | None = None,
) -> SegmentationSummary:
    """The summary of a per-object table (an empty evaluation gives None means, never NaN);
    ``features`` are the feature counts ({computed, cached}) to record."""
    from mmc.evaluation.features import settings_of

    evaluation = cfg.evaluation
    thresholds = thresholds_of(evaluation)
    miou = {tau_key(t): _mean(table[iou_column(t)]) for t in thresholds}
    best_key = max(miou, key=lambda k: miou[k]) if len(table) else None  # first (lowest tau) on ties
    return SegmentationSummary(
        model=model_name,
        dataset=dataset_name,
        n_objects=len(table),
        n_skipped=int(n_skipped),
        thresholds=thresholds,
        miou_by_tau=miou,
        best_tau=float(best_key) if best_key is not None else None,
        best_miou=miou[best_key] if best_key is not None else None,
        demo_tau=float(evaluation.demo_threshold),
        miou_at_demo_tau=miou[tau_key(evaluation.demo_threshold)],
        oracle_miou=_mean(table["oracle_iou"]),
        checkpoint_sha256=model.sha256,
        seed=model.seed,
        settings={
            **settings_of(evaluation, model.loaded),
            "prompt": evaluation.prompt,
            "upsample": evaluation.upsample,
            "min_object_patches": float(evaluation.min_object_patches),
            "pixel_to_patch": evaluation.pixel_to_patch,
            "prompt_border": evaluation.prompt_border,
            "seed": int(cfg.seed),
        },
        features=features,
    )


def evaluate_checkpoint(
    cfg: Any, checkpoint_path: str | Path, dataset_name: str, fmt: str = "mmc", label: str | None = None
) -> SegmentationSummary:
    """Summary (model ``"selection"``) of one checkpoint on one dataset, writing nothing and not
    touching the feature cache: the ``select`` stage scores candidate checkpoints with it."""
    if dataset_name not in cfg.datasets:
        raise MMCError(f"dataset {dataset_name!r} is not a key of datasets (have: {sorted(cfg.datasets)})")
    model = checkpoint_model(checkpoint_path, fmt)
    table, skipped, _ = evaluate(cfg, model, dataset_name, label=label or f"score {Path(checkpoint_path).name} on {dataset_name}")
    return summarize(cfg, table, skipped, model, "selection", dataset_name)


# ----------------------------------------------------------------------------- command
def _main(args: argparse.Namespace) -> int:
    import pandas as pd

    from mmc.files import atomic_path

    out = Path(args.out)
    with evaluation_job("segment", args) as (cfg, rec, model):
        table, skipped, stats = evaluate(cfg, model, args.dataset)
        table.insert(0, "seed", pd.array([model.seed] * len(table), dtype="Int64"))
        table.insert(0, "dataset", args.dataset)
        table.insert(0, "model", args.model)
        summary = summarize(cfg, table, skipped, model, args.model, args.dataset, features=stats)

        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "objects.parquet") as tmp:
            table.to_parquet(tmp, engine="pyarrow", index=False)
        with atomic_path(out / "summary.csv") as tmp:
            rows = [{"tau": t, "miou": summary.miou_at(t)} for t in summary.thresholds]
            pd.DataFrame(rows, columns=["tau", "miou"]).to_csv(tmp, index=False)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(summary.to_json())
        for name in ("objects.parquet", "summary.csv", "summary.json"):
            rec.produced(out / name)
        headline = {
            "best_miou": summary.best_miou,
            "miou_at_demo_tau": summary.miou_at_demo_tau,
            "oracle_miou": summary.oracle_miou,
            "n_objects": summary.n_objects,
            "n_skipped": summary.n_skipped,
        }
        rec.log_metrics({k: v for k, v in headline.items() if v is not None})
        rec.log_metrics({f"miou_tau_{k}": v for k, v in summary.miou_by_tau.items() if v is not None})

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(
        f"segment {args.model} on {args.dataset}: {summary.n_objects} objects "
        f"({summary.n_skipped} skipped), best mIoU {fmt(summary.best_miou)} at tau "
        f"{summary.best_tau}, oracle mIoU {fmt(summary.oracle_miou)} -> {out}"
    )
    return 0
