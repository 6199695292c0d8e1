"""What the per (model, dataset) evaluation commands share: arguments, the model, the tracked job.

``mmc segment`` and ``mmc similarity`` both import this module, never each other. The model under
evaluation is an :class:`EvaluatedModel`: the :class:`mmc.models.LoadedModel` (the backbone and what
``mmc.models`` reports about its weights), the name its features are cached under and, for a seeded
model (``mmc.config.model_seeds``), the training seed of this evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmc.errors import MMCError


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of every per model x dataset evaluation command."""
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--model", required=True, help="a key of `models`")
    parser.add_argument("--dataset", required=True, help="a key of `datasets`")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="weights file (overrides the model's source)")
    parser.add_argument(
        "--seed",
        type=int,
        help="the training seed of this evaluation, for a model evaluated once per seed (source experiment, "
        "or random without its own seed; default: the first of its seeds); not for other models",
    )


@dataclass(frozen=True)
class EvaluatedModel:
    """A backbone under evaluation.

    ``loaded`` is what ``mmc.models`` returned (:class:`mmc.models.LoadedModel`: the network, its
    format, sha256, architecture, weights and path): the feature cache key is built from it.
    ``name`` is the name features are cached under (``mmc.config.run_name``: the key of ``models``,
    plus ``/seedS`` for a seeded model); None (checkpoint selection) computes them without the cache.
    ``seed`` is the training seed of a seeded model's evaluation (None for models without seeds).
    """

    loaded: Any  # mmc.models.LoadedModel
    name: str | None = None
    seed: int | None = None

    @property
    def network(self) -> Any:
        """The timm VisionTransformer."""
        return self.loaded.model

    @property
    def sha256(self) -> str | None:
        """The weights file's sha256 (None for a randomly initialised backbone)."""
        return self.loaded.sha256

    @property
    def patch_size(self) -> int:
        return int(self.loaded.arch.patch_size)


def evaluation_seed(cfg: Any, name: str, seed: int | None) -> int | None:
    """The training seed of an evaluation of model ``name``: ``seed`` checked against the model's seeds
    (``mmc.config.model_seeds``), the first of them when None; None for a model without seeds."""
    from mmc.config import model_seeds

    if name not in cfg.models:
        raise MMCError(f"--model {name!r} is not a key of models (have: {sorted(cfg.models)})")
    seeds = model_seeds(cfg.models[name], cfg.seeds)
    if seeds is None:
        if seed is not None:
            raise MMCError(
                f"--seed {seed}: model {name!r} (source {cfg.models[name].source}) is evaluated once, "
                "without a seed: expected no --seed"
            )
        return None
    if seed is None:
        return seeds[0]
    if seed not in seeds:
        raise MMCError(f"--seed {seed} is not a seed of model {name!r}: expected one of {list(seeds)}")
    return int(seed)


def configured_model(
    cfg: Any, name: str, checkpoint: str | None = None, seed: int | None = None
) -> EvaluatedModel:
    """Model ``name`` of the config (its weights from ``checkpoint`` when given), evaluated with training
    seed ``seed`` (:func:`evaluation_seed`), cached under ``mmc.config.run_name(name, seed)``."""
    from mmc.config import run_name
    from mmc.models import model_for

    seed = evaluation_seed(cfg, name, seed)
    return EvaluatedModel(model_for(cfg, name, checkpoint, seed), run_name(name, seed), seed)


def checkpoint_model(path: str | Path, fmt: str = "mmc") -> EvaluatedModel:
    """The backbone of one checkpoint file, not cached (checkpoint selection scores many files)."""
    from mmc.models import load_backbone

    return EvaluatedModel(load_backbone(path, fmt))


@contextlib.contextmanager
def evaluation_job(
    stage: str, args: argparse.Namespace, sections: tuple[str, ...] = ("evaluation",)
) -> Iterator[tuple[Any, Any, EvaluatedModel]]:
    """The config, the tracked job (params, tags, the checkpoint consumed) and the model of one
    evaluation command run with :func:`add_evaluation_arguments`. Yields ``(cfg, recorder, model)``."""
    from mmc import config, tracking

    cfg = config.load(args.config)
    if args.dataset not in cfg.datasets:
        raise MMCError(f"--dataset {args.dataset!r} is not a key of datasets (have: {sorted(cfg.datasets)})")
    seed = evaluation_seed(cfg, args.model, args.seed)
    wildcards = {"model": args.model, "dataset": args.dataset}
    if seed is not None:
        wildcards["seed"] = seed
    with tracking.job(stage, cfg, wildcards=wildcards, config_path=args.config) as rec:
        model = configured_model(cfg, args.model, args.checkpoint, seed)
        params = {name: config.to_dict(getattr(cfg, name)) for name in sections}
        params["model"] = config.to_dict(cfg.models[args.model])
        params["dataset"] = config.to_dict(cfg.datasets[args.dataset])
        rec.log_params(params)
        loaded = model.loaded
        rec.set_tags(
            {
                "model": args.model,
                "dataset": args.dataset,
                "seed": "none" if seed is None else str(seed),
                "format": loaded.format,
                "weights": loaded.weights,
                "checkpoint_sha256": loaded.sha256,
            }
        )
        if loaded.path is not None:
            rec.consumed(loaded.path, loaded.sha256)
        yield cfg, rec, model
