"""What the per (model, dataset) evaluation commands share: arguments, the model, the tracked job.

``mmc segment`` and ``mmc similarity`` both import this module, never each other. The model under
evaluation is an :class:`EvaluatedModel`: the :class:`mmc.models.LoadedModel` (the backbone and what
``mmc.models`` reports about its weights), the name its features are cached under and, for a seeded
model (``mmc.config.model_seeds``), the training seed of this evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
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
    loaded = model_for(cfg, name, checkpoint, seed)
    if loaded.path is not None:  # the weights file must match every record of it there is
        check_references(Path(loaded.path), loaded.sha256, checkpoint_references(cfg, name, Path(loaded.path), seed))
    return EvaluatedModel(loaded, run_name(name, seed), seed)


def selection_file(results_dir: str, experiment: str, seed: int | str) -> str:
    """Where the workflow keeps the selection record (``mmc select --out``) of ``experiment`` trained
    with ``seed`` (workflow/rules/common.smk declares this path; ``seed`` may be a wildcard there)."""
    return f"{results_dir}/select/{experiment}/seed{seed}.json"


@dataclass(frozen=True)
class Reference:
    """A recorded hash the weights file must have."""

    algorithm: str  # sha256 or md5
    digest: str
    where: str  # in words, for the message


def checkpoint_references(cfg: Any, name: str, path: Path, seed: int | None = None) -> list[Reference]:
    """What records say model ``name``'s weights file must hash to: the selection record of its
    experiment (``mmc select``, for the selected checkpoint), the DVC file beside it (``mmc publish``: ``E.pth.dvc``), and for a
    ``source: url`` model without a sha256 in the config, the pin of its URL."""
    import json

    from mmc.dvc import dvc_md5

    spec = cfg.models[name]
    found = []
    # the selection record names the selected checkpoint; `checkpoint: initial` is epoch_0000.pth
    if spec.source == "experiment" and spec.checkpoint == "selected" and seed is not None:
        record = Path(selection_file(cfg.results_dir, spec.experiment, seed))
        if record.is_file():
            try:
                sha = json.loads(record.read_text()).get("sha256")
            except (OSError, ValueError, AttributeError) as e:
                raise MMCError(f"{record}: cannot read the selection record ({e})") from None
            if not isinstance(sha, str):
                raise MMCError(f"{record}: the selection record has no sha256 of the selected checkpoint")
            found.append(Reference("sha256", sha, f"the selection record {record}"))
    if spec.source == "url" and spec.sha256 is None:
        from mmc.data.fetch import pins_path, read_pins

        pin = read_pins(cfg).get(spec.url)
        if pin and isinstance(pin.get("sha256"), str):
            found.append(Reference("sha256", pin["sha256"], f"the pin of {spec.url} in {pins_path(cfg)}"))
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        md5 = dvc_md5(dvc_file)
        if md5 is None:
            raise MMCError(f"{dvc_file}: a DVC file without an md5 beside the checkpoint {path}")
        found.append(Reference("md5", md5, f"the DVC file {dvc_file}"))
    return found


def check_references(path: Path, sha256: str | None, references: list[Reference]) -> None:
    """Refuse the weights file if it does not hash to every reference, naming both hashes."""
    from mmc.files import md5_file

    md5 = None
    for ref in references:
        if ref.algorithm == "md5" and md5 is None:
            md5 = md5_file(path)
        got = sha256 if ref.algorithm == "sha256" else md5
        if got != ref.digest:
            raise MMCError(
                f"{path}: {ref.algorithm} {got} differs from {ref.digest} recorded in {ref.where} (the checkpoint "
                "changed since, or is not the one recorded there); refusing to evaluate it"
            )


def require_finite(features: Any, image_id: str, model: EvaluatedModel) -> None:
    """Features must be finite before any metric is computed from them."""
    import torch

    finite = torch.isfinite(features)
    if not bool(finite.all()):
        what = model.name or model.loaded.path or "the model"
        raise MMCError(
            f"{what}: the features of image {image_id} hold {int((~finite).sum())} non-finite values (of "
            f"{features.numel()}): refusing to compute metrics from them (overflow at this precision, or "
            "weights that make the network diverge)"
        )


def checkpoint_model(path: str | Path, fmt: str = "mmc") -> EvaluatedModel:
    """The backbone of one checkpoint file, not cached (checkpoint selection scores many files)."""
    from mmc.models import load_backbone

    return EvaluatedModel(load_backbone(path, fmt))


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MMCError("device: cuda was asked for but no CUDA device is available")
    return name


@contextlib.contextmanager
def evaluation_job(
    stage: str, args: argparse.Namespace, sections: tuple[str, ...] = ("evaluation",)
) -> Iterator[tuple[Any, Any, EvaluatedModel]]:
    """The config, the tracked job (params, tags, the checkpoint consumed, the data read) and the
    model of one evaluation command run with :func:`add_evaluation_arguments`. Yields
    ``(cfg, recorder, model)``."""
    from mmc import config, tracking
    from mmc.cpu_precision import slow_precision_warning
    from mmc.models import check_model_request

    cfg = config.load(args.config)
    # every argument is checked before the job record opens: a mistyped one leaves no record behind
    check_model_request(cfg, args.model, args.checkpoint)
    if args.dataset not in cfg.datasets:
        raise MMCError(f"--dataset {args.dataset!r} is not a key of datasets (have: {sorted(cfg.datasets)})")
    seed = evaluation_seed(cfg, args.model, args.seed)
    wildcards = {"model": args.model, "dataset": args.dataset}
    if seed is not None:
        wildcards["seed"] = seed
    warning = slow_precision_warning("evaluation.precision", cfg.evaluation.precision, resolve_device(cfg.device))
    if warning:
        print(f"mmc {stage}: warning: {warning}", file=sys.stderr, flush=True)
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
        # the images and labels the job read, hashed file by file: `mmc provenance` checks them again
        from mmc.data.digest import dataset_entry

        rec.read_data(args.dataset, dataset_entry(cfg.datasets[args.dataset]))
