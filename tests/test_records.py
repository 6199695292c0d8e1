"""The job-record format (`mmc.records`): names, hashing, flattening, reading old and new records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from workflow_helpers import write_config

from mmc import config, records, tracking
from mmc.files import sha256_file

# A record as the first version of the format wrote it: no record_id, rule, wildcards, invocation,
# config or command.
VERSION_1 = {"version": 1, "stage": "segment", "name": "segment-mmc-voc", "status": "FINISHED",
             "start_time": 1_700_000_000_000, "end_time": 1_700_000_002_500, "cwd": "/nowhere/on/this/machine",
             "params": {"a": "1"}, "tags": {"mmc.host": "node1"}, "metrics": [], "artifacts": [],
             "files": {"consumed": {"ckpt.pth": "ab"}, "produced": {"out/summary.csv": "cd"}}}


def test_a_recorded_job_reads_back_with_every_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, {"run_name": "rec", "results_dir": "results", "data_dir": "data"})
    cfg = config.load("config.yaml")
    (tmp_path / "in.txt").write_text("input")
    with tracking.job("segment", cfg, wildcards={"model": "mmc/v2", "dataset": "voc"}) as rec:
        rec.consumed("in.txt")
        rec.log_params({"evaluation": {"prompts": ["center", "random"], "size": 448}})
    (record,), invalid = records.read_records(records.record_dir(cfg))
    assert invalid == []
    assert record.path == Path("results/tracking/jobs/segment-model=mmc_v2-dataset=voc.json")
    assert set(record.data) == set(records.new_record("s", "n"))  # every field of the format, no more
    assert record.data["version"] == records.RECORD_VERSION == 2
    assert (record.stage, record.rule, record.status) == ("segment", "segment", "FINISHED")
    assert record.wildcards == {"model": "mmc/v2", "dataset": "voc"}
    assert record.params == {"evaluation.prompts": '["center", "random"]', "evaluation.size": "448"}
    assert record.resolve("in.txt") == str(tmp_path / "in.txt")
    assert record.consumed == {"in.txt": sha256_file(tmp_path / "in.txt")} and record.produced == {}
    assert record.start_time <= record.end_time and record.config["hash"] == config.config_hash(cfg)


def test_version_1_records_read_with_version_2_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = records.JobRecord(VERSION_1)
    assert (record.rule, record.wildcards, record.invocation_id, record.record_id) == ("segment", {}, None, None)
    assert record.config == {"hash": None, "path": None, "snapshot": None} and record.command == []
    assert record.consumed == {"ckpt.pth": "ab"} and record.produced == {"out/summary.csv": "cd"}
    # its working directory is not on this machine: paths are taken relative to the current one
    assert record.resolve("out/summary.csv") == str(tmp_path / "out" / "summary.csv")
    assert record.resolve("/abs/file") == "/abs/file"


def test_unreadable_files_are_listed_not_read(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(VERSION_1))
    (tmp_path / "a.json").write_text(json.dumps({**VERSION_1, "name": "first"}))
    (tmp_path / "half.json").write_text('{"stage": "segm')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "notes.txt").write_text("not a record")
    found, invalid = records.read_records(tmp_path)
    assert [r.name for r in found] == ["first", "segment-mmc-voc"]
    assert sorted(Path(p).name for p in invalid) == ["half.json", "list.json"]


def test_record_hash_ignores_delivery_and_sees_content():
    delivered = {**VERSION_1, "mlflow": {"uri": "http://127.0.0.1:5000", "run_id": "r1"}}
    assert records.record_hash(delivered) == records.record_hash(VERSION_1)
    assert records.record_hash({**VERSION_1, "status": "FAILED"}) != records.record_hash(VERSION_1)
    reordered = dict(reversed(list(VERSION_1.items())))
    assert records.record_hash(reordered) == records.record_hash(VERSION_1)


def test_names_and_checkpoints():
    assert records.default_name("tables", {}) == "tables"
    assert records.default_name("segment", {"model": "a b/c", "dataset": "voc"}) == "segment-model=a_b_c-dataset=voc"
    assert records.safe_name("pretrain: mmc (ViT-S/16)") == "pretrain_mmc_ViT-S_16_"
    assert records.is_checkpoint(Path("epoch_0010.pth")) and records.is_checkpoint("model.safetensors")
    assert not records.is_checkpoint("summary.csv")


def test_invocation_from_file_or_environment(tmp_path, monkeypatch):
    cfg = SimpleNamespace(results_dir=tmp_path)
    monkeypatch.delenv(records.INVOCATION_ENV, raising=False)
    assert records.current_invocation(cfg) == {}
    records.invocation_path(cfg).parent.mkdir(parents=True)
    records.invocation_path(cfg).write_text(json.dumps({"invocation_id": "from-file", "parent_run_id": "p"}))
    assert records.current_invocation(cfg) == {"invocation_id": "from-file", "parent_run_id": "p"}
    monkeypatch.setenv(records.INVOCATION_ENV, "from-env")
    assert records.current_invocation(cfg) == {"invocation_id": "from-env"}
    monkeypatch.setenv(records.INVOCATION_ENV, "from-file")
    assert records.current_invocation(cfg)["parent_run_id"] == "p"
    assert records.record_dir(cfg) == Path(os.fspath(tmp_path)) / "tracking" / "jobs"
