"""Walltime and preemption through a real SLURM cluster, and the multi-node launch on 127.0.0.1.

The SLURM test runs `snakemake --profile` (workflow/profiles/slurm, its node-size numbers scaled to
the CI node, see slurm_support.ci_profile) for one pretraining job and interrupts it twice the ways
a cluster does, with the profile's own settings doing the rest:

1. `scancel --signal=TERM JOB` (what an admin or a preempting scheduler sends);
2. the walltime warning: the running job's time limit is cut (`scontrol update TimeLimit`) so
   that the profile's `--signal=TERM@300` falls due.

Each time `mmc pretrain` inside the job step must get the signal, write a resume checkpoint and
exit 75; the job fails, the profile's `retries` submit it again, and it resumes. The final weights
must be bitwise equal to those of an uninterrupted run. The controller checks time limits once
every 30 s; so that the test does not depend on how fast training is, the trainer is paused
(SIGSTOP) before each signal is sent and continued (SIGCONT) once the signal is pending.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pretrain_support import TINY_PRETRAIN, make_image_folder
from slurm_support import SLURM_CI_ARGS, ci_profile, require_slurm
from workflow_helpers import BIN, SNAKEFILE, config_with, snakemake_env, write_config

from mmc.config import deep_merge
from mmc.pretrain.launch import launcher

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
EXPERIMENT = "mmc"
TARGET = f"results/test/pretrain/{EXPERIMENT}/seed0"  # the run's first (only) seed
# 64 images / batch 8 = 8 steps per epoch, 16 steps, a resume checkpoint every 2 steps. The image
# folder lies outside data_dir, so no data job (synthetic scenes, DVC) runs before pretraining.
PRETRAIN = {
    "data": {"num_workers": 1},  # a loader worker in the job step too: it must survive the signal
    "optim": {"epochs": 2},
    "checkpoint": {"every_steps": 2, "save_epochs": [1], "keep_last": 8},
}
SIGTERM_PENDING = 1 << (signal.SIGTERM - 1)


def make_workdir(path: Path) -> Path:
    path.mkdir(parents=True)
    images = make_image_folder(path / "images", 64)
    pretrain = deep_merge(deep_merge(TINY_PRETRAIN, PRETRAIN), {"data": {"path": str(images)}})
    write_config(path / "tiny.yaml", config_with(pretrain=pretrain))
    return path


def state_steps(workdir: Path) -> list[int]:
    state = workdir / "state" / "test" / "pretrain" / EXPERIMENT / "seed0"
    return sorted(int(m.group(1)) for p in state.glob("step_*.pth") if (m := re.fullmatch(r"step_(\d+)\.pth", p.name)))


def trainer_of(workdir: Path) -> tuple[int, str] | None:
    """(pid, SLURM job id) of the `mmc pretrain` process running for ``workdir`` under SLURM, if any.

    Its DataLoader workers are forks with the same command line: the trainer is their parent.
    """
    found: dict[int, tuple[int, str]] = {}  # pid -> (parent pid, SLURM job id)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, AttributeError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"pretrain" not in argv or b"--out" not in argv or Path(os.readlink(proc / "cwd")) != workdir:
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
            job = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"SLURM_JOB_ID=")), None)
            if job is None:
                continue
            parent = int(re.search(r"^PPid:\s*(\d+)", (proc / "status").read_text(), re.M).group(1))
            found[int(proc.name)] = (parent, job)
    trainers = [(pid, job) for pid, (parent, job) in found.items() if parent not in found]
    return trainers[0] if len(trainers) == 1 else None


def wait_for_training(workdir: Path, snakemake: subprocess.Popen, after_job: str | None, min_step: int):
    """The trainer of a SLURM job other than ``after_job`` once it has written step >= ``min_step``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert snakemake.poll() is None, f"snakemake ended early:\n{log_tail(workdir)}"
        steps = state_steps(workdir)
        if steps and steps[-1] >= min_step and (found := trainer_of(workdir)) and found[1] != after_job:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no training past step {min_step} in a new SLURM job:\n{log_tail(workdir)}")


