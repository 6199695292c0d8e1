"""The job-record format: what one job did, as one JSON file, and where those files live.

Every job writes one record (:mod:`mmc.tracking`, the recorder). The MLflow loader
(:mod:`mmc.mlflow_store`), ``mmc provenance`` and ``mmc pipeline-info`` read them. This module is
the one place that knows the format; it uses the standard library alone, so any reader can depend
on it without pulling in configuration, DVC or MLflow.

Files under ``{results_dir}/tracking/``:

- ``jobs/<name>.json``: one record per job; ``<name>`` is ``stage-key=value-...`` from the job's
  Snakemake wildcards (:func:`default_name`), or the name a stage gives, made file-safe;
- ``invocation.json``: the current workflow invocation, written by ``mmc track start``
  (``{"invocation_id": hex, "run_name", "start_time": ms, "config_path", "config_hash",
  "git_commit", "git_dirty", "host", "user", "tracking_uri", "parent_run_id"}``, the last only with
  a server; ``"status"`` and ``"end_time"`` are added when ``mmc track load --status`` closes it);
- ``configs/<hash>.yaml``: snapshots of the resolved configs the records name.

The record format (version 2; version 1 had no record_id/rule/wildcards/invocation/config/command)::

    {"version": 2, "record_id": hex, "stage": "segment", "name": "segment-model=mmc-dataset=voc",
     "rule": "segment", "wildcards": {"model": "mmc", "dataset": "voc"}, "invocation_id": str|null,
     "status": "FINISHED" | "FAILED", "start_time": ms, "end_time": ms, "cwd": str, "command": [argv],
     "config": {"hash": str, "path": str|null, "snapshot": str|null},
     "params": {str: str}, "tags": {str: str},
     "metrics": [{"key": str, "value": float, "step": int, "timestamp": ms}],
     "artifacts": [path], "files": {"consumed": {path: sha256}, "produced": {path: sha256}},
     "mlflow": {"uri": str, "run_id": str}}   # only when logged directly to a server

Times are milliseconds since the epoch. Paths are as the job gave them; relative ones are relative
to ``cwd`` (:meth:`JobRecord.resolve`). Params are flat (:func:`flatten_params`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

RECORD_VERSION = 2
INVOCATION_ENV = "MMC_INVOCATION_ID"  # never MLFLOW_RUN_ID: that makes start_run resume the parent
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
TRACKING_SUBDIR = Path("tracking")  # under results_dir
RECORD_SUBDIR = TRACKING_SUBDIR / "jobs"


class ResultsLocation(Protocol):
    """All the record paths need of a configuration (``mmc.config`` objects have it)."""

    @property
    def results_dir(self) -> str | os.PathLike: ...


# ----------------------------------------------------------------------------- where records live
def tracking_dir(cfg: ResultsLocation) -> Path:
    return Path(cfg.results_dir) / TRACKING_SUBDIR


def record_dir(cfg: ResultsLocation) -> Path:
    return Path(cfg.results_dir) / RECORD_SUBDIR


def invocation_path(cfg: ResultsLocation) -> Path:
    return tracking_dir(cfg) / "invocation.json"


def safe_name(text: str) -> str:
    """A record's name as a file name: runs of other characters than ``A-Za-z0-9_.=+-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


def default_name(stage: str, wildcards: Mapping[str, Any] | None) -> str:
    """``stage-key=value-...`` from the job's wildcards (in their order), or the stage alone."""
    if not wildcards:
        return stage
    return safe_name("-".join([stage, *(f"{k}={v}" for k, v in wildcards.items())]))


def current_invocation(cfg: ResultsLocation) -> dict[str, Any]:
    """The invocation a job belongs to: ``MMC_INVOCATION_ID`` if set, else ``invocation.json``."""
    try:
        stored = json.loads(invocation_path(cfg).read_text())
    except (OSError, ValueError):
        stored = {}
    env_id = os.environ.get(INVOCATION_ENV)
    if env_id and stored.get("invocation_id") != env_id:
        return {"invocation_id": env_id}
    return stored


# ----------------------------------------------------------------------------- the record's content
def now_ms() -> int:
    return int(time.time() * 1000)


