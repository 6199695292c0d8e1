"""Small result files in exactly the formats of mmc segment / mmc similarity, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmc.evaluation.protocol import iou_column, tau_key
from mmc.evaluation.summary import SegmentationSummary, SimilarityResult

THRESHOLDS = [round(0.05 * i, 2) for i in range(20)]


def segment_summary(model: str, dataset: str, seed: int) -> SegmentationSummary:
    rng = np.random.default_rng(seed)
    curve = np.sin(np.linspace(0.3, 2.8, len(THRESHOLDS))) * rng.uniform(0.3, 0.7)
    best = int(np.argmax(curve))
    return SegmentationSummary(
        model=model,
        dataset=dataset,
        n_objects=int(rng.integers(20, 40)),
        n_skipped=int(rng.integers(0, 3)),
        thresholds=THRESHOLDS,
        miou_by_tau={tau_key(t): float(v) for t, v in zip(THRESHOLDS, curve, strict=True)},
        best_tau=THRESHOLDS[best],
        best_miou=float(curve[best]),
        demo_tau=0.9,
        miou_at_demo_tau=float(curve[THRESHOLDS.index(0.9)]),
        oracle_miou=float(curve[best] + 0.1),
        checkpoint_sha256=f"{seed:064x}",
    )


def similarity_result(model: str, dataset: str, seed: int, bins: int = 20) -> SimilarityResult:
    rng = np.random.default_rng(seed)
    intra = rng.normal(0.6, 0.2, 500).clip(-1, 1)
    inter = rng.normal(0.1, 0.3, 2000).clip(-1, 1)
    edges = np.linspace(-1, 1, bins + 1)
    h_intra, _ = np.histogram(intra, edges)
    h_inter, _ = np.histogram(inter, edges)
    p, q = h_intra / h_intra.sum(), h_inter / h_inter.sum()
    return SimilarityResult(
        model=model,
        dataset=dataset,
        n_intra=len(intra),
        n_inter=len(inter),
        mean_intra=float(intra.mean()),
        mean_inter=float(inter.mean()),
        overlap=float(np.minimum(p, q).sum()),
        best_balanced_accuracy=float(rng.uniform(0.6, 0.9)),
        best_threshold=0.35,
        bins=edges.tolist(),
        hist_intra=p.tolist(),
        hist_inter=q.tolist(),
        checkpoint_sha256=f"{seed:064x}",
    )


def objects_frame(model: str, dataset: str, image_ids, objects_per_image: int = 2) -> pd.DataFrame:
    rows = []
    for image_id in image_ids:
        for k in range(objects_per_image):
            row = {
                "model": model,
                "dataset": dataset,
                "image_id": image_id,
                "object_id": k + 1,
                "class_id": 1,
                "area": 100,
                "prompt_y": 10 + 5 * k,
                "prompt_x": 12 + 5 * k,
                "prompt_row": 0,
                "prompt_col": 0,
            }
            row.update({iou_column(t): 0.5 for t in THRESHOLDS})
            row.update({"oracle_tau": 0.5, "oracle_iou": 0.7})
            rows.append(row)
    return pd.DataFrame(rows)


def write_results(root: Path, models, datasets) -> dict[str, list[str]]:
    """segment/M/D/{summary.json,objects.parquet} and similarity/M/D/similarity.json under root."""
    paths: dict[str, list[str]] = {"summaries": [], "objects": [], "similarity": []}
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            seg = root / "segment" / model / dataset
            sim = root / "similarity" / model / dataset
            seg.mkdir(parents=True, exist_ok=True)
            sim.mkdir(parents=True, exist_ok=True)
            (seg / "summary.json").write_text(segment_summary(model, dataset, 10 * i + j).to_json())
            objects_frame(model, dataset, ["img_0", "img_1"]).to_parquet(seg / "objects.parquet")
            (sim / "similarity.json").write_text(similarity_result(model, dataset, 10 * i + j).to_json())
            paths["summaries"].append(str(seg / "summary.json"))
            paths["objects"].append(str(seg / "objects.parquet"))
            paths["similarity"].append(str(sim / "similarity.json"))
    return paths