def signal_paused_trainer(pid: int, send) -> None:
    """Pause the trainer, have SLURM signal its job step, continue the trainer once it has the signal.

    The signal is there once SIGTERM is pending, or once slurmstepd has continued the process
    itself (it sends SIGCONT before SIGTERM, so that stopped processes can act on it).
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        send()
        deadline = time.monotonic() + 120  # the controller's time-limit pass runs every 30 s
        while time.monotonic() < deadline:
            status = Path(f"/proc/{pid}/status").read_text()
            pending = int(re.search(r"^ShdPnd:\s*([0-9a-f]+)", status, re.M).group(1), 16)
            stopped = re.search(r"^State:\s*T", status, re.M)
            if pending & SIGTERM_PENDING or not stopped:
                return
            time.sleep(0.2)
        raise AssertionError("SLURM's SIGTERM never reached the training process")
    except FileNotFoundError:  # continued by slurmstepd, and already done
        return
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the training process {pid} did not exit after SIGTERM"
        time.sleep(0.1)


def cut_time_limit(job: str) -> None:
    """Leave the job 2-3 minutes: less than the profile's 300 s warning, so the warning falls due."""
    elapsed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%M"], capture_output=True, text=True, check=True)
    parts = [int(p) for p in re.split(r"[:-]", elapsed.stdout.strip())]
    seconds = sum(v * u for v, u in zip(reversed(parts), (1, 60, 3600, 86400), strict=False))
    minutes = seconds // 60 + 3
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}"], check=True, timeout=30)


def log_tail(workdir: Path) -> str:
    path = workdir / "snakemake.log"
    return path.read_text()[-4000:] if path.exists() else ""


