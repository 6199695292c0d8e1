"""`mmc provenance`: trace a table back to data, checkpoint, config and commit; catch tampering."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import REPO, write_config

from mmc import config, versions
from mmc.files import sha256_file

# One stage-like job in its own process: its output is a function of its inputs' bytes.
STAGE_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
from mmc import config, tracking

cfg_path, stage, wildcards, out = sys.argv[1:5]
inputs = sys.argv[5:]
cfg = config.load(cfg_path)
with tracking.job(stage, cfg, wildcards=json.loads(wildcards), config_path=cfg_path) as rec:
    digest = hashlib.sha256()
    for path in inputs:
        rec.consumed(path)
        digest.update(Path(path).read_bytes())
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(f"{stage},{digest.hexdigest()}\\n")
    rec.produced(out)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MMC_INVOCATION_ID"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _stage(root: Path, stage: str, wildcards: dict, out: str, *inputs: str) -> None:
    done = subprocess.run([sys.executable, "stage.py", "config.yaml", stage, json.dumps(wildcards), out, *inputs],
                          cwd=root, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _provenance(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmc", "provenance", *args], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=60)


def dvc_tree_md5(folder: Path) -> str:
    """DVC 3's md5 of a folder, as its docs and dvc-data define it: the md5 of the JSON list of
    ``{"md5", "relpath"}`` of every file, sorted by path, keys sorted, plus ``.dir``."""
    entries = sorted(({"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(folder).as_posix()}
                      for p in folder.rglob("*") if p.is_file()), key=lambda e: e["relpath"])  # fmt: skip
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return _build_run(tmp_path_factory.mktemp("run"))


def _build_run(root: Path) -> Path:
    """data -> pretrain -> select -> segment -> tables, each a real job process with a record."""
    root.mkdir(exist_ok=True)
    (root / "stage.py").write_text(STAGE_SCRIPT)
    write_config(root, {"run_name": "prov", "results_dir": "results", "data_dir": "data"})
    (root / "data").mkdir()
    (root / "data" / "unlabelled.bin").write_bytes(os.urandom(4096))
    (root / "data" / "voc.bin").write_bytes(os.urandom(4096))
    (root / "data.dvc").write_text(f"outs:\n- md5: {dvc_tree_md5(root / 'data')}\n  path: data\n")
    _stage(root, "pretrain", {"experiment": "mmc"}, "results/pretrain/mmc/epoch_0002.pth", "data/unlabelled.bin")
    _stage(root, "select", {"experiment": "mmc"}, "results/select/mmc.json", "results/pretrain/mmc/epoch_0002.pth")
    _stage(root, "segment", {"model": "mmc", "dataset": "voc"}, "results/segment/mmc/voc/summary.csv",
           "results/select/mmc.json", "results/pretrain/mmc/epoch_0002.pth", "data/voc.bin")
    _stage(root, "tables", {}, "results/tables/main.csv", "results/segment/mmc/voc/summary.csv")
    return root


def test_table_traces_back_to_data_checkpoint_config_and_commit(finished_run):
    done = _provenance(finished_run, "results/tables/main.csv")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for job in ("tables", "segment-model=mmc-dataset=voc", "select-experiment=mmc", "pretrain-experiment=mmc"):
        assert f"job {job} " in out
    checkpoint_sha = sha256_file(finished_run / "results/pretrain/mmc/epoch_0002.pth")
    assert f"checkpoint   results/pretrain/mmc/epoch_0002.pth sha256 {checkpoint_sha}" in out
    assert f"data         dataset_dvc_md5 {dvc_tree_md5(finished_run / 'data')}" in out
    cfg_hash = config.config_hash(config.load(finished_run / "config.yaml"))
    assert f"config       {cfg_hash} config.yaml" in out
    assert f"code         git {versions.git_state()['commit']}" in out
    assert f"OK       data/voc.bin  sha256 {sha256_file(finished_run / 'data/voc.bin')[:16]}" in out
    assert "verified     every file on disk matches" in out

    chain = json.loads(_provenance(finished_run, "results/tables/main.csv", "--json").stdout)
    assert [s["record"]["stage"] for s in chain["steps"]] == ["tables", "segment", "pretrain", "select"]
    # Each input of the segment step points at the step that produced it (None: raw data).
    segment_inputs = {c["path"]: c["producer_step"] for c in chain["steps"][1]["consumed"]}
    assert segment_inputs == {"results/select/mmc.json": 3, "results/pretrain/mmc/epoch_0002.pth": 2,
                              "data/voc.bin": None}


def test_tampered_input_is_reported(finished_run, tmp_path):
    data = finished_run / "data" / "voc.bin"
    original = data.read_bytes()
    data.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped
    try:
        done = _provenance(finished_run, "results/tables/main.csv")
    finally:
        data.write_bytes(original)
    assert done.returncode == 1
    now = hashlib.sha256(original[:-1] + bytes([original[-1] ^ 1])).hexdigest()
    assert f"MISMATCH data/voc.bin: recorded {hashlib.sha256(original).hexdigest()}, on disk {now}" in done.stdout
    assert "1 file(s) do not match" in done.stderr
    assert _provenance(finished_run, "results/tables/main.csv").returncode == 0  # restored


def test_tampered_output_itself_is_reported(finished_run):
    table = finished_run / "results" / "tables" / "main.csv"
    original = table.read_text()
    table.write_text(original.replace("tables,", "tables,0"))
    try:
        done = _provenance(finished_run, str(table))  # an absolute path finds the same record
    finally:
        table.write_text(original)
    assert done.returncode == 1
    assert "MISMATCH results/tables/main.csv" in done.stdout


def test_file_without_a_record_is_a_clear_error(finished_run):
    done = _provenance(finished_run, "data/voc.bin")
    assert done.returncode == 2
    assert "data/voc.bin: no job record produced this file" in done.stderr


def test_moved_project_is_still_verified(tmp_path):
    original = _build_run(tmp_path / "original")
    moved = tmp_path / "moved"
    original.rename(moved)  # the records' working directory no longer exists
    done = _provenance(moved, "results/tables/main.csv")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MISSING" not in done.stdout and "(10 checked)" in done.stdout
    (moved / "data" / "unlabelled.bin").write_bytes(b"other pretraining data")
    done = _provenance(moved, "results/tables/main.csv")
    assert done.returncode == 1 and "MISMATCH data/unlabelled.bin" in done.stdout
