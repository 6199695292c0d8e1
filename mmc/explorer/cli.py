"""``mmc explorer --config F --dataset D ... --out FILE``: write one dataset's explorer page."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmc.errors import MMCError

MB = 10**6
# The page's JSON around each model (name, best tau, representation): an upper bound.
MODEL_OVERHEAD = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the workflow's YAML config file")
    parser.add_argument("--dataset", required=True, help="a key of `datasets` (an evaluation dataset)")
    parser.add_argument(
        "--summaries", nargs="+", required=True, help="summary.json files of mmc segment (each model's best tau)"
    )
    parser.add_argument(
        "--objects", nargs="+", required=True, help="objects.parquet files of mmc segment (the scored prompts)"
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="a model's weights (repeat per model; models of source random and colour need none)",
    )
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.set_defaults(func=_main)


def checkpoint_map(pairs: Sequence[str]) -> dict[str, str]:
    """``--checkpoint MODEL=PATH`` arguments as {model: path} (also used by ``mmc figures``)."""
    mapping = {}
    for pair in pairs:
        model, sep, path = pair.partition("=")
        if not sep or not model or not path:
            raise MMCError(f"--checkpoint {pair!r}: expected MODEL=PATH")
        mapping[model] = path
    return mapping


def require_checkpoints(cfg: Any, checkpoints: dict[str, str]) -> None:
    """Every model with weights (not source random or colour) must have its --checkpoint."""
    for name, model in cfg.models.items():
        if model.source not in ("random", "colour") and name not in checkpoints:
            raise MMCError(f"--checkpoint {name}=PATH is needed for the features of model {name!r}")


def page_samples(cfg: Any, dataset: str) -> list[Any]:
    """The first ``report.explorer_images`` samples of the dataset, in the reader's order."""
    from itertools import islice

    from mmc.data.readers import open_reader

    return list(islice(iter(open_reader(cfg.datasets[dataset])), cfg.report.explorer_images))


def scored_prompts(objects: Sequence[str], dataset: str) -> dict[str, dict[int, tuple[int, int]]]:
    """image id -> object id -> the prompt pixel ``mmc segment`` scored (the same for every model)."""
    import pandas as pd

    prompts: dict[str, dict[int, tuple[int, int]]] = {}
    for path in objects:
        frame = pd.read_parquet(path, columns=["dataset", "image_id", "object_id", "prompt_y", "prompt_x"])
        for row in frame[frame["dataset"] == dataset].itertuples(index=False):
            prompts.setdefault(str(row.image_id), {})[int(row.object_id)] = (int(row.prompt_y), int(row.prompt_x))
    return prompts


