"""Exact resume after a real SIGKILL of a real `mmc pretrain` process, and the SIGTERM exit path."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pretrain_support import (
    assert_bitwise_equal,
    env,
    load,
    make_image_folder,
    metrics,
    pretrain_cmd,
    pretrain_config,
    run_pretrain,
)
from workflow_helpers import write_config

from mmc.files import sha256_file

EPOCHS, STEPS = 4, 32  # 64 images / batch 8 = 8 steps per epoch
# every step accumulates two micro-batches of 4: a kill at a random time lands inside a step, during
# or between its micro-batches, and the resume restarts from the last optimiser-step boundary
ACCUMULATE = {"checkpoint": {"save_epochs": [2]}, "optim": {"micro_batch_size": 4}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    images = make_image_folder(root / "syn", 64)
    return root, images


@pytest.fixture(scope="module")
def reference(setup):
    root, images = setup
    work = root / "reference"
    work.mkdir()
    config = write_config(work, pretrain_config(work, images, ACCUMULATE))
    run_pretrain(config, work / "out")
    return work / "out"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def compare_with_reference(out: Path, reference: Path) -> None:
    for name in ("epoch_0002.pth", f"epoch_{EPOCHS:04d}.pth"):
        got, ref = load(out / name), load(reference / name)
        assert got["step"] == ref["step"] and got["epoch"] == ref["epoch"]
        assert_bitwise_equal(got["student"], ref["student"])
        assert_bitwise_equal(got["teacher"], ref["teacher"])
    drop = ("images_per_s",)
    got_rows = [{k: v for k, v in r.items() if k not in drop} for r in metrics(out / "train_metrics.jsonl")]
    ref_rows = [{k: v for k, v in r.items() if k not in drop} for r in metrics(reference / "train_metrics.jsonl")]
    assert got_rows == ref_rows and len(got_rows) == STEPS


def test_sigkill_at_an_arbitrary_step_then_resume_is_bitwise_identical(setup, reference):
    root, images = setup
    work = root / "killed"
    work.mkdir()
    config = write_config(work, pretrain_config(work, images, ACCUMULATE, tracking=True))
    state = work / "state" / "pretrain" / "mmc"
    proc = subprocess.Popen(pretrain_cmd(config, work / "out"), env=env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(state / "step_000000006.pth", proc)  # two resume checkpoints exist (steps 4 and 6)
        time.sleep(random.uniform(0.0, 0.3))  # a step after 6 (at ~30 steps/s on 2 cores), possibly mid-save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "out" / f"epoch_{EPOCHS:04d}.pth").exists()
    resumable = sorted(state.glob("step_*.pth"))
    assert len(resumable) == 2
    # the newest checkpoint is cut in half, as by a full disk: resume must report it and fall back
    newest = resumable[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert load(resumable[-2])["sampler"] | {"micro_batch": 4, "accumulation_steps": 2} == load(resumable[-2])["sampler"]
    result = run_pretrain(config, work / "out")
    assert f"resume checkpoint {newest} cannot be read" in result.stderr
    assert f"resuming from {resumable[-2]}" in result.stderr, result.stderr[-3000:]
    compare_with_reference(work / "out", reference)
    # the tracking record of the resumed job has every step's metrics and the outputs' hashes
    record = json.loads((work / "results" / "tracking" / "jobs" / "pretrain-experiment=mmc.json").read_text())
    assert record["status"] == "FINISHED"
    assert sorted({m["step"] for m in record["metrics"] if m["key"] == "loss"}) == list(range(STEPS))
    final = work / "out" / f"epoch_{EPOCHS:04d}.pth"
    assert record["files"]["produced"][str(final)] == sha256_file(final)


def test_sigterm_checkpoints_at_the_next_step_and_exits_75_then_resumes(setup, reference):
    root, images = setup
    work = root / "terminated"
    work.mkdir()
    config = write_config(work, pretrain_config(work, images, {**ACCUMULATE, "checkpoint": {"save_epochs": [2], "every_steps": 0}}))
    state = work / "state" / "pretrain" / "mmc"
    proc = subprocess.Popen(pretrain_cmd(config, work / "out"), env=env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(state / "step_000000008.pth", proc)  # the end of epoch 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 75, stderr[-2000:]
    assert "SIGTERM" in stderr
    steps = sorted(int(p.stem.split("_")[1]) for p in state.glob("step_*.pth"))
    assert steps[-1] > 8  # written at the step boundary after the signal, not only at epoch ends
    assert not (work / "out").exists()
    run_pretrain(config, work / "out")
    compare_with_reference(work / "out", reference)
