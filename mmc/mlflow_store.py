"""Job records -> MLflow: one parent run per workflow invocation, one child run per job.

Only three places write to a store:

- ``start_invocation`` (``mmc track start``, Snakemake ``onstart``): a new invocation id written
  atomically to ``{results_dir}/tracking/invocation.json``; with a tracking server it also creates
  the parent run there, so jobs can log their child runs directly.
- ``log_record_direct`` (a job, server mode only): the job's child run, over HTTP.
- ``load_records`` (``mmc track load``, Snakemake ``onsuccess``/``onerror``): every record not yet
  in the store. A file lock makes it the single writer of the embedded SQLite store.

Idempotence: each child run carries ``mmc.record_hash`` (the content hash of its record), set
*last*, once everything else is logged. The loader skips records whose hash is already in the
store, so re-running after a partial failure adds child runs only for jobs that ran again. A run
that has ``mmc.record_id`` but no hash was cut off mid-load; the loader deletes it and loads again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmc import records
from mmc.errors import MMCError
from mmc.files import sha256_file, write_text_atomic
from mmc.records import JobRecord

PARENT_ROLE = "invocation"
UNATTRIBUTED = "unattributed"  # records written with no `mmc track start` before them
MAX_TAG_CHARS = 5000  # MLflow accepts 8000 in 3.x; stay below older servers' 5000


def store_uri(cfg: Any) -> str:
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    return f"sqlite:///{(records.tracking_dir(cfg) / 'mlflow.db').resolve()}"


def _client(uri: str):
    for name in ("alembic", "mlflow.store.db.utils"):  # schema migration chatter on a new store
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, cfg: Any) -> str:
    name = cfg.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not cfg.tracking.uri:  # embedded store: artefacts beside the database, not in ./mlruns
        location = (records.tracking_dir(cfg) / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it between our two calls (server mode)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# ----------------------------------------------------------------------------- invocation (parent)
def start_invocation(cfg: Any, config_path: str | None = None) -> dict[str, Any]:
    from mmc import config as config_module
    from mmc import versions

    invocation = {
        "invocation_id": uuid.uuid4().hex,
        "run_name": cfg.run_name,
        "start_time": int(time.time() * 1000),
        "config_path": config_path,
        "config_hash": config_module.config_hash(cfg),
        "git_commit": versions.git_state()["commit"],
        "git_dirty": versions.git_state()["dirty"],
        "host": versions.host(),
        "tracking_uri": store_uri(cfg) if cfg.tracking.uri else None,
    }
    if cfg.tracking.uri:
        client = _client(store_uri(cfg))
        invocation["parent_run_id"] = _create_parent(client, _experiment_id(client, cfg), cfg, invocation)
    write_text_atomic(records.invocation_path(cfg), json.dumps(invocation, indent=1, sort_keys=True))
    return invocation


def _parent_tags(invocation: Mapping[str, Any]) -> dict[str, str]:
    tags = {"mmc.role": PARENT_ROLE, "mmc.invocation_id": invocation["invocation_id"]}
    for key in ("config_path", "config_hash", "git_commit", "git_dirty", "host"):
        if invocation.get(key) is not None:
            tags[f"mmc.{key}"] = str(invocation[key])
    return tags


def _create_parent(client, experiment_id: str, cfg: Any, invocation: Mapping[str, Any]) -> str:
    from mmc import config as config_module

    run = client.create_run(
        experiment_id, start_time=invocation.get("start_time"), tags=_parent_tags(invocation),
        run_name=invocation.get("run_name") or cfg.run_name,
    )
    run_id = run.info.run_id
    params = records.flatten_params(config_module.to_dict(cfg))
    _log_batch(client, run_id, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resolved_config.yaml"
        path.write_text(config_module.dump(cfg))
        client.log_artifact(run_id, str(path))
    return run_id


# ----------------------------------------------------------------------------- one child run
def mlflow_key(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . : /`` and spaces in a key, and no path tricks."""
    key = re.sub(r"[^\w.\- :/]", "_", str(key))
    key = re.sub(r"/+", "/", key).strip("/")
    return key if key not in ("", ".", "..") else "_"


