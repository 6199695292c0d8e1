"""``mmc share``: version a run's results folder with DVC and push what a colleague needs to audit it.

After a successful run (Snakemake ``onsuccess``, after ``mmc pipeline-info``), ``dvc add
{results_dir}`` writes ``{results_dir}.dvc`` (e.g. ``results/test.dvc``: commit it with git) and
``dvc push`` sends the folder, ``data.dvc``'s data and the published checkpoints to ``dvc.remote``.
A colleague's ``git clone`` + ``dvc pull`` then has the job records, config snapshots, tables,
figures, logs and ``pipeline_info/`` of the run, and ``mmc provenance`` verifies them
(docs/sharing.md).

Left out of the versioned folder (``.dvcignore``, see ``results/README.md``): the MLflow store and
its artefact copies (machine-local: MLflow keeps absolute paths; a clone rebuilds it from the
records with ``mmc track load``) and the kept epoch checkpoints under ``pretrain/`` (large; the
selected one is published as ``{dvc.checkpoint_dir}/E/seedS.pth.dvc``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from mmc.errors import MMCError

# Below {results_dir}: machine-local or large, never versioned with the run (results/README.md).
NOT_VERSIONED = ("tracking/mlflow.db*", "tracking/artifacts/", "tracking/load.lock", "pretrain/*/seed*/epoch_*.pth")


def results_folder(cfg: Any, repo: Path) -> Path:
    """``results_dir``, checked to be a folder inside the repository (DVC versions nothing outside)."""
    results = Path(cfg.results_dir)
    absolute = Path(os.path.abspath(results))
    inside = absolute.is_relative_to(repo.absolute()) and absolute not in (repo.absolute(), repo.absolute() / "results")
    if not inside or not results.is_dir():
        raise MMCError(f"results_dir: {cfg.results_dir!r} must be the run's own existing folder inside the "
                       f"repository ({repo.absolute()}), e.g. results/<run_name>, to be versioned; "
                       "or set dvc.version_results: false")
    return results


def _modification_times(folder: Path) -> dict[Path, tuple[int, int]]:
    return {path: (stat.st_atime_ns, stat.st_mtime_ns) for path in folder.rglob("*")
            if path.is_file() and not path.is_symlink() and (stat := path.stat())}


def _restore_modification_times(times: dict[Path, tuple[int, int]]) -> None:
    """``dvc add`` (copy cache) and ``dvc unprotect`` rewrite files: give them back their times, or a
    table copied before its input would look older than it and the next run would redo it."""
    for path, (atime, mtime) in times.items():
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(atime, mtime))


def share(cfg: Any, repo: Path | None = None, push: bool = True) -> dict[str, Any]:
    """``dvc add`` the results folder (leaving out :data:`NOT_VERSIONED`) and push the run's data."""
    from mmc import dvc

    repo = repo or Path.cwd()
    results = results_folder(cfg, repo)
    with dvc.locked(repo, cfg.dvc) as store:
        base = dvc.anchored(store.root, results)
        dvc.ensure_ignored(store.root, [f"{base}/{pattern}" for pattern in NOT_VERSIONED],
                           f"mmc share: not versioned with the run {base} (results/README.md)")
        target = Path(os.path.abspath(results)).relative_to(store.root).as_posix()
        times = _modification_times(results)
        dvc_file = dvc.add(store.root, target)
        if cfg.dvc.cache_type.strip() != "copy":  # the next run writes logs, records... into the folder
            dvc.unprotect(store.root, target)
        _restore_modification_times(times)  # Snakemake reruns a job whose output is older than its input
        pushed = [f"{target}.dvc"]
        data = Path(os.path.abspath(cfg.data_dir))
        data_file = data.parent / f"{data.name}.dvc"
        published = [Path(cfg.dvc.checkpoint_dir) / f"{experiment}.pth.dvc" for experiment in cfg.experiments]
        for path in (data_file, *published):
            if path.is_file():
                pushed.append(Path(os.path.abspath(path)).relative_to(store.root).as_posix())
        if push:
            dvc.push(store.root, *pushed, remote=store.remote)
    return {"dvc_file": os.path.relpath(dvc_file), "md5": dvc.dvc_md5(dvc_file), "remote": store.url if push else None,
            "commit": sorted({*pushed, ".dvc/config"})}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a YAML config file")
    parser.add_argument("--no-push", action="store_true", help="only `dvc add` the results folder, do not push")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config

    cfg = config.load(args.config)
    info = share(cfg, push=not args.no_push)
    where = f"pushed to {info['remote']}" if info["remote"] else "not pushed (--no-push)"
    print(f"mmc: versioned {cfg.results_dir} as {info['dvc_file']} (DVC md5 {info['md5']}), {where}")
    print(f"mmc: to share the run: git add {' '.join(info['commit'])} && git commit && git push "
          "(then a colleague runs `git pull && dvc pull`; docs/sharing.md)")
    return 0
