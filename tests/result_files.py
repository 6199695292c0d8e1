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


def evaluation(model: str, dataset: str, seed: int, run_seed: int | None = None, shift: float = 0.0,
               images: int = 12, per_image: int = 3) -> tuple[SegmentationSummary, pd.DataFrame]:
    """A summary.json and the objects.parquet it summarises, as one `mmc segment` run writes them:
    per-object IoUs that depend on the object (the same objects for every model and seed: generator
    ``dataset``), on ``shift`` (how good the model is) and on noise (generator ``seed``)."""
    objects_rng = np.random.default_rng(sum(map(ord, dataset)))
    difficulty = objects_rng.uniform(0.1, 0.7, size=images * per_image)
    rng = np.random.default_rng(seed)
    frame = objects_frame(model, dataset, [f"img_{i}" for i in range(images)], per_image)
    frame.insert(2, "seed", pd.array([run_seed] * len(frame), dtype="Int64"))
    bump = np.sin(np.linspace(0.3, 2.8, len(THRESHOLDS))) * 0.3
    for t, b in zip(THRESHOLDS, bump, strict=True):
        frame[iou_column(t)] = np.clip(difficulty + shift + b + rng.normal(0, 0.05, len(frame)), 0, 1)
    frame["oracle_iou"] = frame[[iou_column(t) for t in THRESHOLDS]].max(axis=1) + 0.01
    miou = {tau_key(t): float(frame[iou_column(t)].mean()) for t in THRESHOLDS}
    best = max(miou, key=lambda k: miou[k])
    summary = SegmentationSummary(
        model=model, dataset=dataset, n_objects=len(frame), n_skipped=1, thresholds=THRESHOLDS,
        miou_by_tau=miou, best_tau=float(best), best_miou=miou[best], demo_tau=0.9,
        miou_at_demo_tau=miou["0.90"], oracle_miou=float(frame["oracle_iou"].mean()),
        checkpoint_sha256=f"{seed:064x}", seed=run_seed,
    )  # fmt: skip
    return summary, frame


def write_results(root: Path, models, datasets, seeds: dict | None = None, shifts: dict | None = None) -> dict[str, list[str]]:
    """segment/RUN/D/{summary.json,objects.parquet} and similarity/RUN/D/similarity.json under root, one
    RUN per model (MODEL) or per model and seed (MODEL/seedS, ``seeds[model]``), consistent files."""
    import dataclasses

    paths: dict[str, list[str]] = {"summaries": [], "objects": [], "similarity": []}
    for i, model in enumerate(models):
        for run_seed in (seeds or {}).get(model, [None]):
            run = model if run_seed is None else f"{model}/seed{run_seed}"
            for j, dataset in enumerate(datasets):
                seg = root / "segment" / run / dataset
                sim = root / "similarity" / run / dataset
                seg.mkdir(parents=True, exist_ok=True)
                sim.mkdir(parents=True, exist_ok=True)
                noise = 100 * i + 10 * j + (run_seed or 0)
                summary, frame = evaluation(model, dataset, noise, run_seed, (shifts or {}).get(model, 0.0))
                (seg / "summary.json").write_text(summary.to_json())
                frame.to_parquet(seg / "objects.parquet")
                result = dataclasses.replace(similarity_result(model, dataset, noise), seed=run_seed)
                (sim / "similarity.json").write_text(result.to_json())
                paths["summaries"].append(str(seg / "summary.json"))
                paths["objects"].append(str(seg / "objects.parquet"))
                paths["similarity"].append(str(sim / "similarity.json"))
    return paths
