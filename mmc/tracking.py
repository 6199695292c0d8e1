"""Experiment tracking at the edge of every stage.

Stages never talk to MLflow directly. Each job opens a :func:`job` recorder, logs params, metrics
(with steps), tags, artefacts and the hashes of the files it consumed and produced, and on exit the
recorder writes **one JSON job record** atomically. Records are loaded into the MLflow store by a
single writer (``mmc track load``), so concurrent SLURM jobs never write one SQLite file. With
``tracking.uri`` set to an ``http(s)://`` server, the job also logs itself there directly, as a
child of its invocation's parent run (the record still lands on disk: ``mmc provenance`` reads it).

The record format and where records live: :mod:`mmc.records`.

Provenance tags (``mmc.*``, ``snakemake.*``, ``slurm.*``) are added automatically on exit; tags
the stage sets itself win over them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmc.dvc import dvc_md5
from mmc.files import atomic_path, sha256_file
from mmc.records import (
    current_invocation,
    default_name,
    flatten_params,
    is_checkpoint,
    new_record,
    now_ms,
    record_dir,
    safe_name,
    tracking_dir,
)


def dataset_tags(cfg: Any, wildcards: Mapping[str, Any]) -> dict[str, str]:
    """The DVC hash of the data folder (``data.dvc``) and of the job's dataset, where tracked."""
    tags: dict[str, str] = {}
    data_dir = Path(cfg.data_dir)
    md5 = dvc_md5(data_dir.parent / f"{data_dir.name}.dvc")
    if md5:
        tags["mmc.dataset_dvc_md5"] = md5
    name = wildcards.get("dataset")
    datasets = getattr(cfg, "datasets", {}) or {}
    if name and name in datasets:
        root = Path(datasets[name].root)
        md5 = dvc_md5(root.parent / f"{root.name}.dvc")
        if md5:
            tags[f"mmc.dataset.{name}.dvc_md5"] = md5
        manifest = data_dir / "manifests" / f"{name}.json"
        if manifest.is_file():
            tags[f"mmc.dataset.{name}.manifest_sha256"] = sha256_file(manifest)
    return tags


def _config_path_from_argv() -> str | None:
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _config_identity(cfg: Any, config_path: str | None, snapshot_dir: Path) -> dict[str, str | None]:
    """Hash of the resolved config, the file it came from, and a snapshot of it (written once)."""
    from mmc import config as config_module

    try:
        digest = config_module.config_hash(cfg)
    except (TypeError, ValueError):  # not a frozen config (e.g. a bare namespace in a script)
        return {"hash": None, "path": config_path, "snapshot": None}
    snapshot = snapshot_dir / f"{digest}.yaml"
    if not snapshot.exists():
        with atomic_path(snapshot) as tmp:  # concurrent jobs write identical bytes: last rename wins
            tmp.write_text(config_module.dump(cfg))
    return {"hash": digest, "path": config_path, "snapshot": str(snapshot)}


