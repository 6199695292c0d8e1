"""Strict loading of any supported checkpoint into the project's ViT, as a :class:`LoadedModel`.

Loading is always ``strict=True``, the architecture is asserted against the caller's (the config's)
backbone, and the file's sha256 is recorded: every evaluation output names the exact weights it
used (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmc.errors import MMCError
from mmc.models.formats import (
    CONVERTERS,
    FORMATS,
    conventional_heads,
    detect_format,
    heads_for,
    infer_shape,
    read_checkpoint,
)
from mmc.models.vit import ViTArch, build_vit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A backbone ready for evaluation and what it is: the record every output cites."""

    model: Any  # timm VisionTransformer, eval mode
    format: str  # one of FORMATS, "random", or "colour" (the learning-free floor: mmc.models.colour)
    sha256: str | None  # of the file; None for random and colour models
    arch: ViTArch  # mmc.models.colour.ColourArch for a colour model
    weights: str  # which part of the file was used ("teacher", "base_encoder", ...) or "seed N"
    path: str | None  # the file; None for random models
    dropped_keys: tuple[str, ...] = ()  # file keys deliberately left out (heads, decoders, ...)


def random_backbone(arch: Any, seed: int):
    """An untrained backbone initialised from ``seed`` (the sanity baseline, ``source: random``)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vit(arch)
    return model.eval()


def check_arch(found: ViTArch, expected: ViTArch | None, fmt: str, path: Path) -> None:
    if expected is None:
        return
    wrong = [
        f"{k}: file {getattr(found, k)} vs config {getattr(expected, k)}"
        for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
        if float(getattr(found, k)) != float(getattr(expected, k))
    ]
    if wrong:
        hint = ""
        if fmt == "mocov3" and found.num_heads == 12 and expected.num_heads != 12:
            hint = " (the file records a MoCo v3 ViT, and MoCo v3's ViT-S has 12 heads, not 6: set backbone.num_heads: 12)"
        raise MMCError(f"{path}: wrong architecture for this {fmt} file: {'; '.join(wrong)}{hint}")


def load_state_strict(model, state: Mapping, path: Path) -> None:
    model_keys, file_keys = set(model.state_dict()), set(state)
    missing, extra = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    if missing or extra:
        raise MMCError(
            f"{path}: the weights do not match the ViT backbone: missing keys {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}; unexpected keys {extra[:20]}{' ...' if len(extra) > 20 else ''}"
        )
    for k, v in model.state_dict().items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise MMCError(
                f"{path}: {k} has shape {tuple(state[k].shape)}, the backbone expects {tuple(v.shape)}"
            )
    model.load_state_dict(dict(state), strict=True)


def load_backbone(
    path: str | Path, fmt: str = "auto", weights: str = "teacher", expected_backbone: Any = None
) -> LoadedModel:
    """Load a checkpoint of any supported format into the project's ViT, strictly.

    ``expected_backbone`` (a config ``backbone`` section, a mapping or a :class:`ViTArch`) is the
    architecture the caller expects; the file must match it.
    """
    from mmc.files import sha256_file

    path = Path(path)
    if fmt != "auto" and fmt not in CONVERTERS:
        raise MMCError(f"unknown checkpoint format {fmt!r}: expected auto or one of {list(FORMATS)}")
    if weights not in ("teacher", "student"):
        raise MMCError(f"weights must be teacher or student, got {weights!r}")
    obj = read_checkpoint(path)
    try:
        fmt = detect_format(obj) if fmt == "auto" else fmt
        conv = CONVERTERS[fmt](obj, weights)
        expected = ViTArch.from_config(expected_backbone) if expected_backbone is not None else None
        shape = infer_shape(conv.state_dict)
        heads, heads_from = heads_for(fmt, conv, shape.embed_dim, expected)
        arch = shape.arch(heads)
    except MMCError as e:
        raise MMCError(f"{path}: {e}") from None
    usual = conventional_heads(fmt, shape.embed_dim)
    if heads_from == "config" and usual is not None and usual != heads:
        log.warning(
            "%s: %d attention heads as backbone.num_heads says; the file does not record its head count and the "
            "weights cannot show it, and a %d-wide %s model usually has %d: check the source's release notes",
            path, heads, shape.embed_dim, fmt, usual,
        )  # fmt: skip
    check_arch(arch, expected, fmt, path)
    # every parameter and buffer is loaded (strictly) next: timm's initialisation would be wasted
    model = build_vit(arch, no_embed_class=shape.no_embed_class, qkv_bias=shape.qkv_bias, init_weights=False)
    load_state_strict(model, conv.state_dict, path)
    return LoadedModel(
        model=model.eval(),
        format=fmt,
        sha256=sha256_file(path),
        arch=arch,
        weights=conv.source,
        path=str(path),
        dropped_keys=tuple(conv.dropped),
    )


def check_model_request(cfg: Any, name: str, checkpoint: str | Path | None = None) -> None:
    """What :func:`model_for` checks before reading anything: the model exists, and the weights file
    it needs is given and exists. Commands call it before they open their job record, so a mistyped
    argument leaves no record behind."""
    if name not in cfg.models:
        raise MMCError(f"--model {name!r} is not a key of models (have: {sorted(cfg.models)})")
    spec = cfg.models[name]
    if checkpoint is None and spec.source in ("experiment", "url"):
        raise MMCError(
            f"models.{name} has source {spec.source!r}: pass the weights file with --checkpoint PATH "
            "(the workflow passes the selected checkpoint, the initial weights or the downloaded file)"
        )
    path = checkpoint if checkpoint is not None else (spec.path if spec.source == "file" else None)
    if path is not None and not Path(path).is_file():
        given = "--checkpoint" if checkpoint is not None else f"models.{name}.path"
        raise MMCError(f"{given} {path}: checkpoint file not found")


def model_for(cfg: Any, name: str, checkpoint: str | Path | None = None, seed: int | None = None) -> LoadedModel:
    """The backbone of ``cfg.models[name]``; ``checkpoint`` overrides where its weights come from.

    ``seed`` is the training seed of this evaluation (``mmc.config.model_seeds``): it initialises a
    random model that has no ``seed`` of its own (default: the run's first seed). A ``source: colour``
    model is the learning-free floor (:mod:`mmc.models.colour`), not a network with weights.
    """
    check_model_request(cfg, name, checkpoint)
    spec = cfg.models[name]
    if spec.source == "colour":
        from mmc.models.colour import ColourArch, colour_network

        patch = int(spec.backbone.patch_size)
        return LoadedModel(
            model=colour_network(patch),
            format="colour",
            sha256=None,
            arch=ColourArch(patch),
            weights="rgb mean and std per patch",
            path=None,
        )
    if spec.source == "random" and checkpoint is None:
        arch = ViTArch.from_config(spec.backbone)
        init = spec.seed if spec.seed is not None else (seed if seed is not None else cfg.seeds[0])
        return LoadedModel(
            model=random_backbone(arch, init),
            format="random",
            sha256=None,
            arch=arch,
            weights=f"seed {init}",
            path=None,
        )
    if checkpoint is None:  # source file (check_model_request refused the others)
        checkpoint = spec.path
    # an experiment's architecture is the experiment's, not the `models` entry's default backbone
    expected = cfg.experiments[spec.experiment].backbone if spec.source == "experiment" else spec.backbone
    loaded = load_backbone(checkpoint, spec.format, spec.weights, expected_backbone=expected)
    if spec.sha256 is not None and loaded.sha256 != spec.sha256:
        raise MMCError(
            f"{checkpoint}: sha256 {loaded.sha256} does not match models.{name}.sha256 {spec.sha256}"
        )
    return loaded
