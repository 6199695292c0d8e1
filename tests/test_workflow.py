"""The workflow's static checks: lint, formatting, config validation at parse time, the DAG."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from workflow_helpers import BIN, REPO, config_with, job_counts, snakemake, write_config

STAGES = [
    "download",
    "fetch_checkpoint",
    "version_data",
    "pretrain",
    "select",
    "publish",
    "segment",
    "similarity",
    "tables",
    "figures",
    "report",
    "all",
]


@pytest.mark.parametrize("config", ["config/test.yaml", "config/config.yaml"])
def test_lint_is_clean(config):
    done = snakemake(REPO, "--lint", "--configfile", str(REPO / config))
    assert "Congratulations, your workflow is in a good condition!" in done.stdout + done.stderr


def test_snakefmt_check():
    snakefmt = shutil.which("snakefmt", path=str(BIN))
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (pip install '.[dev]')")
    done = subprocess.run([snakefmt, "--check", str(REPO / "workflow")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_paper_config_dry_run_lists_every_stage(tmp_path):
    # The default config file is config/config.yaml, relative to the working directory.
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    start = time.perf_counter()
    done = snakemake(tmp_path, "-n")
    seconds = time.perf_counter() - start
    counts = job_counts(done.stdout)
    assert set(counts) == set(STAGES), counts
    print(f"snakemake -n on config/config.yaml: {sum(counts.values())} jobs in {seconds:.1f} s")
    assert (
        not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
    )  # a dry run writes nothing


def test_test_config_dag(tmp_path):
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "test.yaml"))
    counts = job_counts(done.stdout)
    experiments = len(config_with()["experiments"])
    models, datasets = len(config_with()["models"]), len(config_with()["evaluation"]["datasets"])
    assert counts["synthetic"] == 1 and counts["pretrain"] == experiments and counts["select"] == experiments
    assert counts["segment"] == counts["similarity"] == models * datasets
    assert {"tables", "figures", "report", "publish"} <= set(counts)
    assert "download" not in counts  # the synthetic data is made, not downloaded


def test_bad_config_fails_at_parse_time(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", config_with(evaluation={"resolution": "high"}))
    done = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert done.returncode != 0
    assert "resolution" in done.stderr + done.stdout and "Job stats" not in done.stdout
    typo = write_config(tmp_path / "typo.yaml", config_with(selection={"policy": "best:accuracy"}))
    done = snakemake(tmp_path, "-n", "--configfile", str(typo), check=False)
    assert done.returncode != 0 and "best:accuracy" in done.stderr + done.stdout


def test_a_versioned_run_folder_must_be_the_runs_own_folder_in_the_repository(tmp_path):
    """dvc.version_results (default true) needs results_dir inside the repository, not results/ itself."""
    for results_dir in (str(tmp_path.parent / "elsewhere"), "results"):
        bad = write_config(tmp_path / "bad.yaml", config_with(results_dir=results_dir))
        done = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
        assert done.returncode != 0 and "dvc.version_results" in done.stderr + done.stdout, results_dir
    off = write_config(tmp_path / "off.yaml", config_with(results_dir="results", dvc={"version_results": False}))
    assert "Job stats" in snakemake(tmp_path, "-n", "--configfile", str(off)).stdout


def test_only_one_config_file_and_no_overrides(tmp_path):
    good = write_config(tmp_path / "good.yaml", config_with())
    done = snakemake(tmp_path, "-n", "--configfile", str(good), str(good), check=False)
    assert done.returncode != 0 and "exactly one --configfile" in done.stderr + done.stdout
    done = snakemake(tmp_path, "-n", "--configfile", str(good), "--config", "seed=1", check=False)
    assert done.returncode != 0 and "not supported" in done.stderr + done.stdout


def test_init_checkpoint_skips_pretraining(tmp_path):
    given = tmp_path / "given.pth"
    given.write_bytes(b"placeholder")
    cfg = write_config(tmp_path / "c.yaml", config_with(experiments={"mmc": {"init_checkpoint": str(given)}}))
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg))
    assert job_counts(done.stdout)["pretrain"] == 1  # only the ablation is trained
    assert f"--checkpoints {given}" in done.stdout


def test_multi_gpu_pretraining_is_one_torchrun_task(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", config_with())
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg), "--set-resources", "pretrain:gpu=4")
    assert "torchrun --standalone --nproc-per-node=4 -m mmc pretrain" in done.stdout
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg))
    assert "torchrun" not in done.stdout and " mmc pretrain --config" in done.stdout