def _log_batch(client, run_id: str, params: Mapping[str, str] = (), tags: Mapping[str, str] = (),
               metrics: Iterable[Mapping[str, Any]] = ()) -> None:
    from mlflow.entities import Metric, Param, RunTag

    params = [Param(mlflow_key(k), str(v)[:6000]) for k, v in dict(params).items()]
    tags = [RunTag(mlflow_key(k), str(v)[:MAX_TAG_CHARS]) for k, v in dict(tags).items()]
    metrics = [Metric(mlflow_key(m["key"]), m["value"], m["timestamp"], m["step"]) for m in metrics]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _log_artifacts(client, run_id: str, record: JobRecord, max_bytes: int) -> dict[str, str]:
    """Upload small tables and figures; for weights and big files, tag path and sha256 instead."""
    notes: dict[str, str] = {}
    for index, given in enumerate(record.artifacts):
        path = Path(record.resolve(given))
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif not path.is_file():
            notes[f"mmc.artifact_missing.{index}"] = given
        elif records.is_checkpoint(path) or path.stat().st_size > max_bytes:
            notes[f"mmc.artifact_not_uploaded.{index}"] = f"{given} sha256={sha256_file(path)}"
        else:
            client.log_artifact(run_id, str(path))
    with tempfile.TemporaryDirectory() as tmp:  # the record itself: files consumed/produced + hashes
        copy = Path(tmp) / "mmc_job_record.json"
        copy.write_text(json.dumps(record.data, indent=1, sort_keys=True))
        client.log_artifact(run_id, str(copy))
    return notes


def log_record(client, experiment_id: str, parent_run_id: str, record: JobRecord, max_bytes: int) -> str:
    digest = records.record_hash(record.data)
    tags = {**record.tags, "mlflow.parentRunId": parent_run_id, "mmc.record_id": record.record_id or digest}
    if record.config["snapshot"]:
        tags["mmc.config_snapshot"] = record.config["snapshot"]
    run = client.create_run(experiment_id, start_time=record.start_time, tags={"mmc.record_id": tags["mmc.record_id"],
                            "mlflow.parentRunId": parent_run_id}, run_name=record.name)
    run_id = run.info.run_id
    _log_batch(client, run_id, params=record.params, tags=tags, metrics=record.metrics)
    notes = _log_artifacts(client, run_id, record, max_bytes)
    _log_batch(client, run_id, tags={**notes, "mmc.record_hash": digest})  # last: marks it complete
    status = record.status if record.status in ("FINISHED", "FAILED") else "KILLED"
    client.set_terminated(run_id, status=status, end_time=record.end_time)
    return run_id


def _max_bytes(cfg: Any) -> int:
    return int(cfg.tracking.max_artifact_mb * 1024 * 1024)


def log_record_direct(cfg: Any, record: Mapping[str, Any], invocation: Mapping[str, Any]) -> str:
    """Server mode: the job logs its own child run under the parent ``mmc track start`` created."""
    parent = invocation.get("parent_run_id")
    if not parent:
        raise MMCError("no parent run: run `mmc track start --config F` before the jobs (Snakemake onstart)")
    client = _client(store_uri(cfg))
    return log_record(client, _experiment_id(client, cfg), parent, JobRecord(record), _max_bytes(cfg))


# ----------------------------------------------------------------------------- the loader
@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    parents: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} job record(s), skipped {len(self.skipped)} already in the store, "
                f"{len(self.failed)} failed, {len(self.invalid)} unreadable, {len(self.cleaned)} half-loaded run(s) redone; "
                f"parent runs: {len(self.parents)}")


