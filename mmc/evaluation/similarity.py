"""``mmc similarity``: intra- vs inter-object similarity of patch features (docs/evaluation.md).

Same features, prompts and skipped objects as ``mmc segment`` (and the same feature cache). A
token belongs to a label (an object, or background) when at least ``similarity.membership`` of
its pixels carry it. For each prompt: intra = the other tokens of its object, inter = tokens of
other objects or of the background that are not tokens of the object; void-dominated tokens are
in neither. Outputs in ``--out``: ``similarity.json``
(:class:`mmc.evaluation.summary.SimilarityResult`), ``histogram.png``, ``histogram.svg``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mmc.data.readers import Sample
from mmc.errors import MMCError
from mmc.evaluation import metrics
from mmc.evaluation.job import EvaluatedModel, add_evaluation_arguments, evaluation_job, require_finite
from mmc.evaluation.protocol import cosine_to, object_prompts
from mmc.evaluation.summary import SimilarityResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.set_defaults(func=_main)


def label_map(sample: Sample) -> np.ndarray:
    """H x W: -1 void, 0 background, i + 1 for ``sample.objects[i]``."""
    labels = np.zeros(sample.void.shape, dtype=np.int64)
    for i, obj in enumerate(sample.objects):
        labels[obj.mask] = i + 1
    labels[sample.void] = -1
    return labels


def image_similarities(
    features: np.ndarray,
    sample: Sample,
    *,
    membership: float = 0.5,
    prompt: str = "center",
    min_patches: float = 3,
    seed: int = 0,
    pixel_to_patch: str = "center",
    prompt_border: str = "outside",
) -> tuple[np.ndarray, np.ndarray]:
    """Intra and inter cosine similarities of every kept prompt of one image, pooled."""
    grid_h, grid_w, _ = features.shape
    kept, _ = object_prompts(
        sample,
        (grid_h, grid_w),
        prompt,
        min_patches,
        seed,
        pixel_to_patch=pixel_to_patch,
        prompt_border=prompt_border,
    )
    if not kept:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    flat = features.reshape(grid_h * grid_w, -1)
    n_labels = len(sample.objects) + 1  # background + objects
    fractions = metrics.token_fractions(label_map(sample), n_labels, (grid_h, grid_w), pixel_to_patch)
    member = fractions[:, 1:] >= membership  # (tokens, labels); column 0 background, i + 1 object i
    column = {obj.object_id: i + 1 for i, obj in enumerate(sample.objects)}
    intra, inter = [], []
    for obj, _, (r, c) in kept:
        index = r * grid_w + c
        sims = cosine_to(flat, flat[index][None])[:, 0]  # summed in float64: the same bits from any memory
        own = member[:, column[obj.object_id]].copy()
        others = np.delete(member, column[obj.object_id], axis=1).any(axis=1) & ~own
        own[index] = False
        intra.append(sims[own])
        inter.append(sims[others])
    return np.concatenate(intra), np.concatenate(inter)


def analyse(intra: np.ndarray, inter: np.ndarray, bins: int) -> dict:
    """The numbers of ``similarity.json`` (the :class:`SimilarityResult` fields after model and
    dataset) from the pooled intra and inter similarities."""
    if not len(intra) or not len(inter):
        raise MMCError(
            f"similarity analysis needs intra and inter samples, got {len(intra)} intra and {len(inter)} inter "
            "(are all objects below evaluation.min_object_patches?)"
        )
    hist_intra, edges = metrics.histogram(intra, bins)
    hist_inter, _ = metrics.histogram(inter, bins)
    accuracy, threshold = metrics.best_balanced_accuracy(intra, inter)
    return {
        "n_intra": len(intra),
        "n_inter": len(inter),
        "mean_intra": float(np.mean(intra, dtype=np.float64)),
        "mean_inter": float(np.mean(inter, dtype=np.float64)),
        "overlap": metrics.histogram_overlap(intra, inter, bins),
        "best_balanced_accuracy": accuracy,
        "best_threshold": threshold,
        "bins": edges.tolist(),
        "hist_intra": hist_intra.tolist(),
        "hist_inter": hist_inter.tolist(),
    }


def collect(cfg: Any, model: EvaluatedModel, dataset_name: str):
    """Pooled (intra, inter) similarities of one model on one dataset, and the feature counts."""
    from mmc import progress
    from mmc.data.readers import open_reader
    from mmc.evaluation.features import dataset_features

    reader = open_reader(cfg.datasets[dataset_name])
    stats: dict = {}
    intra, inter = [], []
    features = dataset_features(cfg, model, reader, dataset_name, stats)
    label = f"similarity {model.name or 'checkpoint'} on {dataset_name}"
    for sample, feats in progress.track(features, label, total=len(reader)):
        require_finite(feats, sample.image_id, model)
        a, b = image_similarities(
            feats.numpy(),
            sample,
            membership=cfg.similarity.membership,
            prompt=cfg.evaluation.prompt,
            min_patches=cfg.evaluation.min_object_patches,
            seed=cfg.seed,
            pixel_to_patch=cfg.evaluation.pixel_to_patch,
            prompt_border=cfg.evaluation.prompt_border,
        )
        intra.append(a)
        inter.append(b)
    return np.concatenate(intra or [np.empty(0)]), np.concatenate(inter or [np.empty(0)]), stats


def settings(cfg: Any, model: EvaluatedModel) -> dict:
    """The options the numbers of ``similarity.json`` depend on (its ``settings``)."""
    from mmc.evaluation.features import settings_of

    evaluation = cfg.evaluation
    return {
        **settings_of(evaluation, model.loaded),
        "prompt": evaluation.prompt,
        "min_object_patches": float(evaluation.min_object_patches),
        "pixel_to_patch": evaluation.pixel_to_patch,
        "prompt_border": evaluation.prompt_border,
        "seed": int(cfg.seed),
        "membership": float(cfg.similarity.membership),
        "bins": int(cfg.similarity.bins),
    }


def plot(result: SimilarityResult, title: str, base: Path) -> list[Path]:
    """``base.png`` and ``base.svg``: both distributions of one model, one panel."""
    from mmc.plotting import pyplot, save_figure

    plt = pyplot()
    edges = np.asarray(result.bins)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(centres, result.hist_intra, width=width, alpha=0.55, label=f"intra (mean {result.mean_intra:.3f})")
    ax.bar(centres, result.hist_inter, width=width, alpha=0.55, label=f"inter (mean {result.mean_inter:.3f})")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cosine similarity to the prompt token")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(
        f"{title}\noverlap {result.overlap:.3f}, best balanced acc. {result.best_balanced_accuracy:.3f}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, base, ("png", "svg"), crop=False)


def _main(args: argparse.Namespace) -> int:
    from mmc.files import atomic_path

    out = Path(args.out)
    with evaluation_job("similarity", args, sections=("similarity", "evaluation")) as (cfg, rec, model):
        intra, inter, stats = collect(cfg, model, args.dataset)
        result = SimilarityResult(
            model=args.model,
            dataset=args.dataset,
            **analyse(intra, inter, cfg.similarity.bins),
            checkpoint_sha256=model.sha256,
            settings=settings(cfg, model),
            features=stats,
            seed=model.seed,
        )
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "similarity.json") as tmp:
            tmp.write_text(result.to_json())
        rec.produced(out / "similarity.json")
        title = f"{args.model}{'' if model.seed is None else f' (seed {model.seed})'} on {args.dataset}"
        for path in plot(result, title, out / "histogram"):
            rec.produced(path)
        rec.log_metrics(
            {
                "mean_intra": result.mean_intra,
                "mean_inter": result.mean_inter,
                "overlap": result.overlap,
                "best_balanced_accuracy": result.best_balanced_accuracy,
                "n_intra": result.n_intra,
                "n_inter": result.n_inter,
            }
        )
    print(
        f"similarity {args.model} on {args.dataset}: mean intra {result.mean_intra:.4f}, "
        f"mean inter {result.mean_inter:.4f}, overlap {result.overlap:.4f}, "
        f"best balanced accuracy {result.best_balanced_accuracy:.4f} -> {out}"
    )
    return 0
