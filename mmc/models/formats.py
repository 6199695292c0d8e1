"""Checkpoint files of MMC and the public baselines: reading, format detection, conversion.

Each source format has one small, named converter mapping its file onto timm keys;
:data:`CONVERTERS` maps format names to them. :func:`infer_shape` reads what the weights show of the
architecture (everything but the number of heads); :mod:`mmc.models.loading` builds and loads.

Files are untrusted pickles: they are read with ``torch.load(weights_only=True)`` and only the
globals listed in :data:`ALLOWED_GLOBALS` are allowed (DINO/iBOT/MAE full checkpoints pickle an
``argparse.Namespace``). Anything else is refused with a message, never unpickled blindly.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmc.errors import MMCError
from mmc.models.vit import ViTArch

FORMATS = ("mmc", "dino", "ibot", "mae", "mocov3", "timm")

# Globals a supported checkpoint may pickle besides tensors and plain containers: DINO/iBOT/MAE
# pickle their `args`; `torch.__version__` (a str subclass) often lands in a `versions` dict.
ALLOWED_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


def _allowed_globals() -> list:
    from torch.torch_version import TorchVersion

    return [*ALLOWED_GLOBALS, TorchVersion]


# The number of heads cannot be read from the weights (qkv is embed_dim x 3*embed_dim for any head
# count, and the same tensors load into a 6-head or a 12-head model without error, giving different
# features). It comes from the file's own record of its architecture, else from the caller.
# The standard ViT sizes (DeiT/timm: ViT-Ti/S/B/L/H), for callers that give no architecture:
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# MoCo v3's own ViTs (its vits.py: vit_small, vit_base and their conv-stem versions) all have 12
# heads (its README: "Our ViT-Small is with heads=12"); its checkpoints record that name as `arch`.
MOCOV3_ARCH_HEADS = {"vit_small": 12, "vit_base": 12, "vit_conv_small": 12, "vit_conv_base": 12}
# Architecture names stored in DINO/iBOT `args.arch` and MAE `args.model` (DeiT/timm head counts).
_NAMED_ARCHS = {
    "vit_tiny": 3,
    "deit_tiny": 3,
    "vit_small": 6,
    "deit_small": 6,
    "vit_base": 12,
    "deit_base": 12,
    "vit_large": 16,
    "vit_huge": 16,
}


@dataclass
class Converted:
    """A converter's result: backbone weights under timm names, and what it knows about the file."""

    state_dict: dict[str, Any]
    num_heads: int | None = None  # from the file's metadata, when it has any
    dropped: list[str] = field(default_factory=list)  # keys deliberately left out (heads, decoders)
    source: str = ""  # which part of the file was used (e.g. "teacher")


