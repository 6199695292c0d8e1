"""Patch features for the zero-shot protocol (docs/evaluation.md), computed once per image.

Features are the output of one block (the last by default) **after the final LayerNorm**, prefix
tokens ([CLS], registers) dropped, reshaped to the patch grid and L2-normalised (as timm's
``forward_intermediates(..., norm=True)``; its default, no norm, differs from DINO's
``get_intermediate_layers``). Off the training grid, position embeddings are resized by the method
of ``evaluation.pos_embed_resize`` (:mod:`mmc.models.pos_embed`), once per grid. Images are resized
by ``evaluation.resize`` (:func:`resize_image`). Every consumer gets the features rounded to
``evaluation.feature_dtype`` (:func:`stored_features`), whether they were computed now or read from
the cache, so a rerun with a warm cache gives the first run's numbers bit for bit.

:func:`iter_features` pairs every sample of a reader with its features and, given a cache
directory, reuses features computed by an earlier job on the same model, dataset and settings (so
``mmc similarity`` reuses ``mmc segment``'s forward passes). The cache is a :class:`FeatureCache`:
one directory per (model, dataset, key), one file per image (:func:`encode_entry`) written
atomically by a background thread as soon as it is computed (memory stays one batch plus a bounded
queue), each checked against a hash of the image's pixels and of its own bytes before use.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import shutil
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmc.data.readers import Sample
from mmc.errors import MMCError

if TYPE_CHECKING:
    from mmc.evaluation.job import EvaluatedModel

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_VERSION = 2  # 2: one binary file per image (encode_entry), features in evaluation.feature_dtype
RESIZE_METHODS = ("pil", "float_antialias", "float")
FEATURE_DTYPES = ("float16", "bfloat16", "float32")
CACHE_MODES = ("auto", True, False)


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


def resize_image(image: np.ndarray, size: tuple[int, int], method: str = "pil"):
    """uint8 H x W x 3 -> float32 tensor 3 x ``size`` in [0, 1], resized by ``evaluation.resize``.

    ``pil``: PIL's bilinear filter on the 8-bit image (what torchvision's ``Resize`` does on a PIL
    image; antialiased when shrinking, the result rounded to 8 bits), then divided by 255;
    ``float_antialias`` / ``float``: the image divided by 255 first, then
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` with / without
    ``antialias`` (no rounding; without antialias, shrinking aliases). An image already of ``size``
    is not resampled by any method.
    """
    import torch

    if method not in RESIZE_METHODS:
        raise MMCError(f"evaluation.resize: {method!r} is not one of {', '.join(RESIZE_METHODS)}")
    same = tuple(image.shape[:2]) == tuple(size)
    if method == "pil":
        from PIL import Image

        if not same:
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if same:
        return x
    resized = torch.nn.functional.interpolate(
        x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=method == "float_antialias"
    )
    return resized[0]


def preprocess(image: np.ndarray, size: tuple[int, int], resize: str = "pil"):
    """uint8 HxWx3 -> float tensor 3 x size, resized (:func:`resize_image`) and normalised."""
    import torch

    x = resize_image(image, size, resize)
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


# ----------------------------------------------------------------------------- stored precision
def _torch_dtype(name: str):
    import torch

    if name not in FEATURE_DTYPES:
        raise MMCError(f"evaluation.feature_dtype: {name!r} is not one of {', '.join(FEATURE_DTYPES)}")
    return getattr(torch, name)


def stored_features(features, feature_dtype: str = "float16"):
    """``features`` as kept and handed out: rounded to ``feature_dtype`` (round to nearest even),
    in that dtype. Consumers compute in float32 (``.float()``), on the cold and the warm path alike."""
    return features.to(_torch_dtype(feature_dtype))


# ----------------------------------------------------------------------------- cache entries
ENTRY_MAGIC = b"MMCFEAT\n"


def encode_entry(header: dict, features) -> bytes:
    """One cache file: magic, header length (uint32 LE), JSON header, raw C-order feature bytes.

    The header holds the caller's fields plus ``dtype``, ``shape``, ``byteorder``, ``nbytes`` and the
    ``crc32`` of the feature bytes, so a truncated or corrupted file is recognised without an fsync
    per file.
    """
    import torch

    tensor = features.detach().cpu().contiguous()
    raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    meta = {
        **header,
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "byteorder": sys.byteorder,
        "nbytes": len(raw),
        "crc32": zlib.crc32(raw),
    }
    text = json.dumps(meta, sort_keys=True).encode()
    return ENTRY_MAGIC + struct.pack("<I", len(text)) + text + raw


def decode_entry(data: bytes | bytearray) -> tuple[dict, Any]:
    """``(header, features)`` of :func:`encode_entry`'s bytes; ValueError when they are not one."""
    import torch

    head = len(ENTRY_MAGIC) + 4
    if len(data) < head or bytes(data[: len(ENTRY_MAGIC)]) != ENTRY_MAGIC:
        raise ValueError("not a feature cache entry")
    (length,) = struct.unpack("<I", bytes(data[len(ENTRY_MAGIC) : head]))
    try:
        meta = json.loads(bytes(data[head : head + length]))
        dtype = _torch_dtype(meta["dtype"])
        shape, nbytes, crc = [int(n) for n in meta["shape"]], int(meta["nbytes"]), int(meta["crc32"])
    except (ValueError, KeyError, TypeError, MMCError) as e:
        raise ValueError(f"unreadable header ({e})") from None
    if meta.get("byteorder") != sys.byteorder:
        raise ValueError(f"written on a {meta.get('byteorder')}-endian machine")
    payload = memoryview(data)[head + length :]
    if len(payload) != nbytes or zlib.crc32(payload) != crc:
        raise ValueError(f"{len(payload)} feature bytes do not match the header ({nbytes}, crc32)")
    buffer = bytearray(payload)
    features = torch.frombuffer(buffer, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
    if features.numel() != int(np.prod(shape)):
        raise ValueError(f"shape {shape} does not fit {nbytes} bytes of {meta['dtype']}")
    return meta, features.reshape(shape)


# ----------------------------------------------------------------------------- the cache
class FeatureCache:
    """Per-image features under ``root/<key[:16]>/``; other keys' directories are removed.

    A cache is only a cache: unreadable entries are recomputed and failed writes are logged. Writes
    (:meth:`put`) go through a bounded queue to one background thread, so the backbone does not wait
    for the file system; each file is written under a temporary name and renamed into place (not
    fsync'ed: a file torn by a crash fails its crc32 and is recomputed). :meth:`close` (or leaving
    the ``with`` block) waits for every queued write; it also runs at interpreter exit.
    """

    def __init__(self, root: str | Path, key: str, *, queue_size: int = 32):
        self.key = key
        self.dir = Path(root) / key[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in Path(root).iterdir():
            if stale.is_dir() and stale != self.dir:
                shutil.rmtree(stale, ignore_errors=True)
        self.written = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _path(self, image_id: str) -> Path:
        return self.dir / f"{hashlib.sha1(image_id.encode()).hexdigest()}.feat"

    def get(self, image_id: str, digest: str):
        """The stored features of ``image_id`` (in the stored dtype) if its entry matches the key,
        the image and its own checksum; else None."""
        path = self._path(image_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("ignoring unreadable cached features %s (%s)", path, e)
            return None
        try:
            meta, features = decode_entry(data)
        except ValueError as e:
            log.warning("ignoring unreadable cached features %s (%s)", path, e)
            return None
        ok = meta.get("key") == self.key and meta.get("image_id") == image_id and meta.get("digest") == digest
        return features if ok else None

    def write(self, image_id: str, digest: str, features) -> None:
        """Write one entry now (temporary name, then rename); raises OSError on failure."""
        data = encode_entry({"key": self.key, "image_id": image_id, "digest": digest}, features)
        path = self._path(image_id)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put(self, image_id: str, digest: str, features) -> None:
        """Queue one entry for the background writer (blocks while the queue is full)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="mmc-feature-cache", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        self._queue.put((image_id, digest, features))

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            image_id, digest, features = item
            try:
                self.write(image_id, digest, features)
                self.written += 1
            except Exception as e:  # a cache must never fail the job
                self.failed += 1
                if self.failed == 1:
                    from mmc.files import describe_free, write_failure

                    # a full disk says so, with the free space (the job goes on without the cache)
                    reason = f"{e}; {describe_free(self.dir)}" if write_failure(e) else str(e)
                    log.warning("could not cache the features of %s in %s (%s)", image_id, self.dir, reason)

    def close(self) -> None:
        """Wait for every queued write; idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join()
        atexit.unregister(self.close)
        if self.failed:
            log.warning(
                "could not cache the features of %d image(s) in %s (%d written); they will be recomputed",
                self.failed,
                self.dir,
                self.written,
            )

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    resize: str = "pil",
    feature_dtype: str = "float16",
) -> Iterator[tuple[Sample, Any]]:
    """Yield ``(sample, features)`` in reader order; features are (gh, gw, D) float32 CPU tensors,
    the values of :func:`stored_features` (``feature_dtype``), computed or read from ``cache``.

    Images of one batch share an input size (always so unless ``keep_aspect``); a batch is flushed
    when it is full or the next image has another size. With ``num_workers > 0`` images are read,
    hashed and preprocessed by that many threads (image decoding releases the GIL) while the
    backbone runs. ``stats`` (if given) receives counts of computed and cached images.
    ``pos_embed`` is the model's :class:`~mmc.models.pos_embed.GridPosEmbed` (None: timm's resize).
    The caller owns ``cache`` (and closes it; :func:`dataset_features` does).
    """
    import torch

    from mmc.models.colour import is_colour_network
    from mmc.models.pos_embed import GridPosEmbed

    colour = is_colour_network(model)
    patch = model.patch_size if colour else model.patch_embed.patch_size[0]
    _torch_dtype(feature_dtype)  # a bad name fails before any work
    if resize not in RESIZE_METHODS:
        raise MMCError(f"evaluation.resize: {resize!r} is not one of {', '.join(RESIZE_METHODS)}")
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
            out = stored_features(patch_features(model, xs, layer, precision, pos_embed), feature_dtype).cpu()
            # clone: an entry must not keep its whole batch alive (in the writer's queue)
            feats = {i: out[j].clone() for j, (i, _) in enumerate(todo)}
            counts["computed"] += len(todo)
        for i, (sample, _, cached, digest) in enumerate(batch):
            if cached is None:
                if cache is not None:
                    cache.put(sample.image_id, digest, feats[i])
                yield sample, feats[i].float()
            else:
                counts["cached"] += 1
                yield sample, cached.float()

    def prepare(sample):
        digest = image_digest(sample.image) if cache is not None else None
        cached = cache.get(sample.image_id, digest) if cache is not None else None
        if cached is not None and cached.dtype != _torch_dtype(feature_dtype):
            cached = None  # the key covers the dtype; this guards a hand-made cache
        h, w = sample.image.shape[:2]
        size = eval_size(h, w, resolution, patch, keep_aspect)
        x = preprocess(sample.image, size, resize) if cached is None else None
        return sample, size, cached, digest, x

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
        "resize": str(evaluation.resize),
        "feature_dtype": str(evaluation.feature_dtype),
    }


def cache_enabled(setting: Any, environ: Any = None) -> bool:
    """``evaluation.feature_cache``: true / false as written; ``auto`` = off inside a SLURM job
    (``SLURM_JOB_ID`` set: features are recomputed rather than written to a shared file system) and
    on elsewhere."""
    if setting is True or setting is False:
        return setting
    if setting != "auto":
        raise MMCError(f"evaluation.feature_cache: {setting!r} is not one of auto, true, false")
    environ = os.environ if environ is None else environ
    return not environ.get("SLURM_JOB_ID")


def cache_root(cfg: Any, model_name: str, dataset_name: str) -> Path | None:
    """Where the features of one model on one dataset are cached (None when caching is off)."""
    if not cache_enabled(cfg.evaluation.feature_cache):
        return None
    return Path(cfg.state_dir) / "features" / model_name / dataset_name


def _closing(features: Iterator, cache: FeatureCache) -> Iterator:
    """``features``, then every queued cache write finished (also when the consumer stops early)."""
    try:
        yield from features
    finally:
        cache.close()


def dataset_features(
    cfg: Any,
    model: EvaluatedModel,
    reader,
    dataset_name: str,
    stats: dict | None = None,
) -> Iterator[tuple[Sample, Any]]:
    """:func:`iter_features` of ``reader`` (samples of dataset ``dataset_name``, or some of them) with
    the ``evaluation`` options of ``cfg``; cached when ``model.name`` is set and
    ``evaluation.feature_cache`` is on (:func:`cache_enabled`). ``mmc segment``, ``mmc similarity``
    and ``mmc figures`` all get their features here, so they see the same numbers. The cache's
    writes are all finished when the iterator is exhausted or closed."""
    from mmc.evaluation.job import resolve_device
    from mmc.models.pos_embed import pos_embed_for

    evaluation = cfg.evaluation
    settings = settings_of(evaluation, model.loaded)
    root = cache_root(cfg, model.name, dataset_name) if model.name is not None else None
    cache = None
    if root is not None:
        cache = FeatureCache(root, cache_key(model.loaded, cfg.datasets[dataset_name], settings))
    features = iter_features(
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
        pos_embed=(
            None if settings["pos_embed_resize"] == "none" else pos_embed_for(model.loaded, evaluation.pos_embed_resize)
        ),
        resize=evaluation.resize,
        feature_dtype=evaluation.feature_dtype,
    )
    return features if cache is None else _closing(features, cache)
