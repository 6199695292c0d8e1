"""Patch features for the zero-shot protocol (docs/evaluation.md), computed once per image.

Features are the output of one block (the last by default) **after the final LayerNorm**, prefix
tokens ([CLS], registers) dropped, reshaped to the patch grid and L2-normalised (as timm's
``forward_intermediates(..., norm=True)``; its default, no norm, differs from DINO's
``get_intermediate_layers``). Off the training grid, position embeddings are resized by the method
of ``evaluation.pos_embed_resize`` (:mod:`mmc.models.pos_embed`), once per grid.

:func:`iter_features` pairs every sample of a reader with its features and, given a cache
directory, reuses features computed by an earlier job on the same model, dataset and settings (so
``mmc similarity`` reuses ``mmc segment``'s forward passes). The cache is a :class:`FeatureCache`:
one directory per (model, dataset, key), one file per image written atomically as soon as it is
computed (memory stays one batch), each checked against a hash of the image's pixels before use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmc.data.readers import Sample
from mmc.errors import MMCError
from mmc.files import atomic_path

if TYPE_CHECKING:
    from mmc.evaluation.job import EvaluatedModel

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_VERSION = 1


def eval_size(height: int, width: int, resolution: int, patch: int, keep_aspect: bool) -> tuple[int, int]:
    """Input size: ``resolution`` square, or the longer side ``resolution`` with sides on the patch grid."""
    if not keep_aspect:
        if resolution % patch:
            raise MMCError(f"evaluation.resolution {resolution} is not a multiple of the patch size {patch}")
        return resolution, resolution
    scale = resolution / max(height, width)
    return (
        max(patch, round(height * scale / patch) * patch),
        max(patch, round(width * scale / patch) * patch),
    )


def preprocess(image: np.ndarray, size: tuple[int, int]):
    """uint8 HxWx3 -> float tensor 3 x size, resized (bilinear, as torchvision's Resize on PIL) and normalised."""
    import torch
    from PIL import Image

    pil = Image.fromarray(image)
    if pil.size != (size[1], size[0]):
        pil = pil.resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def patch_features(model, x, layer: int = -1, precision: str = "float32", pos_embed=None):
    """(B, 3, H, W) -> (B, H/p, W/p, D) float32, L2-normalised; block ``layer`` then the final norm.

    ``pos_embed``: the model's :class:`~mmc.models.pos_embed.GridPosEmbed` (None: timm's resize).
    The colour floor (:mod:`mmc.models.colour`) is computed from the input's pixels instead.
    """
    import torch

    from mmc.models.colour import is_colour_network
    from mmc.models.pos_embed import GridPosEmbed
    from mmc.models.vit import block_tokens

    if is_colour_network(model):  # no network: colour statistics of the un-normalised input
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            return model(x * std + mean).float()
    depth = len(model.blocks)
    index = layer if layer >= 0 else depth + layer
    if not 0 <= index < depth:
        raise MMCError(f"evaluation.layer {layer} is out of range for a {depth}-block ViT")
    dtype = {"float32": None, "bfloat16": torch.bfloat16}[precision]
    pos_embed = pos_embed if pos_embed is not None else GridPosEmbed(model, "timm")
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        tokens = block_tokens(model, x, index, pos_embed)
    tokens = tokens.float()
    batch, _, dim = tokens.shape
    grid_h, grid_w = model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    tokens = torch.nn.functional.normalize(tokens, dim=-1)
    return tokens.reshape(batch, grid_h, grid_w, dim)


def image_digest(image: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    h.update(repr(image.shape).encode())
    return h.hexdigest()


def prepared(reader, prepare: Callable, workers: int, window: int) -> Iterator:
    """``map(prepare, reader)`` in order, by ``workers`` threads at most ``window`` items ahead.

    Readers with ``__getitem__`` are also read in the threads; others are read in order here and
    only ``prepare`` runs in the threads.
    """
    if workers <= 0:
        yield from map(prepare, reader)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if hasattr(reader, "__getitem__"):
        tasks = ((lambda i=i: prepare(reader[i])) for i in range(len(reader)))
    else:
        tasks = ((lambda s=s: prepare(s)) for s in reader)
    with ThreadPoolExecutor(workers, thread_name_prefix="mmc-read") as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def cache_key(loaded, dataset_cfg: Any, settings: dict) -> str:
    """What the cached features depend on (the images themselves are checked per entry)."""
    from mmc.config import to_dict

    identity = {
        "model": {
            "format": loaded.format,
            "sha256": loaded.sha256,
            "arch": loaded.arch.as_dict(),
            "weights": loaded.weights,
        },
        "dataset": {k: v for k, v in to_dict(dataset_cfg).items() if k in ("format", "root", "split")},
        "settings": settings,
        "version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Per-image features under ``root/<key[:16]>/``; other keys' directories are removed.

    A cache is only a cache: unreadable entries are recomputed and failed writes are logged.
    """

    def __init__(self, root: str | Path, key: str):
        self.key = key
        self.dir = Path(root) / key[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in Path(root).iterdir():
            if stale.is_dir() and stale != self.dir:
                shutil.rmtree(stale, ignore_errors=True)

    def _path(self, image_id: str) -> Path:
        return self.dir / f"{hashlib.sha1(image_id.encode()).hexdigest()}.pt"

    def get(self, image_id: str, digest: str):
        import torch

        path = self._path(image_id)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            log.warning("ignoring unreadable cached features %s (%s)", path, e)
            return None
        ok = (
            entry.get("key") == self.key
            and entry.get("image_id") == image_id
            and entry.get("digest") == digest
        )
        return entry["features"] if ok else None

    def put(self, image_id: str, digest: str, features) -> None:
        import torch

        entry = {"key": self.key, "image_id": image_id, "digest": digest, "features": features}
        try:
            with atomic_path(self._path(image_id)) as tmp:
                torch.save(entry, tmp)
        except OSError as e:
            log.warning("could not cache the features of %s (%s)", image_id, e)


def iter_features(
    model,
    reader,
    *,
    resolution: int,
    keep_aspect: bool = False,
    layer: int = -1,
    precision: str = "float32",
    batch_size: int = 16,
    num_workers: int = 0,
    device: str = "cpu",
    cache: FeatureCache | None = None,
    stats: dict | None = None,
    pos_embed=None,
) -> Iterator[tuple[Sample, Any]]:
    """Yield ``(sample, features)`` in reader order; features are (gh, gw, D) float32 CPU tensors.

    Images of one batch share an input size (always so unless ``keep_aspect``); a batch is flushed
    when it is full or the next image has another size. With ``num_workers > 0`` images are read,
    hashed and preprocessed by that many threads (image decoding releases the GIL) while the
    backbone runs. ``stats`` (if given) receives counts of computed and cached images.
    ``pos_embed`` is the model's :class:`~mmc.models.pos_embed.GridPosEmbed` (None: timm's resize).
    """
    import torch

    from mmc.models.colour import is_colour_network
    from mmc.models.pos_embed import GridPosEmbed

    colour = is_colour_network(model)
    patch = model.patch_size if colour else model.patch_embed.patch_size[0]
    counts = stats if stats is not None else {}
    counts.update(computed=0, cached=0)
    model = model.to(device).eval()
    if pos_embed is None and not colour:
        pos_embed = GridPosEmbed(model, "timm")  # each grid's embeddings are computed once

    def flush(batch):
        todo = [(i, x) for i, (_, x, cached, _) in enumerate(batch) if cached is None]
        feats = {}
        if todo:
            xs = torch.stack([x for _, x in todo]).to(device)
            out = patch_features(model, xs, layer, precision, pos_embed).cpu()
            # clone: a view would make torch.save store the whole batch with every entry
            feats = {i: out[j].clone() for j, (i, _) in enumerate(todo)}
            counts["computed"] += len(todo)
        for i, (sample, _, cached, digest) in enumerate(batch):
            if cached is None:
                if cache is not None:
                    cache.put(sample.image_id, digest, feats[i])
                yield sample, feats[i]
            else:
                counts["cached"] += 1
                yield sample, cached

    def prepare(sample):
        digest = image_digest(sample.image) if cache is not None else None
        cached = cache.get(sample.image_id, digest) if cache is not None else None
        h, w = sample.image.shape[:2]
        size = eval_size(h, w, resolution, patch, keep_aspect)
        return sample, size, cached, digest, preprocess(sample.image, size) if cached is None else None

    batch: list = []
    size = None
    for sample, this_size, cached, digest, x in prepared(reader, prepare, num_workers, window=2 * batch_size):
        if batch and (len(batch) >= batch_size or this_size != size):
            yield from flush(batch)
            batch = []
        size = this_size
        batch.append((sample, x, cached, digest))
    if batch:
        yield from flush(batch)


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MMCError("device: cuda was asked for but no CUDA device is available")
    return name


def settings_of(evaluation: Any, loaded) -> dict:
    """The evaluation options the features of ``loaded`` depend on (part of the cache key and of
    every summary); ``pos_embed_resize`` is the method used (``auto`` resolved for the format)."""
    from mmc.models.pos_embed import method_for

    colour = loaded.format == "colour"  # the colour floor has no position embeddings
    return {
        "resolution": int(evaluation.resolution),
        "keep_aspect": bool(evaluation.keep_aspect),
        "layer": int(evaluation.layer),
        "precision": str(evaluation.precision),
        "patch_size": int(loaded.arch.patch_size),
        "pos_embed_resize": "none" if colour else method_for(evaluation.pos_embed_resize, loaded.format),
    }


def cache_root(cfg: Any, model_name: str, dataset_name: str) -> Path | None:
    """Where the features of one model on one dataset are cached (None when caching is off)."""
    if not cfg.evaluation.feature_cache:
        return None
    return Path(cfg.state_dir) / "features" / model_name / dataset_name


def dataset_features(
    cfg: Any,
    model: EvaluatedModel,
    reader,
    dataset_name: str,
    stats: dict | None = None,
) -> Iterator[tuple[Sample, Any]]:
    """:func:`iter_features` of ``reader`` (samples of dataset ``dataset_name``, or some of them) with
    the ``evaluation`` options of ``cfg``; cached when ``model.name`` is set and
    ``evaluation.feature_cache`` is on. ``mmc segment``, ``mmc similarity`` and ``mmc figures`` all
    get their features here, so they see the same numbers."""
    from mmc.models.pos_embed import pos_embed_for

    evaluation = cfg.evaluation
    resize = evaluation.pos_embed_resize
    settings = settings_of(evaluation, model.loaded)
    root = cache_root(cfg, model.name, dataset_name) if model.name is not None else None
    cache = None
    if root is not None:
        cache = FeatureCache(root, cache_key(model.loaded, cfg.datasets[dataset_name], settings))
    return iter_features(
        model.network,
        reader,
        resolution=evaluation.resolution,
        keep_aspect=evaluation.keep_aspect,
        layer=evaluation.layer,
        precision=evaluation.precision,
        batch_size=evaluation.batch_size,
        num_workers=evaluation.num_workers,
        device=resolve_device(cfg.device),
        cache=cache,
        stats=stats,
        pos_embed=None if settings["pos_embed_resize"] == "none" else pos_embed_for(model.loaded, resize),
    )