def model_tokens(cfg: Any, samples: Sequence[Any], patch: int) -> list[int]:
    """The number of patch tokens of each sample at the evaluation's input size."""
    from mmc.evaluation.features import eval_size

    evaluation = cfg.evaluation
    tokens = []
    for sample in samples:
        h, w = sample.image.shape[:2]
        size = eval_size(h, w, evaluation.resolution, patch, evaluation.keep_aspect)
        tokens.append((size[0] // patch) * (size[1] // patch))
    return tokens


def encoded_model(
    cfg: Any, name: str, checkpoint: str | None, dataset: str, samples, share: int, seed: int | None = None
):
    """(PageModel features, bits, rank) of one model: features through the evaluation's own path
    (:func:`mmc.evaluation.features.dataset_features`: same precision, layer and feature cache as
    ``mmc segment``), encoded within ``share`` bytes and measured against the evaluation's maps.
    ``seed``: the training seed of the evaluation shown (seeded models), as in its summary."""
    from mmc.evaluation.features import dataset_features
    from mmc.evaluation.job import configured_model
    from mmc.explorer.encode import choose_representation, encode_features, measured

    model = configured_model(cfg, name, checkpoint, seed)
    tokens = model_tokens(cfg, samples, model.patch_size)
    bits, rank = choose_representation(share, tokens, int(model.loaded.arch.embed_dim))
    encoded = []
    for _, features in dataset_features(cfg, model, samples, dataset):
        array = features.numpy()
        encoded.append(measured(encode_features(array, rank, bits), array))
    return encoded


def feature_share(max_mb: float, images: Sequence[dict], common: dict, n_models: int, dataset: str) -> int:
    """Bytes of the page each model's features may take: the budget (``report.explorer_max_mb``)
    less everything else (template, images, annotations, an upper bound of each model's JSON),
    shared equally. Raises when nothing is left."""
    from mmc.explorer.page import page_data, render

    fixed = len(render(page_data(images=images, models=[], **common)).encode()) + MODEL_OVERHEAD * n_models
    share = (int(max_mb * MB) - fixed) // max(n_models, 1)
    if share <= 0:
        raise MMCError(
            f"report.explorer_max_mb: {max_mb} MB cannot hold the {len(images)} images of {dataset!r} "
            f"({fixed} bytes without features): expected a larger budget or fewer report.explorer_images"
        )
    return share


def make_explorer(
    cfg: Any,
    dataset: str,
    summaries: Sequence[str],
    objects: Sequence[str],
    checkpoints: dict[str, str],
    out: Path,
) -> dict:
    """Write the page of ``dataset`` to ``out``; returns what was measured (bytes, per-model eps)."""
    from mmc.evaluation.protocol import thresholds_of
    from mmc.evaluation.summary import read_segmentation_summaries
    from mmc.explorer.page import PageModel, image_entry, page_data, render
    from mmc.files import write_text_atomic

    if dataset not in cfg.evaluation.datasets:
        raise MMCError(
            f"--dataset {dataset!r} is not an evaluation dataset (evaluation.datasets: {list(cfg.evaluation.datasets)})"
        )
    shown = [s for s in read_segmentation_summaries(summaries) if s.dataset == dataset]
    repeated = sorted({s.model for s in shown if [t.model for t in shown].count(s.model) > 1})
    if repeated:
        raise MMCError(
            f"the explorer shows one evaluation per model; {dataset} has several of {repeated} "
            "(pass one seed of each: the workflow passes the first)"
        )
    best = {s.model: s.best_tau for s in shown}
    seeds = {s.model: s.seed for s in shown}
    models = list(cfg.models)
    require_checkpoints(cfg, checkpoints)
    samples = page_samples(cfg, dataset)
    if not samples:
        raise MMCError(f"dataset {dataset!r} has no images for the explorer")
    prompts = scored_prompts(objects, dataset)
    images = [image_entry(s, prompts.get(str(s.image_id))) for s in samples]
    common = {
        "run": cfg.run_name,
        "dataset": dataset,
        "upsample": cfg.evaluation.upsample,
        "thresholds": thresholds_of(cfg.evaluation),
        "demo_tau": float(cfg.evaluation.demo_threshold),
    }
    share = feature_share(cfg.report.explorer_max_mb, images, common, len(models), dataset)
    page_models = [
        PageModel(
            name,
            best.get(name),
            encoded_model(cfg, name, checkpoints.get(name), dataset, samples, share, seeds.get(name)),
        )
        for name in models
    ]
    html = render(page_data(images=images, models=page_models, **common))
    size = len(html.encode())
    budget = int(cfg.report.explorer_max_mb * MB)
    if size > budget:
        raise MMCError(f"explorer page of {dataset!r}: {size} bytes exceed report.explorer_max_mb ({budget} bytes)")
    write_text_atomic(out, html)
    return {
        "bytes": size,
        "models": {
            m.name: {
                "bits": m.features[0].bits,
                "rank": max(f.rank for f in m.features),
                "eps": max(float(f.eps) for f in m.features),
            }
            for m in page_models
        },
    }


def check_request(cfg: Any, args: argparse.Namespace) -> dict[str, str]:
    """The command line checked against the config and the disk; returns the checkpoint of each model."""
    from mmc.files import require_files

    if args.dataset not in cfg.evaluation.datasets:
        raise MMCError(
            f"--dataset {args.dataset!r} is not an evaluation dataset (evaluation.datasets: {list(cfg.evaluation.datasets)})"
        )
    checkpoints = checkpoint_map(args.checkpoint)
    unknown = sorted(set(checkpoints) - set(cfg.models))
    if unknown:
        raise MMCError(f"--checkpoint {unknown[0]}=...: not a key of models (have: {sorted(cfg.models)})")
    require_checkpoints(cfg, checkpoints)
    require_files(args.summaries, "--summaries")
    require_files(args.objects, "--objects")
    require_files(checkpoints.values(), "--checkpoint")
    return checkpoints


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking

    cfg = config.load(args.config)
    checkpoints = check_request(cfg, args)  # before the job record opens: a mistyped argument leaves none
    with tracking.job("explorer", cfg, wildcards={"dataset": args.dataset}) as rec:
        for path in [*args.summaries, *args.objects]:
            rec.consumed(path)
        for path in checkpoints.values():
            rec.consumed(path)
        out = Path(args.out)
        measured = make_explorer(cfg, args.dataset, args.summaries, args.objects, checkpoints, out)
        rec.log_params({"report": config.to_dict(cfg.report)})
        rec.log_metrics({"page_bytes": measured["bytes"]})
        rec.log_metrics({f"eps_{name}": m["eps"] for name, m in measured["models"].items()})
        rec.set_tags({f"representation_{n}": f"int{m['bits']} rank {m['rank']}" for n, m in measured["models"].items()})
        rec.produced(out)
    print(f"{out}: {measured['bytes']} bytes; " + ", ".join(
        f"{n}: int{m['bits']} rank {m['rank']}, max |page - evaluation| {m['eps']:.2e}"
        for n, m in measured["models"].items()
    ))
    return 0