def new_record(stage: str, name: str) -> dict[str, Any]:
    """The record of a job starting now in this process: every field present, nothing logged yet."""
    return {
        "version": RECORD_VERSION,
        "record_id": uuid.uuid4().hex,
        "stage": stage,
        "name": name,
        "rule": stage,
        "wildcards": {},
        "invocation_id": None,
        "status": "RUNNING",
        "start_time": now_ms(),
        "end_time": None,
        "cwd": os.getcwd(),
        "command": list(sys.argv),
        "config": {"hash": None, "path": None, "snapshot": None},
        "params": {},
        "tags": {},
        "metrics": [],
        "artifacts": [],
        "files": {"consumed": {}, "produced": {}},
    }


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mappings -> dotted keys (``pretrain.optim.epochs``); lists as JSON, the rest as ``str``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Model weights: tagged with their sha256, never uploaded as an artefact."""
    return str(path).endswith(CHECKPOINT_SUFFIXES)


def record_hash(record: Mapping) -> str:
    """Content hash of a record, excluding how it was delivered (``mlflow``): the loader's key."""
    content = {k: v for k, v in record.items() if k != "mlflow"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- reading
T = TypeVar("T")


class _Field(Generic[T]):
    """One field of a record's JSON, read through. A record of an older version may lack it (or hold
    null): then it reads as ``missing()``."""

    def __init__(self, missing: Callable[[], T] = lambda: None):
        self.missing = missing

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    def __get__(self, record: JobRecord | None, owner: type | None = None) -> T:
        if record is None:  # looked up on the class
            return self  # type: ignore[return-value]
        value = record.data.get(self.key)
        return self.missing() if value is None else value


@dataclass(frozen=True, eq=False)
class JobRecord:
    """A read-only view of one record. ``data`` is the JSON as written (what is hashed, loaded and
    shown); the attributes read it, filling the fields version 1 lacked as version 2 writes them."""

    data: Mapping[str, Any]
    path: Path | None = None  # the file it was read from

    record_id = _Field[str | None]()
    invocation_id = _Field[str | None]()
    status = _Field[str | None]()
    start_time = _Field[int | None]()
    end_time = _Field[int | None]()
    command = _Field[list[str]](list)
    wildcards = _Field[dict[str, str]](dict)
    params = _Field[dict[str, str]](dict)
    tags = _Field[dict[str, str]](dict)
    metrics = _Field[list[dict[str, Any]]](list)
    artifacts = _Field[list[str]](list)

    @property
    def stage(self) -> str:
        return self.data["stage"]

    @property
    def name(self) -> str:
        return self.data.get("name") or self.stage

    @property
    def rule(self) -> str:
        return self.data.get("rule") or self.stage

    @property
    def config(self) -> dict[str, str | None]:
        """``hash``, ``path`` and ``snapshot`` of the resolved config (each may be None)."""
        return {"hash": None, "path": None, "snapshot": None, **(self.data.get("config") or {})}

    @property
    def consumed(self) -> dict[str, str]:
        """Path -> sha256 of every file the job read."""
        return (self.data.get("files") or {}).get("consumed") or {}

    @property
    def produced(self) -> dict[str, str]:
        """Path -> sha256 of every file the job wrote."""
        return (self.data.get("files") or {}).get("produced") or {}

    @functools.cached_property
    def base_dir(self) -> Path:
        """What the record's relative paths are relative to: the job's working directory; where the
        record now lies in another copy of the project (a clone that pulled the run), that copy's
        folder at the same place; else, where the working directory is not on this machine, the
        current one."""
        moved = self._moved_base()
        if moved is not None:
            return moved
        cwd = self.data.get("cwd")
        return Path(cwd) if cwd and os.path.isdir(cwd) else Path.cwd()

    def _moved_base(self) -> Path | None:
        """The job's working directory in the copy of the project holding this record now, if the
        record was moved with its project. The config snapshot beside the records says where the
        tracking folder was, relative to the working directory (``results/test/tracking``); the
        record's own file says where that folder is now."""
        cwd, snapshot = self.data.get("cwd"), self.config["snapshot"]
        if self.path is None or not cwd or not snapshot:
            return None
        written = Path(os.path.normpath(os.path.join(cwd, snapshot))).parent.parent
        here = Path(os.path.abspath(self.path)).parent.parent  # tracking/jobs/<name>.json -> tracking
        if here == written or here.name != written.name:
            return None
        try:
            relative = written.relative_to(cwd).parts
        except ValueError:  # results_dir was outside the working directory: no way to map it
            return None
        if here.parts[-len(relative):] != relative:
            return None
        return Path(*here.parts[: -len(relative)])

    def resolve(self, path: str | os.PathLike) -> str:
        """The normalised absolute path of a path the record names."""
        return os.path.normpath(os.path.join(self.base_dir, path))


def read_records(directory: Path) -> tuple[list[JobRecord], list[str]]:
    """Every record in ``directory`` (sorted by file name), and the files that are not records."""
    records, invalid = [], []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            invalid.append(str(path))
            continue
        if isinstance(data, dict) and "stage" in data:
            records.append(JobRecord(data, path))
        else:
            invalid.append(str(path))
    return records, invalid
