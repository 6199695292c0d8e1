"""The workflow's static checks: lint, formatting, config validation at parse time, the DAG."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import time

import pytest
from config_mutations import mutation_params
from workflow_helpers import BIN, REPO, config_with, job_counts, paper_config, snakemake, write_config

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
    "explorer",
    "report",
    "all",
]


@pytest.mark.parametrize("config", ["config/test.yaml", "config/config.yaml"])
def test_lint_is_clean(config, tmp_path):
    path = paper_config(tmp_path) if config == "config/config.yaml" else REPO / config
    done = snakemake(REPO, "--lint", "--configfile", str(path))
    assert "Congratulations, your workflow is in a good condition!" in done.stdout + done.stderr


def test_snakefmt_check():
    snakefmt = shutil.which("snakefmt", path=str(BIN))
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (pip install '.[dev]')")
    done = subprocess.run([snakefmt, "--check", str(REPO / "workflow")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_paper_config_dry_run_lists_every_stage(tmp_path):
    # The default config file is config/config.yaml, relative to the working directory.
    paper_config(tmp_path)
    start = time.perf_counter()
    done = snakemake(tmp_path, "-n")
    seconds = time.perf_counter() - start
    counts = job_counts(done.stdout)
    assert set(counts) == set(STAGES), counts
    print(f"snakemake -n on config/config.yaml: {sum(counts.values())} jobs in {seconds:.1f} s")
    assert (
        not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
    )  # a dry run writes nothing


def test_paper_config_needs_the_imagenet_folder(tmp_path):
    # the paper config's placeholder path does not exist: the dry run says so before any GPU time
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    done = snakemake(tmp_path, "-n", check=False)
    assert done.returncode != 0
    assert "pretrain.data.path: 'data/imagenet/train' does not exist" in done.stdout + done.stderr


def test_test_config_dag(tmp_path):
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "test.yaml"))
    counts = job_counts(done.stdout)
    experiments = len(config_with()["experiments"])
    models, datasets = len(config_with()["models"]), len(config_with()["evaluation"]["datasets"])
    assert counts["synthetic"] == 1 and counts["pretrain"] == experiments and counts["select"] == experiments
    assert counts["segment"] == counts["similarity"] == models * datasets
    assert {"tables", "figures", "report", "publish"} <= set(counts)
    assert "download" not in counts  # the synthetic data is made, not downloaded


def test_seeds_are_a_dimension_of_the_dag(tmp_path):
    """Every experiment runs once per seed; seeded models (experiment, random without a seed) are
    evaluated once per seed, the colour floor once; the tables read them all, the figures one each."""
    cfg = write_config(tmp_path / "c.yaml", config_with(seeds=[0, 1, 2]))
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg))
    counts = job_counts(done.stdout)
    assert counts["pretrain"] == counts["select"] == counts["publish"] == 2 * 3
    assert counts["segment"] == counts["similarity"] == 3 * 3 + 1  # mmc, mim_only, init x 3 seeds; colour
    for seed in (0, 1, 2):
        assert f"--experiment mim_only --seed {seed} --out results/test/pretrain/mim_only/seed{seed}\n" in done.stdout
        assert (
            f"--model init --seed {seed} --checkpoint results/test/pretrain/mmc/seed{seed}/epoch_0000.pth "
            f"--dataset synthetic_val --out results/test/segment/init/seed{seed}/synthetic_val)"
        ) in done.stdout
        assert f"--model mmc --seed {seed} --checkpoint checkpoints/test/mmc/seed{seed}.pth" in done.stdout
    assert "--model colour --dataset synthetic_val --out results/test/segment/colour/synthetic_val)" in done.stdout
    tables = next(line for line in done.stdout.splitlines() if "mmc tables" in line)
    assert tables.count("summary.json") == tables.count("objects.parquet") == 10
    figures = next(line for line in done.stdout.splitlines() if "mmc figures" in line)
    assert figures.count("summary.json") == 4 and "seed1" not in figures
    explorer = next(line for line in done.stdout.splitlines() if "mmc explorer" in line)
    assert explorer.count("summary.json") == 4 and "seed1" not in explorer
    assert "--checkpoint init=results/test/pretrain/mmc/seed0/epoch_0000.pth" in explorer


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
    # the initial weights are the pretrained experiment's (mmc has none: nothing is pretrained)
    raw = config_with(experiments={"mmc": {"init_checkpoint": str(given)}}, models={"init": {"experiment": "mim_only"}})
    cfg = write_config(tmp_path / "c.yaml", raw)
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg))
    assert job_counts(done.stdout)["pretrain"] == 1  # only the ablation is trained
    assert f"--checkpoints {given}" in done.stdout


def test_multi_gpu_pretraining_is_one_torchrun_task(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", config_with())
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg), "--set-resources", "pretrain:gpu=4")
    assert "torchrun --standalone --nproc-per-node=4 -m mmc pretrain" in done.stdout
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(cfg))
    assert "torchrun" not in done.stdout and " mmc pretrain --config" in done.stdout


def limit_memory() -> None:
    # a regression to expanding YAML aliases must fail the test, not exhaust the shared machine
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.mark.parametrize("mutation", mutation_params(workflow_only=True))
def test_snakemake_gives_the_verdict_of_mmc_config_check(tmp_path, mutation):
    """One case per class of bad config (tests/config_mutations.py): the dry run fails at parse
    time with the very line `mmc config check` prints (the one loader, the one set of rules)."""
    mutation.make(tmp_path)
    checked = subprocess.run(
        ["timeout", "-k", "5", "60", sys.executable, "-m", "mmc", "config", "check", "config/config.yaml"],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit_memory,
    )  # fmt: skip
    assert checked.returncode == 2, checked.stderr
    message = checked.stderr.strip().removeprefix("mmc config: error: ")
    given = ["--configfile", "config/config.yaml"] if mutation.workflow == "configfile" else []
    done = snakemake(tmp_path, "-n", *given, check=False, timeout=60, preexec_fn=limit_memory)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]  # not 124: no hang
    assert message in output, output[-3000:]
    assert "Traceback (most recent call last)" not in output and "Job stats" not in output


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("results/test/segment/nosuch/synthetic_val/summary.json", "no such model 'nosuch' (have: colour, init, mim_only, mmc)"),
        ("results/test/segment/mmc/seed7/synthetic_val/summary.json", "no evaluation 'mmc/seed7' of model 'mmc' (have: mmc/seed0)"),
        ("results/test/select/nosuch/seed0.json", "no such experiment 'nosuch' (have: mim_only, mmc)"),
        ("data/manifests/nosuch.json", "no such dataset 'nosuch' (have: synthetic_select, synthetic_val)"),
    ],
)
def test_a_target_naming_an_unknown_name_says_which_names_exist(tmp_path, target, expected):
    done = snakemake(tmp_path, "-n", target, "--configfile", str(REPO / "config" / "test.yaml"), check=False, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert expected in output and "KeyError" not in output