@contextlib.contextmanager
def _single_writer(cfg: Any) -> Iterator[None]:
    lock = records.tracking_dir(cfg) / "load.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second loader waits instead of racing on SQLite
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_records(cfg: Any, status: str | None = None) -> LoadReport:
    """Load every record not yet in the store; ``status`` also closes this invocation's parent."""
    report = LoadReport()
    on_disk, report.invalid = records.read_records(records.record_dir(cfg))
    invocation = records.current_invocation(cfg)
    with _single_writer(cfg):
        client = _client(store_uri(cfg))
        experiment_id = _experiment_id(client, cfg)
        runs = _all_runs(client, experiment_id)
        loaded_hashes = {r.data.tags["mmc.record_hash"] for r in runs if "mmc.record_hash" in r.data.tags}
        parents = {r.data.tags["mmc.invocation_id"]: r.info.run_id for r in runs
                   if r.data.tags.get("mmc.role") == PARENT_ROLE}
        record_ids = {record.record_id for record in on_disk}
        for run in runs:
            tags = run.data.tags
            if tags.get("mmc.record_id") in record_ids and "mmc.record_hash" not in tags and "mmc.role" not in tags:
                client.delete_run(run.info.run_id)
                report.cleaned.append(run.info.run_id)
        for record in on_disk:
            if records.record_hash(record.data) in loaded_hashes:
                report.skipped.append(str(record.path))
                continue
            invocation_id = record.invocation_id or UNATTRIBUTED
            if invocation_id not in parents:
                known = invocation if invocation.get("invocation_id") == invocation_id else {
                    "invocation_id": invocation_id, "run_name": f"{cfg.run_name}-{invocation_id[:12]}"}
                parents[invocation_id] = _create_parent(client, experiment_id, cfg, known)
            try:
                log_record(client, experiment_id, parents[invocation_id], record, _max_bytes(cfg))
            except Exception as e:  # one bad record must not keep the others out; its run is redone next time
                report.failed.append(f"{record.path}: {type(e).__name__}: {e}")
                continue
            report.loaded.append(str(record.path))
        current = invocation.get("invocation_id")
        if status and current:
            if current not in parents:
                parents[current] = _create_parent(client, experiment_id, cfg, invocation)
            client.set_terminated(parents[current], status=status.upper(), end_time=int(time.time() * 1000))
        report.parents = parents
    return report



# ----------------------------------------------------------------------------- audits
REPRODUCTION_ROLE = "reproduction"


def log_reproduction(cfg: Any, *, name: str, invocations: Iterable[str], tags: Mapping[str, str],
                     params: Mapping[str, str], metrics: Mapping[str, float], artifacts: Iterable[Path]) -> str:
    """One run for one ``mmc reproduce`` audit, beside the audited run's own (single writer).

    Tagged ``mmc.role=reproduction`` and ``mmc.reproduces_invocation`` (the audited jobs'
    invocation ids, comma-separated); ``mmc.reproduces_run_id`` names their parent runs where they
    are in the store. Not a child of them: an invocation's children are its jobs.
    """
    invocations = sorted(set(invocations))
    with _single_writer(cfg):
        client = _client(store_uri(cfg))
        experiment_id = _experiment_id(client, cfg)
        parents = [r.info.run_id for r in _all_runs(client, experiment_id)
                   if r.data.tags.get("mmc.role") == PARENT_ROLE and r.data.tags.get("mmc.invocation_id") in invocations]
        all_tags = {**tags, "mmc.role": REPRODUCTION_ROLE, "mmc.reproduces_invocation": ",".join(invocations)}
        if parents:
            all_tags["mmc.reproduces_run_id"] = ",".join(parents)
        run = client.create_run(experiment_id, tags={"mmc.role": REPRODUCTION_ROLE}, run_name=name)
        run_id = run.info.run_id
        stamp = int(time.time() * 1000)
        _log_batch(client, run_id, params=params, tags=all_tags,
                   metrics=[{"key": k, "value": float(v), "step": 0, "timestamp": stamp} for k, v in metrics.items()])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, status="FINISHED")
    return run_id