class JobRecorder:
    """Collects what one job did; :func:`job` writes it out. Disabled recorders drop everything."""

    def __init__(self, stage: str, name: str, record_path: Path | None):
        self.stage = stage
        self.name = name
        self.record_path = record_path
        self.enabled = record_path is not None
        self.record: dict[str, Any] = new_record(stage, name)
        self._auto_tags: dict[str, str] = {}

    def log_params(self, params: Mapping) -> None:
        """Nested mappings are flattened to dotted keys (``pretrain.optim.epochs``)."""
        self.record["params"].update(flatten_params(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = now_ms()
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self.record["metrics"].append({"key": key, "value": value, "step": int(step), "timestamp": stamp})

    def log_artifact(self, path: str | Path) -> None:
        self.record["artifacts"].append(str(path))

    def consumed(self, path: str | Path, sha256: str | None = None) -> None:
        self.record["files"]["consumed"][str(path)] = sha256 or sha256_file(path)

    def produced(self, path: str | Path, sha256: str | None = None) -> None:
        self.record["files"]["produced"][str(path)] = sha256 or sha256_file(path)

    def _checkpoint_tags(self) -> dict[str, str]:
        tags = {}
        for direction in ("consumed", "produced"):
            found = {p: h for p, h in self.record["files"][direction].items() if is_checkpoint(p)}
            if found:
                tags[f"mmc.checkpoint_{direction}_sha256"] = ",".join(found.values())
                tags[f"mmc.checkpoint_{direction}"] = ",".join(found)
        return tags

    def finalise(self, status: str, extra_tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Fill status, end time and the provenance tags; return the record (not yet written)."""
        from mmc import versions

        self.record["status"] = status
        self.record["end_time"] = now_ms()
        tags = {**self._auto_tags, **(extra_tags or {}), **self._checkpoint_tags()}
        tags.update({f"mmc.{k}_version" if k in ("torch", "cuda", "timm") else f"mmc.{k}": v
                     for k, v in versions.torch_state(self._auto_tags.get("mmc.requested_device")).items()})
        self.record["tags"] = {**tags, **self.record["tags"]}
        return self.record

    def write(self, status: str, extra_tags: Mapping[str, str] | None = None) -> None:
        if not self.enabled:
            return
        self.finalise(status, extra_tags)
        self.dump()

    def dump(self) -> None:
        """Write the (finalised) record atomically: a reader never sees half a record."""
        # Readable when small; a long training curve (10^5+ points) is written compactly.
        indent = 1 if len(self.record["metrics"]) <= 10_000 else None
        with atomic_path(self.record_path) as tmp:
            tmp.write_text(json.dumps(self.record, indent=indent, sort_keys=True))


def _start_tags(cfg: Any, stage: str, rule: str, wildcards: Mapping[str, Any], invocation: Mapping) -> dict[str, str]:
    import mmc
    from mmc import versions

    git = versions.git_state()
    tags = {
        "mmc.stage": stage,
        "snakemake.rule": rule,
        "mmc.version": mmc.__version__,
        "mmc.git_commit": git["commit"],
        "mmc.git_dirty": git["dirty"],
        "mmc.host": versions.host(),
        "mmc.user": versions.user(),
        "mmc.requested_device": str(getattr(cfg, "device", "auto")),
    }
    if wildcards:
        tags["snakemake.wildcards"] = json.dumps(dict(wildcards), sort_keys=True)
        tags.update({f"snakemake.wildcard.{k}": str(v) for k, v in wildcards.items()})
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
    tags.update({f"mmc.env.{k}": v for k, v in versions.reproducibility_env().items()})
    if invocation.get("invocation_id"):
        tags["mmc.invocation_id"] = invocation["invocation_id"]
    tags.update(dataset_tags(cfg, wildcards))
    return tags


@contextlib.contextmanager
def job(
    stage: str,
    cfg: Any,
    name: str | None = None,
    enabled: bool | None = None,
    *,
    wildcards: Mapping[str, Any] | None = None,
    rule: str | None = None,
    config_path: str | os.PathLike | None = None,
) -> Iterator[JobRecorder]:
    """Record one job of ``stage``. The record is written on exit, FINISHED or FAILED.

    ``wildcards`` are the Snakemake wildcards of the job (``{"model": M, "dataset": D}``); they
    name the record (``segment-model=M-dataset=D``) unless ``name`` is given. ``rule`` defaults to
    ``stage`` (stage = rule = command). ``config_path`` defaults to the ``--config`` argument.
    """
    enabled = cfg.tracking.enabled if enabled is None else enabled
    wildcards = dict(wildcards or {})
    name = safe_name(name) if name else default_name(stage, wildcards)
    recorder = JobRecorder(stage, name, record_dir(cfg) / f"{name}.json" if enabled else None)
    if enabled:
        invocation = current_invocation(cfg)
        rule = rule or stage
        record = recorder.record
        record.update(rule=rule, wildcards={k: str(v) for k, v in wildcards.items()},
                      invocation_id=invocation.get("invocation_id"))
        path = str(config_path) if config_path is not None else _config_path_from_argv()
        record["config"] = _config_identity(cfg, path, tracking_dir(cfg) / "configs")
        recorder._auto_tags = _start_tags(cfg, stage, rule, wildcards, invocation)
        recorder._auto_tags["mmc.record_id"] = record["record_id"]
        if record["config"]["hash"]:
            recorder._auto_tags["mmc.config_hash"] = record["config"]["hash"]
        if path:
            recorder._auto_tags["mmc.config_path"] = path
    try:
        yield recorder
    except BaseException as e:
        recorder.write("FAILED", {"mmc.error": f"{type(e).__name__}: {e}"[:1000]})
        raise
    if not enabled:
        return
    recorder.finalise("FINISHED")
    if _is_remote(cfg):
        _log_directly(cfg, recorder, current_invocation(cfg))
    recorder.dump()


def _is_remote(cfg: Any) -> bool:
    uri = cfg.tracking.uri
    return bool(uri) and str(uri).startswith(("http://", "https://"))


def _log_directly(cfg: Any, recorder: JobRecorder, invocation: Mapping) -> None:
    """Log the finished job to the tracking server now; on failure leave it to ``mmc track load``."""
    from mmc import mlflow_store

    # MLflow's defaults retry for minutes; a job should not hang that long on an unreachable server.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    try:
        run_id = mlflow_store.log_record_direct(cfg, recorder.record, invocation)
    except Exception as e:  # the job's own work succeeded: a server hiccup must not fail it
        print(f"mmc tracking: could not log {recorder.name} to {cfg.tracking.uri} ({e}); "
              "`mmc track load` will load its record", file=sys.stderr)
        return
    recorder.record["mlflow"] = {"uri": str(cfg.tracking.uri), "run_id": run_id}
