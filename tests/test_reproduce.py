"""``mmc reproduce``: the comparisons and the sample on small inputs, then audits of the real demo run
(conftest's ``demo_run``: the tiny workflow in a git repository whose commit the records name)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import REPO

from mmc import records
from mmc.files import sha256_file
from mmc.records import JobRecord
from mmc.reproduce import compare, sample, stages
from mmc.reproduce.stages import Tolerance

RESULTS = "results/test"


# ----------------------------------------------------------------------------- comparisons
def judge(tmp_path: Path, name: str, recorded: bytes | str, reproduced: bytes | str, tolerance=stages.EXACT, ignore=()):
    a, b = tmp_path / "recorded" / name, tmp_path / "reproduced" / name
    for path, content in ((a, recorded), (b, reproduced)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return compare.compare_file(name, stages.kind_of(name), sha256_file(a), a, b, tolerance, ignore)


def test_identical_bytes_are_bitwise(tmp_path):
    assert judge(tmp_path, "summary.csv", "model,miou\nmmc,0.41\n", "model,miou\nmmc,0.41\n").outcome == compare.BITWISE


def test_tables_name_the_cell_and_the_largest_difference(tmp_path):
    recorded = "model,miou,oracle\nmmc,0.4100,0.5\nrandom,0.2000,0.3\n"
    reproduced = "model,miou,oracle\nmmc,0.4100,0.5001\nrandom,0.4500,0.3\n"
    result = judge(tmp_path, "segmentation.csv", recorded, reproduced)
    assert result.outcome == compare.DIFFERENT
    assert result.differing_values == 2 and result.compared_values == 6
    assert result.difference.where == "row 2, column miou"
    assert result.difference.abs_diff == pytest.approx(0.25)
    assert result.difference.rel_diff == pytest.approx(0.25 / 0.2)
    # the same small change: within an absolute tolerance of 1e-3, not without one
    small = "model,miou,oracle\nmmc,0.4100,0.5001\nrandom,0.2000,0.3\n"
    assert judge(tmp_path, "s.csv", recorded, small, Tolerance(atol=1e-3)).outcome == compare.WITHIN
    assert judge(tmp_path, "s.csv", recorded, small).outcome == compare.DIFFERENT
    renamed = "model,mIoU,oracle\nmmc,0.4100,0.5\nrandom,0.2000,0.3\n"
    assert judge(tmp_path, "s.csv", recorded, renamed, Tolerance(atol=1)).difference.where == "header"


def test_declared_execution_fields_are_left_out(tmp_path):
    recorded = json.dumps({"miou": 0.41, "features": {"computed": 0, "cached": 60}})
    reproduced = json.dumps({"miou": 0.41, "features": {"computed": 60, "cached": 0}}, indent=1)
    result = judge(tmp_path, "summary.json", recorded, reproduced, ignore=("features.computed", "features.cached"))
    assert result.outcome == compare.SAME_VALUES
    assert result.ignored == ["features.cached", "features.computed"]
    assert judge(tmp_path, "summary.json", recorded, reproduced).outcome == compare.DIFFERENT
    lines = ['{"step": 0, "loss": 0.5, "images_per_s": 100.0}', '{"step": 1, "loss": 0.25, "images_per_s": 90.0}']
    other = ['{"step": 0, "loss": 0.5, "images_per_s": 12.5}', '{"step": 1, "loss": 0.25, "images_per_s": 11.0}']
    jsonl = judge(tmp_path, "train_metrics.jsonl", "\n".join(lines), "\n".join(other), ignore=("images_per_s",))
    assert jsonl.outcome == compare.SAME_VALUES and jsonl.compared_values == 4


def test_numbers_in_text_compare_by_value_integers_and_words_exactly(tmp_path):
    recorded = "| model | mIoU |\n| mmc | 0.4130 |\n"
    assert judge(tmp_path, "t.md", recorded, "| model | mIoU |\n| mmc | 0.4131 |\n", Tolerance(atol=1e-3)).outcome == compare.WITHIN
    assert judge(tmp_path, "t.md", recorded, "| model | mIoU |\n| dino | 0.4130 |\n", Tolerance(atol=1)).outcome == compare.DIFFERENT
    # a number inside a JSON string (a path, a reason): integers such as epochs are exact
    a = json.dumps({"checkpoint": "pretrain/epoch_0004.pth", "reason": "0.4276 at epoch 4"})
    b = json.dumps({"checkpoint": "pretrain/epoch_0002.pth", "reason": "0.4276 at epoch 4"})
    result = judge(tmp_path, "select.json", a, b, Tolerance(rtol=1, atol=1))
    assert result.outcome == compare.DIFFERENT and result.difference.where == "checkpoint (number 1)"


def test_checkpoints_compare_tensor_by_tensor(tmp_path):
    import torch

    generator = torch.Generator().manual_seed(0)
    weights = {"student": {"w": torch.randn(3, 4, generator=generator), "step": torch.tensor(7)}, "epoch": 2}
    moved = {"student": {"w": weights["student"]["w"].clone(), "step": torch.tensor(7)}, "epoch": 2}
    moved["student"]["w"][1, 2] += 1e-6
    buffers = []
    for content in (weights, moved):
        buffer = io.BytesIO()
        torch.save(content, buffer)
        buffers.append(buffer.getvalue())
    exact = judge(tmp_path, "epoch_0002.pth", *buffers)
    assert exact.outcome == compare.DIFFERENT
    expected = abs(float(moved["student"]["w"][1, 2]) - float(weights["student"]["w"][1, 2]))  # float32 steps
    assert exact.difference.where == "student.w[1, 2]" and exact.difference.abs_diff == expected
    assert exact.differing_values == 1 and exact.compared_values == 12 + 1 + 1
    assert judge(tmp_path, "epoch_0002.pth", *buffers, Tolerance(rtol=1e-4, atol=1e-5)).outcome == compare.WITHIN


def test_images_compare_pixel_by_pixel(tmp_path):
    import numpy as np
    from PIL import Image

    pixels = np.zeros((40, 50, 3), dtype=np.uint8)
    changed = pixels.copy()
    changed[3, 7] = (255, 0, 0)
    pngs = []
    for array in (pixels, changed):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="png")
        pngs.append(buffer.getvalue())
    result = judge(tmp_path, "histogram.png", *pngs)
    assert result.outcome == compare.DIFFERENT and result.differing_values == 1 and result.compared_values == 2000
    assert result.difference.where.startswith("pixel (x 7, y 3)")
    assert judge(tmp_path, "histogram.png", *pngs, Tolerance(pixels=1e-3)).outcome == compare.WITHIN


def test_parquet_compares_cell_by_cell(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"object": [1, 2], "iou": [[0.5, 0.25], [0.75, 1.0]]})
    other = frame.copy()
    other["iou"] = [[0.5, 0.25], [0.75, 0.875]]
    files = []
    for df in (frame, other):
        buffer = io.BytesIO()
        df.to_parquet(buffer)
        files.append(buffer.getvalue())
    result = judge(tmp_path, "objects.parquet", *files)
    assert result.outcome == compare.DIFFERENT
    assert result.difference.where == "row 1, column iou[1]" and result.difference.abs_diff == pytest.approx(0.125)


def test_missing_or_unrecorded_originals(tmp_path):
    produced = tmp_path / "reproduced" / "summary.csv"
    produced.parent.mkdir()
    produced.write_text("a\n1\n")
    missing = compare.compare_file("x.csv", "csv", "0" * 64, None, tmp_path / "nothing.csv", Tolerance())
    assert missing.outcome == compare.MISSING
    gone = compare.compare_file("summary.csv", "csv", "0" * 64, None, produced, Tolerance())
    assert gone.outcome == compare.DIFFERENT and "only the sha256" in gone.note


# ----------------------------------------------------------------------------- the sample
def record(stage: str, name: str, seconds: float) -> JobRecord:
    return JobRecord({"stage": stage, "name": name, "record_id": name, "status": "FINISHED",
                      "start_time": 1_000, "end_time": 1_000 + int(seconds * 1000)})


def test_sample_is_stratified_upstream_first_cheap_first_and_seeded():
    jobs = [record("pretrain", "pretrain-a", 40), record("pretrain", "pretrain-b", 30),
            record("segment", "segment-a", 3), record("segment", "segment-b", 4), record("segment", "segment-c", 9),
            record("tables", "tables", 0.1), record("odd", "odd", 1)]
    order = list(stages.STAGES)
    four = sample.choose(jobs, 4, seed=0, stage_order=order)
    assert [j.stage for j in four] == ["pretrain", "segment", "tables", "odd"]  # one per stage, pipeline order
    assert four[0].name == "pretrain-b"  # the cheaper half of a stage first
    assert four[1].name in ("segment-a", "segment-b")
    drawn = {sample.choose(jobs, 4, seed=s, stage_order=order)[1].name for s in range(20)}
    assert drawn == {"segment-a", "segment-b"}  # the seed draws among the cheap ones
    assert [j.name for j in sample.choose(jobs, 4, 3, order)] == [j.name for j in sample.choose(jobs, 4, 3, order)]
    everything = sample.choose(jobs, 100, seed=1, stage_order=order)
    assert sorted(j.name for j in everything) == sorted(j.name for j in jobs)
    assert everything[-1].name == "segment-c"  # the most expensive segment job comes last


def test_every_stage_that_records_jobs_is_declared():
    # a stage is named where its module opens its recorder: tracking.job("stage", ...) or
    # evaluation_job("stage", ...)
    named = set()
    for path in (REPO / "mmc").rglob("*.py"):
        named |= set(re.findall(r"(?:tracking\.job|evaluation_job)\(\s*\"([a-z_]+)\"", path.read_text()))
    assert named and named <= set(stages.STAGES), named - set(stages.STAGES)
    for name, policy in stages.STAGES.items():
        assert policy.not_reexecutable is None or policy.not_reexecutable.strip(), name


# ----------------------------------------------------------------------------- audits of the demo run

def mmc_reproduce(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", records.INVOCATION_ENV)}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "mmc", "reproduce", RESULTS, *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1200)


def latest_report(project: Path) -> dict:
    reports = sorted((project / RESULTS / "reproduce").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text())


AUDIT_OUTPUTS = (f"{RESULTS}/reproduce/", f"{RESULTS}/tracking/mlflow.db", f"{RESULTS}/tracking/artifacts/",
                 f"{RESULTS}/tracking/load.lock", ".git/")


def snapshot(project: Path) -> dict[str, str]:
    """sha256 of every file of the project but what an audit adds (its report, its MLflow run)."""
    found = {}
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project).as_posix()
        if path.is_file() and not path.is_symlink() and not relative.startswith(AUDIT_OUTPUTS):
            found[relative] = sha256_file(path)
    return found


@pytest.mark.slow
def test_a_sample_of_the_demo_run_reproduces_identically(demo_run):
    before = snapshot(demo_run)
    done = mmc_reproduce(demo_run, "--sample", "4")
    print("\n" + done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    report = latest_report(demo_run)
    jobs = report["jobs"]
    assert len(jobs) == 4 and {j["verdict"] for j in jobs} == {"identical"}, [(j["name"], j["reason"]) for j in jobs]
    assert [j["stage"] for j in jobs] == ["pretrain", "select", "segment", "similarity"]
    pretrain = jobs[0]
    assert {Path(f["path"]).name for f in pretrain["files"]} == {"epoch_0000.pth", "epoch_0002.pth", "epoch_0003.pth", "train_metrics.jsonl"}
    assert all(f["outcome"] == "bitwise" for f in pretrain["files"] if f["path"].endswith(".pth"))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=demo_run, capture_output=True, text=True).stdout.strip()
    for job in jobs:  # the re-executed job ran the recorded commit's code on the recorded config
        checks = {c["what"]: c for c in job["checks"]}
        assert checks["git commit"]["reproduced"] == commit == job["commit"]
        assert checks["config hash"]["same"] and checks["dataset_dvc_md5"]["same"], job["name"]
        assert checks["deterministic"]["same"] and checks["num_threads"]["same"], job["name"]
    recorded = json.loads((demo_run / RESULTS / "tracking/jobs/pretrain-experiment=mim_only-seed=0.json").read_text())
    assert recorded["tags"]["mmc.deterministic"] == "true" and recorded["tags"]["mmc.device"] == "cpu"
    # both times are printed (the test only reports them; tests never assert timings)
    assert re.search(r"took [\d.]+ s in the run", done.stdout) and re.search(r"re-executing them took [\d.]+ s", done.stdout)
    # the original run is only read; the temporary code checkouts are gone
    assert snapshot(demo_run) == before
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=demo_run, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1, worktrees
    # the audit is an MLflow run in the run's store, linked to the invocation it reproduced
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{demo_run / RESULTS / 'tracking' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mmc-repro").experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`mmc.reproduction_id` = '{report['reproduction_id']}'")
    invocation = recorded["invocation_id"]
    assert run.data.tags["mmc.role"] == "reproduction" and run.data.tags["mmc.reproduces_invocation"] == invocation
    (parent,) = client.search_runs([experiment], filter_string=f"tags.`mmc.invocation_id` = '{invocation}' and "
                                                               "tags.`mmc.role` = 'invocation'")
    assert run.data.tags["mmc.reproduces_run_id"] == parent.info.run_id
    assert run.data.metrics["jobs_identical"] == 4
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        Path(report["paths"]["markdown"]).name, Path(report["paths"]["json"]).name}


@pytest.fixture(scope="module")
def copied_run(demo_run, tmp_path_factory) -> Path:
    """A copy of the demo project (its git history included) to alter; its records point at it."""
    copy = tmp_path_factory.mktemp("altered") / "project"
    shutil.copytree(demo_run, copy, symlinks=True)
    for path in (copy / RESULTS / "tracking" / "jobs").glob("*.json"):
        data = json.loads(path.read_text())
        data["cwd"] = str(copy)
        path.write_text(json.dumps(data, indent=1))
    return copy


def edit_record(project: Path, name: str, edit) -> None:
    path = project / RESULTS / "tracking" / "jobs" / f"{name}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1))


@pytest.mark.slow
def test_a_recorded_output_the_code_does_not_produce_is_different(copied_run):
    table = copied_run / RESULTS / "tables" / "segmentation.csv"
    rows = list(csv.reader(io.StringIO(table.read_text())))
    column = next(i for i, v in enumerate(rows[1]) if re.fullmatch(r"-?\d+\.\d+", v))
    rows[1][column] = repr(float(rows[1][column]) + 0.5)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    table.write_text(buffer.getvalue())  # the table and its record now claim a number +0.5 off
    edit_record(copied_run, "tables", lambda d: d["files"]["produced"].update(
        {f"{RESULTS}/tables/segmentation.csv": sha256_file(table)}))
    done = mmc_reproduce(copied_run, "--jobs", "tables", "--no-mlflow")
    assert done.returncode == 1, done.stdout + done.stderr
    (job,) = latest_report(copied_run)["jobs"]
    assert job["verdict"] == "different" and job["first_difference"] == f"{RESULTS}/tables/segmentation.csv"
    (differing,) = [f for f in job["files"] if f["outcome"] != "bitwise"]
    assert differing["difference"]["where"] == f"row 1, column {rows[0][column]}"
    assert differing["difference"]["abs_diff"] == pytest.approx(0.5)
    assert "segmentation.csv" in done.stderr and "different" in done.stderr


@pytest.mark.slow
def test_jobs_whose_inputs_or_data_changed_are_refused(copied_run):
    selection = copied_run / RESULTS / "select" / "mmc" / "seed0.json"
    selection.write_text(selection.read_text() + " ")
    done = mmc_reproduce(copied_run, "--jobs", "report", "--no-mlflow")
    assert done.returncode == 1
    (job,) = latest_report(copied_run)["jobs"]
    assert job["verdict"] == "refused" and job["reexecution_seconds"] is None
    assert f"input(s) changed since the job recorded them: {RESULTS}/select/mmc/seed0.json" in job["reason"]
    image = next((copied_run / "data" / "synthetic" / "unlabelled").glob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")
    done = mmc_reproduce(copied_run, "--jobs", "pretrain-experiment=mmc-seed=0", "--no-mlflow")
    assert done.returncode == 1
    assert re.search(r"refused pretrain-experiment=mmc-seed=0: data changed: \S+/data has DVC md5 \w+\.dir now, the job "
                     r"read \w+\.dir", done.stderr), done.stderr


@pytest.mark.slow
def test_a_commit_missing_from_the_repository_or_a_dirty_tree_is_refused(copied_run):
    unknown = "0123456789abcdef" * 2 + "01234567"
    edit_record(copied_run, "figures", lambda d: d["tags"].update({"mmc.git_commit": unknown}))
    done = mmc_reproduce(copied_run, "--jobs", "figures", "--no-mlflow")
    assert done.returncode == 1
    assert f"commit {unknown} (mmc.git_commit) is not in the git repository at {copied_run}" in done.stderr
    edit_record(copied_run, "segment-model=mmc-dataset=synthetic_val-seed=0", lambda d: d["tags"].update({"mmc.git_dirty": "true"}))
    done = mmc_reproduce(copied_run, "--jobs", "segment-model=mmc-dataset=synthetic_val-seed=0", "--no-mlflow")
    assert done.returncode == 1 and "the working tree was dirty when the job ran" in done.stderr
    assert "--allow-dirty" in done.stderr
    bad = mmc_reproduce(copied_run, "--jobs", "no-such-job")
    assert bad.returncode == 2 and "--jobs: no job record named 'no-such-job'" in bad.stderr
    not_reexecutable = mmc_reproduce(copied_run, "--stage", "publish")
    assert not_reexecutable.returncode == 2 and "publish is not re-executable" in not_reexecutable.stderr
