"""The real workflow, end to end, on a tiny version of config/test.yaml: locally, on a real SLURM
cluster, and interrupted during pretraining (SIGINT to snakemake; SIGKILL of the training process).

Every run is compared with one uninterrupted local run (the reference). The SLURM run goes to the
end: its tables, selection records and published checkpoints must be byte-identical. The
interrupted runs (to stay within the test budget) go as far as checkpoint selection, the stage
after the interrupted one: every kept epoch checkpoint and both selection records must be
byte-identical; everything downstream is a deterministic function of those files, which the
local-vs-SLURM comparison shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflow_helpers import (
    BIN,
    REPO,
    SNAKEFILE,
    config_with,
    job_counts,
    snakemake,
    snakemake_env,
    write_config,
)

pytestmark = pytest.mark.slow
RESULTS = "results/test"
# Small enough for 2 CPU cores, large enough that pretraining takes several resume checkpoints.
TINY = {
    "synthetic": {"images": 24, "unlabelled_images": 64, "size": 64},
    "pretrain": {
        "optim": {"epochs": 3, "batch_size": 16, "warmup_epochs": 1},
        "checkpoint": {"every_steps": 2, "save_epochs": [2]},
    },
    "evaluation": {"resolution": 64},
    "datasets": {"synthetic_select": {"max_images": 8}},
}
COMPARED = [
    "tables/segmentation.csv",
    "tables/similarity.csv",
    "select/mmc/seed0.json",
    "select/mim_only/seed0.json",
]
# dvc.checkpoint_dir of config/test.yaml
PUBLISHED = ["checkpoints/test/mmc/seed0.pth", "checkpoints/test/mim_only/seed0.pth"]


def make_workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    raw = config_with(**TINY)
    # three rows suffice: a trained model, its initial weights (its reference) and the colour floor
    raw["models"] = {name: raw["models"][name] for name in ("mmc", "init", "colour")}
    write_config(path / "tiny.yaml", raw)
    return path


def run_args(*extra: str) -> list[str]:
    return ["--configfile", "tiny.yaml", "--cores", "2", *extra]


# What the interrupted runs ask for: pretraining (interrupted) and the selection after it.
SELECTIONS = [f"{RESULTS}/select/mmc/seed0.json", f"{RESULTS}/select/mim_only/seed0.json"]


def assert_same_results(workdir: Path, reference: Path) -> None:
    for name in COMPARED:
        assert (workdir / RESULTS / name).read_bytes() == (reference / RESULTS / name).read_bytes(), name
    for name in PUBLISHED:
        assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted local run; its wall time is the test workflow's end-to-end time."""
    workdir = make_workdir(tmp_path_factory.mktemp("reference"))
    start = time.perf_counter()
    snakemake(workdir, *run_args(), timeout=600)
    print(f"\nend-to-end local run of the tiny test workflow: {time.perf_counter() - start:.1f} s")
    return workdir


def test_local_run_and_noop_rerun(reference):
    expected = [f"{RESULTS}/{name}" for name in COMPARED] + PUBLISHED
    expected += [f"{RESULTS}/report/summary.md", f"{RESULTS}/figures/qualitative_synthetic_val.png"]
    assert [name for name in expected if not (reference / name).exists()] == []
    job_lines = [
        p.read_text().splitlines()[0] for p in (reference / RESULTS / "logs" / "pretrain").rglob("*.log")
    ]
    assert job_lines and all("slurm_job_id=none" in line for line in job_lines)  # local jobs, not SLURM
    # the data were versioned with DVC before anything read them, and every reader carries the hash
    data_md5 = yaml.safe_load((reference / "data.dvc").read_text())["outs"][0]["md5"]
    jobs = reference / RESULTS / "tracking" / "jobs"
    readers = sorted(jobs.glob("segment-*.json")) + sorted(jobs.glob("pretrain-*.json"))
    assert len(readers) == 5  # segment: mmc, init, colour; pretrain: mmc, mim_only
    for record in readers:
        assert json.loads(record.read_text())["tags"]["mmc.dataset_dvc_md5"] == data_md5, record.name
    start = time.perf_counter()
    done = snakemake(reference, *run_args())
    print(f"\nno-op rerun of the finished test workflow: {time.perf_counter() - start:.1f} s")
    assert "Nothing to be done" in done.stdout + done.stderr
    snakemake(reference, "--configfile", "tiny.yaml", "--report", "report.html")
    html = (reference / "report.html").read_text()
    for name in ("segmentation.csv", "similarity.csv", "qualitative_synthetic_val.png", "summary.md"):
        assert name in html, f"{name} is missing from the HTML report"


