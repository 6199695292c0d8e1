"""``mmc publish``: version an experiment's selected checkpoint with DVC and push it to the remote.

The checkpoint named by ``mmc select``'s JSON is checked against the sha256 recorded there, copied
to ``{dvc.checkpoint_dir}/E.pth`` (atomically: a DVC link into the cache is replaced, never
written through), ``dvc add``-ed (one ``E.pth.dvc`` per published checkpoint) and ``dvc push``-ed
to ``dvc.remote``. The job record keeps the sha256 and the DVC md5, so ``mmc provenance`` of any
downstream table shows them.

DVC allows one command per repository at a time: publish jobs take a file lock in ``.dvc/tmp``
around their DVC calls (it is a Snakemake localrule, but several may run side by side).
The DVC CLI runs through ``python -m dvc`` of this interpreter.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmc.errors import MMCError
from mmc.files import atomic_path, sha256_file

REMOTE_NAME = "mmc"


def dvc(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise MMCError(f"`dvc {' '.join(args)}` failed in {cwd}:\n{(done.stderr or done.stdout).strip()}")
    return done.stdout


def dvc_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def ensure_repo(cfg: Any, start: Path) -> Path:
    """The DVC repository holding ``start`` (created there if none), with the config's cache settings."""
    root = dvc_root(start)
    if root is None:
        in_git = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True,
                                text=True, check=False)
        if in_git.returncode == 0 and Path(in_git.stdout.strip()).resolve() != start.resolve():
            raise MMCError(f"{start}: not a DVC repository and not the root of its git repository "
                           f"({in_git.stdout.strip()}): run `dvc init` there first")
        dvc("init", "--quiet", *([] if in_git.returncode == 0 else ["--no-scm"]), cwd=start)
        root = start
    wanted = {("cache", "type"): cfg.dvc.cache_type, ("core", "hardlink_lock"): str(cfg.dvc.hardlink_lock).lower()}
    local = configparser.ConfigParser()
    local.read(root / ".dvc" / "config.local")
    for (section, key), value in wanted.items():
        if local.get(section, key, fallback=None) != value:  # each dvc call costs ~0.5 s: only on change
            dvc("config", "--local", f"{section}.{key}", value, cwd=root)
    return root


def _is_url(remote: str) -> bool:
    return "://" in remote


def ensure_remote(cfg: Any, root: Path) -> tuple[str, str]:
    """(name, url) of the remote that points at ``dvc.remote``; added as ``mmc`` if none does."""
    wanted = cfg.dvc.remote if _is_url(cfg.dvc.remote) else str((Path.cwd() / cfg.dvc.remote).resolve())
    has_default = False
    for line in dvc("remote", "list", cwd=root).splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        has_default = has_default or "(default)" in fields[2:]
        url = fields[1] if _is_url(fields[1]) else str(Path(fields[1]).resolve())
        if url == wanted:
            return fields[0], url
    dvc("remote", "add", "--force", *([] if has_default else ["--default"]), REMOTE_NAME,
        os.path.relpath(wanted, root) if not _is_url(wanted) else wanted, cwd=root)
    return REMOTE_NAME, wanted


@contextlib.contextmanager
def repo_lock(root: Path) -> Iterator[None]:
    lock = root / ".dvc" / "tmp" / "mmc-publish.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_selection(path: Path) -> tuple[Path, str | None]:
    try:
        selection = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MMCError(f"{path}: cannot read the selection JSON written by `mmc select` ({e})") from None
    if not isinstance(selection, dict) or not isinstance(selection.get("checkpoint"), str):
        raise MMCError(f"{path}: expected a JSON object with a 'checkpoint' path (and its 'sha256')")
    return Path(selection["checkpoint"]), selection.get("sha256")


def publish(cfg: Any, experiment: str, selection_path: Path, out: Path | None = None) -> dict[str, str]:
    from mmc import tracking

    source, expected = read_selection(selection_path)
    if not source.is_file():
        raise MMCError(f"{selection_path}: the selected checkpoint {source} does not exist")
    target = out or Path(cfg.dvc.checkpoint_dir) / f"{experiment}.pth"
    with tracking.job("publish", cfg, wildcards={"experiment": experiment}) as rec:
        digest = sha256_file(source)
        if expected and digest != expected:
            raise MMCError(f"{source}: sha256 {digest} differs from {expected} recorded in {selection_path} "
                           "(the checkpoint changed after selection)")
        rec.consumed(selection_path)
        rec.consumed(source, digest)
        root = ensure_repo(cfg, Path.cwd())
        with repo_lock(root):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            dvc("add", "--quiet", os.path.relpath(os.path.abspath(target), root), cwd=root)
            dvc_file = target.with_name(target.name + ".dvc")
            md5 = tracking.dvc_md5(dvc_file)
            name, url = ensure_remote(cfg, root)
            dvc("push", "--quiet", "-r", name, os.path.relpath(os.path.abspath(dvc_file), root), cwd=root)
        if not _is_url(url) and not (Path(url) / "files" / "md5" / md5[:2] / md5[2:]).is_file():
            raise MMCError(f"{url}: `dvc push` succeeded but the object {md5} is not in the remote")
        rec.produced(target, digest)
        rec.produced(dvc_file)
        info = {"checkpoint": str(target), "sha256": digest, "dvc_md5": md5, "dvc_file": str(dvc_file),
                "remote": url, "source": str(source)}
        rec.set_tags({"dvc.md5": md5, "dvc.remote": url, "mmc.published_checkpoint": str(target),
                      "mmc.published_sha256": digest})
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a YAML config file")
    parser.add_argument("--experiment", required=True, help="an entry of `experiments`")
    parser.add_argument("--selection", required=True, help="the JSON written by `mmc select` for this experiment")
    parser.add_argument("--out", help="where to put the checkpoint (default: {dvc.checkpoint_dir}/EXPERIMENT.pth)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config

    cfg = config.load(args.config)
    if args.experiment not in cfg.experiments:
        raise MMCError(f"--experiment {args.experiment!r} is not a key of experiments in {args.config} "
                       f"(have: {sorted(cfg.experiments)})")
    info = publish(cfg, args.experiment, Path(args.selection), Path(args.out) if args.out else None)
    print(f"published {info['source']} as {info['checkpoint']} (sha256 {info['sha256']}, DVC md5 {info['dvc_md5']}) "
          f"-> {info['remote']}")
    return 0
