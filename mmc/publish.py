"""``mmc publish``: version an experiment's selected checkpoint with DVC and push it to the remote.

The checkpoint named by ``mmc select``'s JSON is checked against the sha256 recorded there, copied
to ``{dvc.checkpoint_dir}/E/seedS.pth`` (atomically: a DVC link into the cache is replaced, never
written through), ``dvc add``-ed (one ``.pth.dvc`` per published checkpoint) and ``dvc push``-ed
to ``dvc.remote``. The job record keeps the sha256 and the DVC md5, so ``mmc provenance`` of any
downstream table shows them.

The DVC repository, its remote and the repository lock come from :mod:`mmc.dvc` (the same setup
as ``mmc data version``); the add and push run under that lock, since several publish localrules
may run side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mmc.errors import MMCError
from mmc.files import atomic_path, sha256_file


def read_selection(path: Path) -> tuple[Path, str | None]:
    try:
        selection = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MMCError(f"{path}: cannot read the selection JSON written by `mmc select` ({e})") from None
    if not isinstance(selection, dict) or not isinstance(selection.get("checkpoint"), str):
        raise MMCError(f"{path}: expected a JSON object with a 'checkpoint' path (and its 'sha256')")
    return Path(selection["checkpoint"]), selection.get("sha256")


def publish(
    cfg: Any, experiment: str, selection_path: Path, out: Path | None = None, seed: int | None = None
) -> dict[str, str]:
    """Publish the checkpoint chosen in ``selection_path``; ``seed`` (the run's training seed) names
    the job and, without ``out``, the file: ``{checkpoint_dir}/E/seedS.pth`` (``E.pth`` without it)."""
    from mmc import dvc, tracking

    source, expected = read_selection(selection_path)
    if not source.is_file():
        raise MMCError(f"{selection_path}: the selected checkpoint {source} does not exist")
    from mmc.config import run_name

    target = out or Path(cfg.dvc.checkpoint_dir) / f"{run_name(experiment, seed)}.pth"
    wildcards: dict[str, Any] = {"experiment": experiment} if seed is None else {"experiment": experiment, "seed": seed}
    with tracking.job("publish", cfg, wildcards=wildcards) as rec:
        digest = sha256_file(source)
        if expected and digest != expected:
            raise MMCError(f"{source}: sha256 {digest} differs from {expected} recorded in {selection_path} "
                           "(the checkpoint changed after selection)")
        rec.consumed(selection_path)
        rec.consumed(source, digest)
        with dvc.locked(Path.cwd(), cfg.dvc) as store:
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            dvc.add(store.root, os.path.relpath(os.path.abspath(target), store.root))
            dvc_file = target.with_name(target.name + ".dvc")
            md5 = dvc.dvc_md5(dvc_file)
            if md5 is None:
                raise MMCError(f"{dvc_file}: `dvc add` {target} left no md5 in it")
            dvc.record_listing(dvc_file)  # the workflow checks the published file against it at every start
            dvc.push(store.root, os.path.relpath(os.path.abspath(dvc_file), store.root), remote=store.remote)
        url = store.url
        stored = dvc.remote_object(url, md5)
        if stored is not None and not stored.is_file():
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
    parser.add_argument(
        "--out",
        help="where to put the checkpoint (default: {dvc.checkpoint_dir}/EXPERIMENT.pth, or EXPERIMENT/seedS.pth with --seed)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the training seed of the published run (one of `seeds`)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config

    cfg = config.load(args.config)
    if args.experiment not in cfg.experiments:
        raise MMCError(f"--experiment {args.experiment!r} is not a key of experiments in {args.config} "
                       f"(have: {sorted(cfg.experiments)})")
    if args.seed is not None and args.seed not in cfg.seeds:
        raise MMCError(f"--seed {args.seed} is not one of the seeds of {args.config} {list(cfg.seeds)}")
    info = publish(cfg, args.experiment, Path(args.selection), Path(args.out) if args.out else None, args.seed)
    print(f"published {info['source']} as {info['checkpoint']} (sha256 {info['sha256']}, DVC md5 {info['dvc_md5']}) "
          f"-> {info['remote']}")
    return 0