# ----------------------------------------------------------------------------- SLURM
def slurm_cluster_up() -> str | None:
    """None when a SLURM controller answers with an idle node, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "the SLURM client (sbatch, sinfo) is not installed"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    if state.returncode != 0 or not state.stdout.strip():
        return f"no SLURM controller answers: {state.stderr.strip()[:200]}"
    if "idle" not in state.stdout and "mix" not in state.stdout:
        return f"no idle SLURM node (states: {state.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm():
    why = slurm_cluster_up()
    if why is not None:
        if os.environ.get("MMC_REQUIRE_SLURM"):
            pytest.fail(f"MMC_REQUIRE_SLURM is set but SLURM is unusable: {why} (start it with .ci/slurm.sh)")
        pytest.skip(f"SLURM tests need a running cluster (.ci/run starts one): {why}")


# CI-only settings on top of workflow/profiles/slurm: a 2-CPU node, no slurmdbd (squeue status),
# fast status checks. --set-resources replaces the profile's mapping, so it is given whole.
SLURM_CI = [
    "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
    "--jobs", "4",
    "--default-resources", "mem_mb=1000", "runtime=30", "cpus_per_task=1",
    "--set-resources",
    *[f"{rule}:{key}={value}" for rule in ("pretrain", "segment", "similarity")
      for key, value in (("gpu", 1), ("cpus_per_gpu", 1), ("mem_mb", 2000))],
    "select:mem_mb=2000",
    "figures:mem_mb=2000",
]  # fmt: skip
GPU_RULES = ("pretrain", "segment", "similarity")
CLUSTER_RULES = (*GPU_RULES, "select", "figures")


def test_slurm_run_equals_local_run(slurm, reference, tmp_path):
    workdir = make_workdir(tmp_path / "slurm")
    start = time.perf_counter()
    done = snakemake(workdir, "--configfile", "tiny.yaml", *SLURM_CI, timeout=900)
    print(f"\nend-to-end run through SLURM: {time.perf_counter() - start:.1f} s")
    run_logs = "".join(p.read_text() for p in (workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", done.stdout + done.stderr + run_logs)
    logs = {
        p.relative_to(workdir / RESULTS / "logs"): p.read_text()
        for p in (workdir / RESULTS / "logs").rglob("*.log")
    }
    cluster_logs = {p: t for p, t in logs.items() if p.parts[0].removesuffix(".log") in CLUSTER_RULES}
    # pretrain and select: 2 experiments; segment and similarity: 3 models; and figures
    assert len(cluster_logs) == 2 * 2 + 2 * 3 + 1, sorted(map(str, cluster_logs))
    assert len(submitted) >= len(cluster_logs)
    for path, text in cluster_logs.items():
        info = re.match(r"job: host=\S+ slurm_job_id=(\S+) CUDA_VISIBLE_DEVICES=(\S+)", text)
        assert info, f"{path}: no job line"
        assert info.group(1) in submitted, f"{path} ran outside SLURM: {info.group(0)}"
        if path.parts[0].removesuffix(".log") in GPU_RULES:
            assert re.fullmatch(r"\d+(,\d+)*", info.group(2)), f"{path}: no GPU allocated: {info.group(0)}"
        else:
            assert info.group(2) == "unset", f"{path}: a GPU was allocated to a CPU rule"
    assert_same_results(workdir, reference)


# ----------------------------------------------------------------------------- resume
def start_snakemake(workdir: Path) -> subprocess.Popen:
    cmd = ["timeout", "-k", "10", "600", str(BIN / "snakemake"), "--snakefile", str(SNAKEFILE)]
    cmd += run_args(*SELECTIONS)
    log = open(workdir / "interrupted.log", "w")  # noqa: SIM115 (closed by the OS with the process)
    return subprocess.Popen(
        cmd, cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_resume_state(
    workdir: Path, experiment: str, process: subprocess.Popen, min_step: int = 4
) -> int:
    """Wait until pretraining of ``experiment`` has written a rolling checkpoint at step >= min_step."""
    state = workdir / "state" / "test" / "pretrain" / experiment / "seed0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = [
            int(m.group(1)) for p in state.glob("step_*.pth") if (m := re.match(r"step_(\d+)\.pth$", p.name))
        ]
        if steps and max(steps) >= min_step:
            return max(steps)
        assert process.poll() is None, (workdir / "interrupted.log").read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no resume checkpoint under {state} after 300 s")


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def assert_same_training(workdir: Path, reference: Path) -> None:
    kept = sorted(p.relative_to(reference) for p in (reference / RESULTS / "pretrain").rglob("epoch_*.pth"))
    assert (
        kept
        and sorted(p.relative_to(workdir) for p in (workdir / RESULTS / "pretrain").rglob("epoch_*.pth"))
        == kept
    )
    for name in [*kept, *SELECTIONS]:
        assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name


def rerun_and_check(workdir: Path, reference: Path, resumed: list[str]) -> None:
    start = time.perf_counter()
    done = snakemake(workdir, *run_args(*SELECTIONS), timeout=600)
    print(f"\nrerun after the interruption: {time.perf_counter() - start:.1f} s")
    counts = job_counts(done.stdout + done.stderr)
    assert "synthetic" not in counts, f"a finished stage was redone: {counts}"
    for experiment in resumed:
        log = (workdir / RESULTS / "logs" / "pretrain" / experiment / "seed0.log").read_text()
        step = re.search(r"resuming from \S+ \(step (\d+) of", log)
        assert step and int(step.group(1)) > 0, f"pretrain {experiment} did not resume:\n{log[-2000:]}"
    assert_same_training(workdir, reference)


def test_resume_after_sigint_to_snakemake(reference, tmp_path):
    workdir = make_workdir(tmp_path / "sigint")
    process = start_snakemake(workdir)
    wait_for_resume_state(workdir, "mmc", process)
    # SIGINT to snakemake alone (not to `timeout`, which would SIGKILL it 10 s later): it stops its
    # jobs itself and releases its lock.
    snakemake_pid = next(p for p in descendants(process.pid) if "snakemake --snakefile" in command_line(p))
    os.kill(snakemake_pid, signal.SIGINT)
    assert process.wait(timeout=120) != 0
    assert not descendants(process.pid)
    rerun_and_check(workdir, reference, resumed=["mmc"])


def test_resume_after_sigkill_of_training(reference, tmp_path):
    workdir = make_workdir(tmp_path / "sigkill")
    process = start_snakemake(workdir)
    wait_for_resume_state(workdir, "mmc", process)
    trainers = [
        p
        for p in descendants(process.pid)
        if re.search(r"mmc pretrain .*--experiment mmc\b", command_line(p))
    ]
    assert trainers, "the training process of experiment mmc was not found"
    for pid in trainers:
        os.kill(pid, signal.SIGKILL)
    assert process.wait(timeout=300) != 0  # the job failed; snakemake finished the others and stopped
    # Snakemake stops the other running jobs when one fails: those resume too (not asserted).
    rerun_and_check(workdir, reference, resumed=["mmc"])