def test_scancel_and_walltime_warning_resume_through_the_profile_retries(tmp_path):
    require_slurm()
    workdir = make_workdir(tmp_path / "run")
    profile = ci_profile(tmp_path / "profile")
    cmd = ["timeout", "-k", "10", "600", str(BIN / "snakemake"), "--snakefile", str(SNAKEFILE)]
    # --no-hooks: the provenance hooks (MLflow load, pipeline-info) are tested elsewhere and cost ~30 s
    cmd += ["--configfile", "tiny.yaml", "--profile", str(profile), *SLURM_CI_ARGS, "--no-hooks", TARGET]
    # The uninterrupted reference, outside SLURM, meanwhile (the SLURM run mostly waits). Snakemake
    # runs a 1-thread job with OMP_NUM_THREADS=1; CPU results depend on the thread count.
    with open(workdir / "reference.log", "w") as log:
        reference = subprocess.Popen(
            [str(BIN / "mmc"), "pretrain", "--config", "tiny.yaml", "--experiment", EXPERIMENT,
             "--out", "reference", "--state-dir", "state/reference"],
            cwd=workdir, env={**snakemake_env(), "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    start = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        run = subprocess.Popen(cmd, cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        # attempt 1: scancel --signal=TERM (all job steps, not the batch shell)
        pid, first = wait_for_training(workdir, run, None, min_step=2)
        signal_paused_trainer(pid, lambda: subprocess.run(["scancel", "--signal=TERM", first], check=True))
        wait_until_gone(pid)
        stopped_1 = state_steps(workdir)[-1]
        # attempt 2 (the profile's retry): the walltime warning of the profile's --signal=TERM@300
        pid, second = wait_for_training(workdir, run, first, min_step=stopped_1 + 1)
        signal_paused_trainer(pid, lambda: cut_time_limit(second))
        wait_until_gone(pid)
        stopped_2 = state_steps(workdir)[-1]
        assert run.wait(timeout=400) == 0, log_tail(workdir)
        assert reference.wait(timeout=300) == 0, (workdir / "reference.log").read_text()[-3000:]
    finally:
        for process in (run, reference):
            if process.poll() is None:
                process.kill()
    print(f"\npretraining through SLURM with two interruptions: {time.perf_counter() - start:.1f} s")

    output = (workdir / "snakemake.log").read_text()
    assert output.count("exiting with 75 (rerun to resume)") == 2, output[-4000:]  # show-failed-logs
    final_log = (workdir / "results" / "test" / "logs" / "pretrain" / EXPERIMENT / "seed0.log").read_text()
    third = re.search(r"slurm_job_id=(\d+)", final_log).group(1)
    assert len({first, second, third}) == 3, (first, second, third)
    resumed = re.search(r"resuming from \S+ \(step (\d+) of (\d+)\)", final_log)
    assert resumed and stopped_1 < int(resumed.group(1)) == stopped_2 < int(resumed.group(2)), final_log[-2000:]
    slurm_logs = workdir / ".snakemake" / "slurm_logs" / "rule_pretrain"
    attempts = {p.stem: p.read_text() for p in slurm_logs.rglob("*.log")}
    assert set(attempts) == {first, second, third}
    for job in (first, second):
        assert "exit status 75" in attempts[job], attempts[job][-2000:]

    kept = sorted(p.name for p in (workdir / "reference").glob("epoch_*.pth"))
    assert kept == ["epoch_0000.pth", "epoch_0001.pth", "epoch_0002.pth"]  # the initial weights too
    assert sorted(p.name for p in (workdir / TARGET).glob("epoch_*.pth")) == kept
    for name in kept:
        assert (workdir / TARGET / name).read_bytes() == (workdir / "reference" / name).read_bytes(), name


# ----------------------------------------------------------------------------- multi-node launch
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_torchrun_c10d_launch_as_the_multinode_profile_renders_it(tmp_path):
    """The `torchrun` that srun starts on each node (mmc.pretrain.launch), here twice on 127.0.0.1.

    First stopped as SLURM stops a step (SIGTERM to every process of both "nodes"): the ranks agree
    on a step, rank 0 writes a resume checkpoint, every rank exits 75. Then the same launch again:
    it resumes and both ranks end with identical weights.
    """
    from pretrain_support import pretrain_config

    images = make_image_folder(tmp_path / "syn", 64)  # 8 steps per epoch, 16 steps
    # drop-path differs per rank by design and batch norm sees each rank's half: both off
    ddp_safe = {
        "optim": {"epochs": 2, "batch_size": 8}, "backbone": {"drop_path": 0.0}, "contrast": {"head_norm": "layer"},
        "checkpoint": {"every_steps": 2, "keep_last": 8},
    }  # fmt: skip
    config = write_config(tmp_path, pretrain_config(tmp_path, images, ddp_safe))
    state = tmp_path / "state" / "pretrain" / "mmc"
    args = ["pretrain", "--config", str(config), "--experiment", "mmc", "--out", str(tmp_path / "out")]
    env = {**snakemake_env(), "OMP_NUM_THREADS": "1"}

    def start_nodes() -> list[subprocess.Popen]:
        launch = launcher(nodes=2, gpus_per_node=1, multinode=True, rdzv_host="127.0.0.1", rdzv_port=free_port(), rdzv_id="mmc-test")
        assert launch.srun[:4] == ("srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1")
        assert launch.program[0] == "torchrun"
        program = [str(BIN / "torchrun"), *launch.program[1:]]
        return [
            subprocess.Popen(
                [*program, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,
            )
            for _ in range(2)
        ]

    def finish(nodes: list[subprocess.Popen]) -> str:
        try:
            outputs = [node.communicate(timeout=300)[0] for node in nodes]
        finally:
            for node in nodes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
        return "\n".join(outputs)

    nodes = start_nodes()
    deadline = time.monotonic() + 300
    while not list(state.glob("step_*.pth")):
        assert all(n.poll() is None for n in nodes) and time.monotonic() < deadline, finish(nodes)[-3000:]
        time.sleep(0.05)
    for node in nodes:  # what slurmstepd does to a step: every process of it
        os.killpg(node.pid, signal.SIGTERM)
    stopped = finish(nodes)
    assert all(node.returncode != 0 for node in nodes), stopped[-3000:]
    assert "SIGTERM: resume checkpoint written" in stopped, stopped[-3000:]
    assert len(re.findall(r"exiting with 75", stopped)) == 1  # rank 0 logs
    assert not (tmp_path / "out").exists()

    nodes = start_nodes()
    resumed = finish(nodes)
    assert [node.returncode for node in nodes] == [0, 0], resumed[-3000:]
    assert re.search(r"resuming from \S+ \(step [1-9]\d* of 16\)", resumed), resumed[-3000:]
    assert re.search(r"weights identical on 2 ranks: sha256 [0-9a-f]{64}", resumed), resumed[-3000:]
    # the initial weights and the last epoch
    assert sorted(p.name for p in (tmp_path / "out").glob("epoch_*.pth")) == ["epoch_0000.pth", "epoch_0002.pth"]
