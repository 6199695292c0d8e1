"""DVC at the edge: the repository's data directory is versioned as one DVC-tracked tree.

``data/`` (downloads, extracted datasets, manifests, pins) is tracked as a whole by the top-level
``data.dvc`` (``dvc add data``); its ``.dir`` md5 is the dataset provenance identifier that every
run records (:func:`dataset_hash`). The default remote is a local directory, so push and pull work
offline; any DVC URL (``s3://``, ``ssh://``...) can replace it in ``dvc.remote``.

The ``dvc`` command of the running interpreter is called (``python -m dvc``), one command at a time:
DVC takes a repository lock, so these calls belong in local rules, never in parallel jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mmc.errors import MMCError

REMOTE_NAME = "storage"
# Never versioned: resumable partial downloads, the pins lock, a killed run's temporary directories.
IGNORED = ("*.part", "pins.lock", ".*.extract-*", ".*.old-*")


def run(repo: str | os.PathLike, *args: str) -> str:
    """Run ``dvc ARGS`` in ``repo``; return its stdout, or raise MMCError with DVC's own message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = "\n  ".join(message[-8:]) or f"exit status {result.returncode}"
        raise MMCError(f"dvc {' '.join(args)} (in {repo}) failed:\n  {tail}")
    return result.stdout


def setup(repo: str | os.PathLike, dvc_cfg: Any) -> None:
    """Make ``repo`` a DVC repository (if it is not yet) and apply the ``dvc`` config section.

    Idempotent. A relative local remote is relative to the repository root (DVC stores it relative
    to ``.dvc/config``). ``cache_type`` link types avoid storing every byte twice on HPC file
    systems; ``hardlink_lock`` is needed on NFS.
    """
    repo = Path(repo)
    if not (repo / ".dvc").is_dir():
        run(repo, "init", *([] if (repo / ".git").exists() else ["--no-scm"]), "--quiet")
    _ensure_ignored(repo / ".dvcignore")
    run(repo, "remote", "add", "--default", "--force", REMOTE_NAME, dvc_cfg.remote)
    run(repo, "config", "cache.type", dvc_cfg.cache_type)
    run(repo, "config", "core.hardlink_lock", "true" if dvc_cfg.hardlink_lock else "false")


def _ensure_ignored(path: Path) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [pattern for pattern in IGNORED if pattern not in lines]
    if missing:
        header = ["# mmc data download: partial downloads, locks and temporary directories"]
        path.write_text("\n".join([*lines, *header, *missing]) + "\n")


def add(repo: str | os.PathLike, path: str = "data") -> Path:
    """``dvc add PATH``: track the whole tree; returns the ``PATH.dvc`` file."""
    run(repo, "add", "--quiet", path)
    return Path(repo) / f"{path.rstrip('/')}.dvc"


def push(repo: str | os.PathLike, *targets: str) -> None:
    run(repo, "push", "--remote", REMOTE_NAME, *targets)


def pull(repo: str | os.PathLike, *targets: str) -> None:
    run(repo, "pull", "--remote", REMOTE_NAME, *targets)


def dataset_hash(repo_root: str | os.PathLike, dvc_file: str = "data.dvc") -> str:
    """The ``.dir`` md5 that ``dvc add`` recorded for the tracked tree, as stored (``<md5>.dir``).

    It identifies the exact content of the tree: the data's provenance id.
    """
    path = Path(repo_root) / dvc_file
    try:
        body = yaml.safe_load(path.read_text())
    except OSError as e:
        raise MMCError(f"{path}: cannot read the DVC file ({e.strerror}); run `mmc data version` first") from None
    except yaml.YAMLError as e:
        raise MMCError(f"{path}: not a valid DVC file ({e})") from None
    outs = (body or {}).get("outs") or []
    md5 = outs[0].get("md5") if outs and isinstance(outs[0], dict) else None
    if not isinstance(md5, str) or not md5.endswith(".dir"):
        raise MMCError(f"{path}: expected one tracked directory with an md5 ending in '.dir', got {md5!r}")
    return md5
