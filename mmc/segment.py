"""``mmc segment``: zero-shot prompt-patch segmentation (SPEC §2).

Per image, features are computed once; per object, the prompt token's cosine similarity to every
token is thresholded at every tau of the grid at once (:func:`mmc.metrics.iou_curve`) and at the
exact per-object oracle. Outputs (in ``--out``): ``objects.parquet`` (one row per object),
``summary.csv`` (tau, miou) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mmc import metrics
from mmc.data.readers import Sample
from mmc.errors import MMCError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.set_defaults(func=run)


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of every per model x dataset evaluation command."""
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--model", required=True, help="a key of `models`")
    parser.add_argument("--dataset", required=True, help="a key of `datasets`")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="weights file (overrides the model's source)")


# ----------------------------------------------------------------------------- per image
def thresholds_of(evaluation: Any) -> list[float]:
    """The tau grid plus the demo tau, sorted; each must have a distinct 2-decimal column name."""
    taus = sorted(
        {round(float(t), 6) for t in evaluation.thresholds} | {round(float(evaluation.demo_threshold), 6)}
    )
    names = [f"{t:.2f}" for t in taus]
    if len(set(names)) != len(names):
        raise MMCError(f"evaluation.thresholds: {taus} collide when written with two decimals")
    return taus


def prompt_rng(seed: int, image_id: str, object_id: int) -> np.random.Generator:
    """A generator that depends only on (seed, image, object): prompts do not shift with order."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(image_id.encode()), object_id % 2**32])


def object_prompts(sample: Sample, grid: tuple[int, int], prompt: str, min_patches: float, seed: int):
    """Per kept object: (object, (y, x), (row, col)); and the number skipped as too small."""
    h, w = sample.void.shape
    kept, skipped = [], 0
    for obj in sample.objects:
        area = int(np.count_nonzero(obj.mask))
        if area == 0 or area * grid[0] * grid[1] / (h * w) < min_patches:
            skipped += 1
            continue
        rng = prompt_rng(seed, sample.image_id, obj.object_id) if prompt == "random" else None
        y, x = metrics.prompt_point(obj.mask, prompt, rng)
        kept.append((obj, (y, x), metrics.patch_of_pixel(y, x, (h, w), grid)))
    return kept, skipped


def evaluate_image(
    features: np.ndarray,
    sample: Sample,
    thresholds: list[float],
    *,
    prompt: str = "center",
    upsample: str = "nearest",
    min_patches: float = 3,
    seed: int = 0,
) -> tuple[list[dict], int]:
    """Rows (one per evaluated object) and the number of skipped objects, for one image."""
    grid_h, grid_w, dim = features.shape
    h, w = sample.void.shape
    kept, skipped = object_prompts(sample, (grid_h, grid_w), prompt, min_patches, seed)
    if not kept:
        return [], skipped
    flat = features.reshape(-1, dim)
    prompt_index = [r * grid_w + c for _, _, (r, c) in kept]
    sims = flat @ flat[prompt_index].T  # (tokens, objects): one matmul for every prompt
    valid = ~sample.void
    if upsample == "nearest":
        # Thresholding then nearest upsampling = weighting each token by its pixels.
        pid = metrics.patch_ids((h, w), (grid_h, grid_w))
        valid_per_token = np.bincount(pid[valid], minlength=grid_h * grid_w)
    elif upsample != "bilinear":
        raise MMCError(f"evaluation.upsample: {upsample!r} is not nearest or bilinear")
    rows = []
    for k, (obj, (y, x), (r, c)) in enumerate(kept):
        if upsample == "nearest":
            scores = sims[:, k]
            pos = np.bincount(pid[obj.mask & valid], minlength=grid_h * grid_w)
            neg = valid_per_token - pos
        else:
            # one object at a time: a full-resolution map per object of a crowded image is large
            scores = metrics.upsample_bilinear(sims[:, k].reshape(grid_h, grid_w), (h, w))[valid]
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
        row.update({f"iou_{t:.2f}": float(v) for t, v in zip(thresholds, ious, strict=True)})
        row.update(
            oracle_tau=oracle_tau if math.isfinite(oracle_tau) else float("nan"), oracle_iou=oracle_iou
        )
        rows.append(row)
    return rows, skipped


# ----------------------------------------------------------------------------- a dataset
def evaluate(cfg: Any, loaded, dataset_name: str, model_name: str | None = None):
    """(per-object DataFrame, number skipped, feature stats) for one model on one dataset."""
    import pandas as pd

    from mmc.data.readers import open_reader
    from mmc.features import dataset_features

    evaluation = cfg.evaluation
    thresholds = thresholds_of(evaluation)
    reader = open_reader(cfg.datasets[dataset_name])
    stats: dict = {}
    rows, skipped = [], 0
    for sample, feats in dataset_features(cfg, loaded, reader, dataset_name, model_name, stats):
        image_rows, image_skipped = evaluate_image(
            feats.numpy(),
            sample,
            thresholds,
            prompt=evaluation.prompt,
            upsample=evaluation.upsample,
            min_patches=evaluation.min_object_patches,
            seed=cfg.seed,
        )
        rows.extend(image_rows)
        skipped += image_skipped
    columns = [
        "image_id",
        "object_id",
        "class_id",
        "area",
        "prompt_y",
        "prompt_x",
        "prompt_row",
        "prompt_col",
    ]
    columns += [f"iou_{t:.2f}" for t in thresholds] + ["oracle_tau", "oracle_iou"]
    table = pd.DataFrame(rows, columns=columns)
    return table, skipped, stats


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(table, thresholds: list[float], demo_tau: float, n_skipped: int) -> dict:
    """The summary dict (JSON-ready: an empty evaluation gives nulls, never NaN)."""
    miou = {f"{t:.2f}": _mean(table[f"iou_{t:.2f}"]) for t in thresholds}
    best_key = max(miou, key=lambda k: miou[k]) if len(table) else None  # first (lowest tau) on ties
    return {
        "n_objects": len(table),
        "n_skipped": int(n_skipped),
        "thresholds": thresholds,
        "miou_by_tau": miou,
        "best_tau": float(best_key) if best_key is not None else None,
        "best_miou": miou[best_key] if best_key is not None else None,
        "demo_tau": float(demo_tau),
        "miou_at_demo_tau": miou[f"{demo_tau:.2f}"],
        "oracle_miou": _mean(table["oracle_iou"]),
    }


def evaluate_checkpoint(cfg: Any, checkpoint_path: str | Path, dataset_name: str, fmt: str = "mmc") -> dict:
    """Summary of one checkpoint on one dataset, writing nothing (for checkpoint selection)."""
    from mmc.features import settings_of
    from mmc.models import load_backbone

    if dataset_name not in cfg.datasets:
        raise MMCError(f"dataset {dataset_name!r} is not a key of datasets (have: {sorted(cfg.datasets)})")
    loaded = load_backbone(checkpoint_path, fmt)
    table, skipped, _ = evaluate(cfg, loaded, dataset_name)
    summary = {"model": "selection", "dataset": dataset_name}
    summary.update(summarize(table, thresholds_of(cfg.evaluation), cfg.evaluation.demo_threshold, skipped))
    summary["checkpoint_sha256"] = loaded.sha256
    summary["settings"] = _settings(cfg, settings_of(cfg.evaluation, loaded))
    return summary


def _settings(cfg: Any, feature_settings: dict) -> dict:
    ev = cfg.evaluation
    return {
        **feature_settings,
        "prompt": ev.prompt,
        "upsample": ev.upsample,
        "min_object_patches": float(ev.min_object_patches),
        "seed": int(cfg.seed),
    }


# ----------------------------------------------------------------------------- command
@contextlib.contextmanager
def evaluation_job(stage: str, args: argparse.Namespace, sections: tuple[str, ...] = ("evaluation",)):
    """What `segment` and `similarity` share: the config, the tracked job (params, tags, the
    checkpoint consumed) and the model. Yields (cfg, recorder, loaded model)."""
    from mmc import config, tracking
    from mmc.models import model_for

    cfg = config.load(args.config)
    if args.dataset not in cfg.datasets:
        raise MMCError(f"--dataset {args.dataset!r} is not a key of datasets (have: {sorted(cfg.datasets)})")
    wildcards = {"model": args.model, "dataset": args.dataset}
    with tracking.job(stage, cfg, wildcards=wildcards, config_path=args.config) as rec:
        loaded = model_for(cfg, args.model, args.checkpoint)
        params = {name: config.to_dict(getattr(cfg, name)) for name in sections}
        params["model"] = config.to_dict(cfg.models[args.model])
        params["dataset"] = config.to_dict(cfg.datasets[args.dataset])
        rec.log_params(params)
        rec.set_tags(
            {
                "model": args.model,
                "dataset": args.dataset,
                "format": loaded.format,
                "weights": loaded.weights,
                "checkpoint_sha256": loaded.sha256,
            }
        )
        if loaded.path is not None:
            rec.consumed(loaded.path, loaded.sha256)
        yield cfg, rec, loaded


def run(args: argparse.Namespace) -> int:
    from mmc.features import settings_of
    from mmc.files import atomic_path

    out = Path(args.out)
    with evaluation_job("segment", args) as (cfg, rec, loaded):
        table, skipped, stats = evaluate(cfg, loaded, args.dataset, model_name=args.model)
        table.insert(0, "dataset", args.dataset)
        table.insert(0, "model", args.model)
        thresholds = thresholds_of(cfg.evaluation)
        summary = {"model": args.model, "dataset": args.dataset}
        summary.update(summarize(table, thresholds, cfg.evaluation.demo_threshold, skipped))
        summary["checkpoint_sha256"] = loaded.sha256
        summary["settings"] = _settings(cfg, settings_of(cfg.evaluation, loaded))
        summary["features"] = stats

        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "objects.parquet") as tmp:
            table.to_parquet(tmp, engine="pyarrow", index=False)
        with atomic_path(out / "summary.csv") as tmp:
            rows = [{"tau": t, "miou": summary["miou_by_tau"][f"{t:.2f}"]} for t in thresholds]
            import pandas as pd

            pd.DataFrame(rows, columns=["tau", "miou"]).to_csv(tmp, index=False)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        for name in ("objects.parquet", "summary.csv", "summary.json"):
            rec.produced(out / name)
        rec.log_metrics(
            {
                k: summary[k]
                for k in ("best_miou", "miou_at_demo_tau", "oracle_miou", "n_objects", "n_skipped")
                if summary[k] is not None
            }
        )
        rec.log_metrics({f"miou_tau_{k}": v for k, v in summary["miou_by_tau"].items() if v is not None})

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(
        f"segment {args.model} on {args.dataset}: {summary['n_objects']} objects "
        f"({summary['n_skipped']} skipped), best mIoU {fmt(summary['best_miou'])} at tau "
        f"{summary['best_tau']}, oracle mIoU {fmt(summary['oracle_miou'])} -> {out}"
    )
    return 0
