"""Job records -> MLflow: one parent run per workflow invocation, one child run per job.

Only three places write to a store:

- ``start_invocation`` (``mmc track start``, Snakemake ``onstart``): a new invocation id written
  atomically to ``{results_dir}/tracking/invocation.json``; with a tracking server it also creates
  the parent run there, so jobs can log their child runs directly.
- ``log_record_direct`` (a job, server mode only): the job's child run, over HTTP.
- ``load_records`` (``mmc track load``, Snakemake ``onsuccess``/``onerror``): every record not yet
  in the store. A file lock makes it the single writer of the embedded SQLite store.

MLflow's own fields are filled besides the ``mmc.*`` tags (:func:`standard_tags`): the experiment's
kind (``mlflow.experimentKind``: model training) and the address of its runs page (:func:`runs_url`),
each run's name,
``mlflow.user``, ``mlflow.source.name``/``type`` and ``mlflow.source.git.commit``, and every dataset
a job read as an MLflow dataset input (:func:`dataset_inputs`) whose digest is the DVC hash of the
data the job saw. Every parent run ends FINISHED or FAILED: the hooks close the current one, and the
loader closes the parent of an earlier invocation from its children's statuses.

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
# The experiment kind MLflow's UI reads (the tag its own kind selector writes): "custom_model_development"
# is its "Machine learning" kind. MLflow 3.17's UI still opens a bare experiment address on the GenAI
# overview (its GenAI / Model training switch is kept per browser): runs_url() adds the switch.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Which stage reads which kind of data: the `context` of the MLflow dataset input.
DATASET_CONTEXTS = {"segment": "evaluation", "similarity": "evaluation", "select": "selection",
                    "pretrain": "training", "figures": "evaluation"}


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
        if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:  # a store made before the kind was set
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = None
    if not cfg.tracking.uri:  # embedded store: artefacts beside the database, not in ./mlruns
        # MLflow stores an absolute location (it resolves a relative one when the experiment is
        # created), so the store belongs to this checkout: docs/sharing.md says how a clone rebuilds it.
        location = (records.tracking_dir(cfg) / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another job created it between our two calls (server mode)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def runs_url(cfg: Any, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The UI page of the experiment's runs (``workflowType=machine_learning``: MLflow 3.x UIs that
    keep the GenAI/ML choice per browser rather than per experiment open the runs table too)."""
    base = str(cfg.tracking.uri).rstrip("/") if _is_server(cfg) else ui
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _is_server(cfg: Any) -> bool:
    return str(cfg.tracking.uri or "").startswith(("http://", "https://"))


def standard_tags(*, user: str | None, source_name: str, git_commit: str | None) -> dict[str, str]:
    """MLflow's own run fields (the UI's User, Source and Version columns), from what the record
    or invocation says; ``reproduce`` and the loader share them."""
    tags = {"mlflow.source.name": source_name, "mlflow.source.type": "JOB"}
    if user:
        tags["mlflow.user"] = user
    if git_commit and git_commit != "unknown":
        tags["mlflow.source.git.commit"] = git_commit
    return tags


def _record_standard_tags(record: JobRecord) -> dict[str, str]:
    tags = record.tags
    return standard_tags(user=tags.get("mmc.user") or _user(), source_name=f"mmc {record.stage}",
                         git_commit=tags.get("mmc.git_commit"))


def _user() -> str:
    from mmc import versions

    return versions.user()


