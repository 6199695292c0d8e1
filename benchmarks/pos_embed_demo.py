"""The demo's results under each position-embedding resize, computed in memory (nothing is written).

The demo evaluates a ViT pretrained at 64 px at 128 px, so its position embeddings are resized.
For each method of ``evaluation.pos_embed_resize`` that applies to its models (their embeddings are
learned: ``sincos`` does not apply), this prints each model's segmentation summary, its similarity
summary and the selection scores of every candidate checkpoint, and their differences from ``timm``
(what ``auto`` uses for MMC/timm/random models). Run after the demo (it reads its checkpoints):

    PYTHONPATH=. python benchmarks/pos_embed_demo.py --config config/test.yaml \\
        --checkpoint mmc=checkpoints/test/mmc/seed0.pth --checkpoint mim_only=checkpoints/test/mim_only/seed0.pth \\
        --checkpoint init=results/test/pretrain/mmc/seed0/epoch_0000.pth

Seeded models are evaluated with their first seed, whose candidates are scored (the demo has one).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mmc import config
from mmc.evaluation.job import configured_model
from mmc.evaluation.segment import evaluate, evaluate_checkpoint, summarize
from mmc.evaluation.similarity import analyse, collect

METHODS = ("timm", "dino", "mae")
SEGMENT_KEYS = ("best_miou", "miou_at_demo_tau", "oracle_miou")
SIMILARITY_KEYS = ("mean_intra", "mean_inter", "overlap", "best_balanced_accuracy")


def results(cfg, checkpoints: dict[str, str], candidates: dict[str, list[Path]]) -> dict:
    out = {}
    for dataset in cfg.evaluation.datasets:
        for name in cfg.models:
            # not cached under the model's name: every method's features are computed afresh
            model = dataclasses.replace(configured_model(cfg, name, checkpoints.get(name)), name=None)
            table, skipped, _ = evaluate(cfg, model, dataset)
            summary = summarize(cfg, table, skipped, model, name, dataset)
            intra, inter, _ = collect(cfg, model, dataset)
            similarity = analyse(intra, inter, cfg.similarity.bins)
            for key in SEGMENT_KEYS:
                out[(name, dataset, key)] = getattr(summary, key)
            for key in SIMILARITY_KEYS:
                out[(name, dataset, key)] = similarity[key]
    for experiment, paths in candidates.items():
        for path in paths:
            summary = evaluate_checkpoint(cfg, path, cfg.selection.dataset)
            out[(experiment, f"select {path.name}", "best_miou")] = summary.best_miou
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/test.yaml")
    parser.add_argument("--checkpoint", action="append", default=[], help="MODEL=PATH (source: experiment models)")
    args = parser.parse_args()
    cfg = config.load(args.config)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    pretrain_dir = Path(cfg.results_dir) / "pretrain"
    seed = cfg.seeds[0]  # the initial weights (epoch 0) are never a candidate of the selection
    candidates = {
        e: sorted(p for p in (pretrain_dir / e / f"seed{seed}").glob("epoch_*.pth") if p.name != "epoch_0000.pth")
        for e in cfg.experiments
    }
    by_method = {}
    for method in METHODS:
        evaluation = dataclasses.replace(cfg.evaluation, pos_embed_resize=method)
        by_method[method] = results(dataclasses.replace(cfg, evaluation=evaluation), checkpoints, candidates)
    print(f"{'model':<10} {'dataset':<26} {'metric':<24}" + "".join(f"{m:>10}" for m in METHODS)
          + "".join(f"{m + ' - timm':>14}" for m in METHODS[1:]))  # fmt: skip
    for key, reference in by_method["timm"].items():
        values = [by_method[m][key] for m in METHODS]
        line = f"{key[0]:<10} {key[1]:<26} {key[2]:<24}" + "".join(f"{v:>10.4f}" for v in values)
        print(line + "".join(f"{v - reference:>+14.4f}" for v in values[1:]))


if __name__ == "__main__":
    main()
