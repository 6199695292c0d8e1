"""Experiment tracking at the edge of every stage.

Stages never talk to MLflow directly. Each job opens a :func:`job` recorder, logs params, metrics
(with steps), tags, artefacts and the hashes of the files it consumed and produced, and on exit the
recorder writes **one JSON job record** atomically. Records are loaded into the MLflow store by a
single writer (``mmc track``), so concurrent SLURM jobs never write one SQLite file.

The record format (version 1)::

    {"version": 1, "stage": "segment", "name": "segment-model=mmc-dataset=voc",
     "status": "FINISHED" | "FAILED", "start_time": ms, "end_time": ms,
     "params": {str: str}, "tags": {str: str},
     "metrics": [{"key": str, "value": float, "step": int, "timestamp": ms}],
     "artifacts": [path], "files": {"consumed": {path: sha256}, "produced": {path: sha256}}}
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmc.files import atomic_path, sha256_file

RECORD_VERSION = 1


def _now_ms() -> int:
    return int(time.time() * 1000)


def _flatten(params: Mapping, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


class JobRecorder:
    """Collects what one job did; :func:`job` writes it out. Disabled recorders drop everything."""

    def __init__(self, stage: str, name: str, record_path: Path | None):
        self.stage = stage
        self.name = name
        self.record_path = record_path
        self.enabled = record_path is not None
        self.record: dict[str, Any] = {
            "version": RECORD_VERSION,
            "stage": stage,
            "name": name,
            "status": "RUNNING",
            "start_time": _now_ms(),
            "end_time": None,
            "params": {},
            "tags": {},
            "metrics": [],
            "artifacts": [],
            "files": {"consumed": {}, "produced": {}},
        }

    def log_params(self, params: Mapping) -> None:
        """Nested mappings are flattened to dotted keys (``pretrain.optim.epochs``)."""
        self.record["params"].update(_flatten(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = _now_ms()
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

    def write(self, status: str) -> None:
        if not self.enabled:
            return
        self.record["status"] = status
        self.record["end_time"] = _now_ms()
        with atomic_path(self.record_path) as tmp:
            tmp.write_text(json.dumps(self.record, indent=1, sort_keys=True))


def record_dir(cfg: Any) -> Path:
    return Path(cfg.results_dir) / "tracking" / "jobs"


@contextlib.contextmanager
def job(stage: str, cfg: Any, name: str | None = None, enabled: bool | None = None) -> Iterator[JobRecorder]:
    """Record one job of ``stage``. The record is written on exit, FINISHED or FAILED."""
    enabled = cfg.tracking.enabled if enabled is None else enabled
    name = name or stage
    recorder = JobRecorder(stage, name, record_dir(cfg) / f"{name}.json" if enabled else None)
    try:
        yield recorder
    except BaseException:
        recorder.write("FAILED")
        raise
    recorder.write("FINISHED")
