"""The demo's results under each protocol convention and stored precision (nothing is written).

For the options the paper leaves open that docs/method.md#conventions describes
(``evaluation.pixel_to_patch``, ``evaluation.prompt_border``, ``evaluation.resize``) and for the
precision the features are kept in (``evaluation.feature_dtype``), this prints each model's
segmentation and similarity summaries with the config as given (the reference) and with one option
changed at a time, and the differences from the reference. With ``--reference-results DIR`` it also
compares the reference with the ``summary.json`` / ``similarity.json`` files under ``DIR`` (e.g. the
results of an older checkout) and prints the largest difference. Run after the demo (it reads its
checkpoints):

    PYTHONPATH=. python benchmarks/conventions_demo.py --config config/test.yaml \\
        --checkpoint mmc=checkpoints/test/mmc/seed0.pth --checkpoint mim_only=checkpoints/test/mim_only/seed0.pth \\
        --checkpoint init=results/test/pretrain/mmc/seed0/epoch_0000.pth

Seeded models are evaluated with their first seed (the demo has one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from mmc import config
from mmc.evaluation.features import dataset_features
from mmc.evaluation.job import configured_model
from mmc.evaluation.protocol import iou_column, thresholds_of
from mmc.evaluation.segment import evaluate_image, summarize
from mmc.evaluation.similarity import analyse, image_similarities

VARIANTS = {
    "reference": {},
    "pixel_to_patch=floor": {"pixel_to_patch": "floor"},
    "prompt_border=ignore": {"prompt_border": "ignore"},
    "resize=float_antialias": {"resize": "float_antialias"},
    "resize=float": {"resize": "float"},
    "feature_dtype=float32": {"feature_dtype": "float32"},
    "feature_dtype=bfloat16": {"feature_dtype": "bfloat16"},
}
SEGMENT_KEYS = ("best_miou", "miou_at_demo_tau", "oracle_miou")
SIMILARITY_KEYS = ("mean_intra", "mean_inter", "overlap", "best_balanced_accuracy")


def results(cfg, checkpoints: dict[str, str]) -> dict:
    """{(model, dataset, metric): value} of the segmentation and similarity summaries."""
    import pandas as pd

    from mmc.data.readers import open_reader

    evaluation = cfg.evaluation
    thresholds = thresholds_of(evaluation)
    conventions = {"pixel_to_patch": evaluation.pixel_to_patch, "prompt_border": evaluation.prompt_border}
    common = {"prompt": evaluation.prompt, "min_patches": evaluation.min_object_patches, "seed": cfg.seed}
    out = {}
    for dataset in evaluation.datasets:
        for name in cfg.models:
            # not cached under the model's name: every variant's features are computed afresh
            model = dataclasses.replace(configured_model(cfg, name, checkpoints.get(name)), name=None)
            rows, skipped, intra, inter = [], 0, [], []
            for sample, features in dataset_features(cfg, model, open_reader(cfg.datasets[dataset]), dataset):
                feats = features.numpy()
                image_rows, image_skipped = evaluate_image(
                    feats, sample, thresholds, upsample=evaluation.upsample, **common, **conventions
                )
                rows += image_rows
                skipped += image_skipped
                a, b = image_similarities(feats, sample, membership=cfg.similarity.membership, **common, **conventions)
                intra.append(a)
                inter.append(b)
            columns = ["image_id", "object_id", *map(iou_column, thresholds), "oracle_iou"]
            table = pd.DataFrame(rows).reindex(columns=columns)
            summary = summarize(cfg, table, skipped, model, name, dataset)
            similarity = analyse(np.concatenate(intra), np.concatenate(inter), cfg.similarity.bins)
            for key in SEGMENT_KEYS:
                out[(name, dataset, key)] = getattr(summary, key)
            for key in SIMILARITY_KEYS:
                out[(name, dataset, key)] = similarity[key]
    return out


def stored(results_dir: Path) -> dict:
    """The same numbers from the files of a finished run."""
    out = {}
    for path in results_dir.glob("segment/**/summary.json"):  # segment/M/D and segment/M/seedS/D
        summary = json.loads(path.read_text())
        for key in SEGMENT_KEYS:
            out[(summary["model"], summary["dataset"], key)] = summary[key]
    for path in results_dir.glob("similarity/**/similarity.json"):
        result = json.loads(path.read_text())
        for key in SIMILARITY_KEYS:
            out[(result["model"], result["dataset"], key)] = result[key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/test.yaml")
    parser.add_argument("--checkpoint", action="append", default=[], help="MODEL=PATH (source: experiment models)")
    parser.add_argument("--reference-results", type=Path, help="a results_dir to compare the reference with")
    args = parser.parse_args()
    cfg = config.load(args.config)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    by_variant = {}
    for variant, changes in VARIANTS.items():
        evaluation = dataclasses.replace(cfg.evaluation, **changes)
        by_variant[variant] = results(dataclasses.replace(cfg, evaluation=evaluation), checkpoints)
    names = list(VARIANTS)[1:]
    print(f"{'model':<10} {'dataset':<16} {'metric':<24} {'reference':>10}" + "".join(f"{n:>24}" for n in names))
    for key, reference in by_variant["reference"].items():
        diffs = "".join(f"{by_variant[n][key] - reference:>+24.4f}" for n in names)
        print(f"{key[0]:<10} {key[1]:<16} {key[2]:<24} {reference:>10.4f}" + diffs)
    miou = [k for k in by_variant["reference"] if k[2] == "best_miou"]
    print("\nmean over models of the change in best mIoU (points):")
    for n in names:
        change = sum(by_variant[n][k] - by_variant["reference"][k] for k in miou) / len(miou)
        print(f"  {n:<24} {100 * change:+.2f}")
    if args.reference_results is not None:
        files = stored(args.reference_results)
        for variant, values in by_variant.items():
            common = [k for k in values if k in files]
            if common:
                largest = max(abs(values[k] - files[k]) for k in common)
                print(f"{variant} vs {args.reference_results}: {len(common)} numbers, largest difference {largest:.3g}")


if __name__ == "__main__":
    main()