# ----------------------------------------------------------------------------- reading files
def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` and the allow-list; every failure is an MMCError."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise MMCError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        bad = non_finite_tensor(obj)
    except RecursionError:
        raise MMCError(f"{path}: nested too deeply to be a checkpoint") from None
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text or "not an allowed global" in text.lower() or "GLOBAL" in text:
            name = re.search(r"GLOBAL ([\w.]+)", text)
            what = name.group(1) if name else "an object outside the allow-list"
            raise MMCError(
                f"{path}: refused to load: the file pickles {what}, which is not one of the allowed "
                f"globals ({', '.join(g.__module__ + '.' + g.__qualname__ for g in _allowed_globals())}). "
                "Untrusted checkpoints are never unpickled with weights_only=False; convert the file to a "
                "plain state dict first."
            ) from None
        raise MMCError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): {text.splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MMCError(f"{path}: not a readable checkpoint (corrupt or truncated?): {first}") from None
    if bad is not None:
        key, nan, inf, total = bad
        raise MMCError(
            f"{path}: tensor {key} holds {nan} NaN and {inf} infinite values (of {total}): refusing a checkpoint "
            "with non-finite weights (a diverged run or a damaged file)"
        )
    return obj


def non_finite_tensor(obj: Any, key: str = "") -> tuple[str, int, int, int] | None:
    """The first floating tensor in ``obj`` (nested dicts, lists, tuples) with a NaN or an infinity:
    its key (``teacher.backbone.pos_embed``), NaN count, infinity count and size; None if all are finite."""
    import torch

    if isinstance(obj, torch.Tensor):
        if not (obj.is_floating_point() or obj.is_complex()):
            return None
        finite = torch.isfinite(obj)
        if bool(finite.all()):
            return None
        nan = int(torch.isnan(obj).sum())
        return key or "(the whole file)", nan, int((~finite).sum()) - nan, obj.numel()
    if isinstance(obj, Mapping):
        children = ((f"{key}.{k}" if key else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        children = ((f"{key}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for child_key, value in children:
        found = non_finite_tensor(value, child_key)
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------- converters
def _strip(state: Mapping, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _others(state: Mapping, prefix: str) -> list[str]:
    return sorted(k for k in state if not k.startswith(prefix))


def _heads_from_name(name: Any) -> int | None:
    if not isinstance(name, str):
        return None
    for key, heads in _NAMED_ARCHS.items():
        if key in name.lower():
            return heads
    return None


def _args_heads(obj: Mapping) -> int | None:
    args = obj.get("args")
    for attr in ("arch", "model"):
        heads = _heads_from_name(getattr(args, attr, None))
        if heads:
            return heads
    return None


def _require(obj: Any, keys: tuple[str, ...], fmt: str) -> None:
    if not isinstance(obj, Mapping) or any(k not in obj for k in keys):
        have = sorted(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
        raise MMCError(f"not a {fmt} checkpoint: expected top-level keys {list(keys)}, found {have}")


def convert_mmc(obj: Mapping, weights: str) -> Converted:
    """Our own checkpoints: ``teacher``/``student`` state dicts, ViT weights under ``backbone.``."""
    _require(obj, ("arch",), "mmc")
    source = weights
    if weights == "teacher" and obj.get("teacher") is None and "student" in obj:
        # An MIM-only run has no teacher: the teacher is evaluated only where there is one (docs/evaluation.md).
        weights, source = "student", "student (the file has no teacher)"
    if obj.get(weights) is None:
        raise MMCError(f"the MMC checkpoint has no {weights!r} weights (has: {sorted(obj)})")
    part = obj[weights]
    return Converted(
        _strip(part, "backbone."),
        num_heads=int(obj["arch"]["num_heads"]),
        dropped=_others(part, "backbone."),
        source=source,
    )


def _dino_like(obj: Mapping, weights: str, fmt: str, flat_wrapper: str | None) -> Converted:
    """DINO and iBOT: full training checkpoints (EMA teacher under ``teacher``) or backbone files."""
    if "teacher" in obj and "student" in obj:
        part = obj[weights]
        prefix = "backbone." if weights == "teacher" else "module.backbone."
        if weights == "student" and not any(k.startswith(prefix) for k in part):
            prefix = "backbone."
        state = _strip(part, prefix)
        # iBOT's student carries the learned mask embedding; it is not part of the backbone.
        dropped = _others(part, prefix) + [prefix + k for k in state if k == "masked_embed"]
        state.pop("masked_embed", None)
        return Converted(state, num_heads=_args_heads(obj), dropped=dropped, source=weights)
    if flat_wrapper is not None:
        _require(obj, (flat_wrapper,), fmt)
        obj = obj[flat_wrapper]
    # A backbone file may still carry a classifier or the mask embedding: neither is the backbone.
    dropped = sorted(k for k in obj if k == "masked_embed" or k.startswith("head."))
    state = {k: v for k, v in obj.items() if k not in dropped}
    return Converted(state, dropped=dropped, source="backbone file")


def convert_dino(obj: Mapping, weights: str) -> Converted:
    return _dino_like(obj, weights, "dino", flat_wrapper=None)


def convert_ibot(obj: Mapping, weights: str) -> Converted:
    return _dino_like(obj, weights, "ibot", flat_wrapper="state_dict")


def convert_mae(obj: Mapping, weights: str) -> Converted:
    """MAE: ``{'model': encoder}``; ``_full`` files add the decoder and ``mask_token``."""
    _require(obj, ("model",), "mae")
    model = obj["model"]
    dropped = sorted(k for k in model if k.startswith("decoder") or k == "mask_token")
    state = {k: v for k, v in model.items() if k not in dropped}
    return Converted(state, num_heads=_args_heads(obj), dropped=dropped, source="model")


def convert_mocov3(obj: Mapping, weights: str) -> Converted:
    """MoCo v3: ``state_dict`` with ``module.base_encoder.``; its projector lives in ``head.``."""
    _require(obj, ("state_dict",), "mocov3")
    part = obj["state_dict"]
    prefix = "module.base_encoder."
    state = _strip(part, prefix)
    head = sorted(k for k in state if k.startswith("head."))
    for k in head:
        del state[k]
    # only MoCo v3's own names say anything: its vit_small is not DeiT's (12 heads, not 6)
    heads = MOCOV3_ARCH_HEADS.get(obj.get("arch")) if isinstance(obj.get("arch"), str) else None
    return Converted(
        state,
        num_heads=heads,
        dropped=_others(part, prefix) + [prefix + k for k in head],
        source="base_encoder",
    )


def convert_timm(obj: Mapping, weights: str) -> Converted:
    """A plain timm state dict; the classifier (``head.``) is not part of the backbone."""
    head = sorted(k for k in obj if k.startswith("head."))
    return Converted({k: v for k, v in obj.items() if k not in head}, dropped=head, source="state dict")


CONVERTERS: dict[str, Callable[[Mapping, str], Converted]] = {
    "mmc": convert_mmc,
    "dino": convert_dino,
    "ibot": convert_ibot,
    "mae": convert_mae,
    "mocov3": convert_mocov3,
    "timm": convert_timm,
}


def _is_flat_vit(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "patch_embed.proj.weight" in obj and "cls_token" in obj


def detect_format(obj: Any) -> str:
    """Name the source format of a loaded checkpoint from its keys."""
    if not isinstance(obj, Mapping):
        raise MMCError(f"unknown checkpoint format: expected a dict, got {type(obj).__name__}")
    if obj.get("format") == "mmc":
        return "mmc"
    if "teacher" in obj and "student" in obj:
        if "ibot_loss" in obj:
            return "ibot"
        if "dino_loss" in obj:
            return "dino"
        raise MMCError(
            "unknown checkpoint format: a teacher/student checkpoint without 'dino_loss' or 'ibot_loss' "
            "(give the format explicitly: dino or ibot)"
        )
    if isinstance(obj.get("state_dict"), Mapping):
        inner = obj["state_dict"]
        if any(k.startswith("module.base_encoder.") for k in inner):
            return "mocov3"
        if _is_flat_vit(inner):
            return "ibot"
    if isinstance(obj.get("model"), Mapping) and _is_flat_vit(obj["model"]):
        return "mae"
    if _is_flat_vit(obj):
        return "timm"  # DINO's backbone-only files have exactly this layout too
    raise MMCError(
        f"unknown checkpoint format: top-level keys {sorted(map(str, obj))[:15]} match none of "
        f"{list(FORMATS)}"
    )


# ----------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class WeightsShape:
    """What a ViT state dict shows of its architecture: everything but the number of heads."""

    patch_size: int
    embed_dim: int
    depth: int
    mlp_ratio: float
    img_size: int
    no_embed_class: bool  # pos_embed covers the patches only ([CLS] gets none)
    qkv_bias: bool

    def arch(self, num_heads: int) -> ViTArch:
        return ViTArch(self.patch_size, self.embed_dim, self.depth, num_heads, self.mlp_ratio, self.img_size)


def infer_shape(state: Mapping) -> WeightsShape:
    """Depth, width, patch, MLP ratio and training size from the weights."""
    try:
        proj = state["patch_embed.proj.weight"]
        pos = state["pos_embed"]
    except KeyError as e:
        raise MMCError(f"the weights lack {e.args[0]!r}: not a ViT backbone") from None
    embed_dim, _, patch, _ = proj.shape
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0] / embed_dim) if fc1 is not None else 4.0
    tokens = pos.shape[1]
    grid, no_embed_class = None, False
    for prefix_tokens, no_embed in ((1, False), (0, True)):
        side = round((tokens - prefix_tokens) ** 0.5)
        if side * side == tokens - prefix_tokens:
            grid, no_embed_class = side, no_embed
            break
    if grid is None:
        raise MMCError(f"pos_embed has {tokens} tokens: not a square grid (with or without [CLS])")
    return WeightsShape(
        patch_size=int(patch),
        embed_dim=int(embed_dim),
        depth=depth,
        mlp_ratio=mlp_ratio,
        img_size=int(grid * patch),
        no_embed_class=no_embed_class,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def heads_for(fmt: str, conv: Converted, embed_dim: int, expected: ViTArch | None) -> tuple[int, str]:
    """The number of heads and where it comes from: ``file``, ``config`` or ``standard``.

    1. the file's record of its architecture (MMC ``arch``; DINO/iBOT/MAE ``args``; MoCo v3 ``arch``);
    2. else the caller's ``expected`` backbone (the model entry's ``backbone.num_heads``);
    3. else the standard ViT size of that width, except for MoCo v3 at width 384, whose ViT-S has
       12 heads where the standard ViT-S has 6: refused.
    """
    if conv.num_heads is not None:
        return conv.num_heads, "file"
    if expected is not None:
        return expected.num_heads, "config"
    if fmt == "mocov3" and embed_dim == 384:
        raise MMCError(
            "cannot tell the number of attention heads of this 384-wide mocov3 file: the weights cannot show it "
            "and the file records no `arch`. MoCo v3's released ViT-S has 12 heads (its checkpoints record "
            "arch: vit_small; its README: 'Our ViT-Small is with heads=12'), a DeiT-style ViT-S has 6: give the "
            "model's backbone.num_heads"
        )
    if embed_dim in STANDARD_HEADS:
        return STANDARD_HEADS[embed_dim], "standard"
    raise MMCError(
        f"cannot tell the number of attention heads of this {fmt} file (width {embed_dim} is not a "
        "standard ViT size and the file records no architecture): give the model's backbone.num_heads"
    )


def conventional_heads(fmt: str, embed_dim: int) -> int | None:
    """What a file of this format and width has by its source's convention (None: no convention)."""
    if fmt == "mocov3" and embed_dim in (384, 768):
        return 12
    return STANDARD_HEADS.get(embed_dim)
