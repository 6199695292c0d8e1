"""Sharing a run (docs/sharing.md): push it from one clone, pull and audit it in another.

A real git repository holding the project's files, a bare repository to push to, a DVC remote
folder outside both clones, and the real workflow on a tiny config. Clone 1 runs the pipeline (its
hooks version the run folder with DVC and push it), commits the `.dvc` files and pushes; clone 2,
at another depth, clones, `dvc pull`s and runs `mmc provenance` on the segmentation table, which
must verify against clone 2's own files (clone 1's copy is changed first to prove it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, REPO, config_with, write_config

pytestmark = pytest.mark.slow
RUN = "results/test"
TINY = {
    "synthetic": {"images": 16, "unlabelled_images": 32, "size": 64},
    "pretrain": {"optim": {"epochs": 2, "batch_size": 16, "warmup_epochs": 1}, "checkpoint": {"every_steps": 0, "save_epochs": []}},
    "evaluation": {"resolution": 64},
    "selection": {"policy": "last"},
}
# what runs made in the developer's checkout (the demo, the study, its sweep) left, .dvc files included
RUN_OUTPUTS = ("checkpoints/", "data/", "data_study", "results/test", "results/study", "state/")
GIT = ["git", "-c", "user.name=mmc test", "-c", "user.email=mmc@example.invalid", "-c", "init.defaultBranch=main"]


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MMC_INVOCATION_ID")}
    env["PYTHONPATH"] = str(project)  # the clone's own copy of mmc, as a colleague would run it
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def _run(command: list[str], cwd: Path, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["timeout", "-k", "10", str(timeout), *command], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} (in {cwd}) exited {done.returncode}\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def _copy_project(dest: Path) -> None:
    """The project's files as git sees them (tracked, and new ones not ignored), in a new repository."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if name.startswith(RUN_OUTPUTS):  # a run made in the developer's checkout is not the project
            continue
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    _run([*GIT, "init", "-q"], dest)
    _run([*GIT, "add", "-A"], dest)
    _run([*GIT, "commit", "-qm", "the project"], dest)


def _replace(path: Path, text: str) -> None:
    """New content under the same name (never written through a DVC link into the cache)."""
    path.unlink()
    path.write_text(text)


def test_push_a_run_then_pull_and_audit_it_in_another_clone(tmp_path):
    remote, origin = tmp_path / "dvc-remote", tmp_path / "origin.git"
    first, second = tmp_path / "alice" / "mmc-repro", tmp_path / "bob" / "work" / "audit" / "mmc-repro"
    first.mkdir(parents=True)
    _copy_project(first)
    raw = config_with(**TINY)
    raw["experiments"] = {"mmc": {}}
    # a trained model (without the reference of config/test.yaml) and the learning-free colour floor
    raw["models"] = {"mmc": {"source": "experiment", "experiment": "mmc"}, "colour": raw["models"]["colour"]}
    raw["dvc"]["remote"] = str(remote)  # a shared folder outside both clones
    write_config(first / "share.yaml", raw)

    # --- clone 1: the run; its hooks render the report, write pipeline_info and version the run
    done = _run([sys.executable, "-m", "snakemake", "--configfile", "share.yaml", "--cores", "2"], first, timeout=900)
    assert f"mmc: versioned {RUN} as {RUN}.dvc" in done.stdout + done.stderr
    index = json.loads((first / RUN / "pipeline_info" / "index.json").read_text())
    assert index["report"] == {"path": f"{RUN}/report.html", "exists": True}  # written after the report
    assert str(first) not in json.dumps(index) and index["tracking"]["store"] == f"sqlite:///{RUN}/tracking/mlflow.db"
    ignored = (first / ".dvcignore").read_text().splitlines()
    assert "/data/downloads/" in ignored and f"/{RUN}/tracking/mlflow.db*" in ignored
    # data.dvc was made after every write under data/ and covers what the jobs read
    data_md5 = yaml.safe_load((first / "data.dvc").read_text())["outs"][0]["md5"]
    segment = json.loads(next((first / RUN / "tracking" / "jobs").glob("segment-model=mmc-*.json")).read_text())
    assert segment["tags"]["mmc.dataset_dvc_md5"] == data_md5

    # versioning the folder changed no file's time: a rerun has nothing to do
    again = _run([sys.executable, "-m", "snakemake", "-n", "--configfile", "share.yaml"], first)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    _run([*GIT, "add", "-A"], first)
    staged = set(_run([*GIT, "diff", "--cached", "--name-only"], first).stdout.split())
    assert {f"{RUN}.dvc", "data.dvc", "checkpoints/test/mmc/seed0.pth.dvc", ".dvc/config"} <= staged, staged
    assert not any(name.startswith(f"{RUN}/") or name.startswith("data/") for name in staged), staged
    _run([*GIT, "commit", "-qm", "a run"], first)
    _run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    _run([*GIT, "push", "-q", str(origin), "HEAD:main"], first)

    # --- clone 2, elsewhere: clone, pull, audit
    second.parent.mkdir(parents=True)
    _run([*GIT, "clone", "-q", "-b", "main", str(origin), str(second)], tmp_path)
    assert (second / "results" / "README.md").is_file() and not (second / RUN).exists()
    _run([sys.executable, "-m", "dvc", "pull", "-q"], second)
    table = second / RUN / "tables" / "segmentation.csv"
    assert table.read_bytes() == (first / RUN / "tables" / "segmentation.csv").read_bytes()
    assert (second / "checkpoints" / "test" / "mmc" / "seed0.pth").is_file() and (second / "data" / "synthetic").is_dir()

    _replace(first / RUN / "tables" / "segmentation.csv", "clone 1 changed its copy\n")
    audit = _run([sys.executable, "-m", "mmc", "provenance", f"{RUN}/tables/segmentation.csv"], second, check=False)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr
    assert "verified     every file on disk matches its recorded sha256" in audit.stdout
    assert f"DVC md5 {yaml.safe_load((second / 'checkpoints/test/mmc/seed0.pth.dvc').read_text())['outs'][0]['md5']}" in audit.stdout
    assert f"dataset_dvc_md5 {data_md5}" in audit.stdout

    _replace(table, "tampered\n")  # the audit does look at clone 2's files
    audit = _run([sys.executable, "-m", "mmc", "provenance", f"{RUN}/tables/segmentation.csv"], second, check=False)
    assert audit.returncode == 1 and "MISMATCH" in audit.stdout

    # the MLflow store is machine-local: clone 2 rebuilds it from the pulled records
    assert not (second / RUN / "tracking" / "mlflow.db").exists()
    loaded = _run([sys.executable, "-m", "mmc", "track", "load", "--config", "share.yaml"], second).stdout
    assert "failed" not in loaded.replace("0 failed", "")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{second / RUN / 'tracking' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mmc-repro")
    assert experiment.artifact_location == (second / RUN / "tracking" / "artifacts").as_uri()
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`mmc.role` = 'invocation'")
    assert parent.info.status == "FINISHED"