def dataset_inputs(cfg: Any, record: JobRecord) -> list:
    """The MLflow dataset inputs of a job: each dataset it read, with the DVC hash it saw as digest.

    A job with a ``dataset`` wildcard (segment, similarity) read that dataset; ``select`` read
    ``selection.dataset``; ``pretrain`` read its image folder. The digest is the dataset's own DVC
    md5 where it has a ``.dvc`` file, else that of the data folder (``data.dvc``, its ``.dir`` md5:
    36 characters, what MLflow's digest column holds). A job that saw no DVC hash logs no input.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    tags = record.tags
    context = DATASET_CONTEXTS.get(record.stage)
    names = []
    if "dataset" in record.wildcards:
        names.append(record.wildcards["dataset"])
    elif record.stage == "select" and record.params.get("selection.policy", "last") != "last":
        names += [name for name in [record.params.get("selection.dataset")] if name not in (None, "None")]
    inputs = []
    for name in names:
        digest = tags.get(f"mmc.dataset.{name}.dvc_md5") or tags.get("mmc.dataset_dvc_md5")
        if not digest:
            continue
        entry = cfg.datasets.get(name)
        source = {"dvc_file": f"{Path(cfg.data_dir).name}.dvc", "md5": digest}
        profile = {}
        if entry is not None:
            source["path"] = str(entry.root)
            profile = {"format": entry.format, "split": entry.split, "max_images": entry.max_images}
        manifest = tags.get(f"mmc.dataset.{name}.manifest_sha256")
        if manifest:
            profile["manifest_sha256"] = manifest
        dataset = Dataset(name=name, digest=digest[:36], source_type="dvc", source=json.dumps(source, sort_keys=True),
                          profile=json.dumps(profile, sort_keys=True) if profile else None)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context or record.stage)]))
    if record.stage == "pretrain" and tags.get("mmc.dataset_dvc_md5"):
        path = record.params.get("data.path") or "pretraining images"
        dataset = Dataset(name=str(path), digest=tags["mmc.dataset_dvc_md5"][:36], source_type="dvc",
                          source=json.dumps({"dvc_file": f"{Path(cfg.data_dir).name}.dvc", "path": str(path),
                                             "md5": tags["mmc.dataset_dvc_md5"]}, sort_keys=True))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")]))
    return inputs


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
        "user": _user(),
        "tracking_uri": store_uri(cfg) if cfg.tracking.uri else None,
    }
    if cfg.tracking.uri:
        client = _client(store_uri(cfg))
        invocation["parent_run_id"] = _create_parent(client, _experiment_id(client, cfg), cfg, invocation)
    write_text_atomic(records.invocation_path(cfg), json.dumps(invocation, indent=1, sort_keys=True))
    return invocation


def parent_run_name(cfg: Any, invocation: Mapping[str, Any]) -> str:
    """``<run_name>-<first 8 hex of the invocation id>``: invocations of one config stay apart."""
    return f"{invocation.get('run_name') or cfg.run_name}-{str(invocation['invocation_id'])[:8]}"


def _parent_tags(invocation: Mapping[str, Any]) -> dict[str, str]:
    tags = {"mmc.role": PARENT_ROLE, "mmc.invocation_id": invocation["invocation_id"]}
    for key in ("config_path", "config_hash", "git_commit", "git_dirty", "host"):
        if invocation.get(key) is not None:
            tags[f"mmc.{key}"] = str(invocation[key])
    config_path = invocation.get("config_path")
    source = f"snakemake --configfile {config_path}" if config_path else "mmc track"
    tags.update(standard_tags(user=invocation.get("user") or _user(), source_name=source,
                              git_commit=invocation.get("git_commit")))
    return tags


def _create_parent(client, experiment_id: str, cfg: Any, invocation: Mapping[str, Any]) -> str:
    from mmc import config as config_module

    run = client.create_run(
        experiment_id, start_time=invocation.get("start_time"), tags=_parent_tags(invocation),
        run_name=parent_run_name(cfg, invocation),
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


def log_record(client, experiment_id: str, parent_run_id: str, record: JobRecord, max_bytes: int,
               cfg: Any = None) -> str:
    """One child run for one record; with ``cfg``, the datasets it read become dataset inputs of
    the child and of its parent (MLflow keeps one input per run and dataset)."""
    digest = records.record_hash(record.data)
    tags = {**_record_standard_tags(record), **record.tags, "mlflow.parentRunId": parent_run_id,
            "mmc.record_id": record.record_id or digest}
    if record.config["snapshot"]:
        tags["mmc.config_snapshot"] = record.config["snapshot"]
    run = client.create_run(experiment_id, start_time=record.start_time, tags={"mmc.record_id": tags["mmc.record_id"],
                            "mlflow.parentRunId": parent_run_id}, run_name=record.name)
    run_id = run.info.run_id
    _log_batch(client, run_id, params=record.params, tags=tags, metrics=record.metrics)
    inputs = dataset_inputs(cfg, record) if cfg is not None else []
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
        client.log_inputs(parent_run_id, datasets=inputs)
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
    return log_record(client, _experiment_id(client, cfg), parent, JobRecord(record), _max_bytes(cfg), cfg=cfg)


# ----------------------------------------------------------------------------- the loader
@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    parents: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None

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


def _invocation_of(invocation_id: str, on_disk: list[JobRecord], cfg: Any) -> dict[str, Any]:
    """What the records of an earlier invocation (its invocation.json since replaced) say about it."""
    own = [r for r in on_disk if (r.invocation_id or UNATTRIBUTED) == invocation_id]
    first = min(own, key=lambda r: r.start_time or 0)
    tags = first.tags
    return {"invocation_id": invocation_id, "run_name": cfg.run_name, "start_time": first.start_time,
            "config_path": first.config["path"], "git_commit": tags.get("mmc.git_commit"),
            "git_dirty": tags.get("mmc.git_dirty"), "host": tags.get("mmc.host"), "user": tags.get("mmc.user")}


def _close_parents(client, parents: Mapping[str, str], parent_runs: Mapping[str, Any], on_disk: list[JobRecord],
                   invocation: Mapping[str, Any]) -> None:
    """End every open parent run this results folder knows the outcome of (see :func:`load_records`)."""
    current = invocation.get("invocation_id")
    children: dict[str, list[JobRecord]] = {}
    for record in on_disk:
        children.setdefault(record.invocation_id or UNATTRIBUTED, []).append(record)
    for invocation_id, run_id in parents.items():
        if invocation_id == current:
            if invocation.get("status"):  # else still running: the onsuccess/onerror hook closes it
                client.set_terminated(run_id, status=invocation["status"], end_time=invocation.get("end_time"))
            continue
        known = parent_runs.get(invocation_id)
        if (known is not None and known.info.status != "RUNNING") or not children.get(invocation_id):
            continue  # closed already, or not this results folder's invocation
        ended = children[invocation_id]
        failed = any(r.status != "FINISHED" for r in ended)
        end = max((r.end_time or 0 for r in ended), default=0) or None
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED", end_time=end)


def load_records(cfg: Any, status: str | None = None) -> LoadReport:
    """Load every record not yet in the store; ``status`` also closes this invocation's parent.

    Parents end FINISHED or FAILED: the current one with ``status`` (kept in ``invocation.json``,
    so a store rebuilt from the records elsewhere closes it the same way), an earlier invocation's
    from its children (FAILED if one failed).
    """
    report = LoadReport()
    on_disk, report.invalid = records.read_records(records.record_dir(cfg))
    invocation = records.current_invocation(cfg)
    current = invocation.get("invocation_id")
    if status and current:
        invocation = {**invocation, "status": status.upper(), "end_time": int(time.time() * 1000)}
        with contextlib.suppress(OSError, ValueError):  # keep the outcome beside the invocation it ends
            path = records.invocation_path(cfg)
            if json.loads(path.read_text()).get("invocation_id") == current:
                write_text_atomic(path, json.dumps(invocation, indent=1, sort_keys=True))
    with _single_writer(cfg):
        client = _client(store_uri(cfg))
        experiment_id = report.experiment_id = _experiment_id(client, cfg)
        runs = _all_runs(client, experiment_id)
        loaded_hashes = {r.data.tags["mmc.record_hash"] for r in runs if "mmc.record_hash" in r.data.tags}
        parent_runs = {r.data.tags["mmc.invocation_id"]: r for r in runs if r.data.tags.get("mmc.role") == PARENT_ROLE}
        parents = {invocation_id: run.info.run_id for invocation_id, run in parent_runs.items()}
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
                known = invocation if invocation_id == current else _invocation_of(invocation_id, on_disk, cfg)
                parents[invocation_id] = _create_parent(client, experiment_id, cfg, known)
            try:
                log_record(client, experiment_id, parents[invocation_id], record, _max_bytes(cfg), cfg=cfg)
            except Exception as e:  # one bad record must not keep the others out; its run is redone next time
                report.failed.append(f"{record.path}: {type(e).__name__}: {e}")
                continue
            report.loaded.append(str(record.path))
        if current and (status or invocation.get("status")) and current not in parents:
            parents[current] = _create_parent(client, experiment_id, cfg, invocation)
        _close_parents(client, parents, parent_runs, on_disk, invocation)
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
