"""Checkpoints: atomic writes, the MMC format, every RNG state, validated automatic resume.

Resume checkpoints (``{state_dir}/pretrain/E/step_XXXXXXXXX.pth``) hold everything a run needs to
continue bit for bit; epoch checkpoints (``epoch_XXXX.pth``) are the slim MMC format read by the
evaluation loader (docs/architecture.md). Both are plain dicts of tensors and Python scalars, so
``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import platform
import random
import re
from pathlib import Path

import numpy as np
import torch

from mmc.files import atomic_path

FORMAT = "mmc"
FORMAT_VERSION = 1
RESUME_PATTERN = re.compile(r"^step_(\d{9})\.pth$")
REQUIRED_RESUME_KEYS = ("format", "student", "optimizer", "step", "epoch", "rng", "sampler", "config")


def resume_name(step: int) -> str:
    return f"step_{step:09d}.pth"


def epoch_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pth"


def versions() -> dict:
    import timm

    from mmc import __version__

    return {"mmc": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version()}


def save(obj: dict, path: Path) -> None:
    """torch.save to a temporary sibling, fsync, rename (a kill never leaves a half-written ``path``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def state_digest(*state_dicts: dict | None) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor (None entries skipped)."""
    import hashlib

    digest = hashlib.sha256()
    for sd in state_dicts:
        if sd is None:
            continue
        for name in sorted(sd):
            t = sd[name].detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


# ----------------------------------------------------------------------------- resume
def list_resume(state_dir: Path) -> list[Path]:
    """Resume checkpoints, newest (highest step) first."""
    if not state_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in state_dir.iterdir() if (m := RESUME_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint(path: Path) -> dict:
    """Load and validate one resume checkpoint; raise ValueError with the reason if unusable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "not usable"
        raise ValueError(f"cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in REQUIRED_RESUME_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"lacks the keys {missing}")
    if ckpt["format"] != FORMAT:
        raise ValueError(f"format is {ckpt['format']!r}, expected {FORMAT!r}")
    return ckpt


def latest_valid(state_dir: Path, report=print) -> tuple[dict | None, Path | None]:
    """The newest resume checkpoint that loads; each unusable newer one is reported and skipped."""
    for path in list_resume(state_dir):
        try:
            return load_checkpoint(path), path
        except ValueError as e:
            report(f"warning: resume checkpoint {path} {e}; falling back to the previous one")
    if list_resume(state_dir):
        report(f"warning: no usable resume checkpoint in {state_dir}; starting from step 0")
    return None, None


def prune(state_dir: Path, keep_last: int) -> None:
    for path in list_resume(state_dir)[keep_last:]:
        path.unlink(missing_ok=True)


def mmc_checkpoint(arch: dict, student: dict, teacher: dict | None, epoch: int, step: int, config: dict, **extra) -> dict:
    """The MMC checkpoint format (version 1) plus ``extra`` keys (resume state)."""
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": dict(arch),
        "student": student,
        "epoch": int(epoch),
        "step": int(step),
        "config": config,
        "versions": versions(),
    }
    if teacher is not None:
        ckpt["teacher"] = teacher
    ckpt.update(extra)
    return ckpt


